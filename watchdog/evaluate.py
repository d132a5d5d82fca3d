"""From query results to the alert instances a rule trips on ("hits") at one evaluation time.

Pure: the caller runs the queries this module plans (`plan`) and hands back their results; no I/O,
no clock. Prometheus semantics for a plain rule (every sample of `expr` is a hit, labels and
annotations templated from the sample); our extensions (`threshold`, `severities`, `baseline`,
`when`, `no_data`) are applied here and nowhere else, so `run`, `replay` and `test` agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from watchdog.gocompat import format_float
from watchdog.gotmpl import TemplateData, expand
from watchdog.labels import fingerprint, without_name
from watchdog.model import AlertingRule, Comparison, Group, Judge
from watchdog.stats import Alternative, mann_whitney_u, median


@dataclass(frozen=True)
class Sample:
    labels: Mapping[str, str]  # as Prometheus returned them, `__name__` included when present
    value: float


@dataclass(frozen=True)
class Query:
    expr: str
    at: float  # the instant the query is evaluated at (Unix seconds)
    # A range query (a judge's samples) when window > 0: every `step` from at - window to at;
    # its result is flattened into Samples, one per point, in series order.
    window: float = 0.0
    step: float = 0.0


@dataclass(frozen=True)
class Context:
    """What the environment contributes to evaluation, fixed for one tick."""

    external_url: str = ""
    external_labels: Mapping[str, str] = field(default_factory=dict)
    # alertname -> series fingerprint (labels without __name__) -> value captured at the last
    # deploy marker, for `baseline: {deploy: true}`
    deploy_baselines: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """One alert instance the rule trips on now."""

    fingerprint: str  # identity; excludes `severity` for tiered rules so a tier change is one alert
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    value: float  # the value of `expr` for this series
    severity: str | None = None
    threshold: str | None = None  # the comparison that tripped, e.g. "> 0.1"
    baseline: float | None = None
    compared: float | None = None  # value/baseline or value-baseline when a baseline is used


@dataclass(frozen=True)
class Plan:
    main: Query
    baseline: Query | None = None
    guard: Query | None = None

    def queries(self) -> list[Query]:
        return [q for q in (self.main, self.baseline, self.guard) if q is not None]


@dataclass(frozen=True)
class Outcome:
    """`hits is None` means: change no state (failed query, or `no_data: keep` on empty data)."""

    hits: list[Hit] | None
    error: str | None = None
    samples: int = 0


def plan(rule: AlertingRule, group: Group, at: float) -> Plan:
    """The queries one evaluation of `rule` at `at` needs."""
    t = at - group.query_offset
    if rule.judge is not None:
        j = rule.judge
        return Plan(Query(j.canary, t, j.window, j.step), Query(j.control, t, j.window, j.step))
    baseline: Query | None = None
    if rule.baseline is not None:
        if rule.baseline.offset is not None:
            # Evaluating the same expression at an earlier instant is what `offset` on every
            # selector does, without rewriting arbitrary PromQL.
            baseline = Query(rule.expr, t - rule.baseline.offset)
        elif rule.baseline.expr is not None:
            baseline = Query(rule.baseline.expr, t)
    guard = Query(rule.when, t) if rule.when is not None else None
    return Plan(Query(rule.expr, t), baseline, guard)


QueryResults = Mapping[Query, Sequence[Sample] | BaseException]


def evaluate(rule: AlertingRule, group: Group, plan_: Plan, results: QueryResults,
             ctx: Context) -> Outcome:
    for q in plan_.queries():
        r = results.get(q)
        if r is None:
            return Outcome(None, f"no result for query {q.expr!r}")
        if isinstance(r, BaseException):
            return Outcome(None, str(r) or type(r).__name__)
    main = results[plan_.main]
    assert not isinstance(main, BaseException)
    if rule.judge is not None:
        assert plan_.baseline is not None
        control = results[plan_.baseline]
        assert not isinstance(control, BaseException)
        return _judge(rule, group, rule.judge, main, control, ctx)
    if plan_.guard is not None and not results[plan_.guard]:
        # `when` guard not met (e.g. too little traffic to judge): the rule trips on nothing.
        return Outcome([], samples=len(main))
    if not main:
        if rule.no_data == "keep":
            return Outcome(None, samples=0)
        if rule.no_data == "alerting":
            return _hits(rule, group, [(Sample({}, math.nan), None, None, None)], ctx, 0)
        return Outcome([], samples=0)

    tripped: list[tuple[Sample, str | None, float | None, float | None]] = []
    if rule.threshold is None and rule.severities is None:
        tripped = [(s, None, None, None) for s in main]
    else:
        baselines = _baseline_index(rule, plan_, results, ctx)
        for s in main:
            compared: float | None = None
            base: float | None = None
            if rule.baseline is not None:
                base = baselines.get(fingerprint(without_name(s.labels)))
                if base is None:
                    continue  # nothing to compare with: cannot judge this series
                compared = _compare(s.value, base, rule.baseline.compare)
            judged = s.value if compared is None else compared
            if rule.threshold is not None:
                if rule.threshold.holds(judged):
                    tripped.append((s, None, base, compared))
            else:
                tier = _highest_tier(rule, judged)
                if tier is not None:
                    tripped.append((s, tier, base, compared))
    return _hits(rule, group, tripped, ctx, len(main))


def _compare(value: float, base: float, how: str) -> float:
    if how == "delta":
        return value - base
    if base == 0:
        return math.nan if value == 0 else math.copysign(math.inf, value)
    return value / base


def _baseline_index(rule: AlertingRule, plan_: Plan, results: QueryResults, ctx: Context
                    ) -> dict[str, float]:
    if rule.baseline is None:
        return {}
    if rule.baseline.deploy:
        return dict(ctx.deploy_baselines.get(rule.alert, {}))
    assert plan_.baseline is not None
    rows = results[plan_.baseline]
    assert not isinstance(rows, BaseException)
    return {fingerprint(without_name(s.labels)): s.value for s in rows}


def _highest_tier(rule: AlertingRule, value: float) -> str | None:
    for name, cmp in rule.ranked_tiers():
        if cmp.holds(value):
            return name
    return None


def tier_comparison(rule: AlertingRule, severity: str | None) -> Comparison | None:
    if severity is not None and rule.severities is not None:
        return rule.severities.get(severity)
    return rule.threshold


def _series(samples: Sequence[Sample]) -> dict[str, tuple[dict[str, str], list[float]]]:
    """A range query's flattened points, by series (labels without `__name__`); NaN points
    (no data at a step) are left out."""
    out: dict[str, tuple[dict[str, str], list[float]]] = {}
    for s in samples:
        labels = without_name(s.labels)
        entry = out.setdefault(fingerprint(labels), (labels, []))
        if not math.isnan(s.value):
            entry[1].append(s.value)
    return out


def judge_series(j: Judge, canary: Sequence[float], control: Sequence[float]
                 ) -> tuple[bool, dict[str, float]]:
    """Whether the canary is significantly worse than control, and the figures: effect (the
    relative difference of the medians, worse positive), p_value, both medians and sample
    counts. Too few samples on either side is never significant."""
    figures: dict[str, float] = {"canary_samples": len(canary), "control_samples": len(control)}
    if len(canary) < j.min_samples or len(control) < j.min_samples:
        return False, figures
    alternative: Alternative = {"increase": "greater", "decrease": "less",
                                "either": "two-sided"}[j.direction]  # type: ignore[assignment]
    test = mann_whitney_u(canary, control, alternative)
    m_canary, m_control = median(canary), median(control)
    diff = m_canary - m_control
    if j.direction == "decrease":
        diff = -diff
    elif j.direction == "either":
        diff = abs(diff)
    if m_control != 0:
        effect = diff / abs(m_control)
    else:
        effect = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    figures.update(effect=effect, p_value=test.p_value, u=test.u, canary_median=m_canary,
                   control_median=m_control)
    return test.p_value < j.alpha and effect >= j.min_effect and effect > 0, figures


def _judge(rule: AlertingRule, group: Group, j: Judge, canary: Sequence[Sample],
           control: Sequence[Sample], ctx: Context) -> Outcome:
    """Canary and control series with the same labels are compared (one series each, the
    usual case, compare whatever their labels). A hit's value is the effect size; its
    templates see the figures as `$labels.p_value`, `$labels.canary_median`, ... (they are
    not labels of the alert)."""
    c_series, k_series = _series(canary), _series(control)
    if len(c_series) == 1 and len(k_series) == 1:
        (c_labels, c_values), = c_series.values()
        (k_labels, k_values), = k_series.values()
        common = {k: v for k, v in c_labels.items() if k_labels.get(k) == v}
        pairs = [(common, c_values, k_values)]
    else:
        pairs = [(labels, values, k_series[fp][1]) for fp, (labels, values) in c_series.items()
                 if fp in k_series]
    tripped: list[tuple[Sample, str | None, float | None, float | None]] = []
    extras: list[Mapping[str, str]] = []
    for labels, c_values, k_values in pairs:
        worse, figures = judge_series(j, c_values, k_values)
        if not worse:
            continue
        tripped.append((Sample(labels, figures["effect"]), None, figures["control_median"],
                        None))
        extras.append({k: format_float(v, "g", -1) if isinstance(v, float) else str(v)
                       for k, v in figures.items()})
    return _hits(rule, group, tripped, ctx, len(canary) + len(control), extras)


def _hits(rule: AlertingRule, group: Group,
          tripped: list[tuple[Sample, str | None, float | None, float | None]],
          ctx: Context, samples: int, extras: Sequence[Mapping[str, str]] = ()) -> Outcome:
    hits: list[Hit] = []
    seen: set[str] = set()
    rule_labels = {**group.labels, **rule.labels}
    for i, (s, tier, base, compared) in enumerate(tripped):
        shown = {**extras[i], **s.labels} if i < len(extras) else dict(s.labels)
        data = TemplateData(labels=shown, value=s.value,
                            external_labels=ctx.external_labels, external_url=ctx.external_url)
        labels = without_name(s.labels)
        for k, tmpl in rule_labels.items():
            v = expand(tmpl, data)
            if v == "":
                labels.pop(k, None)  # Prometheus drops labels that expand to empty
            else:
                labels[k] = v
        labels["alertname"] = rule.alert
        if tier is not None:
            labels["severity"] = tier
        fp = fingerprint(labels, exclude=("severity",) if rule.tiered else ())
        if fp in seen:
            return Outcome(None, "vector contains metrics with the same labelset after "
                                 "applying alert labels", samples)
        seen.add(fp)
        annotations = {k: expand(t, data) for k, t in rule.annotations.items()}
        cmp = tier_comparison(rule, tier)
        hits.append(Hit(fp, labels, annotations, s.value, tier,
                        str(cmp) if cmp is not None else None, base, compared))
    return Outcome(hits, samples=samples)
