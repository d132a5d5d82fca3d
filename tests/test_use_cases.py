"""The example rules of `rules/` (the use cases of USE-CASES.md) fire at the right minute.

26 hours of synthetic history (a bad deploy at 25h: errors, latency, success rate and backlog go
bad, recover at 25h40m) are backfilled into a real Prometheus; `replay` evaluates the unchanged
`rules/` folder every minute. The oracle is promtool: each extension rule has an equivalent plain
Prometheus rule (`threshold: "> 0.1"` is `(expr) > 0.1`; `baseline: {offset: 1d}` with ratio is
`(expr) / (expr offset 1d)`), and the firing alerts our replay reports are promtool's
`exp_alerts` — labels and annotations included — at every minute of the bad window.
"""

from __future__ import annotations

import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from watchdog.evaluate import Context
from watchdog.promserver import PrometheusServer, backfill
from watchdog.replay import walk_steps
from watchdog.rulesdir import load
from watchdog.series import Series
from watchdog.source import PrometheusConfig, PrometheusSource

RULES = Path(__file__).resolve().parent.parent / "rules"
H, M = 3600.0, 60.0
END_MIN = 26 * 60
BAD_FROM, BAD_TO = 25 * 60, 25 * 60 + 40  # minutes
WORSE_FROM = 25 * 60 + 20

BUCKETS = ["0.1", "0.25", "0.5", "1", "+Inf"]
NORMAL = [0.5, 0.96, 0.99, 1.0, 1.0]  # cumulative share per bucket: p95 ~ 0.247s
DEGRADED = [0.3, 0.8, 0.97, 1.0, 1.0]  # p95 ~ 0.47s: warning, 1.9x yesterday
WORSE = [0.2, 0.6, 0.85, 0.99, 1.0]  # p95 ~ 0.86s: critical


def bad(minute: int) -> bool:
    return BAD_FROM <= minute < BAD_TO


def history() -> tuple[list[Series], list[dict[str, str]]]:
    cols: dict[tuple[tuple[str, str], ...], list[float]] = defaultdict(list)

    def add(labels: dict[str, str], value: float) -> None:
        cols[tuple(sorted(labels.items()))].append(round(value, 6))

    ok = err = jobs = succ = 0.0
    hist = [0.0] * len(BUCKETS)
    for minute in range(END_MIN + 1):
        ok += 6000 * (0.8 if bad(minute) else 0.99)
        err += 6000 * (0.2 if bad(minute) else 0.01)
        add({"__name__": "http_requests_total", "service": "checkout", "code": "200"}, ok)
        add({"__name__": "http_requests_total", "service": "checkout", "code": "500"}, err)
        jobs += 600
        succ += 600 * (0.9 if bad(minute) else 0.99)
        add({"__name__": "generator_jobs_total", "service": "generator"}, jobs)
        add({"__name__": "generator_jobs_succeeded_total", "service": "generator"}, succ)
        shares = (WORSE if minute >= WORSE_FROM else DEGRADED) if bad(minute) else NORMAL
        for i, le in enumerate(BUCKETS):
            hist[i] += 6000 * shares[i]
            add({"__name__": "http_request_duration_seconds_bucket", "service": "api",
                 "le": le}, hist[i])
        depth = 150 + minute % 7 if BAD_FROM + 5 <= minute < BAD_TO else 20 + minute % 5
        add({"__name__": "queue_depth", "queue": "ingest"}, depth)
    series, notation = [], []
    for key, values in cols.items():
        labels = dict(key)
        series.append(Series(dict(labels), [(i * M, v) for i, v in enumerate(values)]))
        name = labels.pop("__name__")
        sel = name + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
        notation.append({"series": sel, "values": " ".join(repr(v) for v in values)})
    return series, notation


# alert -> equivalent plain Prometheus expression; severity tiers are checked separately
CHECKED = {
    "CheckoutErrorRateRollback": "({e}) > 0.10",
    "CheckoutErrorRateHigh": "({e}) > 0.05",
    "ApiLatencyVsYesterday": "({e}) / ({e} offset 1d) > 1.5",
    "GeneratorSuccessRateLow": "({e}) < 0.95",
    "QueueBacklog": "({e}) > 100",
    "ApiLatencyP95": "({e}) > 0.3",
}


def _offset_all(expr: str) -> str:
    # the selectors of these expressions all end in `[5m]`: add the offset after each range
    return expr.replace("[5m]", "[5m] offset 1d")


