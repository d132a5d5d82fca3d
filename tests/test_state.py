"""The state machine, table-driven: hits per evaluation minute in, states and events out."""

from collections.abc import Sequence

import pytest

from watchdog.evaluate import Hit, Outcome
from watchdog.state import RESOLVED_RETENTION, Alert, StepResult, step

M = 60.0


def hit(fp: str = "a", value: float = 1.0, severity: str | None = None) -> Hit:
    labels = {"alertname": "R", "instance": fp}
    if severity:
        labels["severity"] = severity
    return Hit(fp, labels, {}, value, severity)


def run(script: Sequence[list[Hit] | None], hold: float, keep: float = 0.0,
        limit: int = 0) -> list[tuple[float, dict[str, Alert], StepResult]]:
    alerts: dict[str, Alert] = {}
    out = []
    for i, hits in enumerate(script):
        at = i * M
        res = step(alerts, Outcome(hits, None if hits is not None else "boom"), at, rule="R",
                   group="g", hold=hold, keep_firing_for=keep, limit=limit)
        alerts = res.alerts
        out.append((at, alerts, res))
    return out


def states(trace: list[tuple[float, dict[str, Alert], StepResult]], fp: str = "a") -> list[str]:
    return [a[fp].state if fp in a else "-" for _, a, _ in trace]


def test_pending_then_firing_after_for() -> None:
    trace = run([[hit()]] * 5, hold=3 * M)
    assert states(trace) == ["pending", "pending", "pending", "firing", "firing"]
    kinds = [e.kind for _, _, r in trace for e in r.events]
    assert kinds == ["pending", "firing"]
    assert trace[-1][1]["a"].active_at == 0 and trace[-1][1]["a"].fired_at == 3 * M


def test_for_zero_fires_in_the_same_evaluation() -> None:
    trace = run([[hit()]], hold=0)
    assert states(trace) == ["firing"]
    assert [e.kind for e in trace[0][2].events] == ["pending", "firing"]


def test_vanished_pending_is_dropped_and_restarts_its_for() -> None:
    trace = run([[hit()], [hit()], [], [hit()], [hit()], [hit()]], hold=2 * M)
    assert states(trace) == ["pending", "pending", "-", "pending", "pending", "firing"]
    assert trace[-1][1]["a"].active_at == 3 * M
    assert all(e.kind != "resolved" for _, _, r in trace for e in r.events)


def test_firing_resolves_and_is_retained_15m_then_forgotten() -> None:
    n = int(RESOLVED_RETENTION / M) + 4
    trace = run([[hit()], []] + [[]] * n, hold=0)
    assert states(trace)[:3] == ["firing", "inactive", "inactive"]
    assert trace[1][1]["a"].resolved_at == M
    assert [e.kind for e in trace[1][2].events] == ["resolved"]
    # kept while at - resolvedAt <= 15m, deleted the evaluation after
    last_kept = max(i for i, s in enumerate(states(trace)) if s == "inactive")
    assert last_kept * M - M == RESOLVED_RETENTION


def test_failed_evaluation_changes_nothing() -> None:
    trace = run([[hit()], None, None, [hit()]], hold=2 * M)
    assert states(trace) == ["pending", "pending", "pending", "firing"]
    assert trace[1][2].error == "boom" and trace[1][2].events == []
    # a firing alert does not resolve during an outage either
    trace = run([[hit()], None, None], hold=0)
    assert states(trace) == ["firing", "firing", "firing"]


def test_keep_firing_for_holds_then_resolves() -> None:
    trace = run([[hit()], [], [], [], []], hold=0, keep=2 * M)
    # keepFiringSince = 1m; held while at - since < 2m -> at 1m, 2m; resolved at 3m
    assert states(trace) == ["firing", "firing", "firing", "inactive", "inactive"]
    assert trace[1][1]["a"].keep_firing_since == M


def test_keep_firing_resets_when_the_series_returns() -> None:
    trace = run([[hit()], [], [hit()], [], [], []], hold=0, keep=2 * M)
    assert states(trace) == ["firing", "firing", "firing", "firing", "firing", "inactive"]


def test_return_after_resolution_is_a_new_incident() -> None:
    trace = run([[hit()], [], [hit()]], hold=0)
    first = trace[0][1]["a"]
    again = trace[2][1]["a"]
    assert again.active_at == 2 * M and again.incident_id != first.incident_id


def test_value_and_annotations_follow_the_latest_hit() -> None:
    trace = run([[hit(value=1)], [hit(value=7)]], hold=5 * M)
    assert trace[-1][1]["a"].value == 7 and trace[-1][1]["a"].active_at == 0


