"""The actions subsystem as the daemon sees it: one `EventHandler` that starts actions when an
alert starts firing, takes manual triggers and deploy markers (HTTP and MQTT commands, one
implementation), and hands deploy baselines back to the engine.

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
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from watchdog.actions.deploys import DeployTracker, verdict_doc
from watchdog.actions.errors import CommandError
from watchdog.actions.http import routes
from watchdog.actions.runner import ActionRunner
from watchdog.actions.store import ActionStore, RunRow, StepRow
from watchdog.actions.timing import Waker
from watchdog.deploy_report import MAX_DAYS
from watchdog.model import Duration, ReportQuery
from watchdog.rulefile import check_promql
from watchdog.state import Event
from watchdog.storage import Tx

log = structlog.get_logger(__name__)

if TYPE_CHECKING:
    from watchdog.handlers import CommandFn, DaemonContext
    from watchdog.rulesdir import RuleSet


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


_M = TypeVar("_M", bound=BaseModel)


class RunRequest(_Request):
    action: str | None = Field(None, min_length=1)  # the MQTT command names it in the body
    labels: dict[str, str] = Field(default_factory=dict)
    force: bool = False  # also past max_runs_per_hour: a person's explicit decision
    dry_run: bool = False


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
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
                             for err in e.errors())
        raise CommandError(problems) from None


def run_doc(run: RunRow, steps: Sequence[StepRow] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": run.id, "action": run.action, "trigger": run.trigger, "rule": run.rule,
        "group": run.group, "labels": run.labels, "fingerprint": run.fingerprint,
        "incident": run.incident_id, "dryRun": run.dry_run, "status": run.status,
        "nextStep": run.next_step, "createdAt": run.created_at, "finishedAt": run.finished_at,
        "detail": run.detail, "valueBefore": run.value_before, "valueAfter": run.value_after,
        "verifyAt": run.verify_at, "verification": run.verification,
    }
    if steps is not None:
        doc["steps"] = [{"index": s.idx, "kind": s.kind, "status": s.status,
                         "startedAt": s.started_at, "finishedAt": s.finished_at,
                         "duration": s.duration, "deadline": s.deadline, "detail": s.detail,
                         "output": s.output} for s in steps]
    return doc


class ActionsHandler:
    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        self.store = ActionStore(ctx.storage, ctx.leases.replica_id, ctx.leases.ttl)
        self.waker = Waker(ctx.clock)
        self.counter = Counter("watchdog_actions_total",
                               "Action runs by outcome: succeeded, failed, resolved (stopped "
                               "early), dry_run, verified, not_helped, or the interlock that "
                               "held one back (already_ran, cooldown, rate_limited).",
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
        return {"run_action": self.run_action_command, "deploy": self.deploy}

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
            if ev.kind != "firing":
                continue
            found = self.runner.index.rules.get((ev.alert.group, ev.alert.rule))
            if found is None:
                continue
            _, rule = found
            for name in rule.actions:
                if name in self.runner.index.actions:  # the loader checks references
                    await self.runner.trigger_alert(tx, ev.alert, rule, name)
        await self.deploys.observe(tx, events)

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
        return [run_doc(r, await self.store.steps(r.id)) for r in rows]

    async def run(self, run_id: str) -> dict[str, Any]:
        r = await self.store.get_run(run_id)
        if r is None:
            raise CommandError(f"no run with id {run_id}", 404)
        return run_doc(r, await self.store.steps(r.id))
