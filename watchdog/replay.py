"""`watchdog replay`: evaluate the rules over a past range with the parts of `watchdog run`.

Shell: fetches data. Each expression is fetched with `query_range` over the whole range —
Prometheus computes a range query as the instant query at each step, so the values are those
`run` would have seen — once for all the rules and offsets that need it (`merge`), up to
`concurrency` queries at a time across groups. Then each rule is worked through the whole range
at once instead of step by step:

* which series trip at each step is read off the range result with `evaluate.trips`, the
  comparison `run` makes, into one key per step (the tripping series and their tiers);
* `state.walk` drives the one state machine, `state.step`, over those keys, and steps it only
  where something can change (the key changes, a `for` / `keep_firing_for` / retention timer
  comes due, after an error); at those steps the hits are built by `evaluate.evaluate` from the
  step's samples, labels and annotations templated, exactly as `run` builds them.

A rule with only a `threshold` (or tiers that all point the same way), no baseline and
`no_data: ok` has the comparison pushed into its query — `(expr) > 0.05` — so only tripping
samples cross the wire: a comparison keeps the value and the labels, and what does not trip is
not a hit either way. If Prometheus refuses the pushed query, the plain one is used.

Actions and notifications are never executed here; an action is only reported as `would_run` —
with each step of a staged action at the moment it would run (`stage`), so a backfilled bad
deploy shows the whole sequence in order. Output order is by time, then group, rule and event.
`replay_steps` / `walk_steps` tick `engine.tick` at every step instead: for an `on_tick` hook,
for `judge` rules (range queries of their own), and as the reference the tests hold `replay` to.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import math
from collections.abc import (
    AsyncIterator,
    Callable,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from watchdog.engine import GroupRuntime, RuleRuntime, TickResult, tick
from watchdog.evaluate import Context, Outcome, Query, Sample, evaluate, plan, trips
from watchdog.gotmpl import TemplateData, TemplateError, compile_template
from watchdog.interlocks import History
from watchdog.labels import fingerprint, format_labels, without_name
from watchdog.model import Action, AlertingRule, Group
from watchdog.rulesdir import RuleSet
from watchdog.source import QueryError, RangeSource
from watchdog.state import Alert, Event, walk

MAX_POINTS = 10_000  # Prometheus refuses query_range answers of more than 11,000 points/series
AHEAD = 4  # queries fetched ahead of the group being evaluated, per unit of concurrency


def steps(start: float, end: float, step: float) -> Iterator[float]:
    n = 0
    while start + n * step <= end + 1e-9:
        yield start + n * step
        n += 1


@dataclass
class Table:
    """One range query's answer: the series in the order Prometheus gave them, and per
    timestamp (ms) the (series, value) pairs present then, in that order."""

    labels: list[Mapping[str, str]] = field(default_factory=list)
    at: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    pushed: str | None = None  # the comparison Prometheus applied, e.g. "> 0.05"


Answer = Table | QueryError


@dataclass(frozen=True)
class Fetch:
    """What one rule needs: `expr` at every step of [start, end], `delta` seconds earlier,
    and the comparison it could carry (see `pushdown`)."""

    expr: str
    delta_ms: int
    start: float
    end: float
    step: float
    pushdown: str | None = None
    window: float = 0.0  # a query that is itself a range query (a `judge`): not sliced here


@dataclass(frozen=True)
class RangeQuery:
    """What is asked of Prometheus: one range query may answer several `Fetch`es — the same
    expression at other offsets on the same grid, or with a stricter comparison (the
    tables are keyed by absolute time, and a stricter comparison is judged here)."""

    expr: str
    start: float  # of the first point
    end: float
    step: float
    compare: str | None = None


async def fetch(source: RangeSource, q: RangeQuery) -> Answer:
    if q.compare is not None:
        pushed = await _fetch(source, f"({q.expr}) {q.compare}", q)
        if isinstance(pushed, Table):
            pushed.pushed = q.compare
            return pushed
    return await _fetch(source, q.expr, q)


def merge(fetches: Iterable[Fetch]) -> dict[Fetch, RangeQuery]:
    """The range queries that answer `fetches`: one per expression, grid, comparison kind
    and stretch of time. Comparisons of one direction merge into the loosest (`> 0.02`
    answers `> 0.05` too); a fetch without one takes the whole series, which answers all."""
    buckets: dict[tuple[str, int, int], list[Fetch]] = {}
    for f in fetches:
        step_ms = round(f.step * 1000)
        first = round(f.start * 1000) - f.delta_ms
        buckets.setdefault((f.expr, step_ms, first % step_ms), []).append(f)
    out: dict[Fetch, RangeQuery] = {}
    for (expr, _, _), members in buckets.items():
        kinds: dict[str, list[Fetch]] = {}
        if any(f.pushdown is None for f in members):
            kinds[""] = members
        else:
            for f in members:
                assert f.pushdown is not None
                op = f.pushdown.split()[0]
                kinds.setdefault(op[0] if op[0] in "<>" else f.pushdown, []).append(f)
        for kind, same in kinds.items():
            compare = _loosest([f.pushdown for f in same if f.pushdown]) if kind else None
            # stretches of time that touch or overlap, each one query
            runs: list[tuple[float, float, list[Fetch]]] = []
            for f in sorted(same, key=lambda f: f.start - f.delta_ms / 1000):
                a, b = f.start - f.delta_ms / 1000, f.end - f.delta_ms / 1000
                if runs and a <= runs[-1][1] + f.step:
                    runs[-1] = (runs[-1][0], max(runs[-1][1], b), [*runs[-1][2], f])
                else:
                    runs.append((a, b, [f]))
            for lo, hi, run in runs:
                out.update(dict.fromkeys(run, RangeQuery(expr, lo, hi, run[0].step, compare)))
    return out


def _loosest(compares: list[str]) -> str | None:
    ops = {c.split()[0] for c in compares}
    if len(ops) == 1 and ops <= {"==", "!="}:
        return compares[0] if len(set(compares)) == 1 else None
    numbers = [(float(c.split()[1]), c.split()[0]) for c in compares]
    if ops <= {">", ">="}:
        low = min(n for n, _ in numbers)
        return f"{'>=' if (low, '>=') in numbers else '>'} {_promql_number(low)}"
    high = max(n for n, _ in numbers)
    return f"{'<=' if (high, '<=') in numbers else '<'} {_promql_number(high)}"


async def _fetch(source: RangeSource, expr: str, q: RangeQuery) -> Answer:
    table = Table()
    index: dict[tuple[tuple[str, str], ...], int] = {}
    start, end = q.start, q.end
    chunk = q.step * (MAX_POINTS - 1)
    t = start
    try:
        while t <= end + 1e-9:
            stop = min(end, t + chunk)
            for series in await source.query_range(expr, t, stop, q.step):
                key = tuple(sorted(series.labels.items()))
                j = index.get(key)
                if j is None:
                    j = index[key] = len(table.labels)
                    table.labels.append(series.labels)
                at = table.at
                for ts, v in series.points:
                    ms = round(ts * 1000)
                    rows = at.get(ms)
                    if rows is None:
                        at[ms] = [(j, v)]
                    else:
                        rows.append((j, v))
            t = stop + q.step
    except QueryError as e:
        # A failed range query is a failed query at every step: no state changes.
        return e
    except asyncio.CancelledError:
        raise
    except Exception as e:
        return QueryError(str(e) or type(e).__name__)  # as `run` takes any failed query
    return table


def pushdown(rule: AlertingRule) -> str | None:
    """The comparison a rule's query can carry, or None: only where the result is exact (see
    the module docstring)."""
    if rule.baseline is not None or rule.no_data != "ok":
        return None
    if rule.threshold is not None:
        cmps = [rule.threshold]
    elif rule.severities is not None:
        cmps = list(rule.severities.values())
    else:
        return None
    ops = {c.op for c in cmps}
    if ops <= {">", ">="}:
        low = min(c.number for c in cmps)
        op = ">=" if any(c.number == low and c.op == ">=" for c in cmps) else ">"
        return f"{op} {_promql_number(low)}"
    if ops <= {"<", "<="}:
        high = max(c.number for c in cmps)
        op = "<=" if any(c.number == high and c.op == "<=" for c in cmps) else "<"
        return f"{op} {_promql_number(high)}"
    if len(cmps) == 1:
        return f"{cmps[0].op} {_promql_number(cmps[0].number)}"  # == and != (NaN != x holds)
    return None


def _promql_number(x: float) -> str:
    # repr is the shortest text that reads back as the same double, in Go as in Python
    return ("+Inf" if x > 0 else "-Inf") if math.isinf(x) else repr(x)


@dataclass(frozen=True)
class ReplayLine:
    ts: float
    order: int
    doc: dict[str, Any]


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else v


@dataclass
class ReplayReport:
    lines: list[ReplayLine]
    errors: dict[str, str]  # "group/rule" -> first error (a failed query changes no state)


@dataclass
class _RulePlan:
    runtime: RuleRuntime
    main: Fetch
    baseline: Fetch | None
    guard: Fetch | None

    def fetches(self) -> list[Fetch]:
        return [f for f in (self.main, self.baseline, self.guard) if f is not None]


@dataclass
class _GroupPlan:
    runtime: GroupRuntime
    times: list[float]
    rules: list[_RulePlan]
    _instants: dict[float, list[int]] = field(default_factory=dict)
    _positions: dict[int, int] | None = None

    def positions(self) -> dict[int, int]:
        """Step index by the instant (ms) of a query at the evaluation time."""
        got = self._positions
        if got is None:
            got = self._positions = {ms: k for k, ms in enumerate(self.instants())}
        return got

    def instants(self, offset: float = 0.0) -> list[int]:
        """Per step, the instant (ms) `plan` gives a query `offset` seconds before the group's
        evaluation time, in its arithmetic: `at - query_offset`, then `- offset`."""
        got = self._instants.get(offset)
        if got is None:
            t = [at - self.runtime.group.query_offset for at in self.times]
            got = self._instants[offset] = [round((x - offset if offset else x) * 1000)
                                            for x in t]
        return got


def _plan_group(file: str, group: Group, start: float, end: float, every: float
                ) -> _GroupPlan | None:
    rt = GroupRuntime.new(file, group)
    if not rt.rules:
        return None
    times = list(steps(start, end, every))
    rules = []
    for r in rt.rules:
        # the queries of the first step, as `run` plans them; each is the same expression at a
        # fixed distance before every step, so one range query answers it for all steps
        p = plan(r.rule, group, times[0])

        def ranged(q: Query | None, push: str | None = None) -> Fetch | None:
            if q is None:
                return None
            return Fetch(q.expr, round((times[0] - q.at) * 1000), start, end, every, push,
                         q.window)

        main = ranged(p.main, pushdown(r.rule))
        assert main is not None
        rules.append(_RulePlan(r, main, ranged(p.baseline), ranged(p.guard)))
    return _GroupPlan(rt, times, rules)


class _Fetcher:
    """Range queries for the groups in order, `concurrency` at a time and a bounded number
    ahead of the group being evaluated, each distinct one once while a group needs it."""

    def __init__(self, source: RangeSource, groups: list[_GroupPlan], concurrency: int) -> None:
        self._source = source
        self._groups = groups
        self._sem = asyncio.Semaphore(max(1, concurrency))
        self._ahead = AHEAD * max(1, concurrency)
        self._query = merge(f for g in groups for r in g.rules for f in r.fetches())
        self._tasks: dict[RangeQuery, asyncio.Task[Answer]] = {}
        self._users: dict[RangeQuery, int] = {}
        for gi in range(len(groups)):
            for q in self._wanted(gi):
                self._users[q] = self._users.get(q, 0) + 1
        self._scheduled = 0  # groups whose queries are started

    def _wanted(self, gi: int) -> set[RangeQuery]:
        return {self._query[f] for r in self._groups[gi].rules for f in r.fetches()}

    async def _one(self, q: RangeQuery) -> Answer:
        async with self._sem:
            return await fetch(self._source, q)

    def _schedule(self, upto: int) -> None:
        while self._scheduled < len(self._groups) and (
                self._scheduled <= upto
                or sum(not t.done() for t in self._tasks.values()) < self._ahead):
            for q in self._wanted(self._scheduled):
                if q not in self._tasks:
                    self._tasks[q] = asyncio.ensure_future(self._one(q))
            self._scheduled += 1

    async def answers(self, gi: int) -> dict[Fetch, Answer]:
        self._schedule(gi)
        wanted = list(self._wanted(gi))
        got = dict(zip(wanted, await asyncio.gather(*(self._tasks[q] for q in wanted)),
                       strict=True))
        for q in wanted:
            self._users[q] -= 1
            if not self._users[q]:
                del self._tasks[q]  # no later group needs it: let it go
        self._schedule(gi + 1)
        return {f: got[self._query[f]] for r in self._groups[gi].rules for f in r.fetches()}

    def cancel(self) -> None:
        for t in self._tasks.values():
            t.cancel()


_CONSTANT_LABEL = ("$labels.", ".Labels.", "$externalLabels.", ".ExternalLabels.",
                   "$externalURL", ".ExternalURL")


def _labels_follow_the_value(rule: AlertingRule, group: Group) -> bool:
    """Can a label template give a series different labels at different steps? Only through
    the value (or something we cannot see through): then every step is its own key."""
    for text in (*group.labels.values(), *rule.labels.values()):
        for action in text.split("{{")[1:]:
            body = action.split("}}")[0].strip(" -")
            if not any(body.startswith(p) and body.replace(p, "", 1).replace("_", "").isalnum()
                       for p in _CONSTANT_LABEL) and body not in ("$externalURL", ".ExternalURL"):
                return True
    return False


def _keys(rp: _RulePlan, g: _GroupPlan, ctx: Context, tables: Mapping[Fetch, Answer]
          ) -> list[Hashable | None]:
    """One key per step: what trips then (series and tier), as `evaluate` will judge it."""
    rule, group = rp.runtime.rule, g.runtime.group
    main = tables[rp.main]
    assert isinstance(main, Table)
    guard = tables[rp.guard] if rp.guard is not None else None
    base = tables[rp.baseline] if rp.baseline is not None else None
    assert not isinstance(guard, QueryError) and not isinstance(base, QueryError)
    main_ms = guard_ms = base_ms = g.instants()
    if rule.baseline is not None and rule.baseline.offset is not None:
        base_ms = g.instants(rule.baseline.offset)
    empty: Hashable | None = None if rule.no_data == "keep" else (
        ("no data",) if rule.no_data == "alerting" else ())
    # With the rule's own threshold pushed into the query every row trips: Prometheus compared
    # as `Comparison.holds` does (IEEE doubles; NaN only `!=`), so the rows are the hits.
    own = rp.main.pushdown is not None and main.pushed == rp.main.pushdown
    judged = (rule.threshold is not None and not own) or rule.severities is not None
    tiers = rule.ranked_tiers() if rule.severities is not None else ()
    per_step = _labels_follow_the_value(rule, group)
    main_fp = [fingerprint(without_name(labels)) for labels in main.labels] \
        if rule.baseline is not None else []
    base_fp = [fingerprint(without_name(labels)) for labels in base.labels] \
        if base is not None else []
    deploy = ctx.deploy_baselines.get(rule.alert, {}) if rule.baseline is not None else {}
    none: list[tuple[int, float]] = []
    guard_at = guard.at if guard is not None else None
    if guard_at is not None and empty != ():
        # `no_data: keep`/`alerting` behind a guard: empty data means something per step
        keys: list[Hashable | None] = [() if not guard_at.get(ms) else empty for ms in guard_ms]
    else:
        keys = [empty] * len(main_ms)  # and a guard not met is () too, as empty is
    position = g.positions()
    for ms, rows in main.at.items():
        k = position.get(ms)
        if k is None or not rows:
            continue  # outside the range (a query shared with an offset), or nothing
        if guard_at is not None and not guard_at.get(guard_ms[k]):
            keys[k] = ()
            continue
        if not judged:
            key: Hashable = tuple(j for j, _ in rows)
        elif rule.baseline is None:
            key = tuple((j, v[0]) for j, x in rows
                        if (v := trips(rule, x, None, tiers)) is not None)
        else:
            bases = {base_fp[j]: x for j, x in base.at.get(base_ms[k], none)} \
                if base is not None else deploy
            key = tuple((j, v[0]) for j, x in rows
                        if (b := bases.get(main_fp[j])) is not None
                        and (v := trips(rule, x, b, tiers)) is not None)
        keys[k] = (k, key) if per_step else key
    return keys


def _outcome(rp: _RulePlan, group: Group, ctx: Context, at: float,
             tables: Mapping[Fetch, Answer]) -> Outcome:
    """The step's outcome as `run` computes it: its queries answered from the range tables."""
    p = plan(rp.runtime.rule, group, at)
    results: dict[Query, Sequence[Sample] | BaseException] = {}
    for q, f in ((p.main, rp.main), (p.baseline, rp.baseline), (p.guard, rp.guard)):
        if q is None or f is None:
            continue
        table = tables[f]
        results[q] = table if isinstance(table, QueryError) else [
            Sample(table.labels[j], v) for j, v in table.at.get(round(q.at * 1000), [])]
    return evaluate(rp.runtime.rule, group, p, results, ctx)


