"""Bad rule files never hurt: each class of failure found by fuzzing (issue 12) gets a clear
`file:line: message` — one line — instead of a traceback, a blow-up or a silent accept.

- values Prometheus refuses are refused, with the real `promtool check rules` (2.42) as the
  oracle for every case, both ways;
- wrong types and out-of-range numbers where durations and integers go are problems, not
  `AttributeError`/`OverflowError`;
- the loader's limits (file size, alias expansion, nesting; PromQL length, size and depth before
  the parser sees it) refuse what would cost memory, and sit far above every real file;
- `watchdog check` says everything wrong with a file in one run and fails without rule files;
- `rulesdir.build` never raises, whatever a file holds.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from watchdog import rulefile
from watchdog.cli import main
from watchdog.durations import MAX_DURATION, parse_duration
from watchdog.rulefile import (
    MAX_ALIAS_VALUES,
    MAX_EXPR_DEPTH,
    MAX_EXPR_LENGTH,
    MAX_EXPR_NODES,
    MAX_FILE_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_VALUES,
    parse_rule_file,
    promql_shape,
)
from watchdog.rulesdir import build, read_files
from watchdog.templates import TemplateData, TemplateError, compile_template

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("WATCHDOG_TEMPLATE_CORPUS",
                             ROOT.parent / "shared" / "corpus" / "awesome-prometheus-alerts")
              ).parent
ONE_LINE = re.compile(r"^[^\n\r]+:\d+: [^\n\r]+$")


def rule(extra: str = "", group_extra: str = "", name: str = "g") -> str:
    return (f"groups:\n- name: {name}\n{group_extra}  rules:\n  - alert: A\n"
            f"    expr: up == 0\n{extra}")


def problems(text: str, name: str = "f.yml") -> list[str]:
    pf = parse_rule_file(text, name)
    out = [str(p) for p in pf.errors]
    for line in out:
        assert ONE_LINE.match(line), line
    assert pf.ok == (not out)
    return out


# ---- the oracle: promtool check rules ------------------------------------------------------

# name -> file text; promtool decides whether each is valid, and we must agree.
ORACLE_CASES: dict[str, str] = {
    "for_empty": rule("    for:\n"),
    "for_null": rule("    for: null\n"),
    "for_list": rule("    for: [1]\n"),
    "for_map": rule("    for: {a: 1}\n"),
    "for_400_digits": rule("    for: " + "9" * 400 + "s\n"),
    "for_293y": rule("    for: 293y\n"),
    "for_292y": rule("    for: 292y\n"),
    "for_99999999999y": rule("    for: 99999999999y\n"),
    "for_max_ms": rule("    for: 9223372036854ms\n"),
    "for_max_ms_plus_1": rule("    for: 9223372036855ms\n"),
    "for_max_s": rule("    for: 9223372036s\n"),
    "for_max_s_plus_1": rule("    for: 9223372037s\n"),
    "for_sum_out_of_range": rule("    for: 292y52w\n"),
    "for_unicode_digit": rule("    for: \u0663m\n"),
    "for_empty_string": rule("    for: ''\n"),
    "keep_firing_for_empty": rule("    keep_firing_for:\n"),
    "interval_293y": rule(group_extra="  interval: 293y\n"),
    "interval_null": rule(group_extra="  interval:\n"),
    "limit_5000_digits": rule(group_extra="  limit: " + "9" * 5000 + "\n"),
    "limit_true": rule(group_extra="  limit: true\n"),
    "limit_string": rule(group_extra="  limit: '5'\n"),
    "limit_float_whole": rule(group_extra="  limit: 5.0\n"),
    "limit_int64_max": rule(group_extra="  limit: 9223372036854775807\n"),
    "limit_int64_max_plus_1": rule(group_extra="  limit: 9223372036854775808\n"),
    "label___name__": rule("    labels: {__name__: x}\n"),
    "label_empty_name": rule("    labels: {'': x}\n"),
    "annotation_bad_name": rule("    annotations: {a-b: x}\n"),
    "group_name_empty": rule(name="''"),
    "group_name_null": rule(name=""),
    "control_character": rule("    annotations: {a: \"x\x01\"}\n"),
    "nul_byte": rule("    annotations: {a: x\x00}\n"),
    "nul_escape": rule("    annotations: {a: \"x\\0y\"}\n"),
    "lone_surrogate_escape": rule("    annotations: {a: \"\\ud800\"}\n"),
    "timestamp_for": rule("    for: 2021-13-45\n"),
}


@pytest.fixture(scope="module")
def promtool_verdicts(promtool_binary: str, tmp_path_factory: pytest.TempPathFactory
                      ) -> dict[str, bool]:
    tmp = tmp_path_factory.mktemp("oracle")
    for name, text in ORACLE_CASES.items():
        (tmp / f"{name}.yml").write_text(text)
    # one run for all: promtool reports each file after a "Checking <file>" line
    files = [f"{n}.yml" for n in sorted(ORACLE_CASES)]
    proc = subprocess.run([promtool_binary, "check", "rules", *files], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120, cwd=tmp)
    assert proc.returncode in (0, 1), proc.stdout
    text = proc.stdout
    out = {}
    for name in ORACLE_CASES:
        verdicts = re.findall(rf"^Checking {re.escape(name)}\.yml\n(?:\s*\n)*\s*(SUCCESS|FAILED)",
                              text, re.M)
        assert len(verdicts) == 1, (name, text)
        out[name] = verdicts[0] == "SUCCESS"
    return out


@pytest.mark.parametrize("case", sorted(ORACLE_CASES))
def test_valid_exactly_when_promtool_says_so(case: str, promtool_verdicts: dict[str, bool]
                                             ) -> None:
    found = problems(ORACLE_CASES[case], f"{case}.yml")
    assert (not found) == promtool_verdicts[case], found
    assert len(found) <= 1, found  # one problem, one line, no cascade


@pytest.mark.parametrize(("case", "line", "message"), [
    ("for_293y", 6, "groups[0].rules[0].for: not a valid duration: '293y' (duration out of "
                    "range)"),
    ("for_400_digits", 6, "groups[0].rules[0].for: not a valid duration: '9999"),
    ("for_list", 6, "groups[0].rules[0].for: not a valid duration: got a list"),
    ("for_map", 6, "groups[0].rules[0].for: not a valid duration: got a dict"),
    ("limit_5000_digits", 3, "invalid YAML: cannot read '9999"),
    ("limit_true", 3, "groups[0].limit: expected a whole number, got a boolean"),
    ("label___name__", 6, "groups[0].rules[0].labels: invalid label name '__name__'"),
    ("group_name_empty", 2, "groups[0].name: group name must not be empty"),
    ("control_character", 6, "invalid YAML: character U+0001 is not allowed"),
    ("nul_byte", 6, "invalid YAML: character U+0000 is not allowed"),
    ("lone_surrogate_escape", 6, "invalid YAML: "),
    ("timestamp_for", 6, "invalid YAML: cannot read '2021-13-45'"),
])
def test_each_class_is_one_line_at_its_line(case: str, line: int, message: str) -> None:
    found = problems(ORACLE_CASES[case], "f.yml")
    assert len(found) == 1 and found[0].startswith(f"f.yml:{line}: {message}"), found


@pytest.mark.parametrize("value", ["null", "[1]", "{a: 1}", "true", "1.5", "'9" + "9" * 400 + "s'",
                                   "293y", "''"])
@pytest.mark.parametrize("where", [
    "actions: {a: {cooldown: %s, steps: [{wait: {for: 1m}}]}}\n",
    "actions: {a: {steps: [{wait: {for: %s}}]}}\n",
    "actions: {a: {steps: [{webhook: {url: 'http://x', timeout: %s}}]}}\n",
    "routes: [{receivers: [r], group_wait: %s}]\n"
    "receivers: [{name: r, webhook: {url: 'http://x'}}]\n",
    "groups: [{name: g, rules: [{alert: A, expr: up, baseline: {offset: %s},\n"
    "  threshold: '> 1'}]}]\n",
])
def test_our_own_durations_refuse_every_wrong_value_with_a_message(where: str, value: str
                                                                   ) -> None:
    found = problems(where % value)
    assert len(found) == 1, found
    if not (value == "null" and "offset" in where):  # an empty offset is no baseline at all
        assert "duration" in found[0], found


# ---- durations ---------------------------------------------------------------------------


def test_durations_follow_model_parse_duration_range() -> None:
    assert parse_duration("9223372036854ms") == 9223372036.854 == MAX_DURATION
    assert parse_duration("292y") == 292 * 365 * 86400
    for text in ("9223372036855ms", "293y", "9" * 5000 + "s", "106752d"):
        with pytest.raises(ValueError, match="out of range"):
            parse_duration(text)
    for bad in (None, [], {}, object(), "\u0663m", ""):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
    with pytest.raises(ValueError) as e:
        parse_duration("x" * 100_000)
    assert len(str(e.value)) < 200  # quotes a prefix, not the megabyte pasted


def test_template_parse_duration_of_a_huge_label_is_a_template_error() -> None:
    # label values are data from the metrics: a 5,000-digit one must be an error to show
    t = compile_template("{{ $labels.d | parseDuration }}")
    for value, message in (("9" * 5000 + "s", "duration out of range"),
                           ("9223372037s", "duration out of range"),
                           ("x", "not a valid duration string")):
        with pytest.raises(TemplateError, match=message):
            t.render(TemplateData(labels={"d": value}, value=1.0))
    assert t.render(TemplateData(labels={"d": "9223372036s"}, value=1.0)) == "9.223372036e+09"


# ---- limits ------------------------------------------------------------------------------


def alias_bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\ngroups: [*a{levels - 1}]\n"


def test_an_alias_bomb_is_refused_by_the_alias_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    text = alias_bomb()
    assert len(text) < 500  # 9^9 = 387 million strings once expanded
    built: list[int] = []
    real = rulefile._Constructor.construct_object

    def counting(self: Any, node: Any, deep: bool = False) -> Any:
        built.append(1)
        return real(self, node, deep)

    monkeypatch.setattr(rulefile._Constructor, "construct_object", counting)
    found = problems(text)
    assert found == [f"f.yml:1: more than {MAX_ALIAS_VALUES:,} values built by expanding YAML "
                     "aliases (an alias bomb?)"]
    # bounded by the limit, not by the bomb: the scalars of the document plus the expansions
    assert len(built) <= MAX_ALIAS_VALUES + 100


def test_too_many_values_are_refused_before_any_is_built(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    def compose(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("nodes were built")

    monkeypatch.setattr(rulefile.yaml, "compose", compose)
    monkeypatch.setattr(rulefile.yaml, "compose_all", compose)
    text = "groups:\n- name: g\n  labels: {" + ",".join(
        f"a{i}: b" for i in range(MAX_YAML_VALUES // 2 + 1)) + "}\n"
    assert len(text.encode()) < MAX_FILE_BYTES  # the value limit is what refuses it
    assert problems(text) == [f"f.yml:3: more than {MAX_YAML_VALUES:,} values (the limit; "
                              "split the file)"]


def test_merge_keys_count_toward_the_alias_limit() -> None:
    # `<<: [*m, *m, ...]` nested: most merged pairs are overridden and never built, so only
    # counting the merge itself keeps this from listing 10^8 pairs
    lines = ["m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9, j: 10}"]
    lines += [f"m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 10) + "]}"
              for i in range(1, 9)]
    text = "\n".join(lines) + "\ngroups: []\n"
    assert len(text) < 1000
    found = problems(text)
    assert len(found) == 1 and "values built by expanding YAML aliases" in found[0], found


def test_the_limits_hold_for_a_file_not_for_each_document() -> None:
    # 60 copies of 1,000 values: 60,060 expansions, within the limit in one document
    one = "x: &x [" + ",".join(["1"] * 1000) + "]\ny: [" + ",".join(["*x"] * 60) + "]\n"
    assert not any("aliases" in p for p in problems(one)), problems(one)
    found = problems(one + "---\n" + one)
    assert len(found) == 1 and "values built by expanding YAML aliases" in found[0], found
    half = "groups: [" + ",".join(["{}"] * (MAX_YAML_VALUES // 2)) + "]\n"
    found = problems(half + "---\n" + half)
    assert found == [f"f.yml:3: more than {MAX_YAML_VALUES:,} values (the limit; split the "
                     "file)"], found


def test_recording_rule_problems_come_with_schema_errors() -> None:
    text = ("groups:\n- name: g\n  interval: nope\n  rules:\n"
            "  - record: 'not a name'\n    expr: 'sum(up'\n    labels: {__name__: x}\n")
    found = problems(text)
    assert [f.split(": ", 2)[1] for f in found] == [
        "groups[0].interval", "record", "expr", "labels"], found


def test_aliases_within_the_limit_load() -> None:
    text = ("x-labels: &labels {team: a, tier: b}\n"
            "groups:\n- name: g\n  rules:\n"
            + "".join(f"  - {{alert: A{i}, expr: up, labels: *labels}}\n" for i in range(200)))
    pf = parse_rule_file(text, "f.yml")
    assert [str(p) for p in pf.problems] == ["f.yml:1: x-labels: unknown field"]
    doc = rulefile.load_yaml_with_lines(text)[0]
    assert all(r["labels"] == {"team": "a", "tier": "b"} for r in doc["groups"][0]["rules"])


@pytest.mark.parametrize("text", [
    "a: " + "[" * 60_000,  # libyaml stops at 1,000 levels
    "a: " + "[" * 900 + "]" * 900,
    "".join("  " * i + f"k{i}:\n" for i in range(MAX_YAML_DEPTH + 5)) + "  " * 70 + "v\n",
    "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up\n    labels: " + "[" * 80
    + "]" * 80 + "\n",
])
def test_deep_nesting_is_one_line(text: str) -> None:
    found = problems(text)
    assert len(found) == 1 and ("nest" in found[0] or "deep" in found[0]), found


def test_file_size_limit(tmp_path: Path) -> None:
    body = rule() + "# " + "x" * MAX_FILE_BYTES + "\n"
    assert problems(body)[0].startswith("f.yml:1: file too large")
    # read from disk: a huge (sparse) file costs the limit, not its size
    big = tmp_path / "big.yml"
    with big.open("wb") as f:
        f.truncate(10 * 1024**3)
    raw = read_files([tmp_path])
    data = raw[str(big)]
    assert isinstance(data, bytes) and len(data) == MAX_FILE_BYTES + 1
    rs = build(raw)
    assert [str(p) for p in rs.problems] == [
        f"{big}:1: file too large: more than {MAX_FILE_BYTES:,} bytes (the limit; split it into "
        "several files)"]


def test_control_characters_and_bad_utf8_at_their_line() -> None:
    rs = build({"a.yml": b"groups:\n- name: g\n  rules: []\n# \xff\n",
                "b.yml": b"groups:\n\n- name: \x1b[31mred\n"})
    assert [str(p) for p in rs.problems] == [
        "a.yml:4: not UTF-8: byte 0xff (invalid start byte)",
        "b.yml:3: invalid YAML: character U+001B is not allowed (control characters may only "
        "be written as escapes in double-quoted strings)"]


class ParserSpy:
    """Wraps promql_parser.parse: what the parser was asked to parse."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[str] = []
        real = rulefile.promql_parser.parse

        def parse(expr: str) -> Any:
            self.seen.append(expr)
            return real(expr)

        monkeypatch.setattr(rulefile.promql_parser, "parse", parse)

    def assert_within_limits(self) -> None:
        for expr in self.seen:
            nodes, depth = promql_shape(expr)
            assert len(expr) <= MAX_EXPR_LENGTH and nodes <= MAX_EXPR_NODES
            assert depth <= MAX_EXPR_DEPTH


