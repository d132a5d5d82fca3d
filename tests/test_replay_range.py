"""`replay` works a rule through the whole range at once (keys per step, `state.walk`, the
comparison pushed into the query); it must report exactly what stepping `engine.tick` at every
evaluation reports (`walk_steps`, the way `run` evaluates) — for our extensions too, which the
promtool conformance test cannot judge: thresholds, tiers, baselines, `when`, `no_data`, label
templates (constant and following the value), labels that collide, `limit`, `query_offset`, and
actions sharing interlocks across rules.

Random scenarios over a real Prometheus (backfilled with promtool); the seed is printed so a
failure can be replayed with WATCHDOG_REPLAY_SEED=<seed>.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from watchdog.evaluate import Context
from watchdog.promserver import PrometheusServer, backfill
from watchdog.replay import replay, replay_steps
from watchdog.rulesdir import build
from watchdog.series import Series
from watchdog.source import PrometheusConfig, PrometheusSource

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

MINUTES = 180
SCENARIOS = int(os.environ.get("WATCHDOG_REPLAY_SCENARIOS", "14"))


def _values(rng: random.Random, counter: bool) -> list[float | None]:
    out: list[float | None] = []
    v = rng.uniform(0, 10)
    gap = 0
    for _ in range(MINUTES + 31):
        if gap:
            gap -= 1
            out.append(None)
            continue
        if rng.random() < 0.04:
            gap = rng.choice([1, 3, 7, 12])
            out.append(None)
            continue
        if counter:
            v += rng.choice([0, 1, 3, 10, 30])
        elif rng.random() < 0.02:
            v = float("nan")
        else:
            v = (max(0.0, v + rng.uniform(-2, 2)) if rng.random() > 0.08 and v == v
                 else float(rng.randint(0, 12)))
        out.append(v if v != v else round(v, 2))
    return out


KINDS = ["threshold", "tiers", "tiers-mixed", "baseline-offset", "baseline-expr", "when",
         "no-data", "plain", "templated", "collide", "ne"]


def _rule(rng: random.Random, n: int, j: int, g: str, c: str) -> dict[str, Any]:
    t = round(rng.uniform(3, 8), 1)
    # the first scenario has one rule of each kind; the others draw theirs
    kind = KINDS[j % len(KINDS)] if n == 0 else rng.choice(KINDS)
    rule: dict[str, Any] = {"alert": f"S{n}R{j}", "expr": g,
                            "for": rng.choice(["0s", "1m", "3m", "10m"])}
    if kind == "threshold":
        rule["threshold"] = f"{rng.choice(['>', '<', '>=', '<='])} {t}"
    elif kind == "ne":
        rule["expr"] = f"round({g})"
        rule["threshold"] = f"{rng.choice(['==', '!='])} {int(t)}"
    elif kind == "tiers":
        rule["severities"] = {"warning": f"> {t}", "critical": f">= {t + 2}"}
    elif kind == "tiers-mixed":
        rule["severities"] = {"warning": f"> {t}", "critical": f"< {t - 3}"}
    elif kind == "baseline-offset":
        rule["baseline"] = {"offset": rng.choice(["10m", "30m"]),
                            "compare": rng.choice(["ratio", "delta"])}
        rule["threshold"] = "> 1.3" if rule["baseline"]["compare"] == "ratio" else "> 1"
    elif kind == "baseline-expr":
        rule["baseline"] = {"expr": f"avg_over_time({g}[20m])"}
        rule["severities"] = {"warning": "> 1.2", "critical": "> 1.6"}
    elif kind == "when":
        rule["threshold"] = f"> {t}"
        rule["when"] = f"sum(rate({c}[5m])) > 0.1"
    elif kind == "no-data":
        rule["expr"] = f"{g} > {t}"
        rule["no_data"] = rng.choice(["keep", "alerting", "ok"])
    elif kind == "plain":
        rule["expr"] = f"max by (grp) ({g}) > {t}"
    elif kind == "templated":
        rule["threshold"] = f"> {t - 2}"
        rule["labels"] = {"where": "{{ $labels.inst }}",
                          "band": "{{ if gt $value 7.0 }}high{{ else }}low{{ end }}"}
    elif kind == "collide":
        rule["threshold"] = f"> {t - 2}"
        rule["labels"] = {"inst": "same"}  # two series, one label set: an error while both trip
    if rng.random() < 0.3:
        rule["keep_firing_for"] = rng.choice(["1m", "5m", "20m"])
    if rng.random() < 0.4:
        rule["actions"] = [rng.choice(["page", "rollback"])]
    rule.setdefault("annotations", {"summary": "{{ $value }} on {{ $labels.inst }}"})
    return rule


def scenario(rng: random.Random, n: int) -> tuple[list[Series], dict[str, Any]]:
    g, c = f"gauge_r{n}", f"counter_r{n}"
    series = []
    for i in range(3 if n == 0 else rng.randint(1, 3)):
        for name, counter in ((g, False), (c, True)):
            vals = _values(rng, counter)
            labels = {"__name__": name, "inst": f"i{i}", "grp": f"g{i % 2}"}
            series.append(Series(labels, [(k * 60.0, v) for k, v in enumerate(vals)
                                          if v is not None]))
    group: dict[str, Any] = {"name": f"scenario{n}", "interval": "1m",
                             "rules": [_rule(rng, n, j, g, c)
                                       for j in range(len(KINDS) if n == 0 else rng.randint(2, 5))]}
    if n and rng.random() < 0.25:
        group["limit"] = rng.choice([1, 2])
    if rng.random() < 0.25:
        group["query_offset"] = rng.choice(["1m", "5m"])
    if rng.random() < 0.3:
        group["labels"] = {"team": "t{{ $labels.grp }}"}
    return series, group


ACTIONS = {
    "page": {"cooldown": "20m", "steps": [{"webhook": {"url": "http://127.0.0.1:9/p"}}]},
    "rollback": {"max_runs_per_hour": 2, "steps": [{"webhook": {"url": "http://127.0.0.1:9/r"}}]},
}


async def test_replay_reports_what_stepping_every_evaluation_reports(tmp_path: Path) -> None:
    seed = int(os.environ.get("WATCHDOG_REPLAY_SEED", random.randrange(1 << 30)))
    print(f"WATCHDOG_REPLAY_SEED={seed}")
    rng = random.Random(seed)
    all_series: list[Series] = []
    groups = []
    for n in range(SCENARIOS):
        series, group = scenario(rng, n)
        all_series += series
        groups.append(group)
    text = yaml.safe_dump({"groups": groups, "actions": ACTIONS}, sort_keys=False)
    rules = build({"rules.yml": text.encode()})
    assert not rules.rejected, [str(p) for p in rules.problems]
    backfill(all_series, tmp_path / "tsdb")
    start, end = 30 * 60.0, (MINUTES + 30) * 60.0
    with PrometheusServer(tmp_path / "tsdb") as prom:
        async with aiohttp.ClientSession() as session:
            src = PrometheusSource(session, PrometheusConfig(url=prom.url, timeout=30))
            got = await replay(rules, src, start, end, 60.0, 60.0, Context())
            # the reference: `engine.tick` at every step, as `run` evaluates
            ref = await replay_steps(rules, src, start, end, 60.0, 60.0, Context())
    docs = [line.doc for line in got.lines]
    want = [line.doc for line in ref.lines]
    assert got.errors == ref.errors
    assert len(docs) == len(want)
    for i, (a, b) in enumerate(zip(docs, want, strict=True)):
        assert a == b, (i, a, b)
    # the scenarios exercise what they are meant to (else this test proves little)
    states = {d["state"] for d in docs}
    assert {"pending", "firing", "resolved", "would_run"} <= states, states
    assert any("same labelset" in e for e in got.errors.values()), got.errors