def _rule_events(rp: _RulePlan, g: _GroupPlan, ctx: Context, tables: Mapping[Fetch, Answer]
                 ) -> tuple[list[Event], str | None]:
    rule, group, times = rp.runtime.rule, g.runtime.group, g.times
    failed = next((a for a in (tables[f] for f in rp.fetches()) if isinstance(a, QueryError)),
                  None)
    if failed is not None:
        # every step fails alike and changes nothing; the error is the one `run` reports
        return [], _outcome(rp, group, ctx, times[0], tables).error
    events: list[Event] = []
    error: str | None = None
    for _, res in walk(rp.runtime.alerts, times, _keys(rp, g, ctx, tables),
                       lambda k: _outcome(rp, group, ctx, times[k], tables),
                       rule=rule.alert, group=group.name, hold=rule.for_,
                       keep_firing_for=rule.keep_firing_for, limit=group.limit):
        rp.runtime.alerts = res.alerts
        events.extend(res.events)
        if error is None and res.error is not None:
            error = res.error
    return events, error


async def replay(rules: RuleSet, source: RangeSource, start: float, end: float,
                 step: float | None, default_interval: float, ctx: Context,
                 concurrency: int = 16, on_tick: TickHook | None = None) -> ReplayReport:
    """The transitions `run` would have made over [start, end] and the actions it would have
    run. With `on_tick`, or a rule that asks range queries of its own (a `judge`), tick by
    tick (`replay_steps`)."""
    groups = [g for g in (_plan_group(file, group, start, end,
                                      step or group.interval_or(default_interval))
                          for file, group in rules.groups()) if g is not None]
    if on_tick is not None or any(f.window for g in groups for r in g.rules
                                  for f in r.fetches()):
        return await replay_steps(rules, source, start, end, step, default_interval, ctx,
                                  concurrency, on_tick)
    out: list[ReplayLine] = []
    errors: dict[str, str] = {}
    transitions: list[tuple[float, int, Event, AlertingRule]] = []
    fetcher = _Fetcher(source, groups, concurrency)
    try:
        for gi, g in enumerate(groups):
            tables = await fetcher.answers(gi)
            group = g.runtime.group
            timeline: list[tuple[float, int, int, Event]] = []
            for ri, rp in enumerate(g.rules):
                events, error = _rule_events(rp, g, ctx, tables)
                if error is not None:
                    errors.setdefault(f"{group.name}/{rp.runtime.key}", error)
                timeline += [(e.at, ri, n, e) for n, e in enumerate(events)]
            # in the order `run` would have met them: step by step, rule by rule
            timeline.sort(key=lambda x: x[:3])
            rules_by_name = {r.rule.alert: r.rule for r in g.runtime.rules}
            for *_, ev in timeline:
                _emit(ev, rules_by_name, transitions, out)
    finally:
        fetcher.cancel()
    out.extend(ReplayLine(line.ts, len(out) + i, line.doc)
               for i, line in enumerate(stage(transitions, rules.actions, end)))
    out.sort(key=lambda line: (line.ts, line.order))
    return ReplayReport(out, errors)


