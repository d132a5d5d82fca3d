"""Action runs end to end through the engine, on a fake clock: staged rollback, interlocks,
dry runs, failures, verification, and resuming after a crash. A `wait: {for: 30m}` passes in
milliseconds because the clock is injected and every tick pokes the runner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from storage_support import on_events_tx
from test_daemon_support import catch_all, serve

from watchdog.actions.handler import ActionsHandler
from watchdog.actions.runner import ActionRunner
from watchdog.actions.testing import RecordingSink, RuntimeAlerts, eventually, make_context
from watchdog.engine import GroupRuntime, tick
from watchdog.evaluate import Context
from watchdog.rulesdir import RuleSet, build
from watchdog.settings import Settings
from watchdog.state import Event
from watchdog.storage import Storage, open_storage
from watchdog.testing import FakeSource, FixedClock, sample

T0 = 1_800_000_000.0

RULES = """
groups:
  - name: checkout
    interval: 30s
    rules:
      - alert: HighErrorRate
        expr: error_ratio
        threshold: "> 0.1"
        DRYRUN
        actions: [rollback]
actions:
  rollback:
    cooldown: 30m
    max_runs_per_hour: 3
    verify_for: 10m
    steps:
      - webhook: {url: "${HOOK}/stage1", method: PATCH, json: {enabled: false}}
      - wait: {for: 30m, until: resolved}
      - webhook: {url: "${HOOK}/stage2", timeout: 30s}
