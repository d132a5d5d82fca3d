"""`watchdog replay`: evaluate the rules over a past range with the live engine.

Shell: fetches data. For speed each distinct (expression, time offset) is fetched once with
`query_range` over the whole range and sliced per step — Prometheus computes a range query as the
instant query at each step, so the values are the same — and the same `engine.tick` and state
machine as `watchdog run` then walk the steps. Actions and notifications are never executed here;
an action is only reported as `would_run` — with each step of a staged action at the moment it
would run (`stage`), so a backfilled bad deploy shows the whole sequence in order.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import math
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from watchdog.engine import GroupRuntime, TickResult, tick
from watchdog.evaluate import Context, Sample
from watchdog.gotmpl import TemplateData, TemplateError, compile_template
from watchdog.interlocks import History
from watchdog.labels import format_labels
from watchdog.model import Action, AlertingRule
from watchdog.rulesdir import RuleSet
from watchdog.source import QueryError, RangeSource
from watchdog.state import Alert, Event

MAX_POINTS = 10_000  # Prometheus refuses query_range answers of more than 11,000 points/series


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


def steps(start: float, end: float, step: float) -> Iterator[float]:
    n = 0
    while start + n * step <= end + 1e-9:
        yield start + n * step
        n += 1


@dataclass(frozen=True)
class ReplayLine:
    ts: float
    order: int
    doc: dict[str, Any]


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else v


async def walk(rules: RuleSet, source: RangeSource, start: float, end: float,
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


@dataclass
class ReplayReport:
    lines: list[ReplayLine]
    errors: dict[str, str]  # "group/rule" -> first error (a failed query changes no state)


TickHook = Callable[[float, GroupRuntime, TickResult], None]


async def replay(rules: RuleSet, source: RangeSource, start: float, end: float,
                 step: float | None, default_interval: float, ctx: Context,
                 concurrency: int = 16, on_tick: TickHook | None = None) -> ReplayReport:
    """`on_tick(at, group, result)` sees each tick's outcome (the console's backtest reads
    from it when a pending alert went away, which the state machine does without an event)."""
    out: list[ReplayLine] = []
    errors: dict[str, str] = {}
    transitions: list[tuple[float, int, Event, AlertingRule]] = []
    async for at, rt, result in walk(rules, source, start, end, step, default_interval, ctx,
                                    concurrency):
        if on_tick is not None:
            on_tick(at, rt, result)
        for key, err in result.errors.items():
            errors.setdefault(f"{rt.group.name}/{key}", err)
        rules_by_name = {r.rule.alert: r.rule for r in rt.rules}
        for ev in result.events:
            rule = rules_by_name.get(ev.alert.rule)
            if rule is not None:
                transitions.append((ev.at, len(transitions), ev, rule))
            if ev.kind not in ("pending", "firing", "resolved"):
                continue
            a = ev.alert
            out.append(ReplayLine(ev.at, len(out), {
                "ts": ev.at, "rule": a.rule, "group": a.group, "labels": dict(a.labels),
                "state": ev.kind, "value": None if ev.kind == "resolved" else _num(a.value),
            }))
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
