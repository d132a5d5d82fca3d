"""Actions, continued (CONTRACT §9), through the engine on a fake clock (the `Rig` of
test_actions_runner): tiers and their serialisation per incident, target locks across rules,
`on_failure` and `on_not_helped` (also across a restart), retries with Retry-After and a timeout
per attempt, `on_resolved`, and a pause that ends by itself. Every wait is the fake clock's."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from test_actions_runner import T0, Rig, rules
from test_daemon_support import catch_all, serve

from watchdog.actions.testing import eventually
from watchdog.handlers import ActionEvent

TIERS = """
groups:
  - name: checkout
    interval: 30s
    rules:
      - alert: HighErrorRate
        expr: error_ratio
        severities: {warning: "> 0.02", critical: "> 0.10"}
        annotations: {summary: "{{ $value | humanizePercentage }}"}
        actions:
          warning: [gradual]
          critical: [full]
        on_resolved: [recover]
actions:
  gradual:
    steps:
      - webhook: {url: "${HOOK}/newest", method: PATCH}
      - wait: {for: 30m, until: resolved}
      - webhook: {url: "${HOOK}/next", method: PATCH}
  full:
    verify_for: 10m
    on_not_helped: {page: true, action: emergency}
    steps:
      - webhook: {url: "${HOOK}/release", method: PATCH}
  emergency:
    steps:
      - webhook: {url: "${HOOK}/emergency", method: POST}
  recover:
    steps:
      - webhook: {url: "${HOOK}/recover", method: POST}
"""


class Hook:
    """Scripted answers per path: a list of (status, headers, delay seconds)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.script: dict[str, list[tuple[int, dict[str, str], float]]] = {}
        self.inflight = 0
        self.max_inflight = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append(request.path)
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            q = self.script.get(request.path)
            code, headers, delay = q.pop(0) if q else (200, {}, 0.0)
            if delay:
                await asyncio.sleep(delay)
            return web.Response(status=code, headers=headers)
        finally:
            self.inflight -= 1

    def count(self, path: str) -> int:
        return self.calls.count(path)


@pytest.fixture
async def hook(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Hook]:
    h = Hook()
    async with serve(catch_all(h.handle)) as url:
        monkeypatch.setenv("HOOK", url)
        yield h


class IncidentRig(Rig):
    """The Rig with the incidents handler before the actions handler, in one transaction per
    tick, as the daemon wires them: a target lock is held while its holder's incident is open,
    which the incident record says."""

    async def start(self) -> Any:
        from watchdog.incidents.handler import IncidentsHandler

        h = await super().start()
        self.incidents = IncidentsHandler(h.ctx, tick=None)
        await self.incidents.on_rules(self.rs)
        await self.incidents.start()
        return h

    async def stop(self) -> None:
        if self.h is not None:
            await self.incidents.stop()
        await super().stop()

    async def tick(self, advance: float = 30.0) -> list[str]:
        from watchdog.engine import tick
        from watchdog.evaluate import Context

        assert self.h is not None and self.db is not None
        self.clock.advance(advance)
        kinds = []
        for rt in self.runtimes:
            res = await tick(rt, self.clock.now, self.source,
                             Context(deploy_baselines=self.h.deploy_baselines()))
            kinds += [e.kind for e in res.events]
            async with self.db.transaction() as tx:
                await self.incidents.on_events(tx, res.events, self.clock.now)
                await self.h.on_events(tx, res.events, self.clock.now)
        return kinds


async def make_rig(tmp_path: Path, session: aiohttp.ClientSession, text: str) -> Rig:
    r = IncidentRig(tmp_path, session, rules(text=text))
    await r.start()
    return r


