"""Evaluation of one rule at one instant: Prometheus's plain rules and our extensions."""

import math
from typing import Any

from watchdog.evaluate import Context, Query, Sample, evaluate, plan
from watchdog.model import AlertingRule, Group

AT = 10_000.0


def rule(**kw: Any) -> AlertingRule:
    kw.setdefault("alert", "R")
    kw.setdefault("expr", "x")
    return AlertingRule.model_validate(kw)


def group(**kw: Any) -> Group:
    return Group.model_validate({"name": "g", **kw})


def run(r: AlertingRule, answers: dict[str, Any], g: Group | None = None,
        ctx: Context | None = None) -> Any:
    g = g or group()
    p = plan(r, g, AT)
    results = {}
    for q in p.queries():
        a = answers.get((q.expr, q.at), answers.get(q.expr, []))
        results[q] = a
    return evaluate(r, g, p, results, ctx or Context())


def s(v: float, **labels: str) -> Sample:
    return Sample(labels, v)


def test_plain_rule_every_sample_is_a_hit_with_templated_labels() -> None:
    r = rule(labels={"severity": "page", "team": "{{ $labels.job }}-oncall"},
             annotations={"summary": "{{ $labels.instance }} is at {{ $value }}"})
    out = run(r, {"x": [s(3, __name__="up", job="api", instance="h:1")]})
    (h,) = out.hits
    assert h.labels == {"alertname": "R", "job": "api", "instance": "h:1", "severity": "page",
                        "team": "api-oncall"}
    assert h.annotations == {"summary": "h:1 is at 3"}
    assert h.value == 3


def test_label_expanding_to_empty_is_removed() -> None:
    r = rule(labels={"job": "{{ $labels.nothere }}"})
    (h,) = run(r, {"x": [s(1, job="api")]}).hits
    assert "job" not in h.labels


def test_group_labels_apply_and_rule_labels_win() -> None:
    g = group(labels={"team": "core", "tier": "1"})
    (h,) = run(rule(labels={"tier": "2"}), {"x": [s(1)]}, g).hits
    assert h.labels["team"] == "core" and h.labels["tier"] == "2"


def test_query_offset_shifts_the_query_time() -> None:
    g = group(query_offset="1m")
    p = plan(rule(), g, AT)
    assert p.main == Query("x", AT - 60)


def test_duplicate_labelset_fails_the_evaluation() -> None:
    out = run(rule(), {"x": [s(1, __name__="a"), s(2, __name__="b")]})
    assert out.hits is None and "same labelset" in (out.error or "")


def test_failed_query_changes_nothing() -> None:
    out = run(rule(), {"x": RuntimeError("down")})
    assert out.hits is None and out.error == "down"


def test_threshold_keeps_only_tripping_series() -> None:
    r = rule(threshold="> 0.10")
    out = run(r, {"x": [s(0.05, svc="a"), s(0.2, svc="b"), s(math.nan, svc="c")]})
    assert [h.labels["svc"] for h in out.hits] == ["b"]
    assert out.hits[0].threshold == "> 0.1"


def test_severity_tiers_pick_the_highest_met_whatever_the_order() -> None:
    r = rule(severities={"critical": "> 0.5", "warning": "> 0.3"})
    out = run(r, {"x": [s(0.2, svc="a"), s(0.4, svc="b"), s(0.9, svc="c")]})
    assert {h.labels["svc"]: h.labels["severity"] for h in out.hits} == {
        "b": "warning", "c": "critical"}
    # identity ignores the tier, so warning -> critical is one alert
    b = next(h for h in out.hits if h.labels["svc"] == "b")
    out2 = run(r, {"x": [s(0.9, svc="b")]})
    assert out2.hits[0].fingerprint == b.fingerprint


def test_baseline_offset_ratio() -> None:
    r = rule(threshold="> 1.5", baseline={"offset": "1d"})
    answers = {("x", AT): [s(0.9, svc="a"), s(0.5, svc="b"), s(1.0, svc="new")],
               ("x", AT - 86400): [s(0.5, svc="a"), s(0.5, svc="b")]}
    out = run(r, answers)
    assert [h.labels["svc"] for h in out.hits] == ["a"]
    assert out.hits[0].baseline == 0.5 and math.isclose(out.hits[0].compared or 0, 1.8)


def test_baseline_expr_delta() -> None:
    r = rule(threshold="> 0.1", baseline={"expr": "y", "compare": "delta"})
    out = run(r, {"x": [s(0.5, svc="a"), s(0.5, svc="b")], "y": [s(0.3, svc="a"),
                                                                 s(0.45, svc="b")]})
    assert [h.labels["svc"] for h in out.hits] == ["a"]


def test_baseline_deploy_uses_captured_values() -> None:
    from watchdog.labels import fingerprint
    r = rule(threshold="> 1.2", baseline={"deploy": True})
    ctx = Context(deploy_baselines={"R": {fingerprint({"svc": "a"}): 0.1}})
    out = run(r, {"x": [s(0.2, svc="a"), s(0.2, svc="b")]}, ctx=ctx)
    assert [h.labels["svc"] for h in out.hits] == ["a"]


def test_when_guard_empty_means_no_hits() -> None:
    r = rule(threshold="> 0.1", when="traffic > 1")
    assert run(r, {"x": [s(0.5)], "traffic > 1": []}).hits == []
    assert len(run(r, {"x": [s(0.5)], "traffic > 1": [s(5)]}).hits) == 1


def test_no_data_modes() -> None:
    assert run(rule(), {"x": []}).hits == []
    assert run(rule(no_data="keep"), {"x": []}).hits is None
    (h,) = run(rule(no_data="alerting", labels={"severity": "page"}), {"x": []}).hits
    assert h.labels == {"alertname": "R", "severity": "page"} and math.isnan(h.value)
