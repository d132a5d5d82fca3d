"""Runs actions: checks the interlocks, persists each run and step before and after it executes,
drives the sequence (waits and retries included), resumes interrupted runs after a restart, and
afterwards asks "did it help?" — escalating when it did not.

Shell: database, network and process I/O through the store and the step modules. The promises
it keeps, and how:
- *persist before the side effect*: a run row is committed before its task starts, a step row
  before the step executes, each attempt of a retried step and the step's outcome together with
  the run's progress right after;
- *never twice*: `watchdog.interlocks.decide` over the stored history, under one lock, plus a
  unique index on (action, incident) in the database; across alert instances, rules and replicas,
  the target lock (`lock:`; a row per key in the store, taken in the transaction that creates
  the run). A trigger the lock holds back is recorded as a run with status `locked` naming the
  run it deferred to;
- *one at a time per incident*: the runs of one incident (tiers, escalations, `on_resolved`)
  execute in the order they were created, never side by side; a later run that is not a recovery
  (`on_resolved`) cuts an earlier one's `wait` short — a critical tier's full rollback must not
  sit behind the warning tier's 30-minute watch;
- *resume, never repeat*: after a restart a run continues at its first unfinished step; a `wait`
  keeps the deadline stored when it began; a non-wait step that was running when the process
  died is *not* run again — whether it took effect is unknown, and repeating a rollout undo
  would undo the undo — it is marked `interrupted` and the run fails loudly for a person;
- *a failed step stops the sequence* and is notified (`ActionEvent` failed), as is a run that
  did not help (`not_helped`) after `verify_for`; `on_failure` / `on_not_helped` then page
  (a critical notification) and/or start the next action, in the transaction that records the
  verdict, so a restart neither loses nor repeats them;
- *DRY_RUN* (global, per rule or per request) and *pause* (maintenance mode, kept in the store)
  turn every step into a logged `would_run`.
It must not evaluate rules or touch alert state; it reads alerts through `DaemonContext.alerts`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import structlog
from prometheus_client import Counter

from watchdog.actions.expand import ExpandError, Subject, render, shown_env
from watchdog.actions.steps import StepEnv, StepResult
from watchdog.actions.steps import command as command_step
from watchdog.actions.steps import mqtt as mqtt_step
from watchdog.actions.steps import webhook as webhook_step
from watchdog.actions.steps.wait import deadline as wait_deadline
from watchdog.actions.steps.wait import still_firing
from watchdog.actions.store import (
    ActionStore,
    AttemptRow,
    DuplicateRun,
    RunRow,
    dump_action,
    load_action,
)
from watchdog.actions.timing import Stopping, Waker
from watchdog.actions.verdict import value_style, verdict_line
from watchdog.durations import format_duration
from watchdog.gotmpl import TemplateData
from watchdog.handlers import ActionEvent, DaemonContext
from watchdog.interlocks import (
    Holder,
    Verdict,
    decide,
    default_lock_key,
    effective_dry_run,
    lock_verdict,
    lookback,
)
from watchdog.labels import without_name
from watchdog.model import Action, AlertingRule, Escalate, Group, Step
from watchdog.pause import current_notice
from watchdog.rulesdir import RuleSet
from watchdog.state import Alert
from watchdog.storage import LeaseLost, Tx

if TYPE_CHECKING:
    from watchdog.actions.kube import KubeClient

log = structlog.get_logger(__name__)

EventKind = Literal["started", "succeeded", "failed", "would_run", "verified", "not_helped"]
Trigger = Literal["alert", "manual", "escalation", "resolved"]


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
                for name in [*rule.action_names, *rule.on_resolved]:
                    idx.using.setdefault(name, set()).add(rule.alert)
        return idx


@dataclass(frozen=True)
class Origin:
    """The alert instance a run acts for, as it was when the run was triggered: from the alert
    itself, or from the run an escalation follows."""

    rule: str
    group: str
    fingerprint: str
    incident_id: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    value: float | None
    active_at: float | None

    @classmethod
    def of_alert(cls, a: Alert) -> Origin:
        return cls(a.rule, a.group, a.fingerprint, a.incident_id, dict(a.labels),
                   dict(a.annotations), a.value, a.active_at)

    @classmethod
    def of_run(cls, r: RunRow, value: float | None) -> Origin | None:
        if r.rule is None or r.fingerprint is None or r.incident_id is None:
            return None
        return cls(r.rule, r.group or "", r.fingerprint, r.incident_id, dict(r.labels),
                   dict(r.annotations), value, r.active_at)


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
        # incident id -> its runs in the order they were created, with their trigger: the
        # first one executes, the others wait their turn (see the module docstring).
        self._queues: dict[str, list[tuple[str, str]]] = {}
        self.env = StepEnv(session=ctx.session, environ=os.environ,
                           external_url=ctx.settings.external_url, mqtt=ctx.mqtt,
                           kube=self._kube_client, clock=ctx.clock)

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
            self._start_run(run)
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
        for run in sorted(taken, key=lambda r: (r.created_at, r.id)):
            log.info("action.resume", action=run.action, run_id=run.id, step=run.next_step,
                     detail="taken over from a replica whose claim ran out")
            if run.status == "running":
                self._start_run(run)  # in its incident's order, like a local resume
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
        self._queues.clear()

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

    # ---- one run at a time per incident ----------------------------------------------------

    def _start_run(self, run: RunRow) -> None:
        if run.incident_id is not None:
            self._queues.setdefault(run.incident_id, []).append((run.id, run.trigger))
            self.waker.poke()  # an earlier run's wait may now be cut short
        self._spawn(self._in_turn(run), run.id)

    def _my_turn(self, run: RunRow) -> bool:
        q = self._queues.get(run.incident_id or "")
        return not q or q[0][0] == run.id

    def _superseded(self, run: RunRow) -> str | None:
        """The id of a later run of the same incident that takes over from this one's wait."""
        q = self._queues.get(run.incident_id or "", [])
        ids = [rid for rid, _ in q]
        if run.id not in ids:
            return None
        later = [rid for rid, trig in q[ids.index(run.id) + 1:] if trig != "resolved"]
        return later[0] if later else None

    async def _in_turn(self, run: RunRow) -> None:
        try:
            if not self._my_turn(run):
                log.info("action.queued", action=run.action, run_id=run.id,
                         incident=run.incident_id)
                await self.waker.sleep_until(math.inf, interrupt=lambda: self._my_turn(run))
            await self._drive(run)
        finally:
            q = self._queues.get(run.incident_id or "")
            if q is not None:
                q[:] = [x for x in q if x[0] != run.id]
                if not q:
                    self._queues.pop(run.incident_id or "", None)
            self.waker.poke()

    # ---- triggers ---------------------------------------------------------------------------

    @property
    def global_dry_run(self) -> bool:
        return bool(self.ctx.settings.dry_run)

    async def trigger_alert(self, tx: Tx, alert: Alert, rule: AlertingRule, name: str, *,
                            tier: str | None = None, trigger: Trigger = "alert"
                            ) -> tuple[Verdict, RunRow | None]:
        """Inside the evaluation's transaction: the run commits with the state change that
        caused it, and starts only after that commit."""
        action = self.index.actions[name]
        dry = effective_dry_run(self.global_dry_run, rule.dry_run)
        return await self._create(tx, name, action, alert.labels, dry=dry, trigger=trigger,
                                  origin=Origin.of_alert(alert), tier=tier)

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

    def names_for(self, rule: AlertingRule, alert: Alert) -> list[str]:
        """The actions a firing alert of `rule` at its current tier should have started."""
        return [n for n in rule.actions_for(alert.severity) if n in self.index.actions]

    async def reconcile(self, alerts: Sequence[Alert]) -> int:
        """After a start: every firing alert whose incident has no run of an action its rule
        names (for its current tier) gets one now (a crash of an older release between the two
        writes could leave that; the interlocks still apply). Idempotent: an incident's run is
        never made twice. Returns how many runs were started."""
        started = 0
        for alert in alerts:
            if alert.state != "firing":
                continue
            found = self.index.rules.get((alert.group, alert.rule))
            if found is None:
                continue
            _, rule = found
            names = self.names_for(rule, alert)
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
                    tier = alert.severity if isinstance(rule.actions, dict) else None
                    _, run = await self.trigger_alert(tx, alert, rule, name, tier=tier)
                    started += run is not None
        return started

    def lock_key(self, name: str, action: Action, labels: Mapping[str, str],
                 origin: Origin | None) -> str:
        """The action's `lock:` template over the alert, or the default key."""
        fingerprint = origin.fingerprint if origin else None
        if action.lock is None:
            return default_lock_key(name, fingerprint)
        value = origin.value if origin and origin.value is not None else math.nan
        try:
            key = render(action.lock, TemplateData(labels=dict(labels), value=value,
                                                   external_url=self.ctx.settings.external_url))
        except ExpandError as e:
            log.warning("action.lock_template_failed", action=name, error=str(e))
            return default_lock_key(name, fingerprint)
        return key.strip() or default_lock_key(name, fingerprint)

    async def _create(self, tx: Tx, name: str, action: Action, labels: Mapping[str, str], *,
                      dry: bool, trigger: Trigger, origin: Origin | None = None,
                      force: bool = False, tier: str | None = None
                      ) -> tuple[Verdict, RunRow | None]:
        # Lock order: the caller's transaction is open already; then the runner's lock.
        async with self._lock:
            at = self.ctx.clock()
            incident = origin.incident_id if origin else None
            paused = current_notice(await tx.pause.get(), at)
            dry = dry or paused is not None
            history = await self.store.history(name, at - lookback(action), incident,
                                               include_dry=dry, tx=tx)
            verdict = decide(name, action, at, history,
                             fingerprint=origin.fingerprint if origin else None,
                             incident_id=incident, manual=trigger == "manual", force=force)
            key = self.lock_key(name, action, labels, origin)
            if dry:
                # A dry run shows the lock among dry runs; it never holds back a real one.
                key = f"dry-run:{key}"
            if verdict.allowed:
                held = await tx.locks.holder(key)
                holder = None
                if held is not None and not (incident is not None
                                             and held.incident_id == incident):
                    # Runs of one incident share their targets: they are serialised instead.
                    holder = Holder(held.run_id, held.action, held.at, held.status == "running",
                                    held.incident_open)
                verdict = lock_verdict(key, holder, at, action.cooldown,
                                       manual=trigger == "manual", force=force)
            if not verdict.allowed:
                log.info("action.held_back", action=name, reason=verdict.reason,
                         detail=verdict.detail, labels=dict(labels), lock=key,
                         deferred_to=verdict.deferred_to)
                self.counter.labels(action=name, outcome=verdict.reason).inc()
                if verdict.reason == "locked":
                    await self._record_locked(tx, name, action, labels, origin, trigger, dry,
                                              at, key, verdict, tier)
                return verdict, None
            run = RunRow(
                id=uuid.uuid4().hex, action=name, trigger=trigger,
                rule=origin.rule if origin else None, group=origin.group if origin else None,
                fingerprint=origin.fingerprint if origin else None, incident_id=incident,
                labels=dict(labels), annotations=dict(origin.annotations) if origin else {},
                value_before=origin.value if origin else None,
                active_at=origin.active_at if origin else None, dry_run=dry,
                spec=dump_action(action), status="running", next_step=0,
                created_at=at, finished_at=None, detail=paused or "", verify_at=None,
                verification=None, value_after=None, lock_key=key, tier=tier)
            try:
                await self.store.insert_run(run, tx)
            except DuplicateRun as e:
                self.counter.labels(action=name, outcome="already_ran").inc()
                return Verdict(False, "already_ran", str(e)), None
            await tx.locks.take(key, run.id, at)
        log.info("action.run", action=name, run_id=run.id, trigger=trigger, dry_run=dry,
                 labels=dict(labels), tier=tier, lock=key, paused=paused)
        n = len(action.steps)
        plan = "; ".join(f"{i + 1}/{n} {_summary(s)}" for i, s in enumerate(action.steps))
        if paused:
            detail = f"{paused}: nothing is executed: {plan}"
        elif dry:
            detail = f"dry run, nothing is executed: {plan}"
        else:
            detail = plan
        if tier:
            detail = f"{tier} tier: {detail}"
        # The announcement commits with the run; the sequence starts once both are durable.
        await self._emit("would_run" if dry else "started", run, detail=detail, tx=tx)
        tx.on_commit(lambda: self._start_run(run))
        return verdict, run

    async def _record_locked(self, tx: Tx, name: str, action: Action,
                             labels: Mapping[str, str], origin: Origin | None, trigger: Trigger,
                             dry: bool, at: float, key: str, verdict: Verdict,
                             tier: str | None) -> None:
        """A trigger the lock held back, kept as a run that never ran: the run list and the
        incident show it, with the run it deferred to."""
        row = RunRow(
            id=uuid.uuid4().hex, action=name, trigger=trigger,
            rule=origin.rule if origin else None, group=origin.group if origin else None,
            fingerprint=origin.fingerprint if origin else None,
            incident_id=origin.incident_id if origin else None, labels=dict(labels),
            annotations=dict(origin.annotations) if origin else {},
            value_before=origin.value if origin else None,
            active_at=origin.active_at if origin else None, dry_run=dry,
            spec=dump_action(action), status="locked", next_step=0, created_at=at,
            finished_at=at, detail=verdict.detail, verify_at=None, verification=None,
            value_after=None, lock_key=key, deferred_to=verdict.deferred_to, tier=tier)
        with contextlib.suppress(DuplicateRun):  # the incident has a run of it already
            await tx.runs.insert(row)

    # ---- the sequence -----------------------------------------------------------------------

    def _subject(self, run: RunRow) -> Subject:
        return Subject(action=run.action, run_id=run.id,
                       trigger="manual" if run.trigger == "manual" else "alert",
                       labels=run.labels, annotations=run.annotations, value=run.value_before,
                       rule=run.rule, group=run.group, fingerprint=run.fingerprint,
                       incident_id=run.incident_id, active_at=run.active_at)

    async def pause_notice(self) -> str | None:
        async with self.ctx.storage.transaction() as tx:
            return current_notice(await tx.pause.get(), self.ctx.clock())

    async def _drive(self, run: RunRow) -> None:
        action = load_action(run.spec)
        subject = self._subject(run)
        # The kill switch also holds for a run that started before it was thrown.
        dry = run.dry_run or self.global_dry_run
        rows = {s.idx: s for s in await self.store.steps(run.id)}
        n = len(action.steps)
        paused_any = False
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
            # A run created while paused is a dry run whose detail is the pause notice; a
            # real run reaching a step while paused has that step skipped as would_run.
            paused = (run.detail or None) if run.dry_run else (
                None if dry else await self.pause_notice())
            if dry or paused is not None:
                paused_any = paused_any or paused is not None
                what = f"would run step {label}: {_summary(step)}"
                detail = f"{paused}: {what}" if paused else what
                if row is None:
                    await self.store.start_step(run.id, idx, step.kind, now, status="would_run")
                await self.store.finish_step(run.id, idx, "would_run", now, detail,
                                             next_step=idx + 1)
                log.info("action.would_run", action=run.action, run_id=run.id, step=label,
                         what=_summary(step), paused=paused)
                await self._emit("would_run", run, step=label, detail=detail)
                continue
            if step.wait is not None:
                if row is None or row.deadline is None:
                    until = wait_deadline(step.wait, now)
                    if row is None:
                        await self.store.start_step(run.id, idx, "wait", now, deadline=until)
                else:
                    until = row.deadline
                whole = await self.waker.sleep_until(
                    until, interrupt=lambda: self._superseded(run) is not None)
                now = self.ctx.clock()
                if not whole:
                    later = self._superseded(run) or "a later run"
                    await self.store.finish_step(
                        run.id, idx, "succeeded", now,
                        f"cut short: run {later} of this incident takes over", next_step=n)
                    await self._finish(run, action, "superseded",
                                       f"stopped at step {label}: run {later} of this "
                                       "incident takes over")
                    return
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
            result = await self._attempts(run, idx, step, subject, label)
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
        if dry or paused_any:
            await self._finish(run, action, "dry_run",
                               f"{n} steps reported as would_run"
                               + (" (actions paused)" if paused_any and not dry else ""))
        else:
            await self._finish(run, action, "succeeded", f"{n} steps done")

    async def _attempts(self, run: RunRow, idx: int, step: Step, subject: Subject,
                        label: str) -> StepResult:
        """One step, tried up to `retry.attempts` times; each try is recorded."""
        retry = step.retry
        attempts = retry.attempts if retry is not None else 1
        memo: dict[str, Any] = {}  # what a step pins across its tries (kubernetes undo)
        result = StepResult(False, "not tried")
        for attempt in range(1, attempts + 1):
            started = self.ctx.clock()
            try:
                result = await self._execute(step, subject, memo)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                result = StepResult(False, f"{step.kind}: unexpected error: "
                                           f"{type(e).__name__}: {e}")
            if retry is None:
                return result
            now = self.ctx.clock()
            last = result.ok or not result.retryable or attempt == attempts
            delay = 0.0
            if not last:
                assert retry is not None
                delay = min(retry.backoff * 2 ** (attempt - 1), retry.max_backoff)
                if result.retry_after is not None:
                    delay = max(delay, min(result.retry_after, retry.max_backoff))
            status = "succeeded" if result.ok else ("failed" if last else "retrying")
            detail = result.detail + ("" if last else
                                      f"; try {attempt + 1}/{attempts} in "
                                      f"{format_duration(delay)}")
            await self.store.add_attempt(AttemptRow(run.id, idx, attempt, started, now, status,
                                                    detail))
            log.info("action.attempt", action=run.action, run_id=run.id, step=label,
                     attempt=attempt, of=attempts, status=status, detail=result.detail)
            if last:
                if not result.ok and attempt > 1:
                    result = replace(result, detail=f"{result.detail} (after {attempt} tries)")
                elif result.ok and attempt > 1:
                    result = replace(result, detail=f"{result.detail} (try {attempt} of "
                                                    f"{attempts})")
                return result
            await self.waker.sleep_until(now + delay)
        return result

    async def _execute(self, step: Step, subject: Subject,
                       memo: dict[str, Any] | None = None) -> StepResult:
        # Read at each step: the daemon may connect MQTT after the handlers were created.
        self.env.mqtt = self.ctx.mqtt
        timeout = step.attempt_timeout
        try:
            async with asyncio.timeout(timeout):
                if step.webhook is not None:
                    return await webhook_step.run(step.webhook, subject, self.env)
                if step.command is not None:
                    return await command_step.run(step.command, subject, self.env)
                if step.kubernetes is not None:
                    # imported on the first kubernetes step: the Kubernetes client and the
                    # Argo/Flagger steps are ~0.5 MiB most rule sets never use
                    from watchdog.actions.steps import kubernetes as kubernetes_step

                    return await kubernetes_step.run(step.kubernetes, subject, self.env, memo)
                if step.mqtt is not None:
                    return await mqtt_step.run(step.mqtt, subject, self.env)
        except TimeoutError:
            assert timeout is not None
            return StepResult(False, f"{step.kind}: timed out after "
                                     f"{format_duration(timeout)}", retryable=True)
        raise AssertionError(f"no executor for {step.kind}")

    def _kube_client(self) -> KubeClient:
        if self._kube is None:
            from watchdog.actions.kube import KubeClient, load_cluster

            cluster = load_cluster(self.ctx.settings.kubeconfig, os.environ)
            self._kube = KubeClient(self.ctx.session, cluster)
        return self._kube

    def _still_firing(self, subject: Subject) -> bool:
        return still_firing(subject, self.ctx.alerts.alerts(),
                            self.index.using.get(subject.action, set()))

    def _rule_of(self, run: RunRow) -> AlertingRule | None:
        found = self.index.rules.get((run.group or "", run.rule or ""))
        return found[1] if found else None

    async def _finish(self, run: RunRow, action: Action, status: str, detail: str,
                      step: str | None = None) -> None:
        now = self.ctx.clock()
        fields: dict[str, Any] = {"status": status, "finished_at": now, "detail": detail}
        helped = status in ("succeeded", "resolved")
        real = not (run.dry_run or self.global_dry_run)
        if helped and action.verify_for is not None and real:
            fields["verify_at"] = now + action.verify_for
            fields["verification"] = "pending"
        # What to tell is worked out first (it may ask Prometheus); the outcome and its
        # announcement then commit together, so a crash cannot keep one and lose the other.
        kind: EventKind | None = None
        extra: dict[str, Any] = {}
        escalate: Escalate | None = None
        if status == "failed":
            kind = "failed"
            escalate = action.on_failure if real else None
        elif status not in ("dry_run", "superseded"):
            # A dry run was announced as would_run, step by step; a superseded one is told by
            # the run that takes over.
            kind, extra = "succeeded", {"status": status}
            if "verify_at" in fields:
                detail += (f"; checking in {format_duration(action.verify_for or 0)} whether "
                           "it helped")
            elif run.rule is not None:  # a manual run has no value to compare
                after = await self.current_value(run)
                firing = self._still_firing(self._subject(run))
                took = format_duration(round(now - run.created_at))
                detail += (f"; {describe_change(run.value_before, after, firing)} {took} "
                           "after the start")
                extra["value_after"] = after
        if escalate is not None and escalate.page:
            extra["page"] = True
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
            if escalate is not None and escalate.action is not None:
                await self._escalate(tx, run, escalate.action, "on_failure",
                                     await self.current_value(run))
        self.counter.labels(action=run.action, outcome=status).inc()
        log.info("action.finished", action=run.action, run_id=run.id, status=status,
                 detail=detail)

    async def _escalate(self, tx: Tx, run: RunRow, name: str, why: str,
                        value: float | None) -> None:
        """Start the next action for what `run` acted for, inside `tx`."""
        nxt = self.index.actions.get(name)
        if nxt is None:  # the rules changed since the run started; the loader checks the rest
            log.error("action.escalation_unknown", action=run.action, next=name, why=why)
            return
        origin = Origin.of_run(run, value)
        rule = self._rule_of(run)
        dry = effective_dry_run(self.global_dry_run, rule.dry_run if rule else False)
        verdict, started = await self._create(tx, name, nxt, run.labels, dry=dry,
                                              trigger="escalation", origin=origin)
        log.info("action.escalated", action=run.action, run_id=run.id, next=name, why=why,
                 started=started.id if started else None, verdict=verdict.reason)

    # ---- did it help? -----------------------------------------------------------------------

    async def _verify(self, run: RunRow) -> None:
        assert run.verify_at is not None
        await self.waker.sleep_until(run.verify_at)
        now = self.ctx.clock()
        firing = self._still_firing(self._subject(run))
        after = await self.current_value(run)
        took = now - (run.finished_at or run.created_at)
        outcome: EventKind = "not_helped" if firing else "verified"
        line = verdict_line(not firing, run.value_before, after, took,
                            value_style(self._rule_of(run)))
        if run.rule is None:
            detail = (f"not helped: alerts using {run.action} still firing "
                      f"{format_duration(round(took))} after it" if firing else
                      f"helped: no alert using {run.action} firing "
                      f"{format_duration(round(took))} after it")
        else:
            detail = f"{line} ({run.rule} {'still firing' if firing else 'cleared'})"
        action = load_action(run.spec)
        escalate = action.on_not_helped if firing else None
        extra: dict[str, Any] = {"value_before": run.value_before, "value_after": after}
        if escalate is not None and escalate.page:
            extra["page"] = True
        async with self.ctx.storage.transaction() as tx:
            await self.store.claim(tx, run.id)
            await tx.runs.update(run.id, verification=outcome, value_after=after)
            await self._emit(outcome, run, detail=detail, extra=extra, tx=tx)
            if escalate is not None and escalate.action is not None:
                await self._escalate(tx, run, escalate.action, "on_not_helped", after)
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
                   "value_before": run.value_before, "tier": run.tier,
                   "lock": run.lock_key, **(extra or {})})
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
        if k.rollout_undo is not None and k.rollout_undo.rollout is not None:
            return (f"kubectl argo rollouts undo {k.rollout_undo.rollout} "
                    f"-n {k.rollout_undo.namespace}")
        if k.rollout_undo is not None:
            return (f"kubectl rollout undo deployment/{k.rollout_undo.deployment} "
                    f"-n {k.rollout_undo.namespace}")
        if k.rollout_abort is not None:
            return (f"kubectl argo rollouts abort {k.rollout_abort.rollout} "
                    f"-n {k.rollout_abort.namespace}")
        if k.canary_rollback is not None:
            return (f"kubectl flagger rollback {k.canary_rollback.canary} "
                    f"(namespace {k.canary_rollback.namespace})")
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