# ---- step by step -------------------------------------------------------------------------
# The alert state at every step, through `engine.tick` as `run` evaluates: for callers that
# look at the state between transitions (the use-case tests read each minute's annotations).
# `replay` above reports the same transitions (tests/test_replay_range.py holds it to that).


class SlicedRangeSource:
    """Answers the instant queries of one group's replay from cached range queries."""

    def __init__(self, inner: RangeSource, start: float, end: float, step: float) -> None:
        self._inner = inner
        self._start, self._end, self._step = start, end, step
        self._cache: dict[tuple[str, int], dict[int, list[Sample]] | QueryError] = {}
        self.now = start  # the evaluation instant being replayed; set by the caller

    def cached(self, expr: str, at: float) -> list[Sample] | QueryError | None:
        """The answer when its range is already fetched, else None (see engine.run_queries)."""
        table = self._cache.get((expr, round((self.now - at) * 1000)))
        if table is None or isinstance(table, QueryError):
            return table
        return table.get(round(at * 1000), [])

    async def query(self, expr: str, at: float) -> list[Sample]:
        answer = self.cached(expr, at)
        if answer is None:
            delta_ms = round((self.now - at) * 1000)
            self._cache[(expr, delta_ms)] = await self._fetch(expr, delta_ms / 1000)
            answer = self.cached(expr, at)
        if isinstance(answer, QueryError):
            raise answer
        assert answer is not None
        return answer

    async def _fetch(self, expr: str, delta: float) -> dict[int, list[Sample]] | QueryError:
        table: dict[int, list[Sample]] = {}
        start, end = self._start - delta, self._end - delta
        chunk = self._step * (MAX_POINTS - 1)
        t = start
        try:
            while t <= end + 1e-9:
                stop = min(end, t + chunk)
                for series in await self._inner.query_range(expr, t, stop, self._step):
                    for ts, v in series.points:
                        table.setdefault(round(ts * 1000), []).append(Sample(series.labels, v))
                t = stop + self._step
        except QueryError as e:
            # A failed range query is a failed query at every step: no state changes.
            return e
        return table


