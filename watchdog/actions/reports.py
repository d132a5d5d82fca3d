"""Deploy reports, the shell part: which queries a marker's report compares, and their range
queries against Prometheus over the N days before and after the deploy.

Which queries: those the marker declared (`report` in its POST); else the rules folder's
`reports:` for its service (or for every service); else the expression of every rule that
watches deploys (`baseline: {deploy: true}`), its series that concern the marker — with no
target, but `better` read from the rule's comparison.

Bounded: at most `MAX_QUERIES` queries and `MAX_SERIES` series of each, two range queries per
query (before, after) at `deploy_report.step_for(days)` — at most 11,000 points a series — and
`CONCURRENCY` queries in flight, each summarised (mean, p95) as soon as it is read and its
points dropped, under the source's timeout. A failed query is named in the report's `errors`.
It must not write anything or notify: `DeployTracker` posts the report.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, cast

from watchdog import deploy_report
from watchdog.labels import fingerprint, without_name
from watchdog.model import AlertingRule, Group, ReportQuery
from watchdog.source import RangeSeries, RangeSource, Source
from watchdog.storage.records import DeployRow

MAX_QUERIES = 20
MAX_SERIES = 10
CONCURRENCY = 2  # a week of points is ~10,000 per series: a few at a time keeps memory flat
DEFAULT_DAYS = 7.0


def _better(rule: AlertingRule) -> str | None:
    comparison = rule.threshold or (next(iter(rule.severities.values()))
                                    if rule.severities else None)
    return deploy_report.better_of(comparison.op) if comparison is not None else None


class ReportMaker:
    def __init__(self, source: Source, *,
                 declared: Callable[[], Sequence[ReportQuery]] = tuple,
                 watched: Callable[[], Sequence[tuple[Group, AlertingRule]]] = tuple) -> None:
        self.source = source
        self._declared = declared
        self._watched = watched

    def queries(self, d: DeployRow) -> list[tuple[ReportQuery, str, str | None, bool]]:
        """(query, origin, better, filter by the marker's labels) for the marker's report."""
        if d.report:
            return [(ReportQuery.model_validate(q), "marker", None, False) for q in d.report]
        declared = [q for q in self._declared() if q.service in (None, d.service)]
        if declared:
            return [(q, "rules", None, False) for q in declared]
        return [(ReportQuery(name=r.alert, query=r.expr), "rule", _better(r), True)
                for _, r in self._watched()]

    async def build(self, d: DeployRow, days: float, now: float) -> dict[str, Any]:
        w = deploy_report.windows(d.at, days, now)
        chosen = self.queries(d)
        gate = asyncio.Semaphore(CONCURRENCY)
        errors: list[dict[str, str]] = []
        truncated = len(chosen) > MAX_QUERIES

        async def one(q: ReportQuery, origin: str, better: str | None, only_marker: bool
                      ) -> list[dict[str, Any]]:
            nonlocal truncated
            async with gate:
                try:
                    before = await self._range(q.query, w.before_start, w.before_end, w.step)
                    after = ([] if w.after_end is None else
                             await self._range(q.query, w.after_start, w.after_end, w.step))
                except Exception as e:  # one query's failure is its row's, not the report's
                    errors.append({"name": q.name, "error": str(e) or type(e).__name__})
                    return []
            series: dict[str, tuple[dict[str, str], list[float], list[float]]] = {}
            for is_after, result in ((False, before), (True, after)):
                for s in result:
                    labels = without_name(s.labels)
                    if only_marker and not all(labels.get(k) == v for k, v in d.labels.items()):
                        continue
                    _, b, a = series.setdefault(fingerprint(labels), (labels, [], []))
                    (a if is_after else b).extend(v for _, v in s.points)
            if len(series) > MAX_SERIES:
                truncated = True
            goal = q.goal
            return [deploy_report.item_doc(
                name=q.name, query=q.query, origin=origin, labels=labels, before=b, after=a,
                goal=goal, stat=q.stat, better=better)
                for labels, b, a in sorted(series.values(),
                                           key=lambda e: sorted(e[0].items()))[:MAX_SERIES]]

        rows = await asyncio.gather(*(one(*c) for c in chosen[:MAX_QUERIES]))
        return {
            "id": d.id, "service": d.service, "version": d.version, "labels": d.labels,
            "at": d.at, "days": days, **w.doc(),
            "items": [item for row in rows for item in row], "errors": errors,
            "truncated": truncated, "reported_at": d.reported_at,
        }

    async def _range(self, expr: str, start: float, end: float, step: float
                     ) -> list[RangeSeries]:
        if not hasattr(self.source, "query_range"):
            raise RuntimeError("the datasource answers no range queries")
        return await cast(RangeSource, self.source).query_range(expr, start, end, step)


def days_of(d: DeployRow, asked: float | None) -> float:
    """The report's days: asked for, else the marker's, else a week."""
    if asked is not None:
        return asked
    return d.report_days if d.report_days else DEFAULT_DAYS
