"""Deploy verdicts end to end with `watchdog run` and `watchdog deploy --wait` as real processes
(CONTRACT §10): a marker whose window passes quietly goes open -> pass and the CLI exits 0; a
marker during which the service goes bad goes open -> fail as the alert fires, the fail pages
the critical route (the fake PagerDuty gets a trigger with severity critical, the service's own
warning alert does not page), the marker's `on_fail` action runs (its webhook is called), and
the CLI exits 1.

Prometheus is the in-process `FakePrometheus` (the subject is the verdict, not PromQL);
receivers are `FakeChat`. The windows are seconds long; every wait is for an observable outcome.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from fakes_chat import FakeChat
from test_daemon_process import Proc, env_for, until
from test_daemon_support import TOKEN, FakePrometheus, PortServer, get_json, write

pytestmark = pytest.mark.slow

KEY = "R0UT1NGKEY0123456789abcdefABCDEF"


class Target(PortServer):
    """What the `on_fail` action calls: records each request's JSON body."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        super().__init__()

    async def _hook(self, request: web.Request) -> web.Response:
        self.calls.append(await request.json())
        return web.json_response({"ok": True})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/rollback", self._hook)
        return app


def rules(chat: FakeChat, target: Target) -> str:
    return f"""
groups:
  - name: checkout
    interval: 1s
    rules:
      - alert: CheckoutErrors
        expr: checkout_errors > 1
        labels: {{severity: warning}}
        annotations: {{summary: "errors {{{{ $value }}}}"}}
actions:
  rollback-checkout:
    steps:
      - webhook:
          url: "http://127.0.0.1:{target.port}/rollback"
          json: {{service: "{{{{ $labels.service }}}}", version: "{{{{ $labels.version }}}}"}}
receivers:
  - name: chat
    slack: {{webhook_url: "{chat.url}/slack/T0/B0/x"}}
  - name: oncall
    pagerduty: {{routing_key: "{KEY}", url: "{chat.url}/v2/enqueue"}}
routes:
  - receivers: [chat]
    group_wait: 1s
  - match: {{severity: critical}}
    receivers: [oncall]
    group_wait: 1s
"""


@pytest.fixture
async def prom() -> Any:
    fake = FakePrometheus()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def target() -> Any:
    t = Target()
    await t.start()
    yield t
    await t.stop()


class DeployCli:
    """`watchdog deploy ... --wait` as a process; its first stdout line is the marker's id."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, url: str, *args: str) -> DeployCli:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
        env["WATCHDOG_API_TOKEN"] = TOKEN
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "watchdog", "deploy", *args, "--url", url, "--wait",
            "--poll", "200ms", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env)
        return cls(proc)

    async def deploy_id(self) -> str:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        assert line, (await self.proc.communicate())
        return line.decode().strip()

    async def finish(self) -> tuple[int, str, str]:
        out, err = await asyncio.wait_for(self.proc.communicate(), 60)
        assert self.proc.returncode is not None
        return self.proc.returncode, out.decode(), err.decode()


async def verdict(proc: Proc, deploy_id: str) -> dict[str, Any]:
    status, body = await get_json(f"{proc.url}/api/v1/deploys/{deploy_id}")
    assert status == 200, body
    return dict(body)


async def test_a_quiet_window_passes_and_a_bad_one_fails_pages_and_rolls_back(
        tmp_path: Path, prom: FakePrometheus, chat: FakeChat, target: Target) -> None:
    write(tmp_path / "rules" / "r.yml", rules(chat, target))
    proc = Proc(tmp_path, env_for(tmp_path, prom), "watchdog")
    try:
        await proc.up()

        # 1. A quiet window: open while it runs, pass at its end; --wait exits 0.
        cli = await DeployCli.start(proc.url, "checkout", "v1", "--window", "3s")
        first = await cli.deploy_id()
        assert (await verdict(proc, first))["status"] == "open"
        code, out, err = await cli.finish()
        assert code == 0, (out, err)
        assert out.splitlines()[-1].startswith("pass: deploy checkout v1: PASS")
        doc = await verdict(proc, first)
        assert doc["status"] == "pass" and doc["alerts"] == []
        assert doc["decided_at"] >= doc["window_end"]

        # 2. The service goes bad within the window: fail at once, a page, on_fail runs.
        cli = await DeployCli.start(proc.url, "checkout", "v2", "--window", "10m",
                                    "--on-fail", "rollback-checkout")
        second = await cli.deploy_id()
        doc = await verdict(proc, second)
        assert doc["status"] == "open" and doc["on_fail"] == ["rollback-checkout"]
        prom.set("checkout_errors > 1", 7.0, service="checkout")
        code, out, err = await cli.finish()
        assert code == 1, (out, err)
        assert out.splitlines()[-1].startswith("fail: deploy checkout v2: FAIL — CheckoutErrors")
        doc = await verdict(proc, second)
        assert doc["status"] == "fail" and doc["decided_at"] < doc["window_end"]
        assert [a["rule"] for a in doc["alerts"]] == ["CheckoutErrors"]
        assert doc["alerts"][0]["labels"]["service"] == "checkout"

        # The critical route paged: a PagerDuty trigger for the deploy, nothing for the
        # warning alert itself.
        await until(lambda: _async(bool(chat.accepted["pagerduty"])), 20, "the page")
        [page] = chat.accepted["pagerduty"]
        assert page["event_action"] == "trigger"
        assert page["payload"]["severity"] == "critical"
        assert page["payload"]["class"] == "DeployVerificationFailed"
        assert page["payload"]["custom_details"]["labels"]["version"] == "v2"
        assert page["dedup_key"] == f"deploy-{second}"
        assert chat.accepted["pd_change"] == []  # a page, not a change event
        # on_fail ran through the action runner with the marker's labels.
        await until(lambda: _async(bool(target.calls)), 20, "the on_fail webhook")
        assert target.calls == [{"service": "checkout", "version": "v2"}]
        status, runs = await get_json(f"{proc.url}/api/v1/actions/runs")
        assert status == 200
        [run] = runs["data"]
        assert run["action"] == "rollback-checkout" and run["labels"]["deploy_id"] == second
        # The first deploy's verdict stays what it was.
        assert (await verdict(proc, first))["status"] == "pass"
        # The gate answers as Argo Rollouts and Flagger read it.
        assert (await get_json(f"{proc.url}/api/v1/deploys/{first}/gate"))[0] == 200
        assert (await get_json(f"{proc.url}/api/v1/deploys/{second}/gate"))[0] == 412
        assert (await get_json(f"{proc.url}/api/v1/deploys/{second}/gate?want=fail"))[0] == 200
        # The chat route hears of both: the page and the service's own alert.
        await until(lambda: _async("DeployVerificationFailed" in json.dumps(
            chat.accepted["slack"]) and "CheckoutErrors" in json.dumps(chat.accepted["slack"])),
            20, "both in the chat")
    finally:
        proc.stop()


async def _async(value: bool) -> bool:
    return value
