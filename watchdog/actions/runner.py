"""Runs actions: checks the interlocks, persists each run and step before and after it executes,
drives the sequence (waits included), resumes interrupted runs after a restart, and afterwards
asks "did it help?".

Shell: database, network and process I/O through the store and the step modules. The promises
it keeps, and how:
- *persist before the side effect*: a run row is committed before its task starts, a step row
  before the step executes, and the step's outcome together with the run's progress right after;
- *never twice*: `watchdog.interlocks.decide` over the stored history, under one lock, plus a
  unique index on (action, incident) in the database;
- *resume, never repeat*: after a restart a run continues at its first unfinished step; a `wait`
  keeps the deadline stored when it began; a non-wait step that was running when the process
  died is *not* run again — whether it took effect is unknown, and repeating a rollout undo
  would undo the undo — it is marked `interrupted` and the run fails loudly for a person;
- *a failed step stops the sequence* and is notified (`ActionEvent` failed), as is a run that
  did not help (`not_helped`) after `verify_for`;
- *DRY_RUN* (global, per rule or per request) turns every step into a logged `would_run`.
It must not evaluate rules or touch alert state; it reads alerts through `DaemonContext.alerts`.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import structlog
from prometheus_client import Counter

from watchdog.actions.expand import Subject, shown_env
from watchdog.actions.kube import KubeClient, load_cluster
from watchdog.actions.steps import StepEnv, StepResult
from watchdog.actions.steps import command as command_step
from watchdog.actions.steps import kubernetes as kubernetes_step
from watchdog.actions.steps import mqtt as mqtt_step
from watchdog.actions.steps import webhook as webhook_step
from watchdog.actions.steps.wait import deadline as wait_deadline
from watchdog.actions.steps.wait import still_firing
from watchdog.actions.store import ActionStore, DuplicateRun, RunRow, dump_action, load_action
from watchdog.actions.timing import Stopping, Waker
from watchdog.durations import format_duration
from watchdog.handlers import ActionEvent, DaemonContext
from watchdog.interlocks import Verdict, decide, effective_dry_run, lookback
from watchdog.labels import without_name
from watchdog.model import Action, AlertingRule, Group, Step
from watchdog.rulesdir import RuleSet
from watchdog.state import Alert
from watchdog.storage import LeaseLost, Tx

log = structlog.get_logger(__name__)

EventKind = Literal["started", "succeeded", "failed", "would_run", "verified", "not_helped"]


def format_value(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def describe_change(before: float | None, after: float | None, firing: bool) -> str:
    """"0.142 → 0.008": the rule's value when the action started and now. A resolved alert
    whose expression no longer returns the series has no value now."""
    now = format_value(after) if after is not None else (
        "still firing" if firing else "below threshold")
    return f"{format_value(before)} → {now}"


@dataclass
class RuleIndex:
    """The loaded rules, as the runner needs them."""

    actions: dict[str, Action] = field(default_factory=dict)
    rules: dict[tuple[str, str], tuple[Group, AlertingRule]] = field(default_factory=dict)
    using: dict[str, set[str]] = field(default_factory=dict)  # action -> rule names

    @classmethod
    def of(cls, rs: RuleSet) -> RuleIndex:
        idx = cls(actions=rs.actions)
        for _, group in rs.groups():
            for rule in group.alerting_rules:
                idx.rules.setdefault((group.name, rule.alert), (group, rule))
                for name in rule.actions:
                    idx.using.setdefault(name, set()).add(rule.alert)
        return idx


class ActionRunner:
    def __init__(self, ctx: DaemonContext, store: ActionStore, waker: Waker,
                 counter: Counter) -> None:
        self.ctx = ctx
        self.store = store
        self.waker = waker
        self.counter = counter
        self.index = RuleIndex()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._driving: set[str] = set()  # run ids with a task here (their claims are renewed)
        self._took_over = False
        self._kube: KubeClient | None = None
        self.env = StepEnv(session=ctx.session, environ=os.environ,
                           external_url=ctx.settings.external_url, mqtt=ctx.mqtt,
                           kube=self._kube_client)

    # ---- lifecycle --------------------------------------------------------------------------

    def set_rules(self, rs: RuleSet) -> None:
        self.index = RuleIndex.of(rs)

    async def start(self) -> None:
        """Resume what a previous process left: running sequences and pending verifications.
        With several replicas, runs are taken over by claim instead (`take_over`)."""
        if self.ctx.leases.shared:
            await self.take_over()
            return
        for run in reversed(await self.store.runs(status=["running"], limit=100_000)):
            log.info("action.resume", action=run.action, run_id=run.id, step=run.next_step)
            self._spawn(self._drive(run), run.id)
        for run in await self.store.pending_verifications():
            self._spawn(self._verify(run), run.id)

    async def take_over(self) -> int:
        """Several replicas: renew this replica's claims, and drive the runs whose replica is
        gone (claim expired) from where they stopped — a step that was in flight there is
        marked interrupted, never repeated. How many were taken."""
        await self.store.renew_claims(sorted(self._driving))
        # The first time, also the runs an earlier process of this replica id claimed: the
        # replica-id lock (`Coordination.identify`) says that process is gone.
        taken = await self.store.take_expired(own=not self._took_over)
        self._took_over = True
        for run in taken:
            log.info("action.resume", action=run.action, run_id=run.id, step=run.next_step,
                     detail="taken over from a replica whose claim ran out")
            if run.status == "running":
                self._spawn(self._drive(run), run.id)
            elif run.verification == "pending" and run.verify_at is not None:
                self._spawn(self._verify(run), run.id)
        return len(taken)

    async def stop(self, timeout: float = 5.0) -> None:
        """Let steps in flight finish (up to `timeout`), leave waits as persisted."""
        self.waker.stop()
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, coro: Any, run_id: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(self._guard(coro, run_id))
        self._tasks.add(task)
        self._driving.add(run_id)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._driving.discard(run_id))

    async def _guard(self, coro: Any, run_id: str) -> None:
        try:
            await coro
        except Stopping:
            log.info("action.suspended", run_id=run_id)
        except LeaseLost as e:
            # Frozen or cut off past the claim: another replica drives the run now.
            log.warning("action.claim_lost", run_id=run_id, error=str(e))
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug here must not take the daemon down; the run stays "running" in the store
            # and is resumed (and, if it fails the same way, failed) by the next start.
            log.exception("action.internal_error", run_id=run_id)

    # ---- triggers ---------------------------------------------------------------------------

    @property
    def global_dry_run(self) -> bool:
        return bool(self.ctx.settings.dry_run)

    async def trigger_alert(self, tx: Tx, alert: Alert, rule: AlertingRule, name: str
                            ) -> tuple[Verdict, RunRow | None]:
        """Inside the evaluation's transaction: the run commits with the state change that
        caused it, and starts only after that commit."""
        action = self.index.actions[name]
        dry = effective_dry_run(self.global_dry_run, rule.dry_run)
        return await self._create(tx, name, action, alert.labels, dry=dry, trigger="alert",
                                  alert=alert)

    async def trigger_manual(self, name: str, labels: Mapping[str, str], *, force: bool = False,
                             dry_run: bool = False, tx: Tx | None = None
                             ) -> tuple[Verdict, RunRow | None]:
        """A person's (or a pipeline's) trigger. With `tx` the run commits with the caller's
        decision (a deploy verdict's `on_fail`) and starts only after that commit."""
        action = self.index.actions[name]
        dry = effective_dry_run(self.global_dry_run, False, dry_run)
        if tx is not None:
            return await self._create(tx, name, action, labels, dry=dry, trigger="manual",
                                      force=force)
        async with self.ctx.storage.transaction() as own:
            return await self._create(own, name, action, labels, dry=dry, trigger="manual",
                                      force=force)

    async def reconcile(self, alerts: Sequence[Alert]) -> int:
        """After a start: every firing alert whose incident has no run of an action its rule
        names gets one now (a crash of an older release between the two writes could leave
        that; the interlocks still apply). Idempotent: an incident's run is never made twice.
        Returns how many runs were started."""
        started = 0
        for alert in alerts:
            if alert.state != "firing":
                continue
            found = self.index.rules.get((alert.group, alert.rule))
            if found is None:
                continue
            _, rule = found
            names = [n for n in rule.actions if n in self.index.actions]
            if not names:
                continue
            async with self.ctx.storage.transaction() as tx:
                have = {r.action for r in await tx.runs.for_incident(alert.incident_id)}
                for name in names:
                    if name in have:
                        continue
                    log.warning("action.reconcile", action=name, rule=alert.rule,
                                incident=alert.incident_id,
                                detail="firing incident without its run: starting it")
                    _, run = await self.trigger_alert(tx, alert, rule, name)
                    started += run is not None
        return started

    async def _create(self, tx: Tx, name: str, action: Action, labels: Mapping[str, str], *,
                      dry: bool, trigger: Literal["alert", "manual"], alert: Alert | None = None,
                      force: bool = False) -> tuple[Verdict, RunRow | None]:
        # Lock order: the caller's transaction is open already; then the runner's lock.
        async with self._lock:
            at = self.ctx.clock()
            incident = alert.incident_id if alert else None
            history = await self.store.history(name, at - lookback(action), incident,
                                               include_dry=dry, tx=tx)
            verdict = decide(name, action, at, history,
                             fingerprint=alert.fingerprint if alert else None,
                             incident_id=incident, manual=trigger == "manual", force=force)
            if not verdict.allowed:
                log.info("action.held_back", action=name, reason=verdict.reason,
                         detail=verdict.detail, labels=dict(labels))
                self.counter.labels(action=name, outcome=verdict.reason).inc()
                return verdict, None
            run = RunRow(
                id=uuid.uuid4().hex, action=name, trigger=trigger,
                rule=alert.rule if alert else None, group=alert.group if alert else None,
                fingerprint=alert.fingerprint if alert else None, incident_id=incident,
                labels=dict(labels), annotations=dict(alert.annotations) if alert else {},
                value_before=alert.value if alert else None,
                active_at=alert.active_at if alert else None, dry_run=dry,
                spec=dump_action(action), status="running", next_step=0,
                created_at=at, finished_at=None, detail="", verify_at=None, verification=None,
                value_after=None)
            try:
                await self.store.insert_run(run, tx)
            except DuplicateRun as e:
                self.counter.labels(action=name, outcome="already_ran").inc()
                return Verdict(False, "already_ran", str(e)), None
        log.info("action.run", action=name, run_id=run.id, trigger=trigger, dry_run=dry,
                 labels=dict(labels))
        n = len(action.steps)
        plan = "; ".join(f"{i + 1}/{n} {_summary(s)}" for i, s in enumerate(action.steps))
        # The announcement commits with the run; the sequence starts once both are durable.
        await self._emit("would_run" if dry else "started", run,
                         detail=f"dry run, nothing is executed: {plan}" if dry else plan, tx=tx)
        tx.on_commit(lambda: self._spawn(self._drive(run), run.id))
        return verdict, run

    # ---- the sequence -----------------------------------------------------------------------

    def _subject(self, run: RunRow) -> Subject:
        return Subject(action=run.action, run_id=run.id,
                       trigger="manual" if run.trigger == "manual" else "alert",
                       labels=run.labels, annotations=run.annotations, value=run.value_before,
                       rule=run.rule, group=run.group, fingerprint=run.fingerprint,
                       incident_id=run.incident_id, active_at=run.active_at)

    async def _drive(self, run: RunRow) -> None:
        action = load_action(run.spec)
        subject = self._subject(run)
        # The kill switch also holds for a run that started before it was thrown.
        dry = run.dry_run or self.global_dry_run
        rows = {s.idx: s for s in await self.store.steps(run.id)}
        n = len(action.steps)
        for idx in range(run.next_step, n):
            step = action.steps[idx]
            label = f"{idx + 1}/{n} {step.kind}"
            row = rows.get(idx)
            if row is not None and row.status == "failed":
                # Failed just before a restart that came before the run was marked failed:
                # the later steps must not run.
                await self._finish(run, action, "failed", f"step {label} failed: {row.detail}",
                                   step=label)
                return
            if row is not None and row.status != "running":
                continue  # finished before a restart: never again
            now = self.ctx.clock()
            if dry:
                detail = f"would run step {label}: {_summary(step)}"
                if row is None:
                    await self.store.start_step(run.id, idx, step.kind, now, status="would_run")
                await self.store.finish_step(run.id, idx, "would_run", now, detail,
                                             next_step=idx + 1)
                log.info("action.would_run", action=run.action, run_id=run.id, step=label,
                         what=_summary(step))
                await self._emit("would_run", run, step=label, detail=detail)
                continue
            if step.wait is not None:
                if row is None or row.deadline is None:
                    until = wait_deadline(step.wait, now)
                    if row is None:
                        await self.store.start_step(run.id, idx, "wait", now, deadline=until)
                else:
                    until = row.deadline
                await self.waker.sleep_until(until)
                now = self.ctx.clock()
                if step.wait.until == "resolved" and not self._still_firing(subject):
                    await self.store.finish_step(
                        run.id, idx, "succeeded", now,
                        "the alert resolved: the remaining steps are not needed", next_step=n)
                    await self._finish(run, action, "resolved",
                                       f"stopped after step {label}: the alert resolved")
                    return
                await self.store.finish_step(
                    run.id, idx, "succeeded", now,
                    f"waited {format_duration(step.wait.for_)}"
                    + ("; still firing" if step.wait.until else ""), next_step=idx + 1)
                continue
            if row is not None:
                await self.store.finish_step(
                    run.id, idx, "interrupted", now,
                    "interrupted by a restart while running; not repeated, since whether it "
                    "took effect is unknown")
                await self._finish(run, action, "failed",
                                   f"step {label} was interrupted by a restart; check it by "
                                   "hand", step=label)
                return
            await self.store.start_step(run.id, idx, step.kind, now)
            if idx > 0:
                await self._emit("started", run, step=label, detail=_summary(step))
            try:
                result = await self._execute(step, subject)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                result = StepResult(False, f"{step.kind}: unexpected error: "
                                           f"{type(e).__name__}: {e}")
            now = self.ctx.clock()
            await self.store.finish_step(run.id, idx, "succeeded" if result.ok else "failed",
                                         now, result.detail, result.output,
                                         next_step=idx + 1 if result.ok else None)
            log.info("action.step", action=run.action, run_id=run.id, step=label,
                     ok=result.ok, detail=result.detail)
            if not result.ok:
                await self._finish(run, action, "failed",
                                   f"step {label} failed: {result.detail}", step=label)
                return
        await self._finish(run, action, "dry_run" if dry else "succeeded",
                           f"{n} steps " + ("reported as would_run" if dry else "done"))

    async def _execute(self, step: Step, subject: Subject) -> StepResult:
        # Read at each step: the daemon may connect MQTT after the handlers were created.
        self.env.mqtt = self.ctx.mqtt
        if step.webhook is not None:
            return await webhook_step.run(step.webhook, subject, self.env)
        if step.command is not None:
            return await command_step.run(step.command, subject, self.env)
        if step.kubernetes is not None:
            return await kubernetes_step.run(step.kubernetes, subject, self.env)
        if step.mqtt is not None:
            return await mqtt_step.run(step.mqtt, subject, self.env)
        raise AssertionError(f"no executor for {step.kind}")

    def _kube_client(self) -> KubeClient:
        if self._kube is None:
            cluster = load_cluster(self.ctx.settings.kubeconfig, os.environ)
            self._kube = KubeClient(self.ctx.session, cluster)
        return self._kube

    def _still_firing(self, subject: Subject) -> bool:
        return still_firing(subject, self.ctx.alerts.alerts(),
                            self.index.using.get(subject.action, set()))

    async def _finish(self, run: RunRow, action: Action, status: str, detail: str,
                      step: str | None = None) -> None:
        now = self.ctx.clock()
        fields: dict[str, Any] = {"status": status, "finished_at": now, "detail": detail}
        helped = status in ("succeeded", "resolved")
        if helped and action.verify_for is not None:
            fields["verify_at"] = now + action.verify_for
            fields["verification"] = "pending"
        # What to tell is worked out first (it may ask Prometheus); the outcome and its
        # announcement then commit together, so a crash cannot keep one and lose the other.
        kind: EventKind | None = None
        extra: dict[str, Any] = {}
        if status == "failed":
            kind = "failed"
        elif status != "dry_run":  # a dry run was announced as would_run, step by step
            kind, extra = "succeeded", {"status": status}
            if action.verify_for is not None:
                detail += f"; checking in {format_duration(action.verify_for)} whether it helped"
            elif run.rule is not None:  # a manual run has no value to compare
                after = await self.current_value(run)
                firing = self._still_firing(self._subject(run))
                took = format_duration(round(now - run.created_at))
                detail += f"; {describe_change(run.value_before, after, firing)} {took} after " \
                          "the start"
                extra["value_after"] = after
        async with self.ctx.storage.transaction() as tx:
            await self.store.claim(tx, run.id)
            await tx.runs.update(run.id, **fields)
            if kind is not None:
                await self._emit(kind, run, step=step if kind == "failed" else None,
                                 detail=detail, extra=extra or None, tx=tx)
            if "verify_at" in fields:
                updated = replace(run, status=status, finished_at=now, detail=fields["detail"],
                                  verify_at=fields["verify_at"], verification="pending")
                tx.on_commit(lambda: self._spawn(self._verify(updated), run.id))
        self.counter.labels(action=run.action, outcome=status).inc()
        log.info("action.finished", action=run.action, run_id=run.id, status=status,
                 detail=detail)

    # ---- did it help? -----------------------------------------------------------------------

    async def _verify(self, run: RunRow) -> None:
        assert run.verify_at is not None
        await self.waker.sleep_until(run.verify_at)
        now = self.ctx.clock()
        firing = self._still_firing(self._subject(run))
        after = await self.current_value(run)
        since = format_duration(round(now - (run.finished_at or run.created_at)))
        change = describe_change(run.value_before, after, firing)
        outcome: EventKind = "not_helped" if firing else "verified"
        if run.rule is None:
            detail = (f"alerts using {run.action} still firing {since} after it" if firing else
                      f"no alert using {run.action} firing {since} after it")
        elif firing:
            detail = f"{run.rule} still firing {since} after {run.action}: {change}"
        else:
            detail = f"{run.rule} {change} {since} after {run.action}"
        async with self.ctx.storage.transaction() as tx:
            await self.store.claim(tx, run.id)
            await tx.runs.update(run.id, verification=outcome, value_after=after)
            await self._emit(outcome, run, detail=detail,
                             extra={"value_before": run.value_before, "value_after": after},
                             tx=tx)
        self.counter.labels(action=run.action, outcome=outcome).inc()
        log.info("action.verified", action=run.action, run_id=run.id, outcome=outcome,
                 detail=detail)

    async def current_value(self, run: RunRow) -> float | None:
        """The rule's value for the run's alert now: from the live alert while it is active,
        else by asking Prometheus (a resolved alert has no value in the state)."""
        if run.rule is None or run.fingerprint is None:
            return None
        alert = self.ctx.alerts.find(run.rule, run.fingerprint)
        if alert is not None and alert.state != "inactive" and alert.value is not None:
            return alert.value
        found = self.index.rules.get((run.group or "", run.rule))
        if found is None:
            return None
        group, rule = found
        fixed = set(group.labels) | set(rule.labels)
        try:
            samples = await self.ctx.source.query(rule.expr, self.ctx.clock() - group.query_offset)
        except Exception as e:  # "did it help?" is a report; a failed query only leaves it out
            log.warning("action.value_query_failed", rule=rule.alert, error=str(e))
            return None
        for s in samples:
            labels = without_name(s.labels)
            if all(run.labels.get(k) == v for k, v in labels.items() if k not in fixed):
                return s.value
        return None

    # ---- notifications ----------------------------------------------------------------------

    async def _emit(self, kind: EventKind, run: RunRow, *, step: str | None = None,
                    detail: str = "", extra: Mapping[str, Any] | None = None,
                    tx: Tx | None = None) -> None:
        event = ActionEvent(
            kind=kind, action=run.action, at=self.ctx.clock(), labels=dict(run.labels),
            rule=run.rule, step=step, detail=detail, run_id=run.id,
            extra={"trigger": run.trigger, "dry_run": run.dry_run,
                   "value_before": run.value_before, **(extra or {})})
        try:
            await self.ctx.emit_action_event(event, tx)
        except Exception:
            # Delivery is the notifier's job (it has an outbox); a sink that raises must not
            # stop a rollback half-way.
            log.exception("action.emit_failed", action=run.action, kind=kind)


def _summary(step: Step) -> str:
    """One line saying what a step does, safe to show (no expanded secrets)."""
    if step.webhook is not None:
        return f"{step.webhook.method} {shown_env(step.webhook.url)}"
    if step.wait is not None:
        until = f" until {step.wait.until}" if step.wait.until else ""
        return f"wait {format_duration(step.wait.for_)}{until}"
    if step.kubernetes is not None:
        k = step.kubernetes
        if k.rollout_undo is not None:
            return (f"kubectl rollout undo deployment/{k.rollout_undo.deployment} "
                    f"-n {k.rollout_undo.namespace}")
        if k.scale is not None:
            return (f"kubectl scale deployment/{k.scale.deployment} -n {k.scale.namespace} "
                    f"--replicas={k.scale.replicas}")
        assert k.set_image is not None
        return (f"kubectl set image deployment/{k.set_image.deployment} "
                f"{k.set_image.container}={k.set_image.image} -n {k.set_image.namespace}")
    if step.command is not None:
        return " ".join(shown_env(a) for a in step.command.argv)
    assert step.mqtt is not None
    return f"publish to {step.mqtt.topic}"

