"""Deploy markers and their verdicts: `POST /api/v1/deploys` (or the MQTT "deploy" command)
captures the baselines of `baseline: {deploy: true}` rules and opens a verification window — the
runbooks' "30-minute stability window" — whose verdict a CD pipeline gates on
(`GET /api/v1/deploys/{id}`: open → pass | fail).

The verdict, and when it is decided:
- **fail** as soon as an alert concerning the marker fires inside the window (decided in the
  evaluation's own transaction), or when one is still firing at the window's end (one that
  began before the marker included: the service is not stable);
- **pass** at the window's end otherwise.
A verdict is decided once (`DeployRepo.decide` changes only an open marker), in one storage
transaction with everything it causes: the notification (a fail is a page — `severity:
critical`, a PagerDuty trigger — a pass an ordinary action message) and the runs of the
marker's `on_fail` actions. Nothing is sent or executed before that commit; a crash before it
leaves the marker open, to be decided again by the next process.

Shell: queries Prometheus (baselines at the marker, the before/after lines of a pass), writes
the store, emits `ActionEvent`s (kind "started" when the marker is set, "succeeded" for a pass,
"failed" for a fail; action "deploy"). It must not evaluate rules: the captured values go to the
engine through `deploy_baselines()`, which the daemon passes into `evaluate.Context` on every
tick; and it never queries Prometheus inside a transaction.

Which series and alerts a marker concerns: those whose labels include the marker's `labels`, or
`{service: <service>}` when it gives none — the label the example rules and the runbooks use.
A later marker replaces the baseline of each series it captures; other series keep theirs.

Several replicas on one store (PostgreSQL): every replica keeps the open markers and the
baselines, read again within `SYNC_EVERY` of a change made through another (the store counts
deploy changes: one small row is read when nothing changed), so the evaluation of any group
compares with the latest baselines and fails a window as its alert fires, wherever the marker was
taken. A window that ended — or a report that is due — is closed by the one live replica that
claims the marker in the store (`take_due`, `FOR UPDATE SKIP LOCKED`, like action runs'
claims): its verdict is computed from the stored baselines and recorded alerts plus the alerts
firing now, and the claim is checked inside the verdict's (and the report's) transaction, so a
replica that froze past its claim writes nothing. A replica killed while holding a claim leaves
it to run out after `LEASE_TTL`; another replica then takes it — unless the replica comes back
first under the same `REPLICA_ID` (a pod restarted in place): its first look takes back what its
earlier process claimed at once, as it does its action runs and its leases.

Reports (`watchdog.actions.reports`): a marker with `report_days` (7 by default) has its report
— the days before against the days after — posted to chat once, when its after-window is over:
`mark_reported` and the notification commit in one transaction (decided once, like a verdict;
a crash before the commit leaves it due for the next process). `GET .../report` computes it at
any time; `POST .../report` also posts it then.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Literal

import structlog
from prometheus_client import Gauge

from watchdog.actions.errors import CommandError
from watchdog.actions.reports import ReportMaker, days_of
from watchdog.actions.store import ActionStore, DeployRow, DeploysView
from watchdog.actions.timing import Stopping, Waker
from watchdog.deploy_report import DAY
from watchdog.durations import format_duration
from watchdog.handlers import ActionEvent, DaemonContext
from watchdog.labels import fingerprint, format_labels, without_name
from watchdog.model import AlertingRule, Group, ReportQuery
from watchdog.state import Event
from watchdog.storage import LeaseLost, Tx

log = structlog.get_logger(__name__)

DEFAULT_WINDOW = 30 * 60.0  # USE-CASES: "watch a 30-minute stability window"
DEFAULT_REPORT_DAYS = 7.0  # "a week-before/after report"
REPORT_RECHECK = 300.0  # due reports are looked for at least this often (and on every tick)
SYNC_EVERY = 1.0  # several replicas: how stale a replica's markers and baselines may be
MAX_SUMMARY_LINES = 10  # a summary is a chat message, not a report
FAILED_ALERT = "DeployVerificationFailed"  # the alertname a failed verdict pages with
# A client-chosen marker id (an Argo Rollouts / Flagger template names it before it exists):
# safe in a URL path and a label value.
DEPLOY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
API_STATUS = {"open": "open", "passed": "pass", "failed": "fail"}

# Runs one `on_fail` action inside the verdict's transaction: (tx, action, labels) -> what
# happened, for the summary ("run <id>" or why it was held back).
OnFailTrigger = Callable[[Tx, str, Mapping[str, str]], Awaitable[str]]


def concerns(labels: Mapping[str, str], match: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in match.items())


def api_status(stored: str) -> str:
    return API_STATUS.get(stored, stored)


def verdict_doc(d: DeployRow, alerts: Sequence[tuple[str, dict[str, str], float | None, float]],
                baselines: Sequence[tuple[str, dict[str, str], float]]) -> dict[str, Any]:
    """`GET /api/v1/deploys/{id}`: the marker and its verdict (times in Unix seconds, like the
    marker's POST answer)."""
    by_rule: dict[str, list[dict[str, Any]]] = {}
    for rule, labels, value in baselines:
        by_rule.setdefault(rule, []).append({"labels": labels, "value": value})
    return {
        "id": d.id, "service": d.service, "version": d.version, "labels": d.labels,
        "status": api_status(d.status), "at": d.at, "window": d.window_end - d.at,
        "window_end": d.window_end, "decided_at": d.decided_at, "summary": d.summary,
        "on_fail": list(d.on_fail),
        "alerts": [{"rule": rule, "labels": labels, "value": _finite(value), "at": at}
                   for rule, labels, value, at in alerts],
        "baselines": by_rule,
    }


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def window_due(d: DeployRow, now: float) -> bool:
    return d.status == "open" and d.window_end <= now


def report_due(d: DeployRow, now: float) -> bool:
    return (d.report_days is not None and d.reported_at is None
            and d.at + d.report_days * DAY <= now)


class DeployTracker:
    def __init__(self, ctx: DaemonContext, store: ActionStore, waker: Waker, *,
                 actions: Callable[[], Collection[str]] = frozenset,
                 on_fail: OnFailTrigger | None = None) -> None:
        self.ctx = ctx
        self.store = store
        self.waker = waker
        self.rules: list[tuple[Group, AlertingRule]] = []  # those with baseline: {deploy: true}
        self._actions = actions
        self._on_fail = on_fail
        self._baselines: dict[str, dict[str, float]] = {}
        self._open: dict[str, DeployRow] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._declared: list[ReportQuery] = []
        self.reports = ReportMaker(ctx.source, declared=lambda: self._declared,
                                   watched=lambda: self.rules)
        self._report_loop: asyncio.Task[None] | None = None
        # Several replicas (a shared store): the markers are read from the store when its
        # count of deploy changes moves, and due work is claimed there.
        self.shared = ctx.leases.shared
        self._version: int | None = None  # the count last read
        self._unreported: dict[str, DeployRow] = {}
        self._working: dict[str, asyncio.Task[None]] = {}  # claimed here: marker id -> its work
        # Whether a look took the claims an earlier process of this replica id left (once).
        self._adopted = False
        self._claim_loop: asyncio.Task[None] | None = None
        Gauge("watchdog_deploy_windows_open",
              "Deploy markers whose window is open, as this replica knows them (with several "
              "replicas: the store's, read within a second of a change).",
              registry=ctx.registry).set_function(lambda: len(self._open))

    def set_rules(self, rules: Sequence[tuple[Group, AlertingRule]]) -> None:
        self.rules = [(g, r) for g, r in rules if r.baseline is not None and r.baseline.deploy]

    def set_reports(self, declared: Sequence[ReportQuery]) -> None:
        """The rules folder's `reports:` queries."""
        self._declared = list(declared)

    def baselines(self) -> Mapping[str, Mapping[str, float]]:
        return self._baselines

    async def start(self) -> None:
        if self.shared:
            await self.sync()
            self._claim_loop = asyncio.create_task(self._claims(), name="deploy-claims")
            return
        self._baselines = await self.store.baselines()
        for d in await self.store.deploys(status="open", limit=10_000):
            self._open[d.id] = d
            self._spawn(d)
        self._report_loop = asyncio.create_task(self._reports_due(), name="deploy-reports")

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        if self._report_loop is not None:
            tasks.append(self._report_loop)
            self._report_loop = None
        if self._claim_loop is not None:
            tasks.append(self._claim_loop)
            self._claim_loop = None
        working = list(self._working)
        tasks += self._working.values()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for deploy_id in working:  # handed back now rather than after LEASE_TTL
            with contextlib.suppress(Exception):
                await self.store.release_deploy(deploy_id)

    def _spawn(self, d: DeployRow) -> None:
        task = asyncio.create_task(self._window(d))
        self._tasks[d.id] = task
        task.add_done_callback(lambda t: self._forget(d.id, t))

    def _forget(self, deploy_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(deploy_id) is task:
            del self._tasks[deploy_id]

    def _closed(self, deploy_id: str) -> None:
        """After the verdict committed: the window has nothing left to decide."""
        self._open.pop(deploy_id, None)
        task = self._tasks.pop(deploy_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    # ---- marking ----------------------------------------------------------------------------

    async def mark(self, service: str, version: str, labels: Mapping[str, str],
                   window: float | None, on_fail: Sequence[str] = (),
                   deploy_id: str | None = None, *, report: Sequence[ReportQuery] = (),
                   report_days: float | None = None) -> tuple[bool, dict[str, Any]]:
        """(created, the marker's answer). A client-chosen `deploy_id` makes the call
        idempotent: the same id for the same service and version answers the marker that
        exists (created = False); for another deploy it is a conflict."""
        if deploy_id is not None:
            if not DEPLOY_ID.match(deploy_id):
                raise CommandError("id: 1-128 letters, digits, '.', '_' or '-', starting with a "
                                   "letter or digit")
            async with self.ctx.storage.transaction() as tx:
                have = await tx.deploys.get(deploy_id)
            if have is not None:
                if (have.service, have.version) != (service, version):
                    raise CommandError(f"deploy {deploy_id} exists for {have.service} "
                                       f"{have.version}", 409)
                return False, self._answer(have, {}, {})
        known = self._actions()
        unknown = [n for n in on_fail if n not in known]
        if unknown:
            raise CommandError(f"on_fail: no action named {', '.join(map(repr, unknown))} "
                               "in the rules folder", 422)
        at = self.ctx.clock()
        match = dict(labels) or {"service": service}
        d = DeployRow(id=deploy_id or uuid.uuid4().hex, service=service, version=version,
                      labels=match, at=at,
                      window_end=at + (DEFAULT_WINDOW if window is None else window),
                      status="open", summary="", on_fail=tuple(dict.fromkeys(on_fail)),
                      report=tuple(q.model_dump(exclude_none=True, exclude={"service"})
                                   for q in report),
                      report_days=(DEFAULT_REPORT_DAYS if report_days is None
                                   else report_days or None))
        captured, errors = await self._capture(match, at)
        # The marker and its baselines are stored before anyone is told about them.
        try:
            await self.store.insert_deploy(d, captured)
        except Exception:
            if deploy_id is not None:  # the same id from two callers at once: one wins
                raise CommandError(f"deploy {deploy_id} exists", 409) from None
            raise
        for rule, fp, value, _ in captured:
            self._baselines.setdefault(rule, {})[fp] = value
        self._open[d.id] = d
        if self.shared:
            if d.report_days is not None:
                self._unreported[d.id] = d
        else:
            self._spawn(d)
        per_rule: dict[str, int] = {}
        for rule, *_ in captured:
            per_rule[rule] = per_rule.get(rule, 0) + 1
        detail = (f"deploy {service} {version}: baselines captured for {len(captured)} series; "
                  f"verifying for {format_duration(d.window_end - at)}")
        if errors:
            detail += f"; {len(errors)} rules could not be queried"
        log.info("deploy.marked", deploy_id=d.id, service=service, version=version,
                 series=len(captured), errors=errors, on_fail=list(d.on_fail))
        await self._emit("started", d, detail)
        return True, self._answer(d, per_rule, errors)

    @staticmethod
    def _answer(d: DeployRow, per_rule: Mapping[str, int], errors: Mapping[str, str]
                ) -> dict[str, Any]:
        return {"id": d.id, "service": d.service, "version": d.version, "labels": d.labels,
                "at": d.at, "window_end": d.window_end, "status": api_status(d.status),
                "on_fail": list(d.on_fail), "baselines": dict(per_rule), "errors": dict(errors),
                "report": list(d.report), "report_days": d.report_days,
                "report_at": None if d.report_days is None else d.at + d.report_days * DAY}

    async def _capture(self, match: Mapping[str, str], at: float
                       ) -> tuple[list[tuple[str, str, float, dict[str, str]]], dict[str, str]]:
        captured: list[tuple[str, str, float, dict[str, str]]] = []
        errors: dict[str, str] = {}
        for group, rule in self.rules:
            try:
                samples = await self.ctx.source.query(rule.expr, at - group.query_offset)
            except Exception as e:  # one failing rule must not lose the others' baselines
                errors[rule.alert] = str(e) or type(e).__name__
                continue
            for s in samples:
                labels = without_name(s.labels)
                if concerns(labels, match) and math.isfinite(s.value):
                    captured.append((rule.alert, fingerprint(labels), s.value, labels))
        return captured, errors

    # ---- the window -------------------------------------------------------------------------

    async def observe(self, tx: Tx, events: Sequence[Event]) -> None:
        """Inside the evaluation's transaction: an alert that fires within an open window is
        recorded, and fails the deploy in that same transaction."""
        for ev in events:
            if ev.kind != "firing":
                continue
            for d in list(self._open.values()):
                if not (d.at <= ev.at <= d.window_end and concerns(ev.alert.labels, d.labels)):
                    continue
                await tx.deploys.record_alert(d.id, ev.alert.rule, ev.alert.fingerprint,
                                              ev.alert.labels, ev.alert.value, ev.at)
                shown = {k: v for k, v in ev.alert.labels.items() if k != "alertname"}
                value = "" if ev.alert.value is None else f" = {ev.alert.value:.4g}"
                base = ev.alert.baseline
                if base is not None and ev.alert.value is not None:
                    value += f" (baseline {base:.4g}"
                    value += f", {(ev.alert.value - base) / abs(base):+.0%})" if base else ")"
                summary = (f"deploy {d.service} {d.version}: FAIL — {ev.alert.rule}"
                           f"{format_labels(shown)}{value} fired "
                           f"{format_duration(max(0.0, round(ev.at - d.at)))} into the "
                           f"{format_duration(d.window_end - d.at)} window")
                await self.decide(tx, d, "failed", summary, ev.at, alerts=1)

    async def _window(self, d: DeployRow) -> None:
        try:
            await self.waker.sleep_until(d.window_end)
        except Stopping:
            return
        try:
            await self.close(d)
        except Exception:
            # Left open in the store: the next start (or another replica) decides it.
            log.exception("deploy.close_failed", deploy_id=d.id)

    async def close(self, d: DeployRow, *, claimed: bool = False) -> None:
        """The window ended: pass, unless an alert concerning the marker fired in it or is
        firing now. `claimed`: this replica claimed the marker (`take_due`), and the claim is
        checked inside the verdict's transaction."""
        firing = [a for a in self.ctx.alerts.alerts()
                  if a.state == "firing" and concerns(a.labels, d.labels)]
        window = format_duration(d.window_end - d.at)
        comparison = await self._comparison(d)  # Prometheus, before the transaction
        at = self.ctx.clock()
        async with self.ctx.storage.transaction() as tx:
            if claimed:
                await self.store.claim_deploy(tx, d.id)
            fired = await tx.deploys.alerts(d.id)
            seen = {(rule, fingerprint(lb)) for rule, lb, _, _ in fired}
            for a in firing:
                if (a.rule, fingerprint(a.labels)) not in seen:
                    # Firing at the end counts even if it started before the marker.
                    fired.append((a.rule, dict(a.labels), a.value, a.fired_at or a.active_at))
            lines = [f"{rule}{format_labels({k: v for k, v in lb.items() if k != 'alertname'})}"
                     + ("" if v is None else f" = {v:.4g}") for rule, lb, v, _ in fired]
            if fired:
                status: Literal["passed", "failed"] = "failed"
                summary = (f"deploy {d.service} {d.version}: FAIL — {len(fired)} alerts fired "
                           f"in the {window} window: " + "; ".join(lines[:MAX_SUMMARY_LINES]))
            else:
                status = "passed"
                summary = f"deploy {d.service} {d.version}: PASS — no alerts in the {window} window"
            if comparison:
                summary += "; " + "; ".join(comparison[:MAX_SUMMARY_LINES])
            decided = await self.decide(tx, d, status, summary, at, alerts=len(fired))
        if not decided:
            self._open.pop(d.id, None)  # decided before (an alert, another replica)

    async def decide(self, tx: Tx, d: DeployRow, status: Literal["passed", "failed"],
                     summary: str, at: float, *, alerts: int) -> bool:
        """Record the verdict, its notification and the `on_fail` runs, all through `tx`;
        False (and nothing written) when the marker was decided already."""
        if not await tx.deploys.decide(d.id, status, summary, at):
            return False
        runs: list[str] = []
        if status == "failed" and d.on_fail and self._on_fail is not None:
            labels = {**d.labels, "service": d.service, "version": d.version,
                      "deploy_id": d.id}
            for name in d.on_fail:
                runs.append(f"{name}: {await self._on_fail(tx, name, labels)}")
        detail = summary + (f"; on_fail: {', '.join(runs)}" if runs else "")
        if detail != summary:
            await tx.deploys.finish(d.id, status, detail)
        await self._emit("succeeded" if status == "passed" else "failed", d, detail,
                         {"result": api_status(status), "alerts": alerts}, tx=tx,
                         page=status == "failed")
        tx.on_commit(lambda: self._closed(d.id))
        log.info("deploy.verified", deploy_id=d.id, status=status, summary=detail)
        return True

    async def _comparison(self, d: DeployRow) -> list[str]:
        """Baseline at the marker against now, per captured series: "the week before and
        after" in small."""
        rows = await self.store.baselines_of(d.id)
        if not rows:
            return []
        exprs = {r.alert: (g, r) for g, r in self.rules}
        now = self.ctx.clock()
        current: dict[str, dict[str, float]] = {}
        out: list[str] = []
        for rule, labels, base in rows[:MAX_SUMMARY_LINES]:
            if rule not in current and rule in exprs:
                g, r = exprs[rule]
                try:
                    samples = await self.ctx.source.query(r.expr, now - g.query_offset)
                except Exception:
                    samples = []
                current[rule] = {fingerprint(without_name(s.labels)): s.value for s in samples}
            value = current.get(rule, {}).get(fingerprint(labels))
            change = ""
            if value is not None and base:
                change = f" ({(value - base) / abs(base):+.0%})"
            now_text = "n/a" if value is None else f"{value:.4g}"
            out.append(f"{rule}{format_labels(labels)} {base:.4g} → {now_text}{change}")
        return out

    async def _emit(self, kind: Literal["started", "succeeded", "failed"], d: DeployRow,
                    detail: str, extra: Mapping[str, Any] | None = None, *,
                    tx: Tx | None = None, page: bool = False) -> None:
        labels = {**d.labels, "service": d.service, "version": d.version}
        if page:
            labels.update(alertname=FAILED_ALERT, deploy_id=d.id)
        event = ActionEvent(kind=kind, action="deploy", at=self.ctx.clock(), labels=labels,
                            detail=detail, run_id=f"deploy-{d.id}",
                            extra={"deploy_id": d.id, "service": d.service,
                                   "version": d.version, **(extra or {})}, page=page)
        if tx is not None:
            # Inside the verdict's transaction: a failure to record the notification must
            # roll the verdict back with it, so it is decided (and told) again.
            await self.ctx.emit_action_event(event, tx)
            return
        try:
            await self.ctx.emit_action_event(event)
        except Exception:
            log.exception("deploy.emit_failed", deploy_id=d.id)

    # ---- reports ----------------------------------------------------------------------------

    async def report(self, deploy_id: str, days: float | None = None, *,
                     post: bool = False) -> dict[str, Any]:
        """`GET /api/v1/deploys/{id}/report` (computed now); with `post`, also posted to chat
        now (the POST: on demand, whether or not the scheduled one was posted)."""
        async with self.ctx.storage.transaction() as tx:
            d = await tx.deploys.get(deploy_id)
        if d is None:
            raise CommandError(f"no deploy with id {deploy_id}", 404)
        now = self.ctx.clock()
        doc = await self.reports.build(d, days_of(d, days), now)
        if post:
            async with self.ctx.storage.transaction() as tx:
                await self._emit_report(tx, d, doc, f"report-{d.id}-{now:.3f}")
        return doc

    async def post_due_reports(self) -> float | None:
        """Post every report whose after-window is over and that nobody posted yet; the time
        the next one is due (None: none is)."""
        next_due: float | None = None
        for d in await self.store.unreported(limit=1000):
            if d.report_days is None:
                continue
            due = d.at + d.report_days * DAY
            if due > self.ctx.clock():
                next_due = due if next_due is None else min(next_due, due)
                continue
            try:
                await self._post_scheduled(d)
            except Exception:  # left due: the next look (or another replica) posts it
                log.exception("deploy.report_failed", deploy_id=d.id)
        return next_due

    async def _post_scheduled(self, d: DeployRow, *, claimed: bool = False) -> None:
        assert d.report_days is not None
        doc = await self.reports.build(d, d.report_days, self.ctx.clock())  # before the tx
        async with self.ctx.storage.transaction() as tx:
            if claimed:
                await self.store.claim_deploy(tx, d.id)
            at = self.ctx.clock()
            if not await tx.deploys.mark_reported(d.id, at):
                return  # posted by another replica meanwhile
            doc["reported_at"] = at
            await self._emit_report(tx, d, doc, f"report-{d.id}")
            tx.on_commit(lambda: self._unreported.pop(d.id, None))
        log.info("deploy.reported", deploy_id=d.id, items=len(doc["items"]),
                 errors=len(doc["errors"]))

    async def _emit_report(self, tx: Tx, d: DeployRow, doc: Mapping[str, Any],
                           run_id: str) -> None:
        met = [x["verdict"] for x in doc["items"] if x["verdict"] is not None]
        detail = (f"deploy report {d.service} {d.version}: {doc['days']:g} days before and after"
                  + (f"; targets met {met.count('met')} of {len(met)}" if met else ""))
        event = ActionEvent(kind="report", action="deploy", at=self.ctx.clock(),
                            labels={**d.labels, "service": d.service, "version": d.version},
                            detail=detail, run_id=run_id,
                            extra={"deploy_id": d.id, "report": dict(doc)})
        await self.ctx.emit_action_event(event, tx)

    async def _reports_due(self) -> None:
        while True:
            try:
                next_due = await self.post_due_reports()
            except Exception:
                log.exception("deploy.reports_failed")
                next_due = None
            deadline = self.ctx.clock() + REPORT_RECHECK
            try:
                await self.waker.sleep_until(deadline if next_due is None
                                             else min(deadline, next_due))
            except Stopping:
                return

    # ---- several replicas: markers read when they change, due work claimed ----------------

    async def sync(self) -> bool:
        """The open and unreported markers and the baselines as the store has them — read only
        when its count of deploy changes moved since the last read. Whether it read them."""
        version, view = await self.store.deploys_changed(self._version)
        if view is None:
            return False
        self._apply(version, view)
        return True

    def _apply(self, version: int, view: DeploysView) -> None:
        self._version = version
        self._baselines = view.baselines
        self._open = {d.id: d for d in view.open}
        self._unreported = {d.id: d for d in view.unreported}

    async def claim_due(self) -> int:
        """One look: renew the claims of the work in flight here, read what changed, and claim
        the markers whose work is due and that no live replica is working on (only when a
        marker this replica knows of is due: nothing is written while nothing is due). How
        many were claimed."""
        if self._working:
            kept = set(await self.store.renew_deploy_claims(sorted(self._working)))
            for deploy_id in sorted(set(self._working) - kept):
                # Frozen or cut off past the claim: the fence in the verdict's transaction
                # refuses what this replica would still write.
                log.warning("deploy.claim_expired", deploy_id=deploy_id)
        await self.sync()
        now = self.ctx.clock()
        known = [*self._open.values(), *self._unreported.values()]
        if not any((window_due(d, now) or report_due(d, now)) and d.id not in self._working
                   for d in known):
            return 0
        # The first time, also the markers an earlier process of this replica id claimed (a
        # restart in place): it is gone — a live one under the same id is refused at start
        # (`Coordination.identify`), and leases and action runs treat the id as this process's
        # too — so its work is taken up now rather than when its claims run out (LEASE_TTL).
        due = await self.store.take_due_deploys(now, own=not self._adopted)
        self._adopted = True
        taken = 0
        for d in due:
            if d.id in self._working:
                continue
            task = asyncio.create_task(self._work(d), name=f"deploy-{d.id}")
            self._working[d.id] = task
            task.add_done_callback(functools.partial(self._done, d.id))
            taken += 1
        return taken

    def _done(self, deploy_id: str, task: asyncio.Task[None]) -> None:
        if self._working.get(deploy_id) is task:
            del self._working[deploy_id]

    async def _work(self, d: DeployRow) -> None:
        """A marker this replica claimed: close its window and post its report, whichever is
        due, then give the claim back. A failure keeps the claim until it runs out, then any
        replica tries again."""
        try:
            now = self.ctx.clock()
            if window_due(d, now):
                log.info("deploy.closing", deploy_id=d.id, replica=self.store.replica)
                await self.close(d, claimed=True)
            if report_due(d, now):
                await self._post_scheduled(d, claimed=True)
        except LeaseLost as e:
            log.warning("deploy.claim_lost", deploy_id=d.id, error=str(e))
            return
        except Exception:
            log.exception("deploy.close_failed", deploy_id=d.id)
            return
        await self.store.release_deploy(d.id)

    async def _claims(self) -> None:
        while True:
            try:
                await self.claim_due()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.error("deploy markers: cannot read or claim them",
                          error=f"{type(e).__name__}: {e}")
            await asyncio.sleep(SYNC_EVERY)
