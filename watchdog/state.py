"""The alert state machine: one pure function, used by `run`, `replay` and `test` alike.

`step(alerts, outcome, at, ...)` is Prometheus's `AlertingRule.Eval` bookkeeping (rules/alerting.go)
without the query: a new label set is `pending` with activeAt = at; it fires once
`at - activeAt >= for`; a pending alert whose series vanished is dropped; a firing one resolves
unless `keep_firing_for` holds it; resolved alerts are kept 15 minutes, then forgotten. A failed
evaluation (`outcome.hits is None`) changes nothing. No I/O, no clock: `at` is always an argument.

`walk(...)` drives `step` over a range of evaluations (replay) and calls it only where it can
change something: where the hits' identities differ from the last stepped evaluation, where a
timer (`for`, `keep_firing_for`, the resolved retention) comes due, and after an error. Between
those, `step` with the same alerts and hits of the same identities would only refresh values,
so skipping it is exact — `tests/test_state.py` checks that on random histories against `step`
at every evaluation. There is no second state machine.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from watchdog.evaluate import Hit, Outcome
from watchdog.model import SEVERITY_RANK

# Prometheus's resolvedRetention: long enough for Alertmanager to see the resolved state after
# a few resends; we keep the same so an alert that returns within it is still a new incident.
RESOLVED_RETENTION = 15 * 60.0

State = Literal["pending", "firing", "inactive"]
EventKind = Literal["pending", "firing", "resolved", "escalated", "deescalated"]


@dataclass(frozen=True, slots=True)
class Alert:
    rule: str
    group: str
    fingerprint: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    state: State
    active_at: float
    value: float | None
    fired_at: float | None = None
    resolved_at: float | None = None
    keep_firing_since: float | None = None
    last_seen_at: float | None = None  # last evaluation that returned this series
    severity: str | None = None
    threshold: str | None = None
    baseline: float | None = None
    compared: float | None = None

    @property
    def incident_id(self) -> str:
        """One incident = one alert instance from activation to resolution."""
        return f"{self.fingerprint}@{self.active_at:.3f}"


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    at: float
    alert: Alert
    previous_severity: str | None = None


@dataclass(frozen=True)
class StepResult:
    alerts: dict[str, Alert]
    events: list[Event]
    error: str | None = None


def severity_rank(name: str | None) -> int:
    if name is None:
        return -1
    return SEVERITY_RANK.get(name.lower(), 0)


def _from_hit(h: Hit, rule: str, group: str, at: float) -> Alert:
    return Alert(rule=rule, group=group, fingerprint=h.fingerprint, labels=h.labels,
                 annotations=h.annotations, state="pending", active_at=at, value=h.value,
                 last_seen_at=at, severity=h.severity, threshold=h.threshold,
                 baseline=h.baseline, compared=h.compared)


def step(alerts: Mapping[str, Alert], outcome: Outcome, at: float, *, rule: str, group: str,
         hold: float, keep_firing_for: float = 0.0, limit: int = 0) -> StepResult:
    """Advance one rule's alerts to evaluation time `at`."""
    if outcome.hits is None:
        return StepResult(dict(alerts), [], outcome.error)
    events: list[Event] = []
    current: dict[str, Alert] = dict(alerts)
    present: set[str] = set()
    for h in outcome.hits:
        present.add(h.fingerprint)
        old = current.get(h.fingerprint)
        if old is not None and old.state != "inactive":
            updated = replace(old, value=h.value, annotations=h.annotations, labels=h.labels,
                              severity=h.severity, threshold=h.threshold, baseline=h.baseline,
                              compared=h.compared, last_seen_at=at, keep_firing_since=None)
            if old.state == "firing" and severity_rank(h.severity) > severity_rank(old.severity):
                events.append(Event("escalated", at, updated, old.severity))
            elif old.state == "firing" and severity_rank(h.severity) < severity_rank(old.severity):
                events.append(Event("deescalated", at, updated, old.severity))
            current[h.fingerprint] = updated
            continue
        # New, or back after a resolution: a fresh incident (Prometheus replaces the entry).
        fresh = _from_hit(h, rule, group, at)
        current[h.fingerprint] = fresh
        events.append(Event("pending", at, fresh))

    active_pending = 0
    for fp, a in list(current.items()):
        if fp not in present:
            keep_firing = False
            if a.state == "firing" and keep_firing_for > 0:
                since = a.keep_firing_since if a.keep_firing_since is not None else at
                a = replace(a, keep_firing_since=since)
                current[fp] = a
                keep_firing = at - since < keep_firing_for
            if a.state == "pending" or (
                a.resolved_at is not None and at - a.resolved_at > RESOLVED_RETENTION
            ):
                del current[fp]
                continue
            if a.state != "inactive" and not keep_firing:
                resolved = replace(a, state="inactive", resolved_at=at, value=None)
                current[fp] = resolved
                events.append(Event("resolved", at, resolved))
            if not keep_firing:
                continue
        active_pending += 1
        if a.state == "pending" and at - a.active_at >= hold:
            fired = replace(a, state="firing", fired_at=at)
            current[fp] = fired
            events.append(Event("firing", at, fired))

    if limit > 0 and active_pending > limit:
        # Prometheus discards every alert of the rule when it exceeds its limit; we also say
        # "resolved" for the firing ones so no receiver is left with a stale page.
        events = [Event("resolved", at, replace(a, state="inactive", resolved_at=at, value=None))
                  for a in alerts.values() if a.state == "firing"]
        return StepResult({}, events, f"exceeded limit of {limit} with {active_pending} alerts")
    return StepResult(current, events)


