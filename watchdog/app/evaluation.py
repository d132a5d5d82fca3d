"""One evaluation of one group, from tick to commit: `engine.tick`, the rule-error bookkeeping
and metrics, the datasource's health (and the built-in alert), and one storage transaction
that saves the changed alert state together with everything the handlers write for its events —
before any of it is sent or executed (handlers start those from `tx.on_commit`).

Must not: decide firing (that is `state` via `engine.tick`), schedule, or read the wall clock
for evaluation times (callers pass `at`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import structlog

from watchdog.app.health import BUILTIN_KEY, DatasourceHealth
from watchdog.app.live import Live
from watchdog.engine import GroupRuntime, TickResult, tick
from watchdog.evaluate import Context
from watchdog.handlers import EventHandler, LeaseView, SoloLeases
from watchdog.metrics import Metrics
from watchdog.reload import rule_sig
from watchdog.source import Source
from watchdog.state import Alert, Event
from watchdog.storage import Lease, LeaseLost, Storage
from watchdog.storage.records import GroupChanges

log = structlog.get_logger("watchdog.daemon")

MAX_ERRORS_SHOWN = 50
# `Tx.signal` channel: a decision with alert events committed (payload: the replica id). The
# other replicas re-read the store on it (`Daemon.refresh_mirror`) instead of at their next
# poll, so the replica that notifies learns of a firing within milliseconds.
ALERTS_SIGNAL = "watchdog_alerts"


@runtime_checkable
class BaselineProvider(Protocol):
    """Optional extra of an `EventHandler` (the deploy-marker keeper): values captured at the
    last deploy, fed into `evaluate.Context.deploy_baselines` for `baseline: {deploy: true}`."""

    def deploy_baselines(self) -> Mapping[str, Mapping[str, float]]: ...


@dataclass
class RuleError:
    group: str
    file: str
    rule: str
    error: str
    since: float
    last: float
    count: int = 1


SentryTags = Callable[..., contextlib.AbstractContextManager[None]]


class Inflight:
    """The evaluations and reloads running now: shutdown waits for them."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    @contextlib.contextmanager
    def tracked(self) -> Iterator[None]:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            yield
        finally:
            if task is not None:
                self.tasks.discard(task)


