"""`watchdog test`: rule unit tests in promtool's format, run through our engine.

Shell. PromQL itself is evaluated by a real Prometheus (we do not reimplement PromQL): each test's
`input_series` are backfilled into a temporary TSDB with promtool, a Prometheus is started on it,
and the same `engine.tick` as `watchdog run` evaluates the rule groups at every
`evaluation_interval` from 0 to the last `eval_time`. Output and exit code follow
`promtool test rules`, plus a short +/- diff per failure. `stale` in input series is approximated
by a gap (the OpenMetrics backfill cannot write Prometheus's stale markers).
"""

from __future__ import annotations

import asyncio
import math
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from watchdog.durations import format_duration, parse_duration
from watchdog.engine import GroupRuntime, tick
from watchdog.evaluate import Context
from watchdog.labels import format_labels
from watchdog.promserver import PrometheusServer, backfill, find_binary
from watchdog.rulesdir import build, discover
from watchdog.series import Series, expand_input_series, is_stale_nan, parse_series_selector
from watchdog.source import PrometheusConfig, PrometheusSource


class TestFileError(Exception):
    """The test file itself is unusable (promtool prints these and exits 1)."""


@dataclass(frozen=True, order=True)
class LabelsAndAnnotations:
    labels: tuple[tuple[str, str], ...]
    annotations: tuple[tuple[str, str], ...]

    def render(self, indent: str) -> str:
        return (f"{indent}Labels:{format_labels(dict(self.labels))}\n"
                f"{indent}Annotations:{format_labels(dict(self.annotations))}")


def _la(labels: Mapping[str, str], annotations: Mapping[str, str]) -> LabelsAndAnnotations:
    return LabelsAndAnnotations(tuple(sorted(labels.items())), tuple(sorted(annotations.items())))


def _fmt_list(items: Sequence[LabelsAndAnnotations]) -> str:
    if not items:
        return "[]"
    body = "\n".join(f"            {i}:\n{x.render('              ')}" for i, x in enumerate(items))
    return "[\n" + body + "\n            ]"


def _dur(v: Any, what: str) -> float:
    try:
        return parse_duration(v)
    except ValueError as e:
        raise TestFileError(f"{what}: {e}") from None


async def _run_test_group(test: Mapping[str, Any], rule_files: list[Path], eval_interval: float,
                          group_order: Sequence[str], workdir: Path) -> list[str]:
    interval = _dur(test.get("interval", format_duration(eval_interval)), "interval")
    series: list[Series] = []
    for s in test.get("input_series") or []:
        try:
            full = expand_input_series(str(s["series"]), str(s.get("values", "")), interval)
            # OpenMetrics cannot carry stale markers: a `stale` point becomes a gap
            series.append(Series(full.labels, [(t, v) for t, v in full.samples
                                               if not is_stale_nan(v)]))
        except (KeyError, ValueError) as e:
            raise TestFileError(f"input_series {s!r}: {e}") from None
    raw = {str(p): p.read_bytes() for p in rule_files}
    rs = build(raw)
    if rs.rejected:
        return [str(p) for st in rs.rejected for p in st.problems]
    ctx = Context(external_url=str(test.get("external_url", "")),
                  external_labels={str(k): str(v)
                                   for k, v in (test.get("external_labels") or {}).items()})
    alert_tests = test.get("alert_rule_test") or []
    expr_tests = test.get("promql_expr_test") or []
    eval_times = [_dur(t.get("eval_time", "0s"), "eval_time") for t in alert_tests + expr_tests]
    end = max(eval_times, default=0.0)

    groups = [GroupRuntime.new(f, g) for f, g in rs.groups()]
    if group_order:
        rank = {name: i for i, name in enumerate(group_order)}
        groups.sort(key=lambda g: rank.get(g.group.name, len(rank)))

    tsdb = workdir / "tsdb"
    if series:
        backfill(series, tsdb)
    else:
        tsdb.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    async with PrometheusServer(tsdb) as prom, aiohttp.ClientSession() as session:
        src = PrometheusSource(session, PrometheusConfig(url=prom.url, timeout=30))
        # firing alerts after each evaluation, per alertname
        snapshots: dict[float, dict[str, list[LabelsAndAnnotations]]] = {}
        n = 0
        while n * eval_interval <= end + 1e-9:
            at = n * eval_interval
            for g in groups:
                await tick(g, at, src, ctx)
            snap: dict[str, list[LabelsAndAnnotations]] = {}
            for g in groups:
                for a in g.alerts():
                    if a.state == "firing":
                        snap.setdefault(a.rule, []).append(_la(a.labels, a.annotations))
            snapshots[at] = snap
            n += 1

        def state_at(t: float) -> dict[str, list[LabelsAndAnnotations]]:
            done = [k for k in snapshots if k <= t + 1e-9]
            return snapshots[max(done)] if done else {}

        for t in alert_tests:
            et = _dur(t.get("eval_time", "0s"), "eval_time")
            name = str(t.get("alertname", ""))
            exp = sorted(_la({**{str(k): str(v) for k, v in (e.get("exp_labels") or {}).items()},
                              "alertname": name},
                             {str(k): str(v) for k, v in (e.get("exp_annotations") or {}).items()})
                         for e in (t.get("exp_alerts") or []))
            got = sorted(state_at(et).get(name, []))
            if exp != got:
                errors.append(_alert_failure(name, et, exp, got))
        for t in expr_tests:
            et = _dur(t.get("eval_time", "0s"), "eval_time")
            expr = str(t.get("expr", ""))
            try:
                samples = await src.query(expr, et)
            except Exception as e:
                errors.append(f"    expr: {expr!r}, time: {format_duration(et)}, err: {e}")
                continue
            got_s = sorted((format_labels(s.labels), s.value) for s in samples)
            exp_s = []
            for sample in t.get("exp_samples") or []:
                labels = parse_series_selector(str(sample.get("labels", "{}")))
                exp_s.append((format_labels(labels), float(sample.get("value", 0))))
            exp_s.sort()
            if not _samples_equal(exp_s, got_s):
                errors.append(
                    f"    expr: {expr!r}, time: {format_duration(et)},\n"
                    f"        exp: {_fmt_samples(exp_s)}\n        got: {_fmt_samples(got_s)}")
    return errors


