"""The notification outbox: every notification is a stored row before any delivery is tried, and
one worker per receiver delivers its rows in order, with retries, rate limits and a restart that
picks up where the last process stopped.

Retry policy (Alertmanager's, plus what HTTP says): exponential backoff with jitter between
attempts; a 429's `Retry-After` is honoured instead; a permanent error (4xx other than 408/429, a
missing secret, a receiver that no longer exists) fails the row at once — logged, counted in
`watchdog_notifications_failed_total` and visible on `GET /api/v1/notifications`; a row still
failing after `max_age` is given up the same way. Delivery is at-least-once: a crash after the
receiver accepted but before the row was marked delivered re-sends it once after the restart
(PagerDuty deduplicates that by dedup_key).

Time comes from the injected `clock` and waits go through the injected `sleep`, so tests drive
backoff and rate limits without waiting. This module knows nothing about routing or grouping, and
must never log a secret: every error text passes through the receiver's redactor first.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from watchdog.notify.message import Notification
from watchdog.notify.receivers import (
    RATE_LIMITS,
    DeliveryError,
    Notifier,
    SendContext,
    build_notifier,
    integration_of,
)
from watchdog.pause import current_notice
from watchdog.storage import Lease, LeaseLost, Storage, Tx
from watchdog.storage.records import OutboxEntry, OutboxRecord, OutboxRow

if TYPE_CHECKING:
    from watchdog.handlers import MqttPublisher
    from watchdog.model import Receiver

log = structlog.get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]

# Backoff: 1s, 2s, 4s … capped at 5 minutes — a receiver that was down for an hour is retried
# within minutes of coming back, without hammering it while it's down. Jitter spreads the retries
# of many rows (and of several watchdogs) so they don't arrive in lockstep.
BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0
RETRY_AFTER_CAP = 3600.0  # a bogus Retry-After must not park notifications for days
MAX_AGE = 24 * 3600.0  # a notification a day late helps nobody; give up, loudly
KEEP_FINISHED = 7 * 86400.0
# Several replicas: a send re-checks the leader lease first when the last check is older than
# this (real time), so a process frozen between its check and its send finds out.
FENCE_FRESH = 0.5


Row = OutboxRow


@dataclass(frozen=True)
class Entry:
    """A notification to enqueue; `dedup_key` makes a repeated enqueue (a replayed action event)
    a no-op; `supersede` replaces the receiver's still-pending rows of the same group (the
    Alertmanager re-sends, where only the newest state matters)."""

    notification: Notification
    dedup_key: str | None = None
    supersede: bool = False


class TokenBucket:
    """`rate` requests per second with bursts of `burst`, on the injected clock."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float], sleep: Sleep
                 ) -> None:
        self.rate, self.burst = rate, max(1.0, burst)
        self.clock, self.sleep = clock, sleep
        self.tokens = self.burst
        self.updated: float | None = None

    async def acquire(self) -> None:
        while True:
            now = self.clock()
            if self.updated is not None:
                self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return
            await self.sleep((1.0 - self.tokens) / self.rate)


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.enqueued = Counter(
            "watchdog_notifications_enqueued", "Notifications written to the outbox.",
            ["receiver", "kind"], registry=registry)
        self.delivered = Counter(
            "watchdog_notifications_delivered", "Notifications a receiver accepted.",
            ["receiver", "integration"], registry=registry)
        self.failed = Counter(
            "watchdog_notifications_failed",
            "Notifications given up on (permanent error or too old).",
            ["receiver", "integration"], registry=registry)
        self.attempt_errors = Counter(
            "watchdog_notification_attempt_errors", "Failed delivery attempts.",
            ["receiver", "integration", "retryable"], registry=registry)
        self.latency = Histogram(
            "watchdog_notification_latency_seconds",
            "From enqueue to delivery, retries included.", ["integration"],
            buckets=(0.1, 0.5, 1, 2, 5, 15, 60, 300, 1800, 3600), registry=registry)
        self.pending = Gauge(
            "watchdog_notification_outbox_pending", "Notifications waiting for delivery.",
            ["receiver"], registry=registry)