class Evaluator:
    def __init__(self, *, live: Live, storage: Storage, source: Source, metrics: Metrics,
                 health: DatasourceHealth, handlers: Sequence[EventHandler],
                 concurrency: int, external_url: str, external_labels: Mapping[str, str],
                 sentry_tags: SentryTags, inflight: Inflight,
                 leases: LeaseView | None = None) -> None:
        self.live = live
        self.storage = storage
        self.source = source
        self.metrics = metrics
        self.health = health
        self.handlers = handlers
        self.concurrency = concurrency
        self.external_url = external_url
        self.external_labels = external_labels
        self.sentry_tags = sentry_tags
        self.inflight = inflight
        self.leases: LeaseView = leases or SoloLeases()
        self.rule_errors: dict[tuple[str, str], RuleError] = {}
        self.stopped = False
        self._locks: dict[str, asyncio.Lock] = {}
        self._health_lock = asyncio.Lock()

    def lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def forget(self, key: str) -> None:
        """A group that is gone: its lock and its errors."""
        self._locks.pop(key, None)
        self.rule_errors = {e: v for e, v in self.rule_errors.items() if e[0] != key}

    def context(self) -> Context:
        baselines: dict[str, Mapping[str, float]] = {}
        for h in self.handlers:
            if isinstance(h, BaselineProvider):
                try:
                    baselines.update(h.deploy_baselines())
                except Exception:
                    log.exception("deploy baselines unavailable", provider=type(h).__name__)
        return Context(external_url=self.external_url, external_labels=self.external_labels,
                       deploy_baselines=baselines)

    def recent_errors(self) -> list[RuleError]:
        return sorted(self.rule_errors.values(), key=lambda e: e.last,
                      reverse=True)[:MAX_ERRORS_SHOWN]

    # ---- one evaluation -------------------------------------------------------------------

    async def evaluate(self, key: str, at: float) -> TickResult | None:
        with self.inflight.tracked():
            async with self.lock(key):
                rt = self.live.runtimes.get(key)
                if rt is None or self.stopped:
                    return None
                # Another replica's group (or one this replica is still taking over): its
                # holder evaluates it; this replica only mirrors its state.
                lease = self.leases.held(key)
                if lease is None:
                    return None
                return await self._evaluate(rt, at, lease)

    async def _evaluate(self, rt: GroupRuntime, at: float, lease: Lease) -> TickResult | None:
        name = rt.group.name
        try:
            # apply=False: the runtime (what the API shows and the handlers read) takes the new
            # state only once it is committed; a failed commit leaves the old state, so the next
            # tick decides the same transitions again instead of losing them.
            res = await tick(rt, at, self.source, self.context(), self.concurrency,
                             apply=False)
        except Exception:
            # A bug, not a failed query (those come back in res.errors).
            self.metrics.evaluation_failures.labels(name).inc(len(rt.rules))
            with self.sentry_tags(group=name):
                log.exception("evaluation crashed", group=name, file=rt.file)
            return None
        self._observe(rt, res, at)
        changes = [changes_of(rt, res.alerts, at)]
        events = list(res.events)
        applied: list[tuple[GroupRuntime, TickResult]] = [(rt, res)]
        fences = [lease]
        async with contextlib.AsyncExitStack() as stack:
            builtin = self.leases.held(BUILTIN_KEY)
            # The built-in alert is stepped by the holder of its own lease only, so two
            # replicas whose Prometheus is down do not both announce it.
            if self.health.observe(res, at) and builtin is not None:
                # Held to the commit: two groups must not step the built-in alert at once.
                await stack.enter_async_context(self._health_lock)
                b = self.health.runtime
                b_res = await self.health.step(at, self.context())
                events.extend(b_res.events)
                changes.append(changes_of(b, b_res.alerts, at))
                applied.append((b, b_res))
                fences.append(builtin)
            if self.health.up is not None:
                self.metrics.datasource_up.set(1 if self.health.up else 0)
            if await self.commit(changes, events, at, group=name, fences=fences):
                for target, result in applied:
                    result.apply(target)
        return res

    async def commit(self, changes: Sequence[GroupChanges], events: Sequence[Event],
                     at: float, group: str | None = None, fences: Sequence[Lease] = ()
                     ) -> bool:
        """One decision, one transaction: the alert state that changed, and everything the
        handlers write for its events (notifications, action runs), commit together before any
        of it is sent or executed. A group whose alerts did not change opens no transaction.
        `fences`: the leases this decision is made under; checked inside the transaction, so a
        replica that lost one (frozen, partitioned) writes, sends and runs nothing."""
        changes = [c for c in changes if c or c.at is not None]
        if not changes and not events:
            return True
        try:
            async with self.storage.transaction() as tx:
                if self.leases.shared:
                    await tx.fence(fences)
                log_events(events)
                if changes:
                    await tx.alerts.save(changes)
                if events and self.leases.shared:
                    await tx.signal(ALERTS_SIGNAL, self.leases.replica_id)
                for h in self.handlers if events else ():
                    try:
                        await h.on_events(tx, events, at)
                    except Exception:
                        # A handler's bug must not cost the alert state or the other handlers'
                        # work; a database error fails the commit below anyway.
                        with self.sentry_tags(handler=type(h).__name__):
                            log.exception("event handler failed", handler=type(h).__name__)
        except LeaseLost as e:
            log.warning("evaluation discarded: the lease is gone", group=group, lease=e.name,
                        error=str(e))
            self.leases.lost(e.name, str(e))
            await self._resync_handlers()
            return False
        except Exception:
            with self.sentry_tags(group=group or ""):
                log.exception("cannot persist the evaluation", group=group)
            await self._resync_handlers()
            return False
        return True

    async def _resync_handlers(self) -> None:
        for h in self.handlers:
            resync = getattr(h, "resync", None)
            if resync is not None:
                try:
                    await resync()
                except Exception:
                    log.exception("handler cannot resynchronise", handler=type(h).__name__)

    def _observe(self, rt: GroupRuntime, res: TickResult, at: float) -> None:
        m, name = self.metrics, rt.group.name
        m.evaluations.labels(name).inc(len(rt.rules))
        if res.errors:
            m.evaluation_failures.labels(name).inc(len(res.errors))
        if res.batched:
            m.queries_batched.inc(res.batched)
        m.evaluation_duration.labels(name).observe(res.duration)
        m.last_evaluation.labels(name).set(at)
        blind = res.queries > 0 and res.failed_queries == res.queries
        for r in rt.rules:
            k = (rt.key, r.key)
            err = res.errors.get(r.key)
            known = self.rule_errors.get(k)
            if err is None:
                if known is not None:
                    del self.rule_errors[k]
                    log.info("rule evaluates again", group=name, rule=r.key)
                continue
            if known is not None:
                known.last, known.error, known.count = at, err, known.count + 1
                continue
            self.rule_errors[k] = RuleError(name, rt.file, r.key, err, at, at)
            if blind:
                # Prometheus itself is failing: one line for the datasource, not one per rule.
                log.warning("rule evaluation failed", group=name, rule=r.key, error=err)
            else:
                with self.sentry_tags(group=name, rule=r.key):
                    log.error("rule evaluation failed", group=name, file=rt.file, rule=r.key,
                              error=err)


def changes_of(rt: GroupRuntime, new: Sequence[Mapping[str, Alert]], at: float
               ) -> GroupChanges:
    """The rows a tick changes: the runtime's rules hold the old state, `new` (in the same
    order) the state the tick computed."""
    c = GroupChanges(rt.key)
    for r, after in zip(rt.rules, new, strict=True):
        old = r.alerts
        if after is old:
            continue
        sig: str | None = None
        for fp, a in after.items():
            if old.get(fp) is not a:
                sig = sig or rule_sig(r.rule)
                c.upserts.append((r.key, sig, a))
        c.deletes.extend((r.key, fp) for fp in old if fp not in after)
    if c:
        c.at = at  # only written along with alert rows: a quiet group costs no write
    return c


def log_events(events: Sequence[Event]) -> None:
    for e in events:
        a = e.alert
        log.info("alert", kind=e.kind, rule=a.rule, group=a.group, fingerprint=a.fingerprint,
                 incident=a.incident_id, active_at=a.active_at, value=a.value,
                 severity=a.severity, previous_severity=e.previous_severity,
                 labels=dict(a.labels))
