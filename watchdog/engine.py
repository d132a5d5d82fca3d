"""One evaluation of one group at one instant: `tick(group, at)`. The same function serves the
daemon (at = now), `replay` and `test` (at = each step of a past range).

Shell around the pure core: it runs the queries `evaluate.plan` asks for through a `Source`
(identical (expr, time) pairs once per tick, shared between rules, rules that differ only in a
label's value batched as `watchdog.batching` plans, concurrently up to a limit),
then hands the results to `evaluate.evaluate` and `state.step`. It must not implement any firing
semantics itself, and never reads the wall clock for evaluation times (only a monotonic clock to
measure how long things took).
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from watchdog import batching
from watchdog.evaluate import Context, Outcome, Query, Sample, evaluate, plan
from watchdog.model import AlertingRule, Group
from watchdog.source import QueryError, RangeSeries, Source
from watchdog.state import Alert, Event, step

HISTORY = 20  # evaluations remembered per rule: enough to answer "why did/didn't it fire?"


@dataclass(frozen=True, slots=True)
class EvalRecord:
    at: float
    duration: float
    samples: int
    hits: int | None
    error: str | None


# at, duration, samples, hits (-1: no hits, state kept); counts past 32 bits are capped
_PACKED = struct.Struct("<ddIi")
_MAX_SAMPLES, _MAX_HITS = 2**32 - 1, 2**31 - 1


class EvalHistory:
    """The last HISTORY evaluations of one rule, oldest first, packed 24 bytes each in a ring
    allocated once: as objects they were ~100 bytes each, twenty per rule, which at 1,000 rules
    was the largest thing the daemon held (bench/daemon.py --memory). One buffer of 480 bytes
    stays in Python's small-object allocator; a buffer grown and shifted at every evaluation
    (the first packed form) was reallocated by the C heap each time and left it fragmented
    (~2 MiB per 1,000 rules after twenty rounds). Errors, rare, are kept beside."""

    __slots__ = ("_buf", "_errors", "_head", "_n")

    def __init__(self) -> None:
        self._buf = bytearray()  # the ring, allocated at the first record
        self._head = 0  # the oldest record's slot
        self._n = 0
        self._errors: tuple[str | None, ...] = ()  # aligned with the records, or () if none

    def append(self, rec: EvalRecord) -> None:
        if not self._buf:
            self._buf = bytearray(HISTORY * _PACKED.size)
        n = self._n
        if n == HISTORY:
            slot = self._head
            self._head = (self._head + 1) % HISTORY
            self._errors = self._errors[1:]
            n -= 1
        else:
            slot = n
            self._n = n + 1
        hits = -1 if rec.hits is None else min(rec.hits, _MAX_HITS)
        _PACKED.pack_into(self._buf, slot * _PACKED.size, rec.at, rec.duration,
                          min(rec.samples, _MAX_SAMPLES), hits)
        if rec.error is not None or self._errors:
            self._errors = (*(self._errors or (None,) * n), rec.error)
            if not any(self._errors):
                self._errors = ()

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> EvalRecord:
        n = self._n
        if not -n <= i < n:
            raise IndexError(i)
        i %= n
        slot = (self._head + i) % HISTORY
        at, duration, samples, hits = _PACKED.unpack_from(self._buf, slot * _PACKED.size)
        return EvalRecord(at, duration, samples, None if hits < 0 else hits,
                          self._errors[i] if self._errors else None)

    def __iter__(self) -> Iterator[EvalRecord]:
        return (self[i] for i in range(len(self)))

    def __reversed__(self) -> Iterator[EvalRecord]:
        return (self[i] for i in range(len(self) - 1, -1, -1))


@dataclass(slots=True)
class RuleRuntime:
    key: str
    rule: AlertingRule
    alerts: dict[str, Alert] = field(default_factory=dict)
    history: EvalHistory = field(default_factory=EvalHistory)

    @property
    def last(self) -> EvalRecord | None:
        return self.history[-1] if len(self.history) else None


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
    queries: int  # distinct queries the rules asked
    failed_queries: int
    duration: float
    alerts: list[dict[str, Alert]] = field(default_factory=list)  # per rule, the new state
    sent: int = 0  # HTTP queries that answered them (`run_queries`)
    batched: int = 0  # queries answered from a batch's share

    def apply(self, rt: GroupRuntime) -> None:
        """Make the new alert state the runtime's (what `tick(apply=False)` left undone)."""
        for r, alerts in zip(rt.rules, self.alerts, strict=True):
            r.alerts = alerts


