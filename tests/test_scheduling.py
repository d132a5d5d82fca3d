"""The group scheduler on its own (watchdog.app.scheduling): slots, pause, periodic jobs that
fail, interval changes. Real time paces it, so intervals are short and checks are on what
happened, never on how long it took."""

from __future__ import annotations

import asyncio
import itertools
import time

from watchdog.app.scheduling import GroupScheduler, group_offset


async def wait_until(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_failing_periodic_job_keeps_its_schedule() -> None:
    calls: list[float] = []

    async def flaky() -> None:
        calls.append(time.monotonic())
        raise RuntimeError("boom")

    async def never(key: str, at: float) -> None:
        raise AssertionError("no groups")

    s = GroupScheduler(time.time, never, lambda k, n: None)
    s.start({}, {"job": (0.05, flaky, True)})
    try:
        await wait_until(lambda: len(calls) >= 3)
    finally:
        s.shutdown()
    assert s.jobs() == {}


async def test_evaluations_land_on_the_groups_slots_and_pause_lets_one_finish() -> None:
    ats: list[float] = []
    running = asyncio.Event()
    release = asyncio.Event()

    async def evaluate(key: str, at: float) -> None:
        ats.append(at)
        if len(ats) == 3:
            running.set()
            await release.wait()  # the third evaluation is in flight when we pause

    s = GroupScheduler(time.time, evaluate, lambda k, n: None)
    s.start({"g": 0.1}, {})
    try:
        await asyncio.wait_for(running.wait(), 5)
        s.pause()
        assert not s.running
        release.set()
        await asyncio.sleep(0.35)  # three more slots pass: nothing new starts
        assert len(ats) == 3
    finally:
        s.shutdown()
    off = group_offset("g", 0.1)
    for at in ats:
        phase = (at - off) % 0.1
        assert min(phase, 0.1 - phase) < 1e-6


async def test_an_interval_change_replaces_the_job_and_a_removed_group_stops() -> None:
    seen: list[tuple[str, float]] = []

    async def evaluate(key: str, at: float) -> None:
        seen.append((key, at))

    s = GroupScheduler(time.time, evaluate, lambda k, n: None)
    s.start({"a": 0.1, "b": 0.1}, {})
    try:
        s.sync({"a": 0.2})
        assert s.jobs() == {"a": 0.2}
        await wait_until(lambda: sum(k == "a" for k, _ in seen) >= 2)
        n_b = sum(k == "b" for k, _ in seen)
        await asyncio.sleep(0.3)
        assert sum(k == "b" for k, _ in seen) == n_b  # b was removed: no more ticks
        a_ats = [at for k, at in seen if k == "a"]
        gaps = {round(y - x, 6) for x, y in itertools.pairwise(a_ats)}
        assert gaps <= {0.2, 0.1}  # 0.1 only between the old job's last tick and the new's
    finally:
        s.shutdown()