def runs_of(runs: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [r for r in runs if r["action"] == action]


def paged(events: list[ActionEvent]) -> list[ActionEvent]:
    return [e for e in events if e.extra.get("page")]


async def test_a_higher_tier_takes_over_from_a_lower_tiers_wait_never_beside_it(
        tmp_path: Path, session: aiohttp.ClientSession, hook: Hook) -> None:
    rig = await make_rig(tmp_path, session, TIERS)
    try:
        rig.values["checkout"] = 0.05
        assert "firing" in await rig.tick()
        await eventually(lambda: hook.count("/newest") == 1)
        await rig.settle()
        rig.values["checkout"] = 0.3
        assert "escalated" in await rig.tick()
        await eventually(lambda: hook.count("/release") == 1)
        runs = await rig.wait_status("superseded")
        [gradual] = runs_of(runs, "gradual")
        assert gradual["status"] == "superseded" and gradual["tier"] == "warning"
        assert gradual["steps"][1]["detail"].startswith("cut short: run ")
        [full] = runs_of(await rig.wait_status("succeeded"), "full")
        assert full["tier"] == "critical" and full["incident"] == gradual["incident"]
        assert full["id"] in gradual["steps"][1]["detail"]
        await rig.ticks(40 * 60)  # past the gradual run's 30m: its next flag never comes
        assert hook.count("/next") == 0 and hook.count("/release") == 1
        assert hook.max_inflight == 1
        # 10 minutes after the full rollback, still firing: page, and the next action once
        await eventually(lambda: hook.count("/emergency") == 1)
        [page] = paged(rig.sink.events)
        assert page.kind == "not_helped" and page.action == "full"
        assert page.detail.startswith("not helped: 30% → 30% after 10m")
        [esc] = runs_of(await rig.runs(), "emergency")
        assert esc["trigger"] == "escalation" and esc["incident"] == full["incident"]
        # resolves: on_resolved once
        rig.values["checkout"] = 0.0
        assert "resolved" in await rig.tick()
        await eventually(lambda: hook.count("/recover") == 1)
        await rig.ticks(5 * 60)
        assert hook.count("/recover") == 1 and hook.count("/emergency") == 1
    finally:
        await rig.stop()


async def test_two_tiers_queue_behind_a_step_in_flight(
        tmp_path: Path, session: aiohttp.ClientSession, hook: Hook) -> None:
    """The critical run waits for the warning run's webhook in flight to answer; the two
    requests never overlap."""
    hook.script["/newest"] = [(200, {}, 0.3)]
    rig = await make_rig(tmp_path, session, TIERS)
    try:
        rig.values["checkout"] = 0.05
        await rig.tick()
        await eventually(lambda: hook.count("/newest") == 1)
        rig.values["checkout"] = 0.3
        await rig.tick()
        await eventually(lambda: hook.count("/release") == 1)
        assert hook.max_inflight == 1
        assert hook.calls == ["/newest", "/release"]
    finally:
        await rig.stop()


LOCKED = """
groups:
  - name: checkout
    interval: 30s
    rules:
      - alert: PodErrors
        expr: error_ratio
        threshold: "> 0.1"
        actions: [undo]
      - alert: CheckoutSlow
        expr: error_ratio
        threshold: "> 0.5"
        actions: [undo-too]
actions:
  undo:
    lock: "deploy/{{ $labels.deployment }}"
    cooldown: 30m
    steps:
      - webhook: {url: "${HOOK}/undo", method: POST}
  undo-too:
    lock: "deploy/{{ $labels.deployment }}"
    steps:
      - webhook: {url: "${HOOK}/undo-too", method: POST}
"""


async def test_a_target_lock_holds_across_series_and_rules_and_lets_go_after_cooldown(
        tmp_path: Path, session: aiohttp.ClientSession, hook: Hook) -> None:
    rig = IncidentRig(tmp_path, session, rules(text=LOCKED))
    # three series (pods) of one deployment
    rig.source.answers["error_ratio"] = lambda at: [
        _s(v, pod=p, deployment="checkout") for p, v in rig.values.items()]
    rig.values = {"a": 0.0, "b": 0.0, "c": 0.0}
    await rig.start()
    try:
        rig.values.update(a=0.9, b=0.2, c=0.3)
        await rig.tick()
        await eventually(lambda: hook.count("/undo") == 1)
        runs = await rig.runs()
        ran = [r for r in runs if r["status"] != "locked"]
        held = [r for r in runs if r["status"] == "locked"]
        assert len(ran) == 1 and len(held) == 3  # two series of undo, one of the other rule
        assert {r["deferredTo"] for r in held} == {ran[0]["id"]}
        assert {r["action"] for r in held} == {"undo", "undo-too"}
        assert all(r["lock"] == "deploy/checkout" for r in runs)
        assert all(f"undo run {ran[0]['id']} is running" in r["detail"] for r in held)
        await rig.wait_status("succeeded")
        # the run is done but its incident is open: another rule's trigger still defers to it
        rig.values.update(c=0.0)
        await rig.tick()
        rig.values.update(c=0.6)
        await rig.tick()
        await rig.settle()
        assert hook.calls == ["/undo"]
        later = [r for r in await rig.runs() if r["status"] == "locked"]
        assert any("acted for an incident that is still open" in r["detail"] for r in later)
        # everything resolves; a new incident within the cooldown: still the lock's
        rig.values.update(a=0.0, b=0.0, c=0.0)
        await rig.tick()
        rig.values.update(b=0.2)
        await rig.tick(5 * 60)
        await rig.settle()
        assert hook.calls == ["/undo"]
        newest = (await rig.runs())[0]
        assert newest["status"] == "locked" and "cooldown 30m" in newest["detail"]
        # past the cooldown (from the first run's start): the next incident acts
        rig.values.update(b=0.0)
        await rig.tick(30 * 60)
        rig.values.update(b=0.2)
        await rig.tick()
        await eventually(lambda: hook.calls == ["/undo", "/undo"])
    finally:
        await rig.stop()


def _s(v: float, **labels: str) -> Any:
    from watchdog.testing import sample

    return sample(v, __name__="error_ratio", **labels)


FLAKY = """
groups:
  - name: checkout
    interval: 30s
    rules:
      - alert: HighErrorRate
        expr: error_ratio
        threshold: "> 0.1"
        actions: [flag-off]
actions:
  flag-off:
    on_failure: {page: true, action: by-hand}
    steps:
      - webhook: {url: "${HOOK}/flag", method: PATCH, timeout: 200ms,
                  retry: {attempts: 4, backoff: 10s}}
  by-hand:
    steps:
      - webhook: {url: "${HOOK}/ticket", method: POST}
"""


async def test_retries_honour_retry_after_and_time_out_each_attempt(
        tmp_path: Path, session: aiohttp.ClientSession, hook: Hook) -> None:
    hook.script["/flag"] = [(503, {}, 0.0), (429, {"Retry-After": "45"}, 0.0),
                            (200, {}, 1.0), (200, {}, 0.0)]
    rig = await make_rig(tmp_path, session, FLAKY)
    try:
        rig.values["checkout"] = 0.2
        await rig.tick()
        await eventually(lambda: hook.count("/flag") == 1)
        await rig.settle()
        rig.clock.advance(9)
        rig.handler.waker.poke()
        await rig.settle()
        assert hook.count("/flag") == 1  # backoff 10s: not yet
        rig.clock.advance(1)
        rig.handler.waker.poke()
        await eventually(lambda: hook.count("/flag") == 2)  # the 429 asks for 45s
        await rig.settle()
        rig.clock.advance(44)
        rig.handler.waker.poke()
        await rig.settle()
        assert hook.count("/flag") == 2
        rig.clock.advance(1)
        rig.handler.waker.poke()
        await eventually(lambda: hook.count("/flag") == 3)  # hangs past its 200ms: retried
        async def three() -> bool:
            return await _attempts(rig) == 3
        await eventually(three)
        rig.clock.advance(40)
        rig.handler.waker.poke()
        await eventually(lambda: hook.count("/flag") == 4)
        [run] = await rig.wait_status("succeeded")
        step = run["steps"][0]
        assert [a["status"] for a in step["attempts"]] == ["retrying"] * 3 + ["succeeded"]
        assert "HTTP 503; try 2/4 in 10s" in step["attempts"][0]["detail"]
        assert "HTTP 429; try 3/4 in 45s" in step["attempts"][1]["detail"]
        assert "timed out after 200ms; try 4/4 in 40s" in step["attempts"][2]["detail"]
        assert step["detail"].endswith("(try 4 of 4)")
        assert paged(rig.sink.events) == [] and hook.count("/ticket") == 0
    finally:
        await rig.stop()


async def _attempts(rig: Rig) -> int:
    runs = await rig.runs()
    return len(runs[0]["steps"][0]["attempts"]) if runs and runs[0]["steps"] else 0


async def test_a_step_that_fails_for_good_pages_and_runs_the_next_action(
        tmp_path: Path, session: aiohttp.ClientSession, hook: Hook) -> None:
    hook.script["/flag"] = [(500, {}, 0.0), (400, {}, 0.0)]  # 400: retrying will not help
    rig = await make_rig(tmp_path, session, FLAKY)
    try:
        rig.values["checkout"] = 0.2
        await rig.tick()
        await eventually(lambda: hook.count("/flag") == 1)
        await rig.settle()
        rig.clock.advance(10)
        rig.handler.waker.poke()
        await eventually(lambda: hook.count("/ticket") == 1)
        runs = await rig.runs()
        [failed] = runs_of(runs, "flag-off")
        assert failed["status"] == "failed"
        assert [a["status"] for a in failed["steps"][0]["attempts"]] == ["retrying", "failed"]
        assert "(after 2 tries)" in failed["detail"]
        [page] = paged(rig.sink.events)
        assert page.kind == "failed" and page.action == "flag-off"
        [nxt] = runs_of(runs, "by-hand")
        assert nxt["trigger"] == "escalation" and nxt["incident"] == failed["incident"]
    finally:
        await rig.stop()


async def test_a_pending_verdict_survives_a_crash_and_escalates_once(
        tmp_path: Path, session: aiohttp.ClientSession, hook: Hook) -> None:
    rig = await make_rig(tmp_path, session, TIERS)
    try:
        rig.values["checkout"] = 0.3
        await rig.tick()
        [full] = runs_of(await rig.wait_status("succeeded"), "full")
        assert full["verification"] == "pending" and full["verifyAt"] == T0 + 30 + 600
        await rig.crash()
        rig.clock.advance(11 * 60)  # the verdict is due while nobody runs
        await rig.start()
        await eventually(lambda: hook.count("/emergency") == 1)
        await rig.ticks(3 * 60)
        assert hook.count("/emergency") == 1 and len(paged(rig.sink.events)) == 1
        [full] = runs_of(await rig.runs(), "full")
        assert full["verification"] == "not_helped"
    finally:
        await rig.stop()


PAUSED = """
groups:
  - name: checkout
    interval: 30s
    rules:
      - alert: HighErrorRate
        expr: error_ratio
        threshold: "> 0.1"
        actions: [staged]
actions:
  staged:
    steps:
      - webhook: {url: "${HOOK}/one", method: POST}
      - wait: {for: 5m}
      - webhook: {url: "${HOOK}/two", method: POST}
"""


async def test_a_pause_skips_the_steps_it_covers_and_ends_by_itself(
        tmp_path: Path, session: aiohttp.ClientSession, hook: Hook) -> None:
    rig = await make_rig(tmp_path, session, PAUSED)
    try:
        rig.values["checkout"] = 0.2
        await rig.tick()
        await eventually(lambda: hook.calls == ["/one"])
        # paused during the wait: the step after it is a would_run
        doc = await rig.handler.pause({"for": "10m", "reason": "db failover", "by": "carol"})
        assert doc["paused"] and doc["until"] == rig.clock.now + 600
        await rig.ticks(6 * 60)
        [run] = await rig.wait_status("dry_run")
        assert hook.calls == ["/one"]
        assert [s["status"] for s in run["steps"]] == ["succeeded", "succeeded", "would_run"]
        assert "actions paused until" in run["steps"][2]["detail"]
        assert "by carol (db failover)" in run["steps"][2]["detail"]
        # the pause ends by itself at `until`: a new incident acts
        rig.values["checkout"] = 0.0
        await rig.tick()
        await rig.ticks(5 * 60)
        assert (await rig.handler.pause_state()) == {"paused": False}
        rig.values["checkout"] = 0.2
        await rig.tick()
        await eventually(lambda: hook.calls == ["/one", "/one"])
    finally:
        await rig.stop()


async def test_bad_pause_requests_get_one_clear_line(
        tmp_path: Path, session: aiohttp.ClientSession, hook: Hook) -> None:
    from watchdog.actions.errors import CommandError

    rig = await make_rig(tmp_path, session, PAUSED)
    try:
        for body, words in [
            ({"reason": "x"}, 'exactly one of "until"'),
            ({"for": "1h", "until": T0 + 10, "reason": "x"}, 'exactly one of "until"'),
            ({"for": "1h"}, "reason"),
            ({"for": "1h", "reason": ""}, "reason"),
            ({"until": T0 - 5, "reason": "x"}, "in the future"),
            ({"for": "30d", "reason": "x"}, "at most 7d"),
            ({"for": "soon", "reason": "x"}, "for"),
            ({"until": "tomorrow", "reason": "x"}, "until must be RFC 3339"),
            ({"for": "1h", "reason": "x", "evil": 1}, "evil"),
            ([1, 2], "expected a JSON object"),
        ]:
            with pytest.raises(CommandError) as e:
                await rig.handler.pause(body)
            assert words in str(e.value) and "\n" not in str(e.value), (body, str(e.value))
            assert e.value.status == 400
        assert json.dumps(await rig.handler.pause_state()) == '{"paused": false}'
    finally:
        await rig.stop()