async def walk_steps(rules: RuleSet, source: RangeSource, start: float, end: float,
               step: float | None, default_interval: float, ctx: Context,
               concurrency: int = 16) -> AsyncIterator[tuple[float, GroupRuntime, TickResult]]:
    """Tick every group at every step of the range, group by group; yields after each tick."""
    for file, group in rules.groups():
        rt = GroupRuntime.new(file, group)
        if not rt.rules:
            continue
        every = step or group.interval_or(default_interval)
        sliced = SlicedRangeSource(source, start, end, every)
        for at in steps(start, end, every):
            sliced.now = at
            yield at, rt, await tick(rt, at, sliced, ctx, concurrency)



def _emit(ev: Event, rules_by_name: Mapping[str, AlertingRule],
          transitions: list[tuple[float, int, Event, AlertingRule]],
          out: list[ReplayLine]) -> None:
    """One transition as replay reports it; every event of a known rule also goes to
    `transitions`, in the order `run` would have met them, for `stage` to work out the
    actions."""
    rule = rules_by_name.get(ev.alert.rule)
    if rule is not None:
        transitions.append((ev.at, len(transitions), ev, rule))
    if ev.kind not in ("pending", "firing", "resolved"):
        return
    a = ev.alert
    out.append(ReplayLine(ev.at, len(out), {
        "ts": ev.at, "rule": a.rule, "group": a.group, "labels": dict(a.labels),
        "state": ev.kind, "value": None if ev.kind == "resolved" else _num(a.value),
    }))