def _samples_equal(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> bool:
    if len(a) != len(b):
        return False
    for (la, va), (lb, vb) in zip(a, b, strict=True):
        if la != lb:
            return False
        if not (va == vb or (math.isnan(va) and math.isnan(vb))
                or math.isclose(va, vb, rel_tol=1e-9, abs_tol=1e-12)):
            return False
    return True


def _fmt_samples(s: list[tuple[str, float]]) -> str:
    return "[" + ", ".join(f"{labels} {value:g}" for labels, value in s) + "]"


def _one_line(x: LabelsAndAnnotations) -> str:
    return f"{format_labels(dict(x.labels))} {format_labels(dict(x.annotations))}"


def _alert_failure(name: str, at: float, exp: list[LabelsAndAnnotations],
                   got: list[LabelsAndAnnotations]) -> str:
    lines = [f"    alertname: {name}, time: {format_duration(at)}, ",
             f"        exp:{_fmt_list(exp)}, ",
             f"        got:{_fmt_list(got)}"]
    missing = [x for x in exp if x not in got]
    extra = [x for x in got if x not in exp]
    if missing or extra:
        lines.append("        diff:")
        lines += [f"          - {_one_line(x)}" for x in missing]
        lines += [f"          + {_one_line(x)}" for x in extra]
    return "\n".join(lines)


def _resolve_rule_files(test_file: Path, patterns: Sequence[Any]) -> list[Path]:
    out: list[Path] = []
    for p in patterns:
        pattern = str(p)
        base = Path(pattern) if Path(pattern).is_absolute() else test_file.parent / pattern
        matches = sorted(base.parent.glob(base.name)) if any(c in base.name for c in "*?[") \
            else [base]
        if not matches or not all(m.exists() for m in matches):
            raise TestFileError(f"rule file {pattern!r} not found")
        out.extend(discover(matches))
    return out


async def run_test_file(path: Path) -> tuple[bool, str]:
    """(passed, output) for one test file, formatted like promtool."""
    out = [f"Unit Testing:  {path}"]
    try:
        doc = yaml.safe_load(path.read_text())
        if not isinstance(doc, dict):
            raise TestFileError("a test file must be a mapping with rule_files and tests")
        rule_files = _resolve_rule_files(path, doc.get("rule_files") or [])
        eval_interval = _dur(doc.get("evaluation_interval", "1m"), "evaluation_interval")
        order = [str(x) for x in doc.get("group_eval_order") or []]
        errors: list[str] = []
        for test in doc.get("tests") or []:
            with tempfile.TemporaryDirectory(prefix="watchdog-test-") as tmp:
                errs = await _run_test_group(test, rule_files, eval_interval, order, Path(tmp))
            if errs and test.get("name"):
                errs.insert(0, f"    name: {test['name']},")
            errors += errs
    except (OSError, yaml.YAMLError, TestFileError) as e:
        out.append(f"  FAILED:\n    {e}")
        return False, "\n".join(out) + "\n"
    if errors:
        out.append("  FAILED:")
        out += errors
        return False, "\n".join(out) + "\n"
    out.append("  SUCCESS")
    return True, "\n".join(out) + "\n"


def run_test_files(files: Sequence[Path]) -> int:
    if find_binary("prometheus") is None or find_binary("promtool") is None:
        print("watchdog test needs the prometheus and promtool binaries "
              "(Debian/Ubuntu: apt-get install prometheus)")
        return 1
    ok = True
    for f in files:
        passed, text = asyncio.run(run_test_file(f))
        # like promtool: the header on stdout, failures on stderr
        header, _, body = text.partition("\n")
        print(header)
        print(body, file=sys.stdout if passed else sys.stderr)
        ok &= passed
    return 0 if ok else 1
