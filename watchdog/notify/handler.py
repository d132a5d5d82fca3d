"""The notification subsystem as the daemon sees it: an `EventHandler` and `ActionEventSink` that
feeds the pipeline, runs its timer (flushes, pruning, the daily digests), owns the outbox workers,
registers the HTTP routes and the `silence` / `unsilence` / `ack` commands, and forwards every
event to the MQTT event stream.

Wiring only: decisions are the pipeline's, delivery is the outbox's. The timer reads the injected
clock; with `tick=None` (tests) nothing runs in the background and the test calls `flush(at)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from watchdog.handlers import LEADER, ActionEvent, CommandFn, DaemonContext
from watchdog.notify import digest
from watchdog.notify.api import Api
from watchdog.notify.message import Notification
from watchdog.notify.outbox import Entry, Outbox, Sleep
from watchdog.notify.pipeline import Pipeline
from watchdog.notify.receivers import integration_of
from watchdog.notify.silences import Matcher, SilenceStore
from watchdog.rulesdir import RuleSet
from watchdog.state import Alert, Event
from watchdog.storage import Lease, LeaseLost, Tx

if TYPE_CHECKING:
    from watchdog.model import Receiver

log = structlog.get_logger(__name__)

PRUNE_EVERY = 3600.0


class NotifyHandler:
    def __init__(self, ctx: DaemonContext, *, sleep: Sleep = asyncio.sleep,
                 tick: float | None = 1.0, timeout: float = 10.0,
                 rng: random.Random | None = None) -> None:
        self.ctx = ctx
        s = ctx.settings
        self.tick = tick
        self._receivers: dict[str, Receiver] | None = None
        self.silences = SilenceStore(ctx.storage)
        # Several replicas on one store: one of them — the holder of the leader lease — decides
        # notifications (routing and grouping span every rule group) and delivers them; the
        # others observe, so that whichever takes the lease next starts from the store's log.
        self.shared = ctx.leases.shared
        self._leader: Lease | None = None if self.shared else Lease(LEADER, "solo", 0)
        self.outbox = Outbox(
            ctx.storage, ctx.session, clock=ctx.clock, registry=ctx.registry,
            receivers=lambda: self._receivers, mqtt=lambda: ctx.mqtt, sleep=sleep,
            timeout=timeout, resend=max(s.evaluation_interval, s.resend_delay), rng=rng,
            lease=(lambda: self._leader) if self.shared else None, on_lost=self._lost)
        self.pipeline = Pipeline(
            self.outbox, self.silences, external_url=s.external_url,
            generator_base=s.external_url or s.prometheus_url, resend_delay=s.resend_delay,
            view=ctx.alerts)
        self.api = Api(self, ctx.clock)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._workers_started = False
        self._dirty = False
        self._pruned_at: float | None = None
        self._digested: dict[str, float] = {}  # route id -> end of the last period enqueued
        self._lead_task: asyncio.Task[None] | None = None
        ctx.routes.extend(self.api.routes())
        ctx.action_sinks.append(self)

    def commands(self) -> dict[str, CommandFn]:
        """What MQTT may call by name (the HTTP API's JSON)."""
        return {"silence": self.api.silence, "unsilence": self.api.unsilence,
                "ack": self.api.ack}

    async def start(self) -> None:
        await self.silences.load()
        async with self.ctx.storage.transaction() as tx:
            await self.pipeline.load(tx)
        self.pipeline.seed(self.ctx.alerts.alerts())
        self._started = True
        if self.ctx.rules is not None and self._receivers is None:
            await self.on_rules(self.ctx.rules)
        elif self._receivers is not None:
            await self._start_workers()
        if self.tick is not None:
            self._task = asyncio.create_task(self._loop(self.tick), name="notify-pipeline")

    async def stop(self) -> None:
        if self._lead_task is not None:
            self._lead_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lead_task
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.outbox.stop()
        self._workers_started = False

    async def on_rules(self, rules: RuleSet) -> None:
        self.pipeline.set_rules(rules)
        self._receivers = rules.receivers
        if self._started:
            await self._start_workers()

    # ---- the leader lease (several replicas) --------------------------------------------------

    def lease_changed(self, name: str, lease: Lease | None) -> None:
        """The daemon's coordinator took or gave up a lease; only the leader's matters here."""
        if name != LEADER or not self.shared:
            return
        if self._lead_task is not None:
            self._lead_task.cancel()
        self._leader = None
        if lease is not None:
            self._lead_task = asyncio.create_task(self._take_lead(lease), name="notify-lead")
        else:
            self._lead_task = asyncio.create_task(self._give_up_lead(), name="notify-unlead")

    async def _take_lead(self, lease: Lease) -> None:
        """Become the notifier: what the previous one sent, and the silences and acks, as the
        store has them now; then decide and deliver."""
        try:
            await self.silences.load(replace=True)
            async with self.ctx.storage.transaction() as tx, self._lock:
                await self.pipeline.reload_log(tx)
                # What this replica tracked as a follower may be older than the store (it may
                # have been frozen): the alerts are taken afresh from the live view.
                self.pipeline.tracked.clear()
                self.pipeline.groups.clear()
                self.pipeline.seed(self.ctx.alerts.alerts())
            self._leader = lease
            log.info("notifications: this replica decides and delivers them now",
                     replica=self.ctx.leases.replica_id)
            if self._started and self._receivers is not None:
                await self._start_workers()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("cannot take the notifier role; another cycle will try again")
            self.ctx.leases.lost(LEADER, "the notifier could not load its state")

    async def _give_up_lead(self) -> None:
        await self.outbox.stop()
        self._workers_started = False

    def _lost(self, e: LeaseLost) -> None:
        self.ctx.leases.lost(e.name, str(e))

    async def _fenced(self, tx: Tx) -> bool:
        """Inside `tx`: whether this replica decides notifications now (and, shared, that the
        leader lease is still ours with the same token: else it is given up here)."""
        lead = self._leader
        if lead is None:
            return False
        if not self.shared:
            return True
        try:
            await tx.fence([lead])
        except LeaseLost as e:
            self._leader = None
            self._lost(e)
            return False
        return True

    async def on_mirrored(self, alerts: Sequence[Alert]) -> None:
        """Alerts of groups other replicas evaluate changed in the store. The notifier decides
        at once what they call for — what the evaluating replica committed is what this one
        read — rather than at its next periodic flush, which would add up to a `tick` to the
        detection latency of every group another replica evaluates."""
        async with self._lock:
            before = self.pipeline.changes
            self.pipeline.sync(alerts)
            news = self.pipeline.changes != before
        if news and self._leader is not None:
            try:
                await self.flush()
            except Exception:
                log.exception("cannot notify mirrored alerts; the next flush will")
                await self._resync_logged()

    async def _start_workers(self) -> None:
        if self._leader is None:
            return
        if not self._workers_started:
            self._workers_started = True
            await self.outbox.start()  # resumes what a previous process left pending
        else:
            self.outbox.kick_all()

    # Lock order, everywhere: the storage transaction first, then `_lock` (the SQLite backend
    # serialises transactions, so the other order could wait on itself).

    async def on_events(self, tx: Tx, events: Sequence[Event], at: float) -> None:
        tx.on_commit(lambda: self._stream(events))
        async with self._lock:
            self.pipeline.observe(events)
            if await self._fenced(tx):
                await self._flush(tx, at)

    async def on_action_event(self, event: ActionEvent, tx: Tx | None = None) -> None:
        if tx is None:
            async with self.ctx.storage.transaction() as own:
                await self.on_action_event(event, own)
            return
        tx.on_commit(lambda: self._stream([event]))
        async with self._lock:
            await self.pipeline.notify_action(tx, event, self.ctx.clock())

    async def acknowledge(self, matchers: Sequence[Matcher], created_by: str = "",
                          comment: str = "") -> list[Alert]:
        async with self.ctx.storage.transaction() as tx, self._lock:
            return await self.pipeline.ack(tx, matchers, self.ctx.clock(), created_by, comment)

    async def flush(self, at: float | None = None) -> int:
        """Send what is due now (the timer; tests call it with the time)."""
        async with self.ctx.storage.transaction() as tx, self._lock:
            if not await self._fenced(tx):
                return 0
            return await self._flush(tx, self.ctx.clock() if at is None else at)

    async def _flush(self, tx: Tx, at: float) -> int:
        tx.on_commit(self._committed)
        self._dirty = True
        return await self.pipeline.flush(tx, at)

    def _committed(self) -> None:
        self._dirty = False

    async def send_digests(self, at: float | None = None) -> int:
        """Enqueue each `digest:` route's summary of its latest period, once per period and
        receiver: the outbox's dedup key holds across restarts (and replicas), so a restart
        neither repeats a digest nor loses one that was due while the watchdog was down."""
        now = self.ctx.clock() if at is None else at
        sent = 0
        for rid, route in self.pipeline.routes:
            if route.digest is None:
                continue
            start, end = digest.period(now, route.digest)
            if self._digested.get(rid) == end:
                continue
            # A summary is not a page, nor an alert for another Alertmanager.
            receivers = [r for r in dict.fromkeys(route.receivers)
                         if r in self.pipeline.receivers and integration_of(
                             self.pipeline.receivers[r]) not in ("pagerduty", "alertmanager")]
            async with self.ctx.storage.transaction() as tx:
                if not await self._fenced(tx):
                    return sent
                doc = digest.build(route, await tx.incidents.list(since=start, limit=None),
                                   start, end)
                entries = [Entry(Notification(
                    kind="digest", receiver=r, group_key=f"{rid}:digest", created_at=now,
                    external_url=self.pipeline.external_url, digest=doc),
                    dedup_key=f"digest:{rid}:{r}:{end:.0f}") for r in receivers]
                sent += await self.outbox.enqueue(entries, tx) if entries else 0
                tx.on_commit(functools.partial(self._digested.__setitem__, rid, end))
        return sent

    async def resync(self) -> None:
        """A transaction with a flush in it rolled back: the pipeline's memory of what was
        sent goes back to what is stored, so the notifications are decided again."""
        if self._dirty:
            async with self.ctx.storage.transaction() as tx, self._lock:
                await self.pipeline.reload_log(tx)
            self._dirty = False

    async def _resync_logged(self) -> None:
        try:
            await self.resync()
        except Exception:
            log.exception("cannot reload the notification log")

    def _stream(self, events: Sequence[Event | ActionEvent]) -> None:
        bus = self.ctx.mqtt
        if bus is None:
            return  # no MQTT_URL: do not import the client (tests/test_lazy_imports.py)
        from watchdog.mqtt import MqttBus

        if isinstance(bus, MqttBus):
            for e in events:
                bus.publish_event(e)

    async def _loop(self, tick: float) -> None:
        # Real-time pacing, injected-clock decisions: group timers, repeats and escalation
        # are due against ctx.clock, the loop only decides how often to look.
        while True:
            try:
                now = self.ctx.clock()
                if self.shared:
                    # Silences and acks made through another replica; the staleness of what
                    # this one mutes is one tick. Read only when the store counted a change.
                    await self.silences.refresh()
                    if self._leader is None:
                        async with self._lock:
                            self.pipeline.expire(now)  # a follower only keeps what matters
                await self.flush(now)
                await self.send_digests(now)
                if self.shared and self._leader is not None and self._workers_started:
                    await self.outbox.start()  # rows other replicas wrote (action notices)
                if self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY:
                    self._pruned_at = now
                    async with self.ctx.storage.transaction() as tx, self._lock:
                        if await self._fenced(tx):
                            await self.pipeline.prune(tx, now)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.exception("notification pipeline error", error=type(e).__name__)
                await self._resync_logged()
            await asyncio.sleep(tick)
