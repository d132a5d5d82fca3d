"""One evaluation of one group at one instant: `tick(group, at)`. The same function serves the
daemon (at = now), `replay` and `test` (at = each step of a past range).

Shell around the pure core: it runs the queries `evaluate.plan` asks for through a `Source`
(identical (expr, time) pairs once per tick, shared between rules, concurrently up to a limit),
then hands the results to `evaluate.evaluate` and `state.step`. It must not implement any firing
semantics itself, and never reads the wall clock for evaluation times (only a monotonic clock to
measure how long things took).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from watchdog.evaluate import Context, Outcome, Query, Sample, evaluate, plan
from watchdog.model import AlertingRule, Group
from watchdog.source import QueryError, RangeSeries, Source
from watchdog.state import Alert, Event, step

HISTORY = 20  # evaluations remembered per rule: enough to answer "why did/didn't it fire?"


@dataclass(frozen=True)
class EvalRecord:
    at: float
    duration: float
    samples: int
    hits: int | None
    error: str | None


@dataclass
class RuleRuntime:
    key: str
    rule: AlertingRule
    alerts: dict[str, Alert] = field(default_factory=dict)
    history: deque[EvalRecord] = field(default_factory=lambda: deque(maxlen=HISTORY))

    @property
    def last(self) -> EvalRecord | None:
        return self.history[-1] if self.history else None


def rule_keys(group: Group) -> list[tuple[str, AlertingRule]]:
    """Stable keys for a group's alerting rules: the name, numbered when a name repeats (tiers
    written as two rules), so reload can carry state over to an unchanged rule."""
    seen: dict[str, int] = {}
    out = []
    for r in group.alerting_rules:
        n = seen.get(r.alert, 0)
        seen[r.alert] = n + 1
        out.append((r.alert if n == 0 else f"{r.alert}#{n}", r))
    return out


@dataclass
class GroupRuntime:
    file: str
    group: Group
    rules: list[RuleRuntime]
    last_at: float | None = None
    last_duration: float | None = None
    last_error: str | None = None

    @classmethod
    def new(cls, file: str, group: Group) -> GroupRuntime:
        return cls(file, group, [RuleRuntime(k, r) for k, r in rule_keys(group)])

    @property
    def key(self) -> str:
        return f"{self.file};{self.group.name}"

    def alerts(self) -> list[Alert]:
        return [a for r in self.rules for a in r.alerts.values()]


@dataclass(frozen=True)
class TickResult:
    events: list[Event]
    errors: dict[str, str]  # rule key -> error
    queries: int
    failed_queries: int
    duration: float
    alerts: list[dict[str, Alert]] = field(default_factory=list)  # per rule, the new state

    def apply(self, rt: GroupRuntime) -> None:
        """Make the new alert state the runtime's (what `tick(apply=False)` left undone)."""
        for r, alerts in zip(rt.rules, self.alerts, strict=True):
            r.alerts = alerts


async def run_queries(source: Source, queries: Sequence[Query], concurrency: int
                      ) -> dict[Query, list[Sample] | BaseException]:
    """Each distinct query once; failures are returned, not raised, so one bad rule cannot stop
    the others in its group."""
    unique = list(dict.fromkeys(queries))
    done: dict[Query, list[Sample] | BaseException] = {}
    cached = getattr(source, "cached", None)
    if cached is not None:
        # A source that already holds the answer (replay's sliced range queries) answers
        # synchronously: no task per query, which dominated replay's per-step cost.
        for q in unique:
            hit = cached(q.expr, q.at)
            if hit is not None:
                done[q] = hit
        unique = [q for q in unique if q not in done]
        if not unique:
            return done
    sem = asyncio.Semaphore(max(1, concurrency))

    async def one(q: Query) -> list[Sample] | BaseException:
        async with sem:
            try:
                if q.window > 0:
                    return await _range(source, q)
                return await source.query(q.expr, q.at)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                return e

    results = await asyncio.gather(*(one(q) for q in unique))
    done.update(zip(unique, results, strict=True))
    return done


async def _range(source: Source, q: Query) -> list[Sample]:
    """A judge's range query, its points flattened into Samples (series by series)."""
    query_range = getattr(source, "query_range", None)
    if query_range is None:
        raise QueryError(f"{q.expr!r}: this data source cannot run range queries")
    series: list[RangeSeries] = await query_range(q.expr, q.at - q.window, q.at, q.step)
    return [Sample(s.labels, v) for s in series for _, v in s.points]


async def tick(rt: GroupRuntime, at: float, source: Source, ctx: Context,
               concurrency: int = 16, *, apply: bool = True) -> TickResult:
    """Evaluate every rule of the group at `at`. With `apply=False` the runtime keeps its old
    alert state and the caller applies `TickResult.alerts` itself (the daemon does, once the
    new state is committed, so nothing reads a state that a crash could still take back)."""
    started = time.perf_counter()
    plans = [(r, plan(r.rule, rt.group, at)) for r in rt.rules]
    results = await run_queries(source, [q for _, p in plans for q in p.queries()], concurrency)
    events: list[Event] = []
    errors: dict[str, str] = {}
    new: list[dict[str, Alert]] = []
    for r, p in plans:
        t0 = time.perf_counter()
        outcome: Outcome = evaluate(r.rule, rt.group, p, results, ctx)
        res = step(r.alerts, outcome, at, rule=r.rule.alert, group=rt.group.name,
                   hold=r.rule.for_, keep_firing_for=r.rule.keep_firing_for,
                   limit=rt.group.limit)
        if apply:
            r.alerts = res.alerts
        new.append(res.alerts)
        events.extend(res.events)
        if res.error is not None:
            errors[r.key] = res.error
        r.history.append(EvalRecord(at, time.perf_counter() - t0, outcome.samples,
                                    None if outcome.hits is None else len(outcome.hits),
                                    res.error))
    duration = time.perf_counter() - started
    rt.last_at, rt.last_duration = at, duration
    rt.last_error = next(iter(errors.values()), None)
    failed = sum(1 for v in results.values() if isinstance(v, BaseException))
    return TickResult(events, errors, len(results), failed, duration, new)
