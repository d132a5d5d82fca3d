"""Which range queries `replay` asks Prometheus for: one per expression, grid, comparison kind
and stretch of time (whether their answers are right is tests/test_replay_range.py's job)."""

from __future__ import annotations

from watchdog.replay import Fetch, RangeQuery, merge, pushdown
from watchdog.rulefile import parse_rule_file


def f(expr: str, delta_min: int = 0, push: str | None = None, start: float = 3600.0,
      end: float = 7200.0) -> Fetch:
    return Fetch(expr, delta_min * 60_000, start, end, 60.0, push)


def test_thresholds_of_one_direction_share_the_loosest_query() -> None:
    a, b, c = f("x", push="> 0.05"), f("x", push=">= 0.02"), f("x", push="> 0.02")
    got = merge([a, b, c])
    assert got[a] == got[b] == got[c] == RangeQuery("x", 3600.0, 7200.0, 60.0, ">= 0.02")


def test_other_directions_and_exact_comparisons_stay_apart() -> None:
    hi, lo, eq = f("x", push="> 5"), f("x", push="< 1"), f("x", push="== 3")
    got = merge([hi, lo, eq])
    assert {got[hi].compare, got[lo].compare, got[eq].compare} == {"> 5.0", "< 1.0", "== 3"}


def test_a_whole_series_answers_every_comparison() -> None:
    whole, pushed = f("x"), f("x", push="> 5")
    got = merge([whole, pushed])
    assert got[whole] == got[pushed] and got[whole].compare is None


def test_an_offset_on_the_same_grid_extends_one_query_a_far_one_gets_its_own() -> None:
    now, hour_ago, week_ago = f("x"), f("x", 60), f("x", 7 * 24 * 60)
    got = merge([now, hour_ago, week_ago])
    assert got[now] == got[hour_ago] == RangeQuery("x", 0.0, 7200.0, 60.0, None)
    assert got[week_ago].start == 3600.0 - 7 * 86400 and got[week_ago] != got[now]
    off_grid = Fetch("x", 30_000, 3600.0, 7200.0, 60.0, None)  # 30s: between the steps
    assert merge([now, off_grid])[off_grid] != merge([now, off_grid])[now]


def test_pushdown_only_where_the_answer_is_exact() -> None:
    pf = parse_rule_file("""
groups:
  - name: g
    rules:
      - {alert: T, expr: x, threshold: "> 0.1"}
      - {alert: Tiers, expr: x, severities: {warning: "> 1", critical: ">= 5"}}
      - {alert: Low, expr: x, severities: {warning: "<= 3", critical: "< 1"}}
      - {alert: Mixed, expr: x, severities: {warning: "> 1", critical: "< 0"}}
      - {alert: Base, expr: x, threshold: "> 2", baseline: {offset: 1d}}
      - {alert: Keep, expr: x, threshold: "> 2", no_data: keep}
      - {alert: Plain, expr: x > 1}
      - {alert: Inf, expr: x, threshold: "< Inf"}
""", "r.yml")
    assert pf.model is not None
    got = {r.alert: pushdown(r) for r in pf.model.groups[0].alerting_rules}
    assert got == {"T": "> 0.1", "Tiers": "> 1.0", "Low": "<= 3.0", "Mixed": None,
                   "Base": None, "Keep": None, "Plain": None, "Inf": "< +Inf"}
