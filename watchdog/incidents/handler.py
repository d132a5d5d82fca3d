"""The incident keeper: an `EventHandler` that writes one record per alert instance (opened at
pending, fired, severity reached, resolved) through the evaluation's own transaction, an
`ActionEventSink` that records when the first action started, the MTTR metrics, retention, and
`GET /api/v1/incidents`.

Two things end an incident without an event, because the state machine drops a *pending* alert
silently (as Prometheus does) when its series goes away, on reload, or at a restart beyond the
outage tolerance: those incidents, which never fired, are closed by `reconcile` — every `tick`
and after each reload — at the moment it notices. A restart also moves a pending alert's
`activeAt` (its `for` counts afresh), which changes its incident id: `start` carries the record
over to the new id.

Must not: change alert state, decide notifications or actions, or read the wall clock except
through the injected `ctx.clock`. Metrics change only after the transaction that recorded the
incident committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from prometheus_client import Counter, Histogram

from watchdog.gocompat import rfc3339 as go_time
from watchdog.handlers import LEADER, ActionEvent, DaemonContext
from watchdog.model import SEVERITY_RANK
from watchdog.state import Alert, Event
from watchdog.storage import Tx
from watchdog.storage.records import IncidentChange, IncidentRecord
from watchdog.webinput import BadInput, parse_time

if TYPE_CHECKING:
    from watchdog.rulesdir import RuleSet

log = structlog.get_logger(__name__)

RECONCILE_EVERY = 30.0
PRUNE_EVERY = 3600.0
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
# MTTR targets of the runbooks this replaces are 5 and 15 minutes: both are bucket bounds, so
# "share resolved within target" is exact; the tail reaches a day for incidents left open.
DURATION_BUCKETS = (30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400)
# Acting is meant to take seconds (an action starts with the firing), minutes at worst.
TIME_TO_ACT_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600)


def severity_of(a: Alert) -> str | None:
    return a.severity or a.labels.get("severity") or None


def _rank(severity: str | None) -> int:
    return -1 if severity is None else SEVERITY_RANK.get(severity.lower(), 0)


def record_of(a: Alert) -> IncidentRecord:
    return IncidentRecord(id=a.incident_id, rule=a.rule, group=a.group,
                          fingerprint=a.fingerprint, labels=dict(a.labels),
                          severity=severity_of(a), active_at=a.active_at, fired_at=a.fired_at)


def rfc3339(t: float | None) -> str | None:
    """Go's JSON time, as Prometheus's API writes `activeAt`; null for "not (yet)"."""
    return None if t is None else go_time(t)


def incident_json(i: IncidentRecord, now: float) -> dict[str, Any]:
    """The §8 document. `durationSeconds` is firing → resolved (so far, while open); null for an
    incident that never fired."""
    end = i.resolved_at if i.resolved_at is not None else now
    return {
        "id": i.id, "rule": i.rule, "group": i.group, "labels": dict(i.labels),
        "severity": i.severity, "state": "open" if i.open else "resolved",
        "activeAt": rfc3339(i.active_at), "firedAt": rfc3339(i.fired_at),
        "resolvedAt": rfc3339(i.resolved_at),
        "durationSeconds": None if i.fired_at is None else max(0.0, end - i.fired_at),
        "ack": None if i.ack_at is None else {"by": i.ack_by or "", "at": rfc3339(i.ack_at)},
        "actions": [{"name": a.name, "run_id": a.run_id, "status": a.status,
                     "verification": a.verification} for a in i.actions],
        "notifications": i.notifications,
    }


class IncidentMetrics:
    def __init__(self, registry: Any) -> None:
        self.total = Counter(
            "watchdog_incidents", "Incidents that started firing, by rule and the severity "
            "they fired with.", ["rule", "severity"], registry=registry)
        self.duration = Histogram(
            "watchdog_incident_duration_seconds", "From firing to resolved, by rule and the "
            "highest severity the incident reached (MTTR is sum / count).",
            ["rule", "severity"], buckets=DURATION_BUCKETS, registry=registry)
        self.time_to_act = Histogram(
            "watchdog_incident_time_to_act_seconds", "From firing to the start of the first "
            "action run (not dry runs) for the incident.", ["rule", "severity"],
            buckets=TIME_TO_ACT_BUCKETS, registry=registry)


class IncidentsHandler:
    def __init__(self, ctx: DaemonContext, *, tick: float | None = RECONCILE_EVERY) -> None:
        self.ctx = ctx
        self.tick = tick
        self.metrics = IncidentMetrics(ctx.registry)
        # Open incidents that have not fired: the ones that can end without an event.
        self.pending: dict[str, tuple[str, str, str]] = {}  # id -> (group, rule, fingerprint)
        self._task: asyncio.Task[None] | None = None
        self._pruned_at: float | None = None
        ctx.routes.append(web.get("/api/v1/incidents", self.http_list))
        ctx.action_sinks.append(self)

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        # Several replicas: alert state is loaded group by group as leases are taken, not at
        # start, so there is nothing to adopt (and closing what is not live here would close
        # other replicas' incidents).
        if not self.ctx.leases.shared:
            await self.adopt(self.ctx.clock())
        if self.tick is not None:
            self._task = asyncio.create_task(self._loop(self.tick), name="incidents")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def on_rules(self, rules: RuleSet) -> None:
        # A reload drops the pending alerts of changed rules without an event.
        await self.reconcile(self.ctx.clock())

    async def adopt(self, now: float) -> None:
        """At start: records for live alerts that have none (state from before this version,
        or a pending alert whose restart moved its id), and pending-only incidents whose alert
        the restart dropped are closed."""
        live = {(a.group, a.rule, a.fingerprint): a for a in self.ctx.alerts.alerts()
                if a.state != "inactive"}
        ids = {a.incident_id for a in live.values()}
        pending: dict[str, tuple[str, str, str]] = {}
        async with self.ctx.storage.transaction() as tx:
            known: set[str] = set()
            for i in await tx.incidents.list(state="open", limit=None):
                key = (i.group, i.rule, i.fingerprint)
                a = live.get(key)
                if i.id in ids:
                    known.add(i.id)
                elif i.fired_at is not None:
                    continue  # its `resolved` event comes with the restored state
                elif a is not None and a.state == "pending" and a.incident_id not in known:
                    await tx.incidents.rekey(i.id, a.incident_id, a.active_at)
                    known.add(a.incident_id)
                else:
                    await tx.incidents.resolve([(i.id, now)])
            await tx.incidents.open([record_of(a) for a in live.values()
                                     if a.incident_id not in known])
            for a in live.values():
                if a.state == "pending":
                    pending[a.incident_id] = (a.group, a.rule, a.fingerprint)
        self.pending = pending

    async def _loop(self, tick: float) -> None:
        while True:
            await asyncio.sleep(tick)
            try:
                now = self.ctx.clock()
                await self.reconcile(now)
                if self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY:
                    self._pruned_at = now
                    await self.prune(now)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("incident bookkeeping failed")

    async def reconcile(self, now: float) -> int:
        """Close the pending-only incidents whose alert is gone; how many."""
        if not self.pending:
            return 0
        active = {a.incident_id for a in self.ctx.alerts.alerts() if a.state != "inactive"}
        gone = [i for i in self.pending if i not in active]
        if not gone:
            return 0
        async with self.ctx.storage.transaction() as tx:
            await tx.incidents.resolve([(i, now) for i in gone])
            tx.on_commit(lambda: self._forget(gone))
        return len(gone)

    def _forget(self, ids: Sequence[str]) -> None:
        for i in ids:
            self.pending.pop(i, None)

    async def prune(self, now: float) -> int:
        """Delete incidents resolved longer than INCIDENT_RETENTION ago, and close fired ones
        whose alert is gone from the live state without a `resolved` (none should be)."""
        retention = self.ctx.settings.incident_retention
        seen = {a.incident_id for a in self.ctx.alerts.alerts()}
        leases = self.ctx.leases
        lead = leases.held(LEADER)
        # Several replicas: the leader's view of the others' groups is a mirror read every
        # second, so an incident opened elsewhere just now may not be in it yet.
        recent = now - 4 * leases.ttl if leases.shared else math.inf
        async with self.ctx.storage.transaction() as tx:
            if lead is None:
                return 0
            if leases.shared:
                await tx.fence([lead])
            for i in await tx.incidents.list(state="open", limit=None):
                if (i.id not in seen and i.id not in self.pending and i.fired_at is not None
                        and i.fired_at < recent):
                    log.warning("incident without its alert: closed", incident=i.id,
                                rule=i.rule)
                    await tx.incidents.resolve([(i.id, now)])
            n = await tx.incidents.prune(now - retention)
        if n:
            log.info("incidents pruned", count=n, retention=retention)
        return n

    # ---- events ---------------------------------------------------------------------------

    async def on_events(self, tx: Tx, events: Sequence[Event], at: float) -> None:
        """One read and at most three batched writes per evaluation, however many events: a
        storm of a thousand alerts must not hold the evaluation's transaction for seconds."""
        if not events:
            return
        known = await tx.incidents.find(e.alert.incident_id for e in events)
        # Every event may name an incident without a record: a new one (pending), or state
        # written by a release without incidents. Open it from the alert itself.
        new: dict[str, IncidentRecord] = {}
        for e in events:
            inc = e.alert.incident_id
            if inc not in known and inc not in new:
                new[inc] = record_of(e.alert)
        await tx.incidents.open(list(new.values()))
        state = {**known, **new}  # each record as it stands after the events so far
        changes: dict[str, IncidentChange] = {}
        ended: list[tuple[str, float]] = []
        for e in events:
            self._apply(e, state, changes, ended, tx.on_commit)
        await tx.incidents.update(list(changes.values()))
        await tx.incidents.resolve(ended)

    def _apply(self, e: Event, state: dict[str, IncidentRecord],
               changes: dict[str, IncidentChange], ended: list[tuple[str, float]],
               after: Callable[[Callable[[], object]], None]) -> None:
        a = e.alert
        inc = a.incident_id
        cur = state[inc]
        if e.kind == "pending":
            key = (a.group, a.rule, a.fingerprint)
            after(lambda: self.pending.__setitem__(inc, key))
            return
        if e.kind in ("firing", "escalated", "deescalated"):
            sev, labels = severity_of(a), dict(a.labels)
            if _rank(sev) < _rank(cur.severity):  # the highest reached stays, with its labels
                sev, labels = cur.severity, dict(cur.labels)
            fired = cur.fired_at
            if e.kind == "firing" and fired is None:
                fired = a.fired_at if a.fired_at is not None else e.at
            changes[inc] = IncidentChange(inc, sev, labels, fired)  # the last one wins
            state[inc] = replace(cur, severity=sev, labels=labels, fired_at=fired)
            if e.kind == "firing":
                fired_sev = severity_of(a) or ""
                after(lambda: self.metrics.total.labels(a.rule, fired_sev).inc())
                after(lambda: self.pending.pop(inc, None))
            return
        if e.kind == "resolved" and cur.resolved_at is None:
            end = a.resolved_at if a.resolved_at is not None else e.at
            ended.append((inc, end))
            state[inc] = replace(cur, resolved_at=end)
            after(lambda: self.pending.pop(inc, None))
            if cur.fired_at is not None:
                took, sev_reached = max(0.0, end - cur.fired_at), cur.severity or ""
                after(lambda: self.metrics.duration.labels(a.rule, sev_reached).observe(took))

    async def on_action_event(self, event: ActionEvent, tx: Tx | None = None) -> None:
        """The first action run of an incident started: time-to-act."""
        if event.kind != "started" or event.step is not None or event.run_id is None:
            return
        if tx is None:
            async with self.ctx.storage.transaction() as own:
                await self.on_action_event(event, own)
            return
        run = await tx.runs.get(event.run_id)
        if run is None or run.incident_id is None or run.dry_run:
            return
        if not await tx.incidents.first_action(run.incident_id, event.at):
            return
        cur = (await tx.incidents.find([run.incident_id])).get(run.incident_id)
        if cur is None or cur.fired_at is None:
            return
        took, sev = max(0.0, event.at - cur.fired_at), cur.severity or ""
        tx.on_commit(lambda: self.metrics.time_to_act.labels(cur.rule, sev).observe(took))

    # ---- HTTP -----------------------------------------------------------------------------

    async def list(self, *, rule: str | None = None, state: str | None = None,
                   since: float | None = None, limit: int = DEFAULT_LIMIT
                   ) -> list[dict[str, Any]]:
        async with self.ctx.storage.transaction() as tx:
            rows = await tx.incidents.list(rule=rule, state=state, since=since, limit=limit)
        now = self.ctx.clock()
        return [incident_json(i, now) for i in rows]

    async def http_list(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            state = q.get("state") or None
            if state not in (None, "open", "resolved"):
                raise ValueError(f"state: expected 'open' or 'resolved', got {state!r}")
            since = _time(q["since"]) if q.get("since") else None
            limit = _limit(q.get("limit", ""))
        except ValueError as e:
            return web.json_response({"status": "error", "errorType": "bad_data",
                                      "error": str(e)}, status=400)
        data = await self.list(rule=q.get("rule") or None, state=state, since=since,
                               limit=limit)
        return web.json_response({"status": "success", "data": data})


def _time(text: str) -> float:
    try:
        return parse_time(text, "since")
    except BadInput as e:
        raise ValueError(str(e)) from None


def _limit(text: str) -> int:
    if not text:
        return DEFAULT_LIMIT
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"limit: expected a whole number, got {text!r}") from None
    if not 1 <= n <= MAX_LIMIT:
        raise ValueError(f"limit: expected 1 to {MAX_LIMIT}, got {n}")
    return n