class Outbox:
    def __init__(self, storage: Storage, session: aiohttp.ClientSession, *,
                 clock: Callable[[], float], registry: CollectorRegistry,
                 receivers: Callable[[], Mapping[str, Receiver] | None],
                 mqtt: Callable[[], MqttPublisher | None] = lambda: None,
                 sleep: Sleep = asyncio.sleep, timeout: float = 10.0, resend: float = 60.0,
                 rng: random.Random | None = None, max_age: float = MAX_AGE,
                 backoff_base: float = BACKOFF_BASE, backoff_cap: float = BACKOFF_CAP,
                 notifier_factory: Callable[[Receiver], Notifier] = build_notifier,
                 lease: Callable[[], Lease | None] | None = None,
                 on_lost: Callable[[LeaseLost], None] = lambda e: None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.storage, self.session, self.clock, self.sleep = storage, session, clock, sleep
        self.receivers, self.mqtt = receivers, mqtt
        self.timeout, self.resend, self.max_age = timeout, resend, max_age
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.rng = rng or random.Random()
        self.notifier_factory = notifier_factory
        # Several replicas share the store: only the holder of the leader lease delivers, and
        # every row it takes is taken under that lease's fence (see `_next`).
        self.lease, self.on_lost, self.monotonic = lease, on_lost, monotonic
        self._fenced_at = -math.inf
        self.metrics = _Metrics(registry)
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._running = False
        self._busy: set[str] = set()

    # ---- writing -----------------------------------------------------------------------------

    async def enqueue(self, entries: Sequence[Entry], tx: Tx | None = None) -> int:
        """Write the rows inside `tx` (the caller's decision commits with them) or in a
        transaction of their own; the workers wake once they are committed. Returns how many
        rows were new (a known `dedup_key` is skipped)."""
        if tx is None:
            async with self.storage.transaction() as own:
                return await self.enqueue(entries, own)
        # Maintenance mode is part of every message written while it holds (one read of the
        # shared record, in the caller's transaction, so all replicas say the same).
        paused = current_notice(await tx.pause.get(), self.clock())
        if paused is not None:
            entries = [Entry(e.notification.model_copy(update={"paused": paused}),
                             e.dedup_key, e.supersede) for e in entries]
        rows = [OutboxEntry(e.notification.receiver, e.notification.kind,
                            e.notification.group_key, e.notification.model_dump_json(),
                            e.dedup_key, e.supersede) for e in entries]
        added = await tx.outbox.insert(rows, self.clock())
        # Each incident's record counts the notifications written about it; Alertmanager
        # re-sends (superseding rows, every RESEND_DELAY) are forwarding, not notifications.
        told = {id(row): e.notification for row, e in zip(rows, entries, strict=True)}
        await tx.incidents.add_notifications(Tally(
            i for e in added if not e.supersede for i in told[id(e)].incident_ids))
        if added:
            tx.on_commit(lambda: self._committed(added))
        return len(added)

    def _committed(self, added: Sequence[OutboxEntry]) -> None:
        for e in added:
            self.metrics.enqueued.labels(e.receiver, e.kind).inc()
        for r in dict.fromkeys(e.receiver for e in added):
            self.metrics.pending.labels(r).inc(sum(1 for e in added if e.receiver == r))
            self._kick(r)

    # ---- workers -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start delivering, resuming every row a previous process left pending."""
        self._running = True
        async with self.storage.transaction() as tx:
            receivers = await tx.outbox.pending_receivers()
        for receiver in receivers:
            await self._update_pending(receiver)
            self._kick(receiver)

    async def stop(self) -> None:
        self._running = False
        tasks = list(self._workers.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._workers.clear()

    def _kick(self, receiver: str) -> None:
        self._wake.setdefault(receiver, asyncio.Event()).set()
        if not self._running:
            return
        task = self._workers.get(receiver)
        if task is None or task.done():
            self._workers[receiver] = asyncio.create_task(
                self._work(receiver), name=f"notify-outbox-{receiver}")

    def kick_all(self) -> None:
        """After a reload: a receiver that was missing may exist now."""
        for r in list(self._wake):
            self._kick(r)

    async def _fence(self, tx: Tx) -> None:
        if self.lease is None:
            return
        lease = self.lease()
        if lease is None:
            raise LeaseLost("~leader", "this replica does not deliver notifications now")
        await tx.fence([lease])
        self._fenced_at = self.monotonic()

    async def _next(self, receiver: str) -> Row | None:
        async with self.storage.transaction() as tx:
            await self._fence(tx)
            return await tx.outbox.next(receiver)

    async def _still_leading(self) -> None:
        """Right before a send: the leader lease, again if the last check is not fresh (the
        process may have been frozen since: the row may be another replica's to send now)."""
        if self.lease is not None and self.monotonic() - self._fenced_at > FENCE_FRESH:
            async with self.storage.transaction() as tx:
                await self._fence(tx)

    async def _wait(self, receiver: str, delay: float | None) -> None:
        wake = self._wake.setdefault(receiver, asyncio.Event())
        if delay is None:
            await wake.wait()
            return
        sleeper = asyncio.ensure_future(self.sleep(delay))
        waiter = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (sleeper, waiter):
                t.cancel()

    async def _work(self, receiver: str) -> None:
        while self._running:
            try:
                await self._work_loop(receiver)
            except asyncio.CancelledError:
                raise
            except LeaseLost as e:
                # Another replica delivers now; it resumes from the store what is pending.
                log.warning("notification delivery stopped: not the leader any more",
                            receiver=receiver, error=str(e))
                self.on_lost(e)
                return
            except Exception as e:  # e.g. the database is locked for longer than its timeout
                log.error("notification worker error; retrying", receiver=receiver,
                          error=type(e).__name__)
                await self.sleep(min(self.backoff_cap, 30.0))

    async def _work_loop(self, receiver: str) -> None:
        wake = self._wake.setdefault(receiver, asyncio.Event())
        while self._running:
            wake.clear()
            row = await self._next(receiver)
            if row is None:
                self._busy.discard(receiver)
                await self._wait(receiver, None)
                continue
            self._busy.add(receiver)
            now = self.clock()
            if row.next_attempt_at > now:
                await self._wait(receiver, row.next_attempt_at - now)
                continue
            configured = self.receivers()
            if configured is None:  # rules not loaded yet: keep everything for later
                await self._wait(receiver, None)
                continue
            await self._attempt(row, configured.get(receiver))

    async def _attempt(self, row: Row, receiver: Receiver | None) -> None:
        if receiver is None:
            await self._fail(row, "unknown", f"receiver {row.receiver!r} is no longer configured")
            return
        integration = integration_of(receiver)
        try:
            n = Notification.model_validate_json(row.payload)
            notifier = self.notifier_factory(receiver)
        except ValueError as e:  # a row written by an incompatible version: say so, once
            await self._fail(row, integration, f"cannot read this notification: "
                                               f"{type(e).__name__}")
            return
        bucket = self._buckets.get(row.receiver)
        rate, burst = RATE_LIMITS.get(integration, (10.0, 10.0))
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[row.receiver] = TokenBucket(rate, burst, self.clock,
                                                               self.sleep)
        ctx = SendContext(now=self.clock(), session=self.session, timeout=self.timeout,
                          pace=bucket.acquire, mqtt=self.mqtt(), settings_resend=self.resend)
        await self._still_leading()
        try:
            try:
                await notifier.send(n, ctx)
            except (DeliveryError, asyncio.CancelledError):
                raise
            except Exception as e:
                # A bug in an integration must not kill the worker and strand the outbox:
                # retried like a transient error, and given up on after max_age.
                # No traceback: a rich traceback may print locals, and locals hold secrets.
                log.error("notifier error", receiver=row.receiver,
                          error=ctx.redact(f"{type(e).__name__}: {e}"))
                raise DeliveryError(f"internal error in the {integration} notifier: "
                                    f"{type(e).__name__}", retryable=True) from None
        except DeliveryError as e:
            error = ctx.redact(str(e))
            self.metrics.attempt_errors.labels(row.receiver, integration,
                                               str(e.retryable).lower()).inc()
            now = self.clock()
            if not e.retryable:
                await self._fail(row, integration, error)
            elif now - row.created_at >= self.max_age:
                await self._fail(row, integration, f"gave up after {row.attempts + 1} attempts "
                                 f"over {now - row.created_at:.0f}s; last error: {error}")
            else:
                delay = self._delay(row.attempts + 1, e.retry_after)
                log.warning("notification delivery failed; will retry", receiver=row.receiver,
                            integration=integration, kind=row.kind, attempt=row.attempts + 1,
                            retry_in=round(delay, 1), error=error)
                await self._finish(row, "pending", error, next_at=now + delay)
            return
        now = self.clock()
        self.metrics.delivered.labels(row.receiver, integration).inc()
        self.metrics.latency.labels(integration).observe(max(0.0, now - row.created_at))
        await self._finish(row, "delivered", None, finished=now)
        log.info("notification delivered", receiver=row.receiver, integration=integration,
                 kind=row.kind, attempts=row.attempts + 1)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, RETRY_AFTER_CAP)
        raw = min(self.backoff_cap, self.backoff_base * 2.0 ** (attempt - 1))
        return raw / 2 + self.rng.random() * raw / 2  # "equal jitter": never less than half

    async def _fail(self, row: Row, integration: str, error: str) -> None:
        self.metrics.failed.labels(row.receiver, integration).inc()
        log.error("notification failed permanently", receiver=row.receiver,
                  integration=integration, kind=row.kind, attempts=row.attempts + 1, error=error)
        await self._finish(row, "failed", error, finished=self.clock())

    async def _finish(self, row: Row, status: str, error: str | None, *,
                      next_at: float | None = None, finished: float | None = None) -> None:
        # Only a row still pending is updated: a superseded row stays superseded.
        async with self.storage.transaction() as tx:
            await tx.outbox.finish(row.id, status, error, next_at=next_at, finished=finished)
        await self._update_pending(row.receiver)

    async def _update_pending(self, receiver: str) -> None:
        self.metrics.pending.labels(receiver).set(await self.pending_count(receiver))

    # ---- reading (API, tests) ----------------------------------------------------------------

    async def pending_count(self, receiver: str | None = None) -> int:
        async with self.storage.transaction() as tx:
            return await tx.outbox.pending_count(receiver)

    async def recent(self, *, status: str | None = None, receiver: str | None = None,
                     limit: int = 100) -> list[dict[str, Any]]:
        async with self.storage.transaction() as tx:
            rows: list[OutboxRecord] = await tx.outbox.recent(status=status, receiver=receiver,
                                                              limit=limit)
        return [r.to_json() for r in rows]

    async def prune(self, now: float, tx: Tx | None = None) -> None:
        if tx is None:
            async with self.storage.transaction() as own:
                await own.outbox.prune(now - KEEP_FINISHED)
        else:
            await tx.outbox.prune(now - KEEP_FINISHED)

    async def drain(self, timeout: float = 5.0) -> bool:
        """Wait (real time, bounded) until nothing is pending; for tests and shutdown."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if await self.pending_count() == 0:
                return True
            await asyncio.sleep(0.005)
        return False