def test_limit_exceeded_discards_all() -> None:
    trace = run([[hit("a"), hit("b")], [hit("a"), hit("b"), hit("c")]], hold=0, limit=2)
    assert trace[1][2].error == "exceeded limit of 2 with 3 alerts"
    assert trace[1][1] == {}
    assert sorted(e.kind for e in trace[1][2].events) == ["resolved", "resolved"]


@pytest.mark.parametrize(("tiers", "kinds"), [
    (["warning", "critical"], ["pending", "firing", "escalated"]),
    (["critical", "warning"], ["pending", "firing", "deescalated"]),
])
def test_tier_change_is_the_same_alert(tiers: list[str], kinds: list[str]) -> None:
    trace = run([[hit(severity=t)] for t in tiers], hold=0)
    assert [e.kind for _, _, r in trace for e in r.events] == kinds
    assert trace[-1][1]["a"].labels["severity"] == tiers[-1]
    assert trace[-1][1]["a"].active_at == 0


# ---- walk: the same machine over a range, stepped only where something can change ----------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from watchdog.state import walk  # noqa: E402

# One evaluation: None = failed query (error), "keep" = no_data: keep on empty data, else the
# hits as (fingerprint, severity, value). Few fingerprints, so series come and go and return.
evaluation = st.one_of(
    st.none(), st.just("keep"),
    st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from([None, "warning", "critical"]),
                       st.sampled_from([1.0, 2.5, float("nan")])),
             max_size=4, unique_by=lambda h: h[0]))


def _outcome(ev: object) -> Outcome:
    if ev is None:
        return Outcome(None, "boom")
    if ev == "keep":
        return Outcome(None)
    assert isinstance(ev, list)
    return Outcome([hit(fp, v, sev) for fp, sev, v in ev])


def _key(ev: object) -> object:
    # what replay derives without building hits: identity, labels and tier, not the value
    if ev == "keep":
        return None
    if ev is None:
        return ("error", "boom")
    assert isinstance(ev, list)
    return frozenset((fp, sev) for fp, sev, _ in ev)


def _view(alerts: dict[str, Alert]) -> dict[str, tuple[object, ...]]:
    # an alert as far as anything outside can tell, its value aside: walk steps less often, so
    # an alert's value is the one of the last evaluation stepped (its events carry their own)
    return {fp: (a.state, a.active_at, a.fired_at, a.resolved_at, a.keep_firing_since,
                 tuple(sorted(a.labels.items())), a.severity) for fp, a in alerts.items()}


@settings(max_examples=500, deadline=None)
@given(runs=st.lists(st.tuples(evaluation, st.integers(1, 15),
                               st.sampled_from([30.0, 60.0, 60.0, 300.0, 450.0, 900.0])),
                     max_size=10),
       hold=st.sampled_from([0.0, 60.0, 120.0, 300.0, 1000.0]),
       keep=st.sampled_from([0.0, 60.0, 180.0, 900.0]),
       limit=st.sampled_from([0, 0, 2, 3]))
def test_walk_agrees_with_step_at_every_evaluation(runs: list[tuple[object, int, float]],
                                                   hold: float, keep: float,
                                                   limit: int) -> None:
    # runs of the same evaluation (with its own spacing), as real data has: long stretches
    # where nothing changes are where walk skips, and where a timer must stop it
    history = [ev for ev, n, _ in runs for _ in range(n)]
    gaps = [gap for _, n, gap in runs for _ in range(n)]
    times = [sum(gaps[:i]) for i in range(len(history))]
    # the reference: `step` at every evaluation, as `watchdog run` does
    alerts: dict[str, Alert] = {}
    ref_events, ref_errors = [], []
    for at, ev in zip(times, history, strict=True):
        res = step(alerts, _outcome(ev), at, rule="R", group="g", hold=hold,
                   keep_firing_for=keep, limit=limit)
        alerts = res.alerts
        ref_events += [(e.kind, e.at, e.alert.fingerprint, _view({"x": e.alert}),
                        repr(e.alert.value)) for e in res.events]
        ref_errors += [(at, res.error)] if res.error else []
    # walk: the same machine, stepped only where something can change
    got: dict[str, Alert] = {}
    events, errors = [], []
    for i, res in walk({}, times, [_key(ev) for ev in history],
                       lambda i: _outcome(history[i]), rule="R", group="g", hold=hold,
                       keep_firing_for=keep, limit=limit):
        got = res.alerts
        events += [(e.kind, e.at, e.alert.fingerprint, _view({"x": e.alert}),
                    repr(e.alert.value)) for e in res.events]
        errors += [(times[i], res.error)] if res.error else []
    assert events == ref_events
    assert errors == ref_errors
    assert _view(got) == _view(alerts)  # and the same alerts, in the same order
    assert list(got) == list(alerts)