def _balanced(n: int) -> str:
    return "up" if n == 1 else "(" + _balanced(n // 2) + "+" + _balanced(n - n // 2) + ")"


@pytest.mark.parametrize(("expr", "message"), [
    ("+".join(["up"] * 2000), "expression nested too deeply"),     # 650 MB in the parser
    ("(" * 1000 + "up" + ")" * 1000, "expression nested too deeply"),
    ("-" * 1000 + "up", "expression nested too deeply"),
    ("abs(" * 1000 + "up" + ")" * 1000, "expression nested too deeply"),
    (" or ".join(["up"] * 1000), "expression nested too deeply"),
    (_balanced(3000), "expression too large"),
    ('up{a="' + "x" * MAX_EXPR_LENGTH + '"}', "expression too long"),
])
def test_promql_past_the_limits_never_reaches_the_parser(
        expr: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = ParserSpy(monkeypatch)
    text = rule().replace("expr: up == 0", "expr: " + expr)
    for field in ("expr", "when"):
        doc = text if field == "expr" else rule(f"    when: {expr}\n    threshold: '> 1'\n")
        found = problems(doc)
        assert len(found) == 1 and f"{field}: invalid PromQL in rule 'A': {message}" in found[0]
    spy.assert_within_limits()


def test_promql_shape_ignores_strings_matchers_and_comments() -> None:
    assert promql_shape('sum(rate(x{a="(((", b=~"+-*"}[5m])) # ((((\n / 2') == (4, 4)
    assert promql_shape("a + b * c") == (2, 2)
    assert promql_shape("(a + b) * (c - d)") == (5, 3)
    assert promql_shape("`((((` + 'a\\'(('") == (1, 1)


def _corpus_exprs() -> Iterator[str]:
    for f in sorted(CORPUS.rglob("*.y*ml")):
        if f.stat().st_size > 500_000:
            continue  # rules_large.yml: 10,000 copies of `vector(1)`
        try:
            doc = yaml.load(f.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError:
            continue
        stack: list[Any] = [doc]
        while stack:
            x = stack.pop()
            if isinstance(x, dict):
                for k, v in x.items():
                    if k == "expr" and isinstance(v, str):
                        yield v
                    else:
                        stack.append(v)
            elif isinstance(x, list):
                stack.extend(x)


def test_limits_sit_far_above_every_real_file() -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"rule corpus not found at {CORPUS}")
    exprs = list(_corpus_exprs())
    assert len(exprs) > 1_000  # 1,255 (rules_large.yml's 10,002 `vector(1)` left out)
    shapes = [promql_shape(e) for e in exprs]
    # measured: 1,486 characters, 38 operators and brackets, depth 13
    assert max(len(e) for e in exprs) * 10 < MAX_EXPR_LENGTH
    assert max(n for n, _ in shapes) * 10 < MAX_EXPR_NODES
    assert max(d for _, d in shapes) * 5 < MAX_EXPR_DEPTH
    sizes = [f.stat().st_size for f in CORPUS.rglob("*.y*ml")]
    assert max(sizes) * 3 < MAX_FILE_BYTES  # rules_large.yml, Prometheus's stress fixture
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    values = {f.name: sum(isinstance(e, (yaml.ScalarEvent, yaml.CollectionStartEvent))
                          for e in yaml.parse(f.read_text(), Loader=loader))
              for f in CORPUS.rglob("*.y*ml")}
    assert values.pop("rules_large.yml") * 2 < MAX_YAML_VALUES  # 90,000
    assert max(values.values()) * 10 < MAX_YAML_VALUES  # the largest real file


# ---- check: everything in one run --------------------------------------------------------


def test_check_reports_every_problem_of_a_file_in_one_run(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    (tmp_path / "a.yml").write_text("actions:\n  shared: {steps: [{wait: {for: 1m}}]}\n")
    bad = tmp_path / "b.yml"
    bad.write_text(
        "groups:\n"
        "- name: g\n"
        "  rules:\n"
        "  - alert: A\n"
        "    expr: sum(rate(x[5m])\n"                     # 5: PromQL
        "    for: 293y\n"                                 # 6: schema (range)
        "    annotations: {s: '{{ .Broken'}\n"            # 7: template
        "    actions: [nowhere]\n"                        # 8: reference
        "- name: g\n"                                     # 9: group name repeated
        "  rules: []\n"
        "actions:\n"
        "  shared: {steps: [{wait: {for: 1m}}]}\n"        # 12: defined in a.yml already
    )
    assert main(["check", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    mine = [line.removeprefix(f"{bad}:") for line in out if line.startswith(f"{bad}:")]
    assert [m.split(":")[0] for m in mine] == ["5", "6", "7", "8", "9", "12"], mine
    assert "invalid PromQL" in mine[0] and "out of range" in mine[1]
    assert "invalid template" in mine[2] and "undefined action 'nowhere'" in mine[3]
    assert "repeated" in mine[4] and f"already defined in {tmp_path / 'a.yml'}" in mine[5]


def test_check_without_rule_files_fails(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "README.md").write_text("no rules here\n")
    assert main(["check", str(tmp_path)]) == 1
    assert capsys.readouterr().out == f"{tmp_path}:0: no rule files (*.yml, *.yaml) found\n"


def test_build_never_raises_and_the_rest_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    real = rulefile.parse_rule_file

    def flaky(text: str, name: str) -> rulefile.ParsedFile:
        if name == "boom.yml":
            raise KeyError("a bug in the checker")
        return real(text, name)

    monkeypatch.setattr("watchdog.rulesdir.parse_rule_file", flaky)
    rs = build({"boom.yml": b"groups: []\n", "good.yml": rule().encode()})
    assert [g.name for _, g in rs.groups()] == ["g"]
    (problem,) = rs.status["boom.yml"].problems
    assert str(problem).startswith("boom.yml:1: internal error while checking this file "
                                   "(KeyError: ")
