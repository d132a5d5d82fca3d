"""Actions, continued (CONTRACT §9), end to end: `watchdog run` as a real process evaluating
against a real Prometheus, whose series the test writes through Prometheus's remote-write
receiver with the current time — so a value changes the moment the test says so, and every
wait below is for an observable outcome (a request reaching a fake, a run's status on the API).

- a rule with tiers runs its warning action when it fires and its critical action when it
  reaches critical, each once, and its `on_resolved` action once when the incident resolves;
  the warning action's webhook answers 503, 503, 200 and succeeds on the third attempt, with
  every attempt on the run's API record;
- two series sharing a target lock act once; the other trigger is a `locked` run naming the
  run it deferred to;
- a run that did not help pages PagerDuty with a `trigger` (the events endpoint, not a change
  event) and starts the next action;
- pause turns a run into would_run steps and every message says so; resume acts again.

The action targets are `Hooks`, an in-process flag service; PagerDuty and Slack are `FakeChat`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from fakes_chat import FakeChat
from watchdog_process import TOKEN, WatchdogProcess

from watchdog.promserver import PrometheusServer
from watchdog.remotewrite import push

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

KEY = "R0UT1NGKEY0123456789abcdefABCDEF"


class Hooks:
    """The services the actions call: records `METHOD /path` and answers from a script per path
    (default 200)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.script: dict[str, deque[tuple[int, dict[str, str]]]] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def then(self, path: str, *replies: int | tuple[int, dict[str, str]]) -> None:
        q = self.script.setdefault(path, deque())
        q.extend(r if isinstance(r, tuple) else (r, {}) for r in replies)

    def count(self, path: str) -> int:
        return sum(1 for c in self.calls if c.endswith(f" {path}"))

    async def _any(self, request: web.Request) -> web.Response:
        await request.read()
        self.calls.append(f"{request.method} {request.path}")
        q = self.script.get(request.path)
        code, headers = q.popleft() if q else (200, {})
        return web.Response(status=code, text="ok" if code < 300 else "unavailable",
                            headers=headers)

    async def start(self) -> Hooks:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._any)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Metrics:
    """Writes samples stamped with the current time into Prometheus (remote write)."""

    def __init__(self, session: aiohttp.ClientSession, prom: PrometheusServer) -> None:
        self.session = session
        self.url = f"{prom.url}/api/v1/write"
        self._last = 0

    async def set(self, name: str, value: float, **labels: str) -> None:
        ms = max(int(time.time() * 1000), self._last + 1)
        self._last = ms
        await push(self.session, self.url, [({"__name__": name, **labels}, [(ms, value)])])


@pytest.fixture
def prometheus(tmp_path: Path, prometheus_binary: str) -> Any:
    server = PrometheusServer(tmp_path / "tsdb", binary=prometheus_binary,
                              extra_args=["--web.enable-remote-write-receiver"])
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    h = await Hooks().start()
    yield h
    await h.close()


@pytest.fixture
async def metrics(session: aiohttp.ClientSession, prometheus: PrometheusServer) -> Metrics:
    return Metrics(session, prometheus)


