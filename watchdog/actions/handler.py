"""The actions subsystem as the daemon sees it: one `EventHandler` that starts actions when an
alert starts firing (a rule's list, or its tier's list when it reaches a tier) and its
`on_resolved` actions when the incident resolves; takes manual triggers, deploy markers and the
pause (maintenance mode) — HTTP and MQTT commands, one implementation — and hands deploy
baselines back to the engine.

Shell: wires the store, the runner and the deploy tracker to `DaemonContext`. It must not
evaluate rules or change alert state, and must not block a tick: `on_events` only persists new
runs and returns; the sequences run in their own tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from prometheus_client import Counter

from watchdog.actions.deploys import DeployTracker, verdict_doc
from watchdog.actions.errors import CommandError
from watchdog.actions.http import routes
from watchdog.actions.runner import ActionRunner, Trigger
from watchdog.actions.store import ActionStore, AttemptRow, PauseRecord, RunRow, StepRow
from watchdog.actions.timing import Waker
from watchdog.deploy_report import MAX_DAYS
from watchdog.model import AlertingRule, Duration, ReportQuery
from watchdog.pause import active, notice
from watchdog.rulefile import check_promql
from watchdog.schema import BaseModel, ConfigDict, Field, ValidationError
from watchdog.state import Event
from watchdog.storage import Tx
from watchdog.webinput import BadInput, parse_duration_value, parse_time, shown

log = structlog.get_logger(__name__)

if TYPE_CHECKING:
    from watchdog.handlers import CommandFn, DaemonContext
    from watchdog.rulesdir import RuleSet

log = structlog.get_logger(__name__)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


_M = TypeVar("_M", bound=BaseModel)


class RunRequest(_Request):
    action: str | None = Field(None, min_length=1)  # the MQTT command names it in the body
    labels: dict[str, str] = Field(default_factory=dict)
    force: bool = False  # also past max_runs_per_hour: a person's explicit decision
    dry_run: bool = False


class PauseRequest(_Request):
    until: Any = None  # RFC 3339 or Unix seconds
    for_: Any = Field(None, alias="for")  # or a duration from now: "2h"
    reason: str = Field(min_length=1, max_length=500)
    by: str = Field("", max_length=200)


# A pause is maintenance, not a way to switch automation off for good (that is DRY_RUN).
MAX_PAUSE = 7 * 86400.0


class DeployRequest(_Request):
    id: str | None = Field(None, min_length=1)  # client-chosen: makes the POST idempotent
    service: str = Field(min_length=1)
    version: str = Field(min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)
    window: Duration | None = None  # default 30m
    on_fail: list[str] = Field(default_factory=list)  # actions to run when the verdict is fail
    report: list[ReportQuery] = Field(default_factory=list, max_length=20)
    report_days: float | None = Field(None, ge=0, le=MAX_DAYS)  # default 7; 0: no report


def _parse(model: type[_M], body: Any) -> _M:
    if not isinstance(body, Mapping):
        raise CommandError("expected a JSON object")
    # `request_id` is the MQTT dispatcher's correlation field, not part of the request.
    body = {k: v for k, v in body.items() if k != "request_id"}
    try:
        return model.model_validate(body)
    except ValidationError as e:
        problems = "; ".join(f"{_where(err['loc'])}: {err['msg']}" for err in e.errors())
        raise CommandError(problems) from None


def _where(loc: Sequence[int | str]) -> str:
    """A field's path as a message shows it: a name that is not plain text (an empty key, a
    newline in a key of the request) quoted and escaped, so a problem stays one line."""
    parts = [p if isinstance(p, str) and p.isprintable() and p.strip() == p and p else
             shown(p) if isinstance(p, str) else str(p) for p in loc]
    return ".".join(parts) or "body"


def run_doc(run: RunRow, steps: Sequence[StepRow] | None = None,
            attempts: Sequence[AttemptRow] = ()) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": run.id, "action": run.action, "trigger": run.trigger, "rule": run.rule,
        "group": run.group, "labels": run.labels, "fingerprint": run.fingerprint,
        "incident": run.incident_id, "dryRun": run.dry_run, "status": run.status,
        "nextStep": run.next_step, "createdAt": run.created_at, "finishedAt": run.finished_at,
        "detail": run.detail, "valueBefore": run.value_before, "valueAfter": run.value_after,
        "verifyAt": run.verify_at, "verification": run.verification,
        "tier": run.tier, "lock": run.lock_key, "deferredTo": run.deferred_to,
    }
    if steps is not None:
        doc["steps"] = [{"index": s.idx, "kind": s.kind, "status": s.status,
                         "startedAt": s.started_at, "finishedAt": s.finished_at,
                         "duration": s.duration, "deadline": s.deadline, "detail": s.detail,
                         "output": s.output,
                         "attempts": [{"attempt": a.attempt, "status": a.status,
                                       "startedAt": a.started_at, "finishedAt": a.finished_at,
                                       "detail": a.detail}
                                      for a in attempts if a.idx == s.idx]}
                        for s in steps]
    return doc


def pause_doc(p: PauseRecord | None, now: float) -> dict[str, Any]:
    if p is None or not active(p, now):
        return {"paused": False}
    return {"paused": True, "until": p.until, "reason": p.reason, "by": p.by, "since": p.at,
            "notice": notice(p)}


class ActionsHandler:
    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        self.store = ActionStore(ctx.storage, ctx.leases.replica_id, ctx.leases.ttl)
        self.waker = Waker(ctx.clock)
        self.counter = Counter("watchdog_actions_total",
                               "Action runs by outcome: succeeded, failed, resolved (stopped "
                               "early), superseded (a later run of the incident took over), "
                               "dry_run, verified, not_helped, or the interlock that held one "
                               "back (already_ran, cooldown, rate_limited, locked).",
                               ["action", "outcome"], registry=ctx.registry)
        self.runner = ActionRunner(ctx, self.store, self.waker, self.counter)
        self.deploys = DeployTracker(ctx, self.store, self.waker,
                                     actions=lambda: self.runner.index.actions,
                                     on_fail=self._run_on_fail)
        self.started = False
        self._resume_pending = False
        self._have_rules = False
        self._claims: asyncio.Task[None] | None = None
        ctx.routes.extend(routes(self))
        if ctx.rules is not None:
            self._set_rules(ctx.rules)

    def commands(self) -> dict[str, CommandFn]:
        """What MQTT may call by name (the HTTP API's JSON)."""
        return {"run_action": self.run_action_command, "deploy": self.deploy,
                "pause": self.pause_command, "resume": self.resume}

    # ---- EventHandler -----------------------------------------------------------------------

    async def start(self) -> None:
        self.waker.restart()
        await self.deploys.start()
        if self.ctx.rules is not None:
            self._set_rules(self.ctx.rules)
        if self._have_rules:
            await self._resume()
        else:
            # Resumed runs need the rules (which alerts use an action, each rule's query for
            # "did it help?"): resume once the first rule set arrives.
            self._resume_pending = True
        self.started = True

    async def stop(self) -> None:
        self.started = False
        self._resume_pending = False
        if self._claims is not None:
            self._claims.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._claims
            self._claims = None
        await self.runner.stop(self.ctx.settings.shutdown_timeout)
        await self.deploys.stop()

    async def on_rules(self, rules: RuleSet) -> None:
        self._set_rules(rules)
        if self._resume_pending and self.started:
            self._resume_pending = False
            await self._resume()

    async def _resume(self) -> None:
        await self.runner.start()
        if self.ctx.leases.shared:
            # Runs whose replica died are taken over by claim, every LEASE_TTL/3. (Missing
            # runs are not reconciled here: each group's holder creates its runs.)
            self._claims = asyncio.create_task(self._claim_loop(), name="action-claims")
        else:
            await self.runner.reconcile(self.ctx.alerts.alerts())

    async def _claim_loop(self) -> None:
        every = max(0.2, self.ctx.leases.ttl / 3)
        while True:
            await asyncio.sleep(every)
            try:
                await self.runner.take_over()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.error("action claims: cannot renew or take over",
                          error=f"{type(e).__name__}: {e}")

    def _set_rules(self, rules: RuleSet) -> None:
        self._have_rules = True
        self.runner.set_rules(rules)
        self.deploys.set_rules([(g, r) for _, g in rules.groups() for r in g.alerting_rules])
        self.deploys.set_reports([q for _, pf in sorted(rules.files.items())
                                  if pf.model is not None for q in pf.model.reports])

    async def on_events(self, tx: Tx, events: Sequence[Event], at: float) -> None:
        # Every tick is a chance for waits and windows to notice a passed deadline or a change
        # in alert state without polling on their own.
        tx.on_commit(self.waker.poke)
        for ev in events:
            if ev.kind not in ("firing", "escalated", "resolved"):
                continue
            found = self.runner.index.rules.get((ev.alert.group, ev.alert.rule))
            if found is None:
                continue
            _, rule = found
            trigger: Trigger
            if ev.kind == "resolved":
                if not rule.on_resolved or not await self._acted(tx, rule, ev):
                    continue
                names, tier, trigger = rule.on_resolved, None, "resolved"
            elif isinstance(rule.actions, dict):
                # The tier reached runs its own list, also after a lower tier's ran.
                names, tier, trigger = rule.actions_for(ev.alert.severity), \
                    ev.alert.severity, "alert"
            elif ev.kind == "firing":
                names, tier, trigger = rule.actions, None, "alert"
            else:
                continue  # a plain list runs once, when the alert starts firing
            for name in names:
                if name in self.runner.index.actions:  # the loader checks references
                    await self.runner.trigger_alert(tx, ev.alert, rule, name, tier=tier,
                                                    trigger=trigger)
        await self.deploys.observe(tx, events)

    @staticmethod
    async def _acted(tx: Tx, rule: AlertingRule, ev: Event) -> bool:
        """Recovery follows action: `on_resolved` runs for an incident in which one of the
        rule's actions ran (dry runs included, a lock's refusal not), or for a rule that has
        only `on_resolved` — leaving an emergency mode that this incident never entered (another
        incident's run holds it) would end it too early."""
        if not rule.action_names:
            return True
        return any(r.status != "locked" and r.trigger != "resolved"
                   for r in await tx.runs.for_incident(ev.alert.incident_id))

    def deploy_baselines(self) -> Mapping[str, Mapping[str, float]]:
        """alertname -> series fingerprint -> value at the last deploy marker, for
        `evaluate.Context(deploy_baselines=...)`."""
        return self.deploys.baselines()

    # ---- commands (HTTP and MQTT share these) -----------------------------------------------

    def require_started(self) -> None:
        if not self.started:
            raise CommandError("actions are not started yet", 503)

    async def run_action(self, name: str, body: Any) -> dict[str, Any]:
        self.require_started()
        req = _parse(RunRequest, body if body is not None else {})
        if name not in self.runner.index.actions:
            raise CommandError(f"no action named {name!r}", 404)
        verdict, run = await self.runner.trigger_manual(name, req.labels, force=req.force,
                                                        dry_run=req.dry_run)
        if run is None:
            headers = {}
            if verdict.retry_at is not None:
                headers["Retry-After"] = str(max(1, int(verdict.retry_at - self.ctx.clock())))
            status = 429 if verdict.reason == "rate_limited" else 409
            raise CommandError(verdict.detail or "held back", status, headers)
        return {"runID": run.id, "action": name, "status": run.status, "dryRun": run.dry_run,
                "labels": run.labels}

    async def run_action_command(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The MQTT form: `{"action": NAME, "labels": {...}}`."""
        name = body.get("action") if isinstance(body, Mapping) else None
        if not isinstance(name, str) or not name:
            raise CommandError('expected {"action": "NAME", "labels": {...}}')
        return await self.run_action(name, body)

    async def deploy(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The MQTT form of `mark_deploy`: the marker's answer."""
        return (await self.mark_deploy(body))[1]

    async def mark_deploy(self, body: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
        """(created, answer): a repeated POST with the same client-chosen id is not created
        again."""
        self.require_started()
        req = _parse(DeployRequest, body)
        if req.window is not None and req.window <= 0:
            raise CommandError("window must be positive")
        for i, q in enumerate(req.report):
            if (err := check_promql(q.query)) is not None:
                raise CommandError(f"report.{i}.query: invalid PromQL: {err}", 422)
        return await self.deploys.mark(req.service, req.version, req.labels, req.window,
                                       req.on_fail, req.id, report=req.report,
                                       report_days=req.report_days)

    async def report(self, deploy_id: str, days: float | None, post: bool = False
                     ) -> dict[str, Any]:
        """`GET|POST /api/v1/deploys/{id}/report`."""
        self.require_started()
        return await self.deploys.report(deploy_id, days, post=post)

    def read_tokens(self) -> list[str]:
        s = self.ctx.settings
        if s.api_read_token is None or not s.api_read_token.get_secret_value():
            return []
        return [t.get_secret_value() for t in (s.api_read_token, s.api_token)
                if t is not None and t.get_secret_value()]

    async def verdict(self, deploy_id: str) -> dict[str, Any]:
        """`GET /api/v1/deploys/{id}`."""
        async with self.ctx.storage.transaction() as tx:
            d = await tx.deploys.get(deploy_id)
            if d is None:
                raise CommandError(f"no deploy with id {deploy_id}", 404)
            return verdict_doc(d, await tx.deploys.alerts(d.id),
                               await tx.deploys.baselines_of(d.id))

    async def newest_deploy(self, service: str, version: str | None = None
                            ) -> dict[str, Any] | None:
        """The verdict of the newest marker of a service (and version): the Flagger gate."""
        async with self.ctx.storage.transaction() as tx:
            rows = await tx.deploys.list(service=service, version=version or None, limit=1)
        return await self.verdict(rows[0].id) if rows else None

    async def _run_on_fail(self, tx: Tx, name: str, labels: Mapping[str, str]) -> str:
        """A failed verdict's `on_fail` action, through the manual trigger (its interlocks and
        DRY_RUN apply), committed with the verdict."""
        if name not in self.runner.index.actions:
            return "skipped: no such action in the rules folder any more"
        verdict, run = await self.runner.trigger_manual(name, labels, tx=tx)
        if run is None:
            return f"held back ({verdict.reason}: {verdict.detail})"
        return f"run {run.id}" + (" (dry run)" if run.dry_run else "")

    async def runs(self, *, action: str | None = None, status: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.store.runs(action=action, status=[status] if status else None,
                                     limit=limit)
        return [run_doc(r, await self.store.steps(r.id), await self.store.attempts(r.id))
                for r in rows]

    async def run(self, run_id: str) -> dict[str, Any]:
        r = await self.store.get_run(run_id)
        if r is None:
            raise CommandError(f"no run with id {run_id}", 404)
        return run_doc(r, await self.store.steps(r.id), await self.store.attempts(r.id))

    # ---- pause (maintenance mode) ----------------------------------------------------------

    async def pause_state(self) -> dict[str, Any]:
        return pause_doc(await self.store.pause(), self.ctx.clock())

    async def pause(self, body: Any, default_by: str = "api") -> dict[str, Any]:
        """`{"until": T | "for": D, "reason": "...", "by"?: "..."}`: no action step executes
        until then (each is a logged would_run); persisted, ends by itself."""
        req = _parse(PauseRequest, body if body is not None else {})
        now = self.ctx.clock()
        try:
            if (req.until is None) == (req.for_ is None):
                raise BadInput('give exactly one of "until" (RFC 3339 or Unix seconds) and '
                               '"for" (a duration like 2h)')
            until = (parse_time(req.until, "until") if req.until is not None
                     else now + parse_duration_value(req.for_, "for"))
        except BadInput as e:
            raise CommandError(str(e)) from None
        if until <= now:
            raise CommandError("until must be in the future")
        if until - now > MAX_PAUSE:
            raise CommandError("a pause lasts at most 7d; for longer, set WATCHDOG_DRY_RUN")
        p = PauseRecord(until=until, reason=req.reason.strip(), by=req.by.strip() or default_by,
                        at=now)
        await self.store.set_pause(p)
        log.warning("actions.paused", until=until, reason=p.reason, by=p.by)
        self.waker.poke()
        return pause_doc(p, now)

    async def pause_command(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.pause(body, default_by="mqtt")

    async def resume(self, body: Any = None) -> dict[str, Any]:
        del body
        had = await self.store.clear_pause()
        log.warning("actions.resumed", was_paused=had)
        self.waker.poke()
        return {"paused": False, "resumed": had}