class Refused:
    """Batched queries that Prometheus refused (HTTP 400/422, e.g. too many samples) or whose
    answer could not be split: their members are asked alone for the next `ticks` times the
    batch comes up, instead of paying for a refused query every tick; then it is tried again.
    Bounded, oldest forgotten first."""

    def __init__(self, ticks: int = 60, size: int = 1024) -> None:
        self.ticks, self.size = ticks, size
        self._left: dict[str, int] = {}

    def add(self, expr: str) -> None:
        self._left.pop(expr, None)
        self._left[expr] = self.ticks
        while len(self._left) > self.size:
            del self._left[next(iter(self._left))]

    def skip(self, expr: str) -> bool:
        left = self._left.get(expr)
        if left is None:
            return False
        if left <= 1:
            del self._left[expr]
        else:
            self._left[expr] = left - 1
        return True


REFUSED = Refused()  # one per process: the batched expressions are the same for every caller


@dataclass
class QueryStats:
    """What answering one tick's queries took: HTTP queries sent (batches, fallbacks and
    single ones), and queries answered from a batch's share."""

    sent: int = 0
    batched: int = 0


async def run_queries(source: Source, queries: Sequence[Query], concurrency: int,
                      stats: QueryStats | None = None
                      ) -> dict[Query, list[Sample] | BaseException]:
    """Each distinct query once, thresholds on one expression together (`shared_queries`),
    expressions that differ only in one label's value as one batch (`batching.plan`; the
    plan is cached by the tick's shape, `batching.tick_plan`); failures are returned, not
    raised, so one bad rule cannot stop the others in its group.

    A batch Prometheus refuses (HTTP 400/422: too many samples, or an error that only some
    members' series cause) is asked again member by member, so each gets what it would have
    got alone, and for a while is not sent again (`REFUSED`); any other failure (timeout,
    unreachable) is every member's failure."""
    stats = stats if stats is not None else QueryStats()
    unique = list(dict.fromkeys(queries))
    instants = list(dict.fromkeys(q.at for q in unique))
    position = {at: i for i, at in enumerate(instants)}
    tp = batching.tick_plan(tuple((q.expr, position[q.at], q.window, q.step) for q in unique))
    sem = asyncio.Semaphore(max(1, concurrency))

    def real(expr: str, at: int | float, window: float, step: float) -> Query:
        return Query(expr, instants[int(at)], window, step)

    async def one(q: Query) -> list[Sample] | BaseException:
        async with sem:
            stats.sent += 1
            try:
                if q.window > 0:
                    return await _range(source, q)
                return await source.query(q.expr, q.at)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                return e

    async def ask(units: Sequence[int]) -> None:
        got = await asyncio.gather(*(one(real(*tp.units[u])) for u in units))
        answers.update(zip(units, got, strict=True))

    answers: dict[int, list[Sample] | BaseException] = {}
    again: list[int] = []
    batches = []
    for b, units in zip(tp.batches, tp.batch_units, strict=True):
        if REFUSED.skip(b.query.expr):
            again.extend(units)
        else:
            batches.append((b, units))
    batched = await asyncio.gather(
        ask(tp.alone), *(one(real(b.query.expr, b.query.at, 0.0, 0.0)) for b, _ in batches))
    for (b, units), answer in zip(batches, batched[1:], strict=True):
        assert answer is not None
        if isinstance(answer, BaseException):
            if isinstance(answer, QueryError) and answer.status in (400, 422):
                REFUSED.add(b.query.expr)
                again.extend(units)
            else:
                answers.update((u, answer) for u in units)
            continue
        parts = batching.split(b, answer)
        if parts is None:
            REFUSED.add(b.query.expr)
            again.extend(units)
        else:
            answers.update(zip(units, parts, strict=True))
            stats.batched += len(parts)
    if again:
        await ask(list(dict.fromkeys(again)))
    done: dict[Query, list[Sample] | BaseException] = {}
    for q, (u, cmp) in zip(unique, tp.via, strict=True):
        answer = answers[u]
        # the comparison PromQL would have made: it keeps value and labels, drops the rest
        done[q] = answer if cmp is None or isinstance(answer, BaseException) else [
            s for s in answer if cmp.holds(s.value)]
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
    stats = QueryStats()
    results = await run_queries(source, [q for _, p in plans for q in p.queries()], concurrency,
                                stats)
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
    return TickResult(events, errors, len(results), failed, duration, new, stats.sent,
                      stats.batched)