TickHook = Callable[[float, GroupRuntime, TickResult], None]


async def replay_steps(rules: RuleSet, source: RangeSource, start: float, end: float,
                       step: float | None, default_interval: float, ctx: Context,
                       concurrency: int = 16, on_tick: TickHook | None = None) -> ReplayReport:
    """`replay` tick by tick (`walk_steps`): for `on_tick(at, group, result)`, which sees each
    tick's outcome (the console's backtest reads from it when a pending alert went away, which
    the state machine does without an event), and for rules whose queries are range queries
    (a `judge`)."""
    out: list[ReplayLine] = []
    errors: dict[str, str] = {}
    transitions: list[tuple[float, int, Event, AlertingRule]] = []
    async for at, rt, result in walk_steps(rules, source, start, end, step, default_interval,
                                           ctx, concurrency):
        if on_tick is not None:
            on_tick(at, rt, result)
        for key, err in result.errors.items():
            errors.setdefault(f"{rt.group.name}/{key}", err)
        rules_by_name = {r.rule.alert: r.rule for r in rt.rules}
        for ev in result.events:
            _emit(ev, rules_by_name, transitions, out)
    out.extend(ReplayLine(line.ts, len(out) + i, line.doc)
               for i, line in enumerate(stage(transitions, rules.actions, end)))
    out.sort(key=lambda line: (line.ts, line.order))
    return ReplayReport(out, errors)


