"""When each rule group is evaluated: one asyncio task per group on slots aligned to its
interval (a stable per-group offset, as Prometheus spreads groups), never two evaluations of one
group at once, a late start run once, skipped slots counted — plus the daemon's periodic jobs
(rules folder poll, Sentry heartbeat).

Real time only paces the jobs; the evaluation time of each slot comes from the injected clock.
Written on asyncio rather than on APScheduler (used until issue 16): a loop per group is all
the daemon asked of it, and APScheduler cost 1.0 MiB resident (with tzlocal and zoneinfo) and
a thread-safe job store, next-fire-time arithmetic in time zones and an event dispatch on every
tick of every group (bench/daemon.py --memory).
Must not: evaluate, persist, or know what a group contains beyond its key and interval.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

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
Periodic = Mapping[str, tuple[float, Callable[[], Awaitable[Any]], bool]]


def grace(interval: float) -> float:
    """How late a slot may still start: half an interval, at least a second. Later, it is
    skipped (and counted) so the group gets back onto its slots instead of running late."""
    return max(1.0, math.ceil(interval / 2))


class GroupScheduler:
    """The jobs. `sync(intervals)` after every (re)load makes the jobs match the groups."""

    def __init__(self, clock: Callable[[], float], evaluate: Evaluate, missed: Missed) -> None:
        self.clock = clock
        self.evaluate = evaluate
        self.missed = missed
        self.started = False
        self.intervals: dict[str, float] = {}
        self.last_slot: dict[str, float] = {}
        self._paused = False
        self._groups: dict[str, tuple[float, asyncio.Task[None]]] = {}
        self._periodic: dict[str, tuple[float, asyncio.Task[None]]] = {}

    @property
    def running(self) -> bool:
        return self.started and not self._paused

    def jobs(self) -> dict[str, float]:
        """Every job (groups and periodic ones) -> its interval in seconds."""
        return {k: iv for jobs in (self._groups, self._periodic) for k, (iv, _) in jobs.items()}

    def start(self, intervals: Mapping[str, float], periodic: Periodic) -> None:
        """Start with one job per group and the periodic jobs ({id: (seconds, fn, now)})."""
        self.started = True
        for job_id, (seconds, fn, now) in periodic.items():
            task = asyncio.create_task(self._every(job_id, seconds, fn, now), name=job_id)
            self._periodic[job_id] = (seconds, task)
        self.sync(intervals)

    def pause(self) -> None:
        """Start nothing new; what runs finishes (the daemon waits for it)."""
        self._paused = True

    def shutdown(self) -> None:
        for _, task in [*self._groups.values(), *self._periodic.values()]:
            task.cancel()
        self._groups.clear()
        self._periodic.clear()
        self.started = False

    def forget(self, key: str) -> None:
        self.last_slot.pop(key, None)

    def sync(self, intervals: Mapping[str, float]) -> None:
        """One job per group, at its interval; idempotent."""
        self.intervals = dict(intervals)
        if not self.started:
            return
        for key, (interval, task) in list(self._groups.items()):
            if self.intervals.get(key) != interval:
                # an evaluation in flight is its own task and finishes; the group's lock keeps
                # a new job's first one from overlapping it
                task.cancel()
                del self._groups[key]
        for key, interval in self.intervals.items():
            if key not in self._groups:
                task = asyncio.create_task(self._group(key, interval), name=f"schedule {key}")
                self._groups[key] = (interval, task)

    async def _group(self, key: str, interval: float) -> None:
        offset = group_offset(key, interval)
        due = slot_at_or_before(self.clock(), interval, offset) + interval
        while True:
            while (delay := due - self.clock()) > 0:
                await asyncio.sleep(delay)
            if self._paused:
                return
            now = self.clock()
            # slots that passed while the loop was busy are coalesced into the latest one
            if now - slot_at_or_before(now, interval, offset) <= grace(interval):
                run = asyncio.create_task(self._scheduled(key), name=f"evaluate {key}")
                # waited for, never cancelled with this loop: a stop lets it finish and persist
                await asyncio.wait({run})
                if self._paused:
                    return
            # the next slot after now: those that came due during the evaluation are skipped
            # (and counted by the next `_scheduled`)
            due = slot_at_or_before(self.clock(), interval, offset) + interval

    async def _every(self, job_id: str, seconds: float, fn: Callable[[], Awaitable[Any]],
                     now: bool) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() if now else loop.time() + seconds
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            if self._paused:
                return
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("periodic job failed", job=job_id)
            due += seconds
            if due < loop.time():  # one run for all the periods it fell behind
                due = loop.time() + seconds

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