async def until(pred: Callable[[], Awaitable[Any] | Any], what: str, wd: WatchdogProcess,
                timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        wd.alive()
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{wd.log()[-4000:]}"
        await asyncio.sleep(0.1)


def runs(wd: WatchdogProcess, action: str | None = None) -> list[dict[str, Any]]:
    path = "/api/v1/actions/runs" + (f"?action={action}" if action else "")
    return list(wd.get_json(path, token=None)["data"])


def start(tmp_path: Path, rules: str, prom: PrometheusServer) -> WatchdogProcess:
    wd = WatchdogProcess(tmp_path, {"WATCHDOG_PROMETHEUS_URL": prom.url,
                                    "WATCHDOG_EVALUATION_INTERVAL": "1s"})
    (wd.rules / "rules.yml").write_text(rules)
    wd.start()
    wd.wait_up()
    return wd


def tiers_rules(hooks: Hooks, chat: FakeChat) -> str:
    return f"""
groups:
  - name: checkout
    interval: 1s
    rules:
      - alert: CheckoutErrorRate
        expr: err_ratio{{service="checkout"}}
        severities: {{warning: "> 0.02", critical: "> 0.10"}}
        annotations: {{summary: "error rate {{{{ $value | humanizePercentage }}}}"}}
        actions:
          warning: [disable-newest-flag]
          critical: [full-rollback]
        on_resolved: [leave-emergency-mode]
      - alert: PodErrors
        expr: pod_err{{deployment="checkout"}}
        threshold: "> 0.5"
        actions: [undo-checkout]
actions:
  disable-newest-flag:
    steps:
      - webhook: {{url: "{hooks.url}/flags/newest", method: PATCH, json: {{enabled: false}},
                  retry: {{attempts: 3, backoff: 100ms}}}}
  full-rollback:
    steps:
      - webhook: {{url: "{hooks.url}/flags/master", method: PATCH, json: {{enabled: false}}}}
      - webhook: {{url: "{hooks.url}/emergency/on", method: POST}}
  leave-emergency-mode:
    steps:
      - webhook: {{url: "{hooks.url}/emergency/off", method: POST}}
  undo-checkout:
    lock: "deploy/{{{{ $labels.deployment }}}}"
    cooldown: 30m
    steps:
      - webhook: {{url: "{hooks.url}/deploy/{{{{ $labels.deployment }}}}/undo", method: POST}}
receivers:
  - name: chat
    slack: {{webhook_url: "{chat.url}/slack/T0/B0/x"}}
routes:
  - receivers: [chat]
    group_wait: 0s
"""


async def test_tiers_retries_recovery_and_a_shared_lock(
        tmp_path: Path, prometheus: PrometheusServer, metrics: Metrics, hooks: Hooks,
        chat: FakeChat) -> None:
    hooks.then("/flags/newest", 503, (503, {"Retry-After": "0"}), 200)
    wd = start(tmp_path, tiers_rules(hooks, chat), prometheus)
    try:
        # warning: the warning tier's action, through two 503s
        await metrics.set("err_ratio", 0.05, service="checkout")
        await until(lambda: hooks.count("/flags/newest") == 3, "the third attempt", wd)
        [warn] = await until(lambda: [r for r in runs(wd, "disable-newest-flag")
                                      if r["status"] == "succeeded"], "warning run done", wd)
        assert warn["tier"] == "warning"
        attempts = [a["status"] for a in warn["steps"][0]["attempts"]]
        assert attempts == ["retrying", "retrying", "succeeded"]
        assert "HTTP 503" in warn["steps"][0]["attempts"][0]["detail"]
        assert warn["steps"][0]["detail"].endswith("(try 3 of 3)")

        # critical: the critical tier's action runs, although the warning one ran
        await metrics.set("err_ratio", 0.3, service="checkout")
        await until(lambda: hooks.count("/emergency/on") == 1, "full rollback", wd)
        [full] = await until(lambda: [r for r in runs(wd, "full-rollback")
                                      if r["status"] == "succeeded"], "critical run done", wd)
        assert full["tier"] == "critical" and full["incident"] == warn["incident"]
        await asyncio.sleep(2.5)  # a few more evaluations at critical: still once
        assert hooks.count("/flags/master") == 1 and hooks.count("/flags/newest") == 3

        # two series of one Deployment: one undo, the other trigger waits on the lock
        await metrics.set("pod_err", 0.9, deployment="checkout", pod="a")
        await metrics.set("pod_err", 0.8, deployment="checkout", pod="b")
        await until(lambda: len(runs(wd, "undo-checkout")) == 2, "both triggers", wd)
        await asyncio.sleep(2.0)
        assert hooks.count("/deploy/checkout/undo") == 1
        undo = runs(wd, "undo-checkout")
        ran = [r for r in undo if r["status"] != "locked"]
        held = [r for r in undo if r["status"] == "locked"]
        assert len(ran) == 1 and len(held) == 1
        assert held[0]["deferredTo"] == ran[0]["id"]
        assert held[0]["lock"] == ran[0]["lock"] == "deploy/checkout"
        assert held[0]["labels"]["pod"] != ran[0]["labels"]["pod"]

        # recovery: on_resolved runs once when the incident resolves
        await metrics.set("err_ratio", 0.001, service="checkout")
        await until(lambda: hooks.count("/emergency/off") == 1, "on_resolved", wd)
        [rec] = runs(wd, "leave-emergency-mode")
        assert rec["trigger"] == "resolved" and rec["incident"] == warn["incident"]
        await asyncio.sleep(2.5)
        assert hooks.count("/emergency/off") == 1
        assert hooks.count("/flags/newest") == 3 and hooks.count("/flags/master") == 1
    finally:
        wd.stop()


async def test_not_helped_pages_pagerduty_with_a_trigger_and_runs_the_next_action(
        tmp_path: Path, prometheus: PrometheusServer, metrics: Metrics, hooks: Hooks,
        chat: FakeChat) -> None:
    rules = f"""
groups:
  - name: checkout
    interval: 1s
    rules:
      - alert: CheckoutErrorRate
        expr: err_ratio{{service="checkout"}}
        threshold: "> 0.10"
        labels: {{severity: warning}}
        annotations: {{summary: "error rate {{{{ $value | humanizePercentage }}}}"}}
        actions: [disable-newest-flag]
actions:
  disable-newest-flag:
    verify_for: 3s
    on_not_helped: {{page: true, action: full-rollback}}
    steps:
      - webhook: {{url: "{hooks.url}/flags/newest", method: PATCH}}
  full-rollback:
    steps:
      - webhook: {{url: "{hooks.url}/flags/master", method: PATCH}}
receivers:
  - name: oncall
    pagerduty: {{routing_key: "{KEY}", url: "{chat.url}/v2/enqueue"}}
routes:
  - match: {{severity: critical}}
    receivers: [oncall]
    group_wait: 0s
"""
    wd = start(tmp_path, rules, prometheus)
    try:
        await metrics.set("err_ratio", 0.27, service="checkout")
        await until(lambda: hooks.count("/flags/newest") == 1, "the first action", wd)
        await until(lambda: runs(wd, "disable-newest-flag")[0]["verification"] == "pending",
                    "the pending verdict", wd)
        await metrics.set("err_ratio", 0.36, service="checkout")  # worse, not better
        await until(lambda: float(wd.get_json("/api/v1/alerts", token=None)["data"]["alerts"][0][
            "value"]) == 0.36, "the worse value", wd)
        # SIGKILL while the verdict is pending: the next process owes it, once
        assert wd.p is not None
        wd.p.kill()
        wd.p.wait(10)
        wd = WatchdogProcess(tmp_path, {k: v for k, v in wd.env.items()
                                        if k != "WATCHDOG_HTTP_LISTEN"}, name="second")
        wd.start()
        wd.wait_up()
        await until(lambda: hooks.count("/flags/master") == 1, "the next action", wd)
        await until(lambda: chat.accepted["pagerduty"], "the page", wd)
        [page] = chat.accepted["pagerduty"]  # the warning alert itself pages nobody
        assert page["event_action"] == "trigger" and chat.pages == 1
        assert page["payload"]["severity"] == "critical"
        assert "not helped: 27% → 36% after " in page["payload"]["summary"]
        assert chat.accepted["pd_change"] == [] or all(
            "not helped" not in c["payload"]["summary"] for c in chat.accepted["pd_change"])
        [first] = runs(wd, "disable-newest-flag")
        assert first["verification"] == "not_helped"
        [nxt] = runs(wd, "full-rollback")
        assert nxt["trigger"] == "escalation" and nxt["incident"] == first["incident"]
        await asyncio.sleep(2.0)
        assert hooks.count("/flags/master") == 1 and chat.pages == 1
    finally:
        wd.stop()


async def test_pause_turns_runs_into_would_run_and_resume_acts_again(
        tmp_path: Path, prometheus: PrometheusServer, metrics: Metrics, hooks: Hooks,
        chat: FakeChat) -> None:
    rules = f"""
groups:
  - name: checkout
    interval: 1s
    rules:
      - alert: QueueBacklog
        expr: backlog{{queue="jobs"}}
        threshold: "> 500"
        actions: [disable-queue]
actions:
  disable-queue:
    steps:
      - webhook: {{url: "{hooks.url}/queue/off", method: POST}}
      - webhook: {{url: "{hooks.url}/direct/on", method: POST}}
receivers:
  - name: chat
    slack: {{webhook_url: "{chat.url}/slack/T0/B0/x"}}
routes:
  - receivers: [chat]
    group_wait: 0s
"""
    wd = start(tmp_path, rules, prometheus)
    try:
        r = wd.request("POST", "/api/v1/pause", json.dumps(
            {"for": "1h", "reason": "database migration", "by": "alice"}).encode(),
            {"Content-Type": "application/json"}, token=TOKEN)
        assert r.status == 200, r
        assert r.json()["data"]["notice"].startswith("actions paused until ")
        assert wd.request("POST", "/api/v1/pause", b'{"for": "1h"}',
                          {"Content-Type": "application/json"}).status == 401
        status = wd.get_json("/api/v1/status", token=None)["data"]
        assert status["actionsPaused"]["reason"] == "database migration"

        await metrics.set("backlog", 900, queue="jobs")
        [paused] = await until(lambda: [x for x in runs(wd, "disable-queue")
                                        if x["status"] == "dry_run"], "the paused run", wd)
        assert [s["status"] for s in paused["steps"]] == ["would_run", "would_run"]
        assert "actions paused until" in paused["steps"][0]["detail"]
        assert "by alice (database migration)" in paused["steps"][0]["detail"]
        assert hooks.calls == []
        await until(lambda: any("database migration" in json.dumps(m)
                                for m in chat.accepted["slack"]), "a message saying so", wd)

        r = wd.request("DELETE", "/api/v1/pause", token=TOKEN)
        assert r.status == 200 and r.json()["data"]["resumed"] is True
        assert wd.get_json("/api/v1/status", token=None)["data"]["actionsPaused"] is None
        await metrics.set("backlog", 10, queue="jobs")  # resolves: the next incident acts
        await until(lambda: not [a for a in wd.get_json("/api/v1/alerts", token=None)["data"]
                                 ["alerts"] if a["state"] == "firing"], "resolved", wd)
        await metrics.set("backlog", 900, queue="jobs")
        await until(lambda: hooks.calls == ["POST /queue/off", "POST /direct/on"],
                    "the run after resume", wd)
        done = await until(lambda: [x for x in runs(wd, "disable-queue")
                                    if x["status"] == "succeeded"], "the run done", wd)
        assert len(done) == 1 and not done[0]["dryRun"]
    finally:
        wd.stop()


async def test_pause_through_the_cli_and_mqtt_commands(tmp_path: Path) -> None:
    """`watchdog pause` talks to the running daemon over HTTP with the token; the MQTT commands
    `pause` / `resume` take the same JSON (a real Mosquitto)."""
    import os
    import subprocess
    import sys

    from test_notify_mqtt import MOSQUITTO, Broker, Subscriber

    if MOSQUITTO is None:
        pytest.skip("needs mosquitto (Debian package mosquitto; scripts/setup)")
    broker = Broker(tmp_path)
    broker.start()
    wd = WatchdogProcess(tmp_path, {"WATCHDOG_MQTT_URL": broker.url,
                                    "WATCHDOG_MQTT_COMMANDS": "true"})
    (wd.rules / "r.yml").write_text("groups: []\n")
    wd.start()
    try:
        wd.wait_up()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")},
               "WATCHDOG_API_TOKEN": TOKEN}

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "watchdog", "pause", "--url", wd.url,
                                   *args], capture_output=True, text=True, timeout=60, env=env)

        done = cli("--for", "2h", "--reason", "quarterly failover test", "--by", "dana")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("actions paused until ")
        assert done.stdout.strip().endswith("by dana (quarterly failover test)")
        assert cli("--status").stdout == done.stdout
        state = wd.get_json("/api/v1/pause", token=None)["data"]
        assert state["paused"] and state["by"] == "dana"
        assert cli("--for", "2h").returncode == 2  # no reason: refused before asking
        bad = subprocess.run([sys.executable, "-m", "watchdog", "pause", "--url", wd.url,
                              "--off"], capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in env.items() if k != "WATCHDOG_API_TOKEN"})
        assert bad.returncode == 1 and "HTTP 401" in bad.stderr
        assert TOKEN not in bad.stderr + bad.stdout
        off = cli("--off")
        assert off.returncode == 0 and off.stdout.strip() == "actions resumed"
        assert cli("--off").stdout.strip() == "actions were not paused"

        async with Subscriber(broker.port) as sub:
            await until(lambda: sub.on("watchdog/status"), "the bus", wd)
            await sub.client.publish("watchdog/commands/pause", json.dumps(
                {"for": "30m", "reason": "broker says so", "request_id": "p1"}), qos=1)
            [reply] = await sub.wait("watchdog/responses/pause")
            doc = json.loads(reply)
            assert doc["ok"] is True and doc["request_id"] == "p1", doc
            assert doc["result"]["notice"].endswith("by mqtt (broker says so)")
            assert wd.get_json("/api/v1/status", token=None)["data"]["actionsPaused"][
                "reason"] == "broker says so"
            await sub.client.publish("watchdog/commands/pause", b'{"for": "1h"}', qos=1)
            replies = await sub.wait("watchdog/responses/pause", 2)
            assert json.loads(replies[1])["ok"] is False and "reason" in json.loads(
                replies[1])["error"]
            await sub.client.publish("watchdog/commands/resume", b"{}", qos=1)
            [resumed] = await sub.wait("watchdog/responses/resume")
            assert json.loads(resumed)["result"] == {"paused": False, "resumed": True}
        assert wd.get_json("/api/v1/pause", token=None)["data"] == {"paused": False}
    finally:
        wd.stop()
        broker.stop()