@pytest.mark.prometheus
@pytest.mark.slow
async def test_use_case_rules_fire_when_prometheus_would(tmp_path: Path,
                                                         promtool_binary: str) -> None:
    series, notation = history()
    backfill(series, tmp_path / "tsdb")
    rs = load([RULES])
    assert not rs.rejected, [str(p) for p in rs.problems]
    start, end = (BAD_FROM - 60) * M, END_MIN * M
    # firing alerts (labels + annotations) per (alert, minute), straight from the engine
    at_minute: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    first_fire: dict[str, int] = {}
    severity_seen: dict[int, str] = {}
    with PrometheusServer(tmp_path / "tsdb") as prom:
        async with aiohttp.ClientSession() as session:
            src = PrometheusSource(session, PrometheusConfig(url=prom.url, timeout=30))
            async for at, rt, _ in walk_steps(rs, src, start, end, 60.0, 60.0, Context()):
                minute = int(at // M)
                for a in rt.alerts():
                    if a.state != "firing" or a.rule not in CHECKED:
                        continue
                    first_fire.setdefault(a.rule, minute)
                    labels = {k: v for k, v in a.labels.items() if k != "alertname"}
                    if a.rule == "ApiLatencyP95":
                        severity_seen[minute] = labels.pop("severity")  # no tiers in promtool
                    at_minute[(a.rule, minute)].append(
                        {"exp_labels": labels, "exp_annotations": dict(a.annotations)})
            p95 = ("histogram_quantile(0.95, sum by (service, le) "
                   "(rate(http_request_duration_seconds_bucket{service=\"api\"}[5m])))")
            critical_minutes = {int(t // M) for s in await src.query_range(
                f"{p95} > 0.5", start, end, 60.0) for t, _ in s.points}

    # the story in minutes after the bad deploy at 25h, as a person would check it
    assert set(first_fire) == set(CHECKED), first_fire
    rel = {k: v - BAD_FROM for k, v in first_fire.items()}
    assert 15 <= rel["CheckoutErrorRateRollback"] <= 17, rel  # > 10% for 15m
    assert 5 <= rel["CheckoutErrorRateHigh"] <= 7, rel  # > 5% for 5m
    assert 5 <= rel["GeneratorSuccessRateLow"] <= 7, rel  # < 0.95 for 5m
    assert 5 + 2 <= rel["QueueBacklog"] <= 5 + 3, rel  # > 100 for 2m (backlog from 25h05)
    assert 10 <= rel["ApiLatencyVsYesterday"] <= 12, rel  # > 1.5x yesterday for 10m
    assert 5 <= rel["ApiLatencyP95"] <= 7, rel  # warning tier for 5m
    # tiers: the same alert carries severity=critical exactly while p95 > 0.5
    assert "critical" in severity_seen.values() and "warning" in severity_seen.values()
    for minute, sev in severity_seen.items():
        assert sev == ("critical" if minute in critical_minutes else "warning"), minute

    # promtool, on equivalent plain rules, must agree minute by minute (labels + annotations)
    rules = {r.alert: r for _, g in rs.groups() for r in g.alerting_rules}
    eq_rules = []
    for name, template in CHECKED.items():
        rule = rules[name]
        e = rule.expr.strip()
        expr = (f"({e}) / ({_offset_all(e)}) > 1.5" if "offset 1d" in template
                else template.format(e=e))
        eq_rules.append({"alert": name, "expr": expr, "for": f"{int(rule.for_)}s",
                         "labels": dict(rule.labels), "annotations": dict(rule.annotations)})
    (tmp_path / "equivalent.yml").write_text(yaml.safe_dump({"groups": [
        {"name": "equivalent", "rules": eq_rules}]}, sort_keys=False))
    tests = [{"eval_time": f"{minute}m", "alertname": name,
              "exp_alerts": at_minute.get((name, minute), [])}
             for name in CHECKED for minute in range(BAD_FROM - 10, END_MIN + 1)]
    test_file = tmp_path / "use_cases_test.yml"
    test_file.write_text(yaml.safe_dump({
        "rule_files": ["equivalent.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": notation, "alert_rule_test": tests}]},
        sort_keys=False, width=1 << 30))
    proc = subprocess.run([promtool_binary, "test", "rules", str(test_file)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]


@pytest.mark.prometheus
def test_example_rules_pass_their_unit_tests_and_check_clean(prometheus_binary: str) -> None:
    """`watchdog test rules/tests/` runs every example's test file (each fires its rule at the
    minute the runbook says) and `watchdog check rules/` has nothing to say: the test files
    beside the rules are passed by, not refused."""
    import sys

    tests = subprocess.run([sys.executable, "-m", "watchdog", "test", str(RULES / "tests")],
                           capture_output=True, text=True, timeout=600)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-3000:]
    files = sorted(p.name for p in (RULES / "tests").glob("*.yml"))
    assert tests.stdout.count("SUCCESS") == len(files) >= 5, tests.stdout
    check = subprocess.run([sys.executable, "-m", "watchdog", "check", str(RULES)],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout == ""  # no problem, no warning: only the summary, on stderr
    assert check.stderr.strip() == f"checked {len(list(RULES.rglob('*.yml')))} file(s): " \
        f"{len(list(RULES.rglob('*.yml')))} valid, 0 invalid"