def walk(alerts: Mapping[str, Alert], times: Sequence[float], keys: Sequence[Hashable | None],
         outcome_at: Callable[[int], Outcome], *, rule: str, group: str, hold: float,
         keep_firing_for: float = 0.0, limit: int = 0) -> Iterator[tuple[int, StepResult]]:
    """`step` at the evaluations `times` (ascending) where it can change anything; yields
    (index, result) for each evaluation stepped.

    `keys[i]` stands for evaluation i's outcome up to the values: equal keys must mean hits
    with the same fingerprints, labels and severities (in any order), or the same error. A key
    of None means "no hits and no error" (`no_data: keep` on empty data), which `step` ignores.
    `outcome_at(i)` builds the outcome itself; it is called only for evaluations stepped."""
    current: Mapping[str, Alert] = alerts
    last: Hashable | None = None
    force = True  # the first evaluation, and the one after an error, are always stepped
    due = 0
    n = len(times)
    # where a run of equal keys starts: between two, only a timer can make a difference
    starts = [i for i in range(1, n) if keys[i] != keys[i - 1]]
    run = 0

    def next_start(i: int) -> int:
        nonlocal run
        while run < len(starts) and starts[run] <= i:
            run += 1
        return starts[run] if run < len(starts) else n

    i = 0
    while i < n:
        key = keys[i]
        if key is None:
            i = next_start(i)  # `step` ignores these: the whole run of them
            continue
        if not force and i < due and key == last:
            i = min(next_start(i), due)
            continue
        res = step(current, outcome_at(i), times[i], rule=rule, group=group, hold=hold,
                   keep_firing_for=keep_firing_for, limit=limit)
        yield i, res
        current, last, force = res.alerts, key, res.error is not None
        due = _next_due(current, times, i, hold, keep_firing_for)
        i += 1


def _next_due(alerts: Mapping[str, Alert], times: Sequence[float], i: int, hold: float,
              keep_firing_for: float) -> int:
    """The first evaluation after `i` at which a timer of `alerts` expires, found with the
    very comparisons `step` makes (so no rounding can move it)."""
    due = len(times)
    for a in alerts.values():
        if a.state == "pending":
            due = _first(times, i + 1, due, a.active_at, hold, strict=False)
        elif a.state == "firing" and a.keep_firing_since is not None:
            # held while `at - since < keep_firing_for`, so it changes when that is false
            due = _first(times, i + 1, due, a.keep_firing_since, keep_firing_for, strict=False)
        elif a.state == "inactive" and a.resolved_at is not None:
            due = _first(times, i + 1, due, a.resolved_at, RESOLVED_RETENTION, strict=True)
    return due


def _first(times: Sequence[float], lo: int, hi: int, since: float, span: float, *,
           strict: bool) -> int:
    """The first k in [lo, hi) with `times[k] - since >= span` (`>` if strict), else hi."""
    def reached(k: int) -> bool:
        return times[k] - since > span if strict else times[k] - since >= span

    return lo + bisect_left(range(lo, hi), True, key=reached)
