"""`watchdog run` as a real process: SIGKILL while an alert is pending and while it is firing,
restart, and the `for` progress and the firing incident are restored (no fresh `for` wait, no
second "firing"); SIGTERM exits 0 promptly; SIGHUP reloads; a bad setting exits 2 naming it;
Sentry gets a cron check-in and rule errors tagged with group and rule.

Prometheus is the in-process `FakePrometheus` here (the subject is the daemon's own state; the
real Prometheus is exercised in test_daemon_live.py). Events are observed through the daemon's
JSON log (`"event": "alert"` lines) and `/api/v1/alerts`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from test_daemon_support import TOKEN, FakePrometheus, PortServer, get_json, wait_for, write

from watchdog.promserver import free_port

pytestmark = pytest.mark.slow

RULES = """
groups:
  - name: g
    interval: 1s
    rules:
      - {alert: Slow, expr: slow > 1, for: 8s}
      - {alert: Fast, expr: fast > 1, for: 1s}
"""


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Proc:
    """One `watchdog run` process with its JSON log in a file."""

    def __init__(self, tmp: Path, env: dict[str, str], name: str) -> None:
        self.log_path = tmp / f"{name}.log"
        self.port = free_port()
        full = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
        full.update({"WATCHDOG_HTTP_LISTEN": f"127.0.0.1:{self.port}",
                     "WATCHDOG_LOG_FORMAT": "json", "WATCHDOG_API_TOKEN": TOKEN})
        full.update(env)
        with self.log_path.open("wb") as log:
            self.p = subprocess.Popen([sys.executable, "-m", "watchdog", "run"], env=full,
                                      stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
        self.started = time.time()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def alert_events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.lines() if e.get("event") == "alert"
                and (kind is None or e["kind"] == kind)]

    async def up(self, timeout: float = 20.0) -> None:
        async def ready() -> bool:
            if self.p.poll() is not None:
                raise AssertionError(f"watchdog exited {self.p.returncode}:\n"
                                     f"{self.log_path.read_text()[-3000:]}")
            try:
                status, _ = await get_json(f"{self.url}/healthz")
            except OSError:
                return False
            return status == 200

        deadline = time.monotonic() + timeout
        while not await ready():
            assert time.monotonic() < deadline, self.log_path.read_text()[-3000:]
            await asyncio.sleep(0.1)

    async def alerts(self) -> dict[str, dict[str, Any]]:
        _, body = await get_json(f"{self.url}/api/v1/alerts")
        return {a["labels"]["alertname"]: a for a in body["data"]["alerts"]}

    def kill(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)


async def until(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.fixture
async def prom() -> Any:
    fake = FakePrometheus()
    await fake.start()
    yield fake
    await fake.stop()


def env_for(tmp: Path, prom: FakePrometheus, **extra: str) -> dict[str, str]:
    env = {"WATCHDOG_RULES_DIR": str(tmp / "rules"),
           "WATCHDOG_STATE_URL": f"sqlite:///{tmp / 'state.db'}",
           "WATCHDOG_PROMETHEUS_URL": prom.url, "WATCHDOG_EVALUATION_INTERVAL": "1s",
           # Prometheus restores `for` progress only for rules whose `for` is at least the grace
           # period (10m by default); 1s makes the 8s rule eligible.
           "WATCHDOG_FOR_GRACE_PERIOD": "1s", "WATCHDOG_SHUTDOWN_TIMEOUT": "3s"}
    env.update(extra)
    return env


async def test_sigkill_pending_and_firing_then_restart(tmp_path: Path, prom: FakePrometheus,
                                                       state_url: str) -> None:
    write(tmp_path / "rules" / "r.yml", RULES)
    prom.set("slow > 1", 5.0, instance="a")
    prom.set("fast > 1", 5.0, instance="a")
    env = env_for(tmp_path, prom, WATCHDOG_STATE_URL=state_url)
    procs: list[Proc] = []
    try:
        first = Proc(tmp_path, env, "first")
        procs.append(first)
        await first.up()

        async def slow_progressed() -> dict[str, Any] | None:
            alerts = await first.alerts()
            slow, fast = alerts.get("Slow"), alerts.get("Fast")
            if slow and fast and fast["state"] == "firing" and (
                    time.time() - ts(slow["activeAt"]) >= 3.0):
                return alerts
            return None

        before = await until(slow_progressed, 20, "Slow to be 3s into its `for: 8s`")
        assert before["Slow"]["state"] == "pending"
        first.kill()  # pending Slow, firing Fast
        killed_at = time.time()
        await asyncio.sleep(1.0)

        second = Proc(tmp_path, env, "second")
        procs.append(second)
        await second.up()
        restarted = time.time()
        after = await second.alerts()
        assert after["Fast"]["state"] == "firing"
        assert after["Fast"]["activeAt"] == before["Fast"]["activeAt"]  # the same incident
        # `for` progress kept: activeAt moved by the downtime only, so Slow fires well before
        # a fresh 8s wait from the restart would let it
        shifted = ts(after["Slow"]["activeAt"]) - ts(before["Slow"]["activeAt"])
        assert 0.5 < shifted < restarted - ts(before["Slow"]["activeAt"]) + 1.0
        assert shifted <= restarted - killed_at + 2.5

        async def slow_fired() -> dict[str, Any] | None:
            a = (await second.alerts()).get("Slow")
            return a if a and a["state"] == "firing" else None

        fired = await until(slow_fired, 15, "Slow to fire after the restart")
        # Not a fresh `for: 8s` wait: it fired at the first slot once its restored activeAt
        # (from before the restart) was 8s old. Judged on the daemon's own times, not on how
        # fast this machine happens to be.
        assert fired["activeAt"] == after["Slow"]["activeAt"]  # checked against `shifted` above
        assert 8.0 <= ts(fired["firedAt"]) - ts(fired["activeAt"]) < 8.0 + 1.5

        second.kill()  # both firing now
        await asyncio.sleep(0.5)
        third = Proc(tmp_path, env, "third")
        procs.append(third)
        await third.up()
        await asyncio.sleep(2.5)  # a couple of evaluations
        final = await third.alerts()
        assert final["Slow"]["activeAt"] == fired["activeAt"]
        assert final["Fast"]["activeAt"] == before["Fast"]["activeAt"]
        assert {a["state"] for a in final.values()} == {"firing"}

        # Each incident fired exactly once across the three processes.
        firing = [(e["rule"], e["incident"]) for p in procs for e in p.alert_events("firing")]
        assert sorted(r for r, _ in firing) == ["Fast", "Slow"], firing
        assert third.alert_events("firing") == []

        # SIGTERM: exit 0 within the shutdown timeout
        third.p.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert await asyncio.to_thread(third.p.wait, 10) == 0
        assert time.monotonic() - t0 < 3.0 + 1.0
        assert any(e.get("event") == "watchdog stopped" for e in third.lines())
        assert all(TOKEN not in p.log_path.read_text() for p in procs)
    finally:
        for p in procs:
            p.stop()


@pytest.mark.parametrize("optimize", ["0", "2"])
async def test_sighup_reloads_the_rules(tmp_path: Path, prom: FakePrometheus,
                                        optimize: str) -> None:
    # PYTHONOPTIMIZE=2 is how the image runs it (no docstrings, no asserts, for memory): an
    # alert still fires, SIGHUP still reloads and SIGTERM still stops it cleanly.
    write(tmp_path / "rules" / "r.yml", RULES)
    prom.set("fast > 1", 5.0, instance="a")
    proc = Proc(tmp_path, env_for(tmp_path, prom, WATCHDOG_RULES_POLL_INTERVAL="1h",
                                  PYTHONOPTIMIZE=optimize), f"hup-{optimize}")
    try:
        await proc.up()

        async def fired() -> dict[str, Any] | None:
            a = (await proc.alerts()).get("Fast")
            return a if a and a["state"] == "firing" else None

        await until(fired, 15, "Fast to fire")
        write(tmp_path / "rules" / "more.yml",
              "groups: [{name: more, rules: [{alert: More, expr: more > 1}]}]\n")
        proc.p.send_signal(signal.SIGHUP)

        async def reloaded() -> bool:
            _, body = await get_json(f"{proc.url}/api/v1/rules")
            return "more" in {g["name"] for g in body["data"]["groups"]}

        await until(reloaded, 10, "the SIGHUP reload")
        assert any(e.get("event") == "rules reloaded" and e.get("trigger") == "sighup"
                   for e in proc.lines())
        proc.p.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.p.wait, 10) == 0
        assert not any(e.get("level") == "error" for e in proc.lines()), proc.lines()
    finally:
        proc.stop()


def test_an_invalid_setting_exits_2_naming_it(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
    env.update({"WATCHDOG_RULES_DIR": str(tmp_path / "rules"),
                "WATCHDOG_EVALUATION_INTERVAL": "every now and then",
                "WATCHDOG_API_TOKEN": "do-not-print-me"})
    r = subprocess.run([sys.executable, "-m", "watchdog", "run"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "WATCHDOG_EVALUATION_INTERVAL" in r.stderr and "do-not-print-me" not in r.stderr


class FakeSentry(PortServer):
    """Sentry's envelope endpoint: remembers every item (type, headers, payload)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        super().__init__()

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.port}/1"

    async def _envelope(self, request: web.Request) -> web.Response:
        body = await request.read()
        if body[:2] == b"\x1f\x8b":  # aiohttp usually decompresses already
            body = gzip.decompress(body)
        lines = body.split(b"\n")
        i = 1
        while i + 1 < len(lines):
            header = json.loads(lines[i])
            payload = lines[i + 1]
            with contextlib.suppress(ValueError):
                self.items.append((header.get("type", ""), json.loads(payload)))
            i += 2
        return web.json_response({})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/1/envelope/", self._envelope)
        return app


