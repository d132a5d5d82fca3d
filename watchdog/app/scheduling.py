"""When each rule group is evaluated: one APScheduler job per group on slots aligned to its
interval (a stable per-group offset, as Prometheus spreads groups), never two evaluations of one
group at once, a late start run once, skipped slots counted — plus the daemon's periodic jobs
(rules folder poll, Sentry heartbeat).

Real time only paces the jobs; the evaluation time of each slot comes from the injected clock.
Must not: evaluate, persist, or know what a group contains beyond its key and interval.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

log = structlog.get_logger("watchdog.scheduling")

# An evaluation time is the group's slot at or before now; a job the loop starts a hair early
# (timer rounding) must still land on its own slot, not the previous one.
SLOT_EPSILON = 1e-3


def group_offset(key: str, interval: float) -> float:
    """Where in its interval a group's slots fall: a stable hash of its key, so groups spread
    over the interval instead of all querying Prometheus at once (Prometheus does the same)."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return h / 2**64 * interval


def slot_at_or_before(t: float, interval: float, offset: float) -> float:
    t += SLOT_EPSILON
    return t - ((t - offset) % interval)


Evaluate = Callable[[str, float], Awaitable[object]]
Missed = Callable[[str, int], None]


class GroupScheduler:
    """The jobs. `sync(intervals)` after every (re)load makes the jobs match the groups."""

    def __init__(self, clock: Callable[[], float], evaluate: Evaluate, missed: Missed) -> None:
        self.clock = clock
        self.evaluate = evaluate
        self.missed = missed
        self.scheduler: AsyncIOScheduler | None = None
        self.intervals: dict[str, float] = {}
        self.last_slot: dict[str, float] = {}
        self._periodic: set[str] = set()

    @property
    def running(self) -> bool:
        return self.scheduler is not None and bool(self.scheduler.running)

    def start(self, intervals: Mapping[str, float],
              periodic: Mapping[str, tuple[float, Callable[[], Awaitable[Any]], bool]]) -> None:
        """Start with one job per group and the periodic jobs ({id: (seconds, fn, now)})."""
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.sync(intervals)
        for job_id, (seconds, fn, now) in periodic.items():
            self._periodic.add(job_id)
            extra: dict[str, Any] = {"next_run_time": datetime.now(UTC)} if now else {}
            self.scheduler.add_job(fn, IntervalTrigger(seconds=seconds, timezone=UTC),
                                   id=job_id, max_instances=1, coalesce=True,
                                   misfire_grace_time=None, **extra)
        self.scheduler.start()

    def pause(self) -> None:
        if self.running:
            assert self.scheduler is not None
            self.scheduler.pause()

    def shutdown(self) -> None:
        if self.running:
            assert self.scheduler is not None
            self.scheduler.shutdown(wait=False)

    def forget(self, key: str) -> None:
        self.last_slot.pop(key, None)

    def sync(self, intervals: Mapping[str, float]) -> None:
        """One job per group, at its interval; idempotent."""
        self.intervals = dict(intervals)
        sched = self.scheduler
        if sched is None:
            return
        for job in sched.get_jobs():
            if job.id in self._periodic:
                continue
            interval = self.intervals.get(job.id)
            if interval is None or job.trigger.interval_length != interval:
                job.remove()
        for key, interval in self.intervals.items():
            if sched.get_job(key) is not None:
                continue
            offset = group_offset(key, interval)
            first = slot_at_or_before(self.clock(), interval, offset) + interval
            sched.add_job(
                self._scheduled, IntervalTrigger(
                    seconds=interval, start_date=datetime.fromtimestamp(first, UTC),
                    timezone=UTC),
                args=[key], id=key, name=f"evaluate {key}",
                # Never two evaluations of one group at once; a late start is run once (not
                # once per missed slot), and one later than half an interval (APScheduler
                # wants whole seconds) is skipped so the group gets back onto its slots.
                # Skipped slots are counted in `_scheduled`.
                max_instances=1, coalesce=True,
                misfire_grace_time=max(1, math.ceil(interval / 2)))

    async def _scheduled(self, key: str) -> None:
        interval = self.intervals.get(key)
        if interval is None:
            return
        at = slot_at_or_before(self.clock(), interval, group_offset(key, interval))
        last = self.last_slot.get(key)
        if last is not None:
            if at <= last:
                return  # this slot was evaluated already
            missed = round((at - last) / interval) - 1
            if missed > 0:
                self.missed(key, missed)
        self.last_slot[key] = at
        await self.evaluate(key, at)