@dataclass
class _Run:
    name: str
    action: Action
    alert: Alert
    rule: AlertingRule
    trigger: str
    tier: str | None
    superseded: bool = False


def stage(transitions: Sequence[tuple[float, int, Event, AlertingRule]],
          actions: Mapping[str, Action], end: float) -> list[ReplayLine]:
    """What the actions would have done, in time order, as the daemon does it: the tier's
    actions when an alert fires or reaches a tier, each step of a staged action at the moment it
    would run (a `wait` ends early when a later tier's run of the same incident takes over, and
    with `until: resolved` the sequence stops there once the alert has resolved), "did it help?"
    `verify_for` after the last step with `on_not_helped` (a page, the next action), and
    `on_resolved` when the incident resolves — all under the daemon's interlocks (cooldown,
    max runs per hour, once per incident, target locks). Pure: no I/O, no clock.

    A run takes no time here: the replay cannot know how long a webhook would have taken."""
    lines: list[ReplayLine] = []
    history = History()
    firing: dict[tuple[str, str], list[tuple[float, bool]]] = {}
    for at, _, ev, _ in sorted(transitions, key=lambda x: (x[0], x[1])):
        if ev.kind in ("firing", "resolved"):
            firing.setdefault((ev.alert.rule, ev.alert.fingerprint), []).append(
                (at, ev.kind == "firing"))

    def firing_at(a: Alert, t: float) -> bool:
        state = False
        for at, f in firing.get((a.rule, a.fingerprint), []):
            if at > t:
                break
            state = f
        return state

    queue: list[tuple[float, int, str, Any]] = []
    seq = itertools.count()

    def push(t: float, kind: str, payload: Any) -> None:
        if t <= end + 1e-9:
            heapq.heappush(queue, (t, next(seq), kind, payload))

    acted: set[str] = set()  # incidents with a run that ran
    live: dict[str, list[_Run]] = {}  # incident -> its runs not finished
    for at, _, ev, rule in transitions:
        a = ev.alert
        if ev.kind == "resolved":
            push(at, "resolved", (a, rule))
        elif ev.kind == "firing" or (ev.kind == "escalated" and isinstance(rule.actions, dict)):
            tier = a.severity if isinstance(rule.actions, dict) else None
            for name in rule.actions_for(a.severity):
                push(at, "trigger", (name, a, rule, "alert", tier, None))

    def line(t: float, r: _Run, **extra: Any) -> None:
        doc: dict[str, Any] = {"ts": t, "rule": r.alert.rule, "labels": dict(r.alert.labels),
                               "action": r.name, "state": "would_run"}
        if r.tier is not None:
            doc["tier"] = r.tier
        if r.trigger != "alert":
            doc["trigger"] = r.trigger
        doc.update(extra)
        lines.append(ReplayLine(t, len(lines), doc))

    while queue:
        t, _, kind, payload = heapq.heappop(queue)
        if kind == "resolved":
            a, rule = payload
            history.resolved(a.incident_id)
            if rule.on_resolved and (a.incident_id in acted or not rule.action_names):
                for name in rule.on_resolved:
                    push(t, "trigger", (name, a, rule, "resolved", None, None))
        elif kind == "trigger":
            name, a, rule, trigger, tier, after = payload
            action = actions.get(name)
            if action is None:
                continue
            key = None
            if action.lock is not None:
                with contextlib.suppress(TemplateError):
                    key = compile_template(action.lock).render(TemplateData(
                        labels=dict(a.labels), value=a.value if a.value is not None
                        else math.nan)).strip() or None
            if not history.check_and_record(name, action, t, fingerprint=a.fingerprint,
                                            incident_id=a.incident_id, lock_key=key,
                                            same_incident_shares=True).allowed:
                continue
            run = _Run(name, action, a, rule, trigger, tier)
            if trigger != "resolved":
                for other in live.get(a.incident_id, []):
                    other.superseded = True
            live.setdefault(a.incident_id, []).append(run)
            acted.add(a.incident_id)
            line(t, run, **({"after": after} if after else {}))
            push(t, "step", (run, 0))
        elif kind == "step":
            run, idx = payload
            n = len(run.action.steps)
            if run.superseded or idx >= n:
                if idx >= n and not run.superseded and run.action.verify_for is not None:
                    push(t + run.action.verify_for, "verify", run)
                continue
            step = run.action.steps[idx]
            if step.wait is not None:
                push(t + step.wait.for_, "waited", (run, idx))
                continue
            if n > 1:
                line(t, run, step=f"{idx + 1}/{n} {step.kind}")
            push(t, "step", (run, idx + 1))
        elif kind == "waited":
            run, idx = payload
            if run.superseded:
                continue
            wait = run.action.steps[idx].wait
            assert wait is not None
            if wait.until == "resolved" and not firing_at(run.alert, t):
                if run.action.verify_for is not None:
                    push(t + run.action.verify_for, "verify", run)
                continue
            push(t, "step", (run, idx + 1))
        elif kind == "verify":
            run = payload
            esc = run.action.on_not_helped
            if not firing_at(run.alert, t) or esc is None:
                continue
            verdict = f"{run.name} not helped"
            if esc.page:
                lines.append(ReplayLine(t, len(lines), {
                    "ts": t, "rule": run.alert.rule, "labels": dict(run.alert.labels),
                    "action": run.name, "state": "would_page", "after": verdict}))
            if esc.action is not None:
                push(t, "trigger", (esc.action, run.alert, run.rule, "escalation", None,
                                    verdict))
    return lines


def write_jsonl(lines: Sequence[ReplayLine], fh: TextIO) -> None:
    for line in lines:
        fh.write(json.dumps(line.doc, separators=(", ", ": ")) + "\n")


def write_table(lines: Sequence[ReplayLine], fh: TextIO) -> None:
    rows = [("TIME", "STATE", "RULE", "VALUE", "LABELS")]
    for line in lines:
        d = line.doc
        when = datetime.fromtimestamp(d["ts"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        labels = {k: v for k, v in d["labels"].items() if k != "alertname"}
        if "action" in d:
            rows.append((when, "would_run", d["rule"], f"action {d['action']}",
                         format_labels(labels)))
        else:
            v = d["value"]
            rows.append((when, d["state"], d["rule"], "" if v is None else f"{v:g}",
                         format_labels(labels)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        fh.write("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  "
                 + r[4] + "\n")
    if len(rows) == 1:
        fh.write("(no transitions in this range)\n")
