"""The canary judge (CONTRACT §10): `watchdog.stats.mann_whitney_u` against SciPy's
`mannwhitneyu(method="asymptotic")` on random data (ties included), the judge's decision from
samples, its rule shape in `watchdog check`, and the judge end to end on backfilled Prometheus
history: a canary 20% slower with enough samples fires (value = the effect size, annotations
with the p-value and both medians, checked against SciPy and medians computed here); a canary
equal to control, or one with too few samples, does not.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import aiohttp
import pytest
from conftest import BackfilledPrometheus
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from watchdog.engine import GroupRuntime, tick
from watchdog.evaluate import Context, judge_series
from watchdog.model import Judge
from watchdog.rulefile import parse_rule_file
from watchdog.rulesdir import build
from watchdog.series import Series
from watchdog.source import PrometheusConfig, PrometheusSource
from watchdog.stats import mann_whitney_u, mean, median, quantile

ALTERNATIVES = ("two-sided", "greater", "less")

# Small integers make ties common; floats make them rare: both paths of the tie correction.
values = st.one_of(
    st.lists(st.integers(-5, 5).map(float), min_size=1, max_size=60),
    st.lists(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=1,
             max_size=60),
)


@settings(max_examples=300, deadline=None)
@given(values, values, st.sampled_from(ALTERNATIVES))
def test_mann_whitney_agrees_with_scipy(x: list[float], y: list[float], alt: str) -> None:
    ours = mann_whitney_u(x, y, alt)  # type: ignore[arg-type]
    ref = scipy_stats.mannwhitneyu(x, y, alternative=alt, method="asymptotic",
                                   use_continuity=True)
    assert ours.u == pytest.approx(float(ref.statistic), abs=1e-9)
    if math.isnan(ref.pvalue):  # every value equal: SciPy says nan, we say "no difference"
        assert ours.p_value == 1.0
    else:
        assert abs(ours.p_value - float(ref.pvalue)) <= 1e-6


def test_mann_whitney_refuses_what_it_cannot_test() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        mann_whitney_u([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        mann_whitney_u([math.nan], [1.0])


def test_quantiles_agree_with_numpy_linear() -> None:
    import numpy as np

    rng = random.Random(7)
    for n in (1, 2, 5, 100):
        xs = [rng.uniform(-10, 10) for _ in range(n)]
        for q in (0.0, 0.5, 0.95, 1.0):
            assert quantile(xs, q) == pytest.approx(float(np.quantile(xs, q)), abs=1e-12)
        assert mean(xs) == pytest.approx(float(np.mean(xs)))
        assert median(xs) == pytest.approx(float(np.median(xs)))


def test_judge_series_decides_on_significance_samples_and_effect() -> None:
    rng = random.Random(1)
    control = [100 + rng.gauss(0, 5) for _ in range(40)]
    slow = [120 + rng.gauss(0, 5) for _ in range(40)]
    j = Judge(canary="c", control="k", min_samples=20, min_effect=0.1)
    worse, fig = judge_series(j, slow, control)
    assert worse and fig["p_value"] < 1e-6
    assert fig["effect"] == pytest.approx(median(slow) / median(control) - 1)
    # too few samples on one side: never judged
    assert judge_series(j, slow[:19], control)[0] is False
    # significant but smaller than min_effect
    assert judge_series(j.model_copy(update={"min_effect": 0.5}), slow, control)[0] is False
    # the other direction: slower is not worse when lower is worse
    assert judge_series(j.model_copy(update={"direction": "decrease"}), slow, control)[0] is False
    assert judge_series(j.model_copy(update={"direction": "decrease"}), control, slow)[0]
    assert judge_series(j.model_copy(update={"direction": "either"}), control, slow)[0]


def test_check_validates_a_judge_at_its_line() -> None:
    text = """groups:
  - name: g
    rules:
      - alert: CanarySlower
        judge:
          canary: 'latency{track="canary"'
          control: latency{track="control"}
          alpha: 1.5
          direction: sideways