async def test_sentry_heartbeat_and_tagged_rule_errors(tmp_path: Path,
                                                       prom: FakePrometheus) -> None:
    sentry = FakeSentry()
    await sentry.start()
    write(tmp_path / "rules" / "r.yml", RULES)
    prom.set("fast > 1", 5.0, instance="a")
    prom.vectors["slow > 1"] = "many-to-many matching not allowed"
    proc = Proc(tmp_path, env_for(tmp_path, prom, WATCHDOG_SENTRY_DSN=sentry.dsn), "sentry")
    try:
        await proc.up()
        await wait_for(lambda: any(e.get("event") == "rule evaluation failed"
                                   for e in proc.lines()), 10, what="the rule error")
        proc.p.send_signal(signal.SIGTERM)
        # flushes Sentry before exiting (the fake Sentry answers from this loop: do not block it)
        assert await asyncio.to_thread(proc.p.wait, 10) == 0
        checkins = [p for t, p in sentry.items if t == "check_in"]
        assert checkins and checkins[0]["monitor_slug"] == "metrics-watchdog"
        assert checkins[0]["status"] in ("ok", "error")
        events = [p for t, p in sentry.items if t == "event"]
        tagged = [e for e in events if e.get("tags", {}).get("rule") == "Slow"]
        assert tagged and tagged[0]["tags"]["group"] == "g"
        assert TOKEN not in json.dumps(sentry.items)
    finally:
        proc.stop()
        await sentry.stop()
