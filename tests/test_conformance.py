"""Firing semantics against Prometheus's own engine: random scenarios, promtool as the oracle.

Each run draws >= 30 scenarios (series with gaps; `for` 0-5m; `keep_firing_for`; aggregations;
`>` and `<`; counters under `rate`). The series are backfilled into a real Prometheus with
`promtool tsdb create-blocks-from openmetrics`, `watchdog replay` (its Python entry point, the same
engine as the CLI) evaluates every minute 0..60m, and the firing alerts it reports at every minute
are written as `exp_alerts` of a promtool unit test over the same series. `promtool test rules`
passing means zero disagreements. The seed is printed so a failure can be replayed with
WATCHDOG_CONFORMANCE_SEED=<seed>.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from watchdog.evaluate import Context
from watchdog.promserver import PrometheusServer, backfill
from watchdog.replay import replay
from watchdog.rulesdir import build
from watchdog.series import Series
from watchdog.source import PrometheusConfig, PrometheusSource

MINUTES = 60
SCENARIOS = int(os.environ.get("WATCHDOG_CONFORMANCE_SCENARIOS", "36"))


def _series_values(rng: random.Random, counter: bool) -> list[float | None]:
    out: list[float | None] = []
    v = rng.uniform(0, 10)
    gap = 0
    for _ in range(MINUTES + 1):
        if gap:
            gap -= 1
            out.append(None)
            continue
        if rng.random() < 0.06:
            gap = rng.choice([1, 2, 4, 6, 8])  # gaps shorter and longer than the 5m lookback
            out.append(None)
            continue
        if counter:
            v += rng.choice([0, 0, 1, 3, 10, 30]) if rng.random() > 0.05 else -v  # with resets
        else:
            v = max(0.0, v + rng.uniform(-3, 3)) if rng.random() > 0.1 else rng.uniform(0, 12)
        out.append(round(v, 3))
    return out


def _notation(values: list[float | None]) -> str:
    return " ".join("_" if v is None else repr(v) for v in values)


EXPRS = [
    "{m} > {t}", "{m} < {t}", "{m} >= {t}", "sum({m}) > {t3}", "max by (grp) ({m}) > {t}",
    "avg({m}) < {t}", "count({m} > {t}) > 1", "min_over_time({m}[3m]) > {t}",
    "rate({c}[5m]) * 60 > {r}", "increase({c}[3m]) < {r}", "sum by (grp) (rate({c}[2m])) > 0.05",
    "absent({m}{{inst=\"i0\"}})", "{m} > {t} and {m} < {t2}",
]


def make_scenario(rng: random.Random, n: int) -> tuple[list[Series], list[str], dict[str, Any]]:
    m, c = f"gauge_s{n}", f"counter_s{n}"
    series: list[Series] = []
    notation: list[str] = []
    for i in range(rng.randint(1, 3)):
        for name, counter in ((m, False), (c, True)):
            vals = _series_values(rng, counter)
            labels = {"__name__": name, "inst": f"i{i}", "grp": f"g{i % 2}"}
            series.append(Series(labels, [(k * 60.0, v) for k, v in enumerate(vals)
                                          if v is not None]))
            sel = f'{name}{{inst="i{i}", grp="g{i % 2}"}}'
            notation.append(yaml.safe_dump({"series": sel, "values": _notation(vals)}))
    rules = []
    for j in range(rng.randint(2, 4)):
        t = round(rng.uniform(2, 8), 2)
        expr = rng.choice(EXPRS).format(m=m, c=c, t=t, t2=t + 3, t3=t * 2,
                                        r=round(rng.uniform(0.5, 10), 2))
        rule: dict[str, Any] = {
            "alert": f"S{n}R{j}", "expr": expr,
            "for": rng.choice(["0s", "0s", "1m", "2m", "3m", "5m"]),
            "labels": {"severity": rng.choice(["warning", "critical"])},
        }
        if rng.random() < 0.35:
            rule["keep_firing_for"] = rng.choice(["1m", "2m", "3m"])
        rules.append(rule)
    return series, notation, {"name": f"scenario{n}", "rules": rules}


@pytest.mark.prometheus
@pytest.mark.slow
async def test_replay_fires_exactly_when_promtool_does(tmp_path: Path, promtool_binary: str,
                                                       prometheus_binary: str) -> None:
    seed = int(os.environ.get("WATCHDOG_CONFORMANCE_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    all_series: list[Series] = []
    input_series: list[dict[str, Any]] = []
    groups = []
    for n in range(SCENARIOS):
        series, notation, group = make_scenario(rng, n)
        all_series += series
        input_series += [yaml.safe_load(x) for x in notation]
        groups.append(group)
    rules_text = yaml.safe_dump({"groups": groups}, sort_keys=False)
    rule_file = tmp_path / "rules.yml"
    rule_file.write_text(rules_text)

    tsdb = tmp_path / "tsdb"
    backfill(all_series, tsdb)
    rs = build({str(rule_file): rules_text.encode()})
    assert not rs.rejected, [str(p) for p in rs.problems]
    with PrometheusServer(tsdb) as prom:
        async with aiohttp.ClientSession() as session:
            src = PrometheusSource(session, PrometheusConfig(url=prom.url, timeout=30))
            report = await replay(rs, src, 0.0, MINUTES * 60.0, 60.0, 60.0, Context())
    assert report.errors == {}
    lines = report.lines

    # firing label sets per (alert, minute), from our transitions
    firing: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)  # alert -> fp -> labels
    at_minute: dict[tuple[str, int], list[dict[str, str]]] = {}
    by_ts: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        by_ts[line.ts].append(line.doc)
    names = [r["alert"] for g in groups for r in g["rules"]]
    for minute in range(MINUTES + 1):
        for doc in by_ts.get(minute * 60.0, []):
            if "action" in doc:
                continue
            key = yaml.safe_dump(doc["labels"], sort_keys=True)
            if doc["state"] == "firing":
                firing[doc["rule"]][key] = doc["labels"]
            elif doc["state"] == "resolved":
                firing[doc["rule"]].pop(key, None)
        for name in names:
            at_minute[(name, minute)] = list(firing[name].values())

    tests = []
    for name in names:
        for minute in range(1, MINUTES + 1):  # promtool never reports firing at eval_time 0
            exp = [{"exp_labels": {k: v for k, v in labels.items() if k != "alertname"}}
                   for labels in at_minute[(name, minute)]]
            tests.append({"eval_time": f"{minute}m", "alertname": name, "exp_alerts": exp})
    test_file = tmp_path / "conformance_test.yml"
    test_file.write_text(yaml.safe_dump({
        "rule_files": [rule_file.name], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input_series, "alert_rule_test": tests}],
    }, sort_keys=False))
    proc = subprocess.run([promtool_binary, "test", "rules", str(test_file)],
                          capture_output=True, text=True, timeout=600)
    disagreements = proc.stdout.count("alertname:") + proc.stderr.count("alertname:")
    fired = sum(1 for v in at_minute.values() if v)
    print(f"seed={seed} scenarios={SCENARIOS} rules={len(names)} checks={len(tests)} "
          f"firing-checks={fired} disagreements={disagreements}")
    assert proc.returncode == 0, (
        f"seed={seed}: {disagreements} disagreement(s) with promtool\n{proc.stdout[-6000:]}"
        f"{proc.stderr[-2000:]}")
    # the scenarios must actually exercise firing, or agreeing would prove nothing
    assert fired > len(names) * 5