"""
    parsed = parse_rule_file(text, "j.yml")
    shown = [str(p) for p in parsed.problems]
    assert any(p.startswith("j.yml:6: judge.canary: invalid PromQL") for p in shown), shown
    assert any(p.startswith("j.yml:8: ") and "alpha" in p for p in shown), shown
    assert any(p.startswith("j.yml:9: ") and "direction" in p for p in shown), shown
    bad = parse_rule_file("""groups:
  - name: g
    rules:
      - alert: X
        judge: {canary: a, control: b}
        threshold: "> 1"
""", "k.yml")
    assert [str(p) for p in bad.problems] == [
        "k.yml:4: groups[0].rules[0]: a judge decides by itself: it takes no threshold, "
        "severities or baseline"]


# ---- end to end on backfilled history ---------------------------------------------------------

END = 1_700_000_000.0  # evaluated here; the window is the 10 minutes before
STEP = 15.0
POINTS = 41  # 10m at 15s, both ends included


def _grid(n: int) -> list[float]:
    return [END - STEP * (n - 1 - i) for i in range(n)]


def _series(scenario: str, track: str, vals: list[float]) -> Series:
    return Series({"__name__": "latency_seconds", "scenario": scenario, "track": track},
                  list(zip(_grid(len(vals)), vals, strict=True)))


RULES = """
groups:
  - name: canary
    interval: 15s
    rules:
""" + "".join(f"""
      - alert: Canary{name}
        judge:
          canary: latency_seconds{{scenario="{scenario}", track="canary"}}
          control: latency_seconds{{scenario="{scenario}", track="control"}}
          window: 10m
          alpha: 0.05
          direction: increase
          min_samples: 20
          min_effect: 0.1
        labels: {{severity: critical}}
        annotations:
          summary: >-
            canary {{{{ $labels.canary_median }}}}
            vs control {{{{ $labels.control_median }}}}
          p_value: "{{{{ $labels.p_value }}}}"
""" for name, scenario in (("Slow", "slow"), ("Equal", "equal"), ("Young", "young")))


@pytest.mark.prometheus
async def test_the_judge_on_backfilled_history(backfilled_prometheus: BackfilledPrometheus,
                                               tmp_path: Path) -> None:
    rng = random.Random(20)
    control = [0.200 + rng.gauss(0, 0.01) for _ in range(POINTS)]
    slow = [0.240 + rng.gauss(0, 0.01) for _ in range(POINTS)]  # 20% slower
    equal = [0.200 + rng.gauss(0, 0.01) for _ in range(POINTS)]
    young = [0.240 + rng.gauss(0, 0.01) for _ in range(10)]  # started 2.5 minutes ago
    # the "equal" data is not significantly worse by SciPy either (so the test means what it says)
    assert scipy_stats.mannwhitneyu(equal, control, alternative="greater",
                                    method="asymptotic").pvalue > 0.05
    prom = backfilled_prometheus([
        _series("slow", "control", control), _series("slow", "canary", slow),
        _series("equal", "control", control), _series("equal", "canary", equal),
        _series("young", "control", control), _series("young", "canary", young)])
    rs = build({"r.yml": RULES.encode()})
    assert not rs.problems, rs.problems
    (file, group), = rs.groups()
    rt = GroupRuntime.new(file, group)
    async with aiohttp.ClientSession() as session:
        source = PrometheusSource(session, PrometheusConfig(url=prom.url))
        res = await tick(rt, END, source, Context())
    assert res.errors == {}
    fired = {e.alert.rule: e.alert for e in res.events if e.kind in ("pending", "firing")}
    assert set(fired) == {"CanarySlow"}
    alert = fired["CanarySlow"]
    # Figures computed here, independently: medians, effect, and SciPy's p-value.
    want_p = float(scipy_stats.mannwhitneyu(slow, control, alternative="greater",
                                            method="asymptotic").pvalue)
    assert alert.value == pytest.approx(median(slow) / median(control) - 1, rel=1e-12)
    assert 0.15 < alert.value < 0.25
    assert abs(float(alert.annotations["p_value"]) - want_p) <= 1e-6
    assert alert.annotations["summary"] == (
        f"canary {median(slow)!r} vs control {median(control)!r}")
    # The labels the canary and control series share, with the rule's: the figures are only
    # for the templates.
    assert alert.labels == {"alertname": "CanarySlow", "scenario": "slow",
                            "severity": "critical"}
