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
import math
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from watchdog.evaluate import Context, Outcome, Query, Sample, evaluate, plan, split_comparison
from watchdog.model import AlertingRule, Comparison, Group
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
    queries: int
    failed_queries: int
    duration: float
    alerts: list[dict[str, Alert]] = field(default_factory=list)  # per rule, the new state

    def apply(self, rt: GroupRuntime) -> None:
        """Make the new alert state the runtime's (what `tick(apply=False)` left undone)."""
        for r, alerts in zip(rt.rules, self.alerts, strict=True):
            r.alerts = alerts


def shared_queries(queries: Sequence[Query]) -> dict[Query, tuple[Query, Comparison]]:
    """Thresholds written into the expression, `E > 0.05` and `E > 0.1` at the same instant
    (a warning and a critical rule, the same rule per severity): one query answers them all —
    `E` itself when it is asked anyway, else `(E) op loosest` when two or more point the same
    way — and each is that answer filtered by its own comparison (`split_comparison`)."""
    by_lhs: dict[tuple[str, float], list[tuple[Query, Comparison]]] = {}
    plain = set(queries)
    for q in queries:
        split = split_comparison(q.expr) if not q.window else None
        if split is not None:
            by_lhs.setdefault((split[0], q.at), []).append((q, split[1]))
    out: dict[Query, tuple[Query, Comparison]] = {}
    for (lhs, at), members in by_lhs.items():
        if Query(lhs, at) in plain:
            out.update((q, (Query(lhs, at), c)) for q, c in members)
            continue
        for way in (">", "<"):
            same = [(q, c) for q, c in members if c.op.startswith(way)]
            if len(same) < 2:
                continue
            edge = (min if way == ">" else max)(c.number for _, c in same)
            op = way + "=" if any(c.number == edge and c.op == way + "=" for _, c in same) \
                else way
            number = repr(edge) if math.isfinite(edge) else ("+Inf" if edge > 0 else "-Inf")
            shared = Query(f"({lhs}) {op} {number}", at)
            out.update((q, (shared, c)) for q, c in same)
    return out


async def run_queries(source: Source, queries: Sequence[Query], concurrency: int
                      ) -> dict[Query, list[Sample] | BaseException]:
    """Each distinct query once, thresholds on one expression together (`shared_queries`);
    failures are returned, not raised, so one bad rule cannot stop the others in its
    group."""
    unique = list(dict.fromkeys(queries))
    shared = shared_queries(unique)
    sent = list(dict.fromkeys(shared[q][0] if q in shared else q for q in unique))
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

    answers = dict(zip(sent, await asyncio.gather(*(one(q) for q in sent)), strict=True))
    done: dict[Query, list[Sample] | BaseException] = {}
    for q in unique:
        if q not in shared:
            done[q] = answers[q]
            continue
        via, cmp = shared[q]
        got = answers[via]
        # the comparison PromQL would have made: it keeps value and labels, drops the rest
        done[q] = got if isinstance(got, BaseException) else [
            s for s in got if cmp.holds(s.value)]
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