"""


def rules(dry_run: bool = False, text: str = RULES) -> RuleSet:
    rs = build({"r.yml": text.replace("DRYRUN", "dry_run: true" if dry_run else "").encode()})
    assert not rs.rejected, rs.problems
    return rs


class Hook:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.status: dict[str, int] = {}
        self.hang: set[str] = set()

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append(request.path)
        if request.path in self.hang:
            await asyncio.sleep(60)
        return web.Response(status=self.status.get(request.path, 200))

    def count(self, path: str) -> int:
        return self.calls.count(path)


@pytest.fixture
async def hook(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Hook]:
    h = Hook()
    async with serve(catch_all(h.handle)) as url:
        monkeypatch.setenv("HOOK", url)
        yield h


class Rig:
    """The engine, one actions handler and a fake clock: what the daemon does, minus HTTP."""

    def __init__(self, tmp_path: Path, session: aiohttp.ClientSession, rs: RuleSet,
                 settings: Settings | None = None) -> None:
        self.path = tmp_path / "state.db"
        self.session = session
        self.rs = rs
        self.settings = settings or Settings()
        self.clock = FixedClock(T0)
        self.values: dict[str, float] = {"checkout": 0.0}
        self.source = FakeSource({"error_ratio": lambda at: [
            sample(v, __name__="error_ratio", service=s) for s, v in self.values.items()]})
        self.runtimes = [GroupRuntime.new(f, g) for f, g in rs.groups()]
        self.sink = RecordingSink()
        self.db: Storage | None = None
        self.h: ActionsHandler | None = None

    async def start(self) -> ActionsHandler:
        self.db = await open_storage(f"sqlite:///{self.path}")
        ctx = make_context(self.db, self.session, self.source,
                           alerts=RuntimeAlerts(self.runtimes), clock=self.clock,
                           settings=self.settings, sinks=[self.sink])
        self.h = ActionsHandler(ctx)
        await self.h.on_rules(self.rs)
        await self.h.start()
        return self.h

    async def crash(self) -> None:
        """What SIGKILL leaves: tasks gone mid-await, nothing written on the way out."""
        assert self.h is not None and self.db is not None
        tasks = list(self.h.runner._tasks) + list(self.h.deploys._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.db.close()
        self.h = self.db = None

    async def stop(self) -> None:
        if self.h is not None:
            await self.h.stop()
        if self.db is not None:
            await self.db.close()
        self.h = self.db = None

    async def tick(self, advance: float = 30.0) -> list[str]:
        assert self.h is not None
        self.clock.advance(advance)
        kinds = []
        for rt in self.runtimes:
            res = await tick(rt, self.clock.now, self.source,
                             Context(deploy_baselines=self.h.deploy_baselines()))
            kinds += [e.kind for e in res.events]
            await on_events_tx(self.h, res.events, self.clock.now)
        return kinds

    async def ticks(self, seconds: float, every: float = 60.0) -> None:
        for _ in range(int(seconds // every)):
            await self.tick(every)
            await self.settle()

    async def settle(self) -> None:
        """Give run tasks a moment to take the steps they can take without the clock moving
        (tests that need a result wait for it with `eventually`)."""
        for _ in range(10):
            await asyncio.sleep(0)
        await asyncio.sleep(0.002)

    @property
    def handler(self) -> ActionsHandler:
        assert self.h is not None
        return self.h

    def held(self, reason: str) -> float:
        value = self.handler.ctx.registry.get_sample_value(
            "watchdog_actions_total", {"action": "rollback", "outcome": reason})
        return value or 0.0

    async def runs(self) -> list[dict[str, Any]]:
        assert self.h is not None
        return await self.h.runs()

    async def wait_status(self, status: str, n: int = 1) -> list[dict[str, Any]]:
        async def ok() -> bool:
            return sum(r["status"] == status for r in await self.runs()) >= n
        await eventually(ok)
        return await self.runs()


@pytest.fixture
async def rig(tmp_path: Path, session: aiohttp.ClientSession) -> AsyncIterator[Rig]:
    r = Rig(tmp_path, session, rules())
    await r.start()
    yield r
    await r.stop()


async def wait_step_started(rig: Rig) -> None:
    async def ok() -> bool:
        runs = await rig.runs()
        return bool(runs) and any(s["kind"] == "wait" and s["status"] == "running"
                                  for s in runs[0]["steps"])
    await eventually(ok)


async def test_staged_rollback_stops_after_stage_one_when_resolved(rig: Rig, hook: Hook) -> None:
    rig.values["checkout"] = 0.2
    assert "firing" in await rig.tick()
    await wait_step_started(rig)
    assert hook.calls == ["/stage1"]
    rig.values["checkout"] = 0.01  # flag off was enough
    assert "resolved" in await rig.tick()
    await rig.ticks(30 * 60)
    [run] = await rig.wait_status("resolved")
    assert hook.calls == ["/stage1"]
    assert [s["status"] for s in run["steps"]] == ["succeeded", "succeeded"]
    assert "stopped after step 2/3 wait: the alert resolved" in run["detail"]
    assert rig.sink.kinds("rollback")[:2] == ["started", "succeeded"]
    # did it help? 10 minutes later, the value before and after
    await rig.ticks(10 * 60 + 30)
    await eventually(lambda: "verified" in rig.sink.kinds())
    verified = next(e for e in rig.sink.events if e.kind == "verified")
    assert verified.detail == "helped: 0.2 → 0.01 after 10m (HighErrorRate cleared)"
    assert verified.extra["value_after"] == 0.01
    [run] = await rig.runs()
    assert run["verification"] == "verified" and run["valueAfter"] == 0.01


async def test_staged_rollback_runs_stage_two_when_still_firing(rig: Rig, hook: Hook) -> None:
    rig.values["checkout"] = 0.2
    await rig.tick()
    await wait_step_started(rig)
    await rig.ticks(29 * 60)
    assert hook.calls == ["/stage1"]  # still watching
    await rig.ticks(60)
    [run] = await rig.wait_status("succeeded")
    assert hook.calls == ["/stage1", "/stage2"]
    assert [s["status"] for s in run["steps"]] == ["succeeded"] * 3
    assert run["steps"][1]["deadline"] == T0 + 30 + 30 * 60
    await rig.ticks(11 * 60)
    await eventually(lambda: "not_helped" in rig.sink.kinds())
    bad = next(e for e in rig.sink.events if e.kind == "not_helped")
    assert bad.detail.startswith("not helped: 0.2 → 0.2 after 10m")
    assert "HighErrorRate still firing" in bad.detail


async def test_flapping_alert_within_cooldown_runs_once(tmp_path: Path,
                                                        session: aiohttp.ClientSession,
                                                        hook: Hook) -> None:
    rig = Rig(tmp_path, session, rules(text=RULES.replace(
        "      - wait: {for: 30m, until: resolved}\n      - webhook: {url: \"${HOOK}/stage2\", "
        "timeout: 30s}\n", "")))
    await rig.start()
    firing = 0
    for i in range(20):  # 10 minutes of flapping: every other evaluation above the threshold
        rig.values["checkout"] = 0.3 if i % 2 == 0 else 0.0
        firing += (await rig.tick()).count("firing")
        await rig.settle()
    assert firing == 10  # ten incidents ...
    await rig.wait_status("succeeded")
    assert hook.calls == ["/stage1"]  # ... one rollback
    assert len(await rig.runs()) == 1
    assert rig.held("cooldown") == 9
    # after the cooldown, a new incident may act again
    rig.values["checkout"] = 0.0
    await rig.ticks(30 * 60)
    rig.values["checkout"] = 0.3
    await rig.tick()
    await rig.wait_status("succeeded", 2)
    assert hook.calls == ["/stage1", "/stage1"]
    await rig.stop()


async def test_max_runs_per_hour_counts_across_instances(tmp_path: Path,
                                                         session: aiohttp.ClientSession,
                                                         hook: Hook) -> None:
    rig = Rig(tmp_path, session, rules())
    await rig.start()
    rig.values = {f"svc{i}": 0.5 for i in range(5)}
    await rig.tick()
    await rig.settle()
    runs = await rig.runs()
    assert len(runs) == 3
    assert {r["labels"]["service"] for r in runs} < set(rig.values)
    assert rig.held("rate_limited") == 2
    await rig.stop()


@pytest.mark.parametrize("where", ["global", "rule"])
async def test_dry_run_runs_nothing_and_reports_each_step(tmp_path: Path,
                                                          session: aiohttp.ClientSession,
                                                          hook: Hook, where: str) -> None:
    rig = Rig(tmp_path, session, rules(dry_run=where == "rule"),
              Settings(dry_run=where == "global"))
    await rig.start()
    rig.values["checkout"] = 0.2
    await rig.tick()
    [run] = await rig.wait_status("dry_run")  # no waiting: the wait is reported, not done
    assert hook.calls == []
    assert run["dryRun"] is True
    assert [s["status"] for s in run["steps"]] == ["would_run"] * 3
    would = [e for e in rig.sink.events if e.kind == "would_run"]
    assert [e.step for e in would] == [None, "1/3 webhook", "2/3 wait", "3/3 webhook"]
    assert "PATCH ${HOOK}/stage1" in would[1].detail
    assert "wait 30m until resolved" in would[2].detail
    assert not any(e.kind in ("started", "succeeded") for e in rig.sink.events)
    await rig.stop()


async def test_failed_step_stops_the_sequence_and_is_notified(rig: Rig, hook: Hook) -> None:
    hook.status["/stage1"] = 500
    rig.values["checkout"] = 0.2
    await rig.tick()
    [run] = await rig.wait_status("failed")
    assert hook.calls == ["/stage1"]
    assert [s["status"] for s in run["steps"]] == ["failed"]
    failed = next(e for e in rig.sink.events if e.kind == "failed")
    assert failed.step == "1/3 webhook" and "HTTP 500" in failed.detail
    await rig.ticks(40 * 60)
    assert hook.calls == ["/stage1"]


@pytest.mark.parametrize("how", ["crash", "graceful"])
async def test_restart_during_wait_resumes_at_its_deadline(tmp_path: Path,
                                                           session: aiohttp.ClientSession,
                                                           hook: Hook, how: str) -> None:
    rig = Rig(tmp_path, session, rules())
    await rig.start()
    rig.values["checkout"] = 0.2
    await rig.tick()
    await wait_step_started(rig)
    deadline = T0 + 30 + 30 * 60
    await rig.ticks(10 * 60)
    await (rig.crash() if how == "crash" else rig.stop())
    rig.clock.advance(5 * 60)  # down for five minutes
    await rig.start()
    [run] = await rig.runs()
    assert run["status"] == "running" and run["steps"][1]["deadline"] == deadline
    await rig.ticks(14 * 60)  # T0 + 29m30s: not yet
    assert hook.calls == ["/stage1"]
    await rig.ticks(60)
    [run] = await rig.wait_status("succeeded")
    assert hook.calls == ["/stage1", "/stage2"]  # nothing repeated
    assert [(s["index"], s["status"]) for s in run["steps"]] == \
        [(0, "succeeded"), (1, "succeeded"), (2, "succeeded")]
    # the same incident firing again after a restart (state replayed) does not act again
    await rig.stop()
    await rig.start()
    alert = rig.runtimes[0].alerts()[0]
    await on_events_tx(rig.handler, [Event("firing", rig.clock.now, alert)], rig.clock.now)
    await rig.settle()
    assert len(await rig.runs()) == 1
    await rig.stop()


async def test_step_interrupted_by_a_crash_is_not_repeated(tmp_path: Path,
                                                           session: aiohttp.ClientSession,
                                                           hook: Hook) -> None:
    hook.hang.add("/stage1")
    rig = Rig(tmp_path, session, rules())
    await rig.start()
    rig.values["checkout"] = 0.2
    await rig.tick()
    await eventually(lambda: hook.calls == ["/stage1"])
    await rig.crash()  # mid-request: did the flag service act? nobody knows
    await rig.start()
    [run] = await rig.wait_status("failed")
    assert hook.calls == ["/stage1"]
    assert run["steps"][0]["status"] == "interrupted"
    failed = next(e for e in rig.sink.events if e.kind == "failed")
    assert "interrupted by a restart" in failed.detail
    await rig.stop()


async def test_a_step_that_failed_just_before_a_crash_ends_the_run(
        tmp_path: Path, session: aiohttp.ClientSession, hook: Hook,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after the failed step was recorded but before the run was marked failed: the
    restart marks it failed and never runs the later steps (it used to skip the failed step and
    go on with stage 2)."""
    hook.status["/stage1"] = 500
    rig = Rig(tmp_path, session, rules())
    reached = asyncio.Event()

    async def killed_here(*args: Any, **kwargs: Any) -> None:
        reached.set()
        await asyncio.Event().wait()

    with monkeypatch.context() as m:
        m.setattr(ActionRunner, "_finish", killed_here)
        await rig.start()
        rig.values["checkout"] = 0.2
        await rig.tick()
        await asyncio.wait_for(reached.wait(), 10)
        await rig.crash()
    await rig.start()
    [run] = await rig.wait_status("failed")
    assert hook.calls == ["/stage1"]
    assert [s["status"] for s in run["steps"]] == ["failed"]
    assert any(e.kind == "failed" for e in rig.sink.events)
    await rig.ticks(40 * 60)
    assert hook.calls == ["/stage1"]
    await rig.stop()
