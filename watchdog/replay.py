"""`watchdog replay`: evaluate the rules over a past range with the live engine.

Shell: fetches data. For speed each distinct (expression, time offset) is fetched once with
`query_range` over the whole range and sliced per step — Prometheus computes a range query as the
instant query at each step, so the values are the same — and the same `engine.tick` and state
machine as `watchdog run` then walk the steps. Actions and notifications are never executed here;
an action is only reported as `would_run`.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from watchdog.engine import GroupRuntime, TickResult, tick
from watchdog.evaluate import Context, Sample
from watchdog.interlocks import History
from watchdog.labels import format_labels
from watchdog.rulesdir import RuleSet
from watchdog.source import QueryError, RangeSource

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


async def replay(rules: RuleSet, source: RangeSource, start: float, end: float,
                 step: float | None, default_interval: float, ctx: Context,
                 concurrency: int = 16) -> ReplayReport:
    out: list[ReplayLine] = []
    errors: dict[str, str] = {}
    actions = rules.actions
    history = History()  # the daemon's interlocks: cooldown, max runs/hour, once per incident
    async for _, rt, result in walk(rules, source, start, end, step, default_interval, ctx,
                                    concurrency):
        for key, err in result.errors.items():
            errors.setdefault(f"{rt.group.name}/{key}", err)
        rules_by_name = {r.rule.alert: r.rule for r in rt.rules}
        for ev in result.events:
            if ev.kind not in ("pending", "firing", "resolved"):
                continue
            a = ev.alert
            labels = dict(a.labels)
            out.append(ReplayLine(ev.at, len(out), {
                "ts": ev.at, "rule": a.rule, "group": a.group, "labels": labels,
                "state": ev.kind, "value": None if ev.kind == "resolved" else _num(a.value),
            }))
            rule = rules_by_name.get(a.rule)
            if ev.kind == "firing" and rule is not None:
                for name in rule.actions_for(a.severity):
                    if name in actions and history.check_and_record(
                            name, actions[name], ev.at, fingerprint=a.fingerprint,
                            incident_id=a.incident_id).allowed:
                        out.append(ReplayLine(ev.at, len(out), {
                            "ts": ev.at, "rule": a.rule, "labels": labels, "action": name,
                            "state": "would_run"}))
    out.sort(key=lambda line: (line.ts, line.order))
    return ReplayReport(out, errors)


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
