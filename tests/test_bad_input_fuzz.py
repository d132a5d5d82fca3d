"""Fuzzing the rule loader the way issue 12 found its bugs: real rule files from the corpus,
mutated — a value replaced by one of the hostile classes (wrong types, huge numbers, out-of-range
durations, alias bombs, deep nesting, PromQL chains, control characters, bad UTF-8), lines
dropped, duplicated or re-indented, random bytes spliced in — and run through the code path of
`watchdog check` (bytes -> `rulesdir.build`; an exception inside would show as build's
"internal error" problem, which fails the test).

Per input: no exception; every problem one `file:line: message` line with a line inside the
file; memory bounded by the limits, asserted through them (the PromQL parser never sees an
expression past MAX_EXPR_*, alias expansion stops at MAX_ALIAS_VALUES), never by timing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watchdog import rulefile
from watchdog.rulefile import (
    MAX_ALIAS_VALUES,
    MAX_EXPR_DEPTH,
    MAX_EXPR_LENGTH,
    MAX_EXPR_NODES,
    promql_shape,
)
from watchdog.rulesdir import build

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("WATCHDOG_TEMPLATE_CORPUS",
                             ROOT.parent / "shared" / "corpus" / "awesome-prometheus-alerts")
              ).parent
NAME = "fuzz.yml"
PROBLEM = re.compile(r"^fuzz\.yml:(\d+): (?:warning: )?[^\n\r]+$")


def _corpus() -> list[bytes]:
    if not CORPUS.is_dir():
        return []
    files = sorted(f for f in CORPUS.rglob("*.y*ml") if f.stat().st_size < 60_000)
    return [f.read_bytes() for f in files]


CORPUS_FILES = _corpus()
pytestmark = pytest.mark.skipif(not CORPUS_FILES, reason=f"rule corpus not found at {CORPUS}")

# The classes of issue 12, as YAML values (a mutation puts one after a `key:`).
HOSTILE_VALUES = [
    "", "null", "~", "[1]", "{a: 1}", "[]", "{}", "true", "false", "1.5", "-1", "0x1F",
    "9" * 400 + "s", "9" * 5000, "'" + "9" * 5000 + "'", "99999999999y", "293y", "292y",
    "9223372036855ms", "2021-13-45", "2021-01-01", "1e400", ".nan", "-.inf",
    '"\\ud800"', '"x\\0y"', "\x00", "\x01", "\x1b[31m", "\u2028", "\ufeff",
    "*nowhere", "&a [*a]", "!!python/object:os.system", "!!binary zzz", "!!set {a, b}",
    "[" * 2000, "[" * 80 + "]" * 80, "{a: " * 100 + "}" * 100,
    "+".join(["up"] * 2000), "(" * 1500 + "up" + ")" * 1500, "-" * 3000 + "up",
    "sum(rate(x[5m])", "{{ .Broken", "'{{ $labels.x | parseDuration }}'",
    "__name__", "''", "'" + "x" * 70_000 + "'",
]

ALIAS_BOMB = ("a0: &a0 [x,x,x,x,x,x,x,x,x]\n"
              + "".join(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]\n"
                        for i in range(1, 9)))


class Limits:
    """Records what reaches the PromQL parser and how many values aliases built."""

    def __init__(self) -> None:
        self.exprs: list[str] = []
        self.max_expanded = 0
        self.parsed = 0  # expressions the parser saw, all within the limits

    def check(self) -> None:
        for expr in self.exprs:
            nodes, depth = promql_shape(expr)
            assert len(expr) <= MAX_EXPR_LENGTH, len(expr)
            assert nodes <= MAX_EXPR_NODES and depth <= MAX_EXPR_DEPTH, (nodes, depth)
        assert self.max_expanded <= MAX_ALIAS_VALUES + 1
        self.parsed += len(self.exprs)
        self.exprs.clear()
        self.max_expanded = 0


@pytest.fixture(scope="module")
def limits() -> Any:
    mp = pytest.MonkeyPatch()
    seen = Limits()
    real_parse = rulefile.promql_parser.parse
    real_construct = rulefile._construct

    def parse(expr: str) -> Any:
        seen.exprs.append(expr)
        return real_parse(expr)

    def construct(node: Any, path: Any, lines: Any, scalars: Any) -> Any:
        try:
            return real_construct(node, path, lines, scalars)
        finally:
            seen.max_expanded = max(seen.max_expanded, scalars.expanded)

    mp.setattr(rulefile.promql_parser, "parse", parse)
    mp.setattr(rulefile, "_construct", construct)
    yield seen
    mp.undo()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    text = draw(st.sampled_from(CORPUS_FILES))
    lines = text.split(b"\n")
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        kind = draw(st.sampled_from(["value", "value", "value", "drop", "dup", "indent",
                                     "bytes", "bomb", "prefix"]))
        line = lines[i] if lines else b""
        if kind == "value":
            key, colon, _ = line.partition(b":")
            value = draw(st.sampled_from(HOSTILE_VALUES)).encode("utf-8", "surrogatepass")
            lines[i] = (key + b": " + value) if colon else (line + b" " + value)
        elif kind == "drop" and lines:
            del lines[i]
        elif kind == "dup":
            lines.insert(i, line)
        elif kind == "indent":
            lines[i] = b" " * draw(st.integers(0, 9)) + line.lstrip()
        elif kind == "bytes":
            at = draw(st.integers(0, len(line)))
            lines[i] = line[:at] + draw(st.binary(min_size=1, max_size=8)) + line[at:]
        elif kind == "bomb":
            lines.insert(0, ALIAS_BOMB.encode())
            lines[i + 1] = line.partition(b":")[0] + b": *a8"
        elif kind == "prefix":
            lines.insert(0, draw(st.sampled_from([b"---", b"%YAML 1.1\n---", b"\xef\xbb\xbf",
                                                  b"? [a]\n: b", b"groups: *x"])))
    return b"\n".join(lines)


def check_one(data: bytes, limits: Limits) -> None:
    rs = build({NAME: data})
    n_lines = data.count(b"\n") + 1
    for p in rs.status[NAME].problems:
        text = str(p)
        m = PROBLEM.match(text)
        assert m, text
        assert "internal error" not in text, text  # build's safety net caught an exception
        assert 1 <= int(m.group(1)) <= n_lines + 1, text
    limits.check()


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(mutated())
def test_mutated_corpus_files(limits: Limits, data: bytes) -> None:
    check_one(data, limits)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_random_bytes(limits: Limits, data: bytes) -> None:
    check_one(data, limits)


RULE_KEYS = ("alert", "expr", "for", "keep_firing_for", "labels", "annotations", "threshold",
             "when", "actions")


@pytest.mark.parametrize("value", HOSTILE_VALUES)
@pytest.mark.parametrize("key", ["name", "interval", "limit", "query_offset", "rules",
                                 *RULE_KEYS])
def test_every_class_in_every_place(limits: Limits, key: str, value: str) -> None:
    group = {"name": "g", "interval": "1m"}
    rule = {"alert": "A", "expr": "up", "for": "5m", "labels": "{a: b}", "annotations": "{s: t}"}
    (rule if key in RULE_KEYS else group)[key] = value
    text = "groups:\n- " + "\n  ".join(f"{k}: {v}" for k, v in group.items() if k != "rules")
    if key == "rules":
        text += f"\n  rules: {value}\n"
    else:
        text += "\n  rules:\n  - " + "\n    ".join(f"{k}: {v}" for k, v in rule.items()) + "\n"
    check_one(text.encode("utf-8", "surrogatepass"), limits)
