"""A real Alertmanager (Debian's prometheus-alertmanager) receives our alerts through its
`/api/v2/alerts`, routes them to a webhook (our fake, which validates the v4 document), and
resolves them when we say so — the path teams with an existing Alertmanager set-up rely on."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from fakes_chat import FakeChat, FakeTime, Harness, free_port, make_alert
from storage_support import sqlite_storage

BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
pytestmark = pytest.mark.skipif(BINARY is None, reason="needs prometheus-alertmanager "
                                "(Debian package prometheus-alertmanager; scripts/setup)")


@pytest.fixture
def alertmanager(tmp_path: Path, chat: FakeChat) -> Iterator[str]:
    assert BINARY is not None
    port = free_port()
    cfg = tmp_path / "alertmanager.yml"
    cfg.write_text(f"""
route:
  receiver: hook
  group_by: [alertname]
  group_wait: 100ms
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {chat.url}/hook/am
        send_resolved: true
""")
    proc = subprocess.Popen(
        [BINARY, f"--config.file={cfg}", f"--storage.path={tmp_path / 'am-data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
         "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        import urllib.request
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("alertmanager did not start: " + (
                        proc.stderr.read().decode() if proc.stderr else "")) from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


async def test_real_alertmanager_routes_and_resolves_our_alerts(
        tmp_path: Path, chat: FakeChat, alertmanager: str) -> None:
    rules = f"""
receivers:
  - name: am
    alertmanager: {{url: "{alertmanager}"}}
routes:
  - receivers: [am]
"""
    # Real wall-clock time: Alertmanager judges endsAt against its own clock.
    clock = FakeTime(time.time())
    async with sqlite_storage(tmp_path / "w.db") as db, aiohttp.ClientSession() as s:
        h = await Harness(db, s, clock, chat, rules).start()
        try:
            a = make_alert("CheckoutErrors", at=clock(), service="checkout", env="prod")
            await h.fire(a)
            await h.drain()
            await wait_for(lambda: any(m["status"] == "firing"
                                       for m in chat.accepted["webhook"]))
            clock.now = time.time()
            await h.resolve(a)
            await h.drain()
            await wait_for(lambda: any(m["status"] == "resolved"
                                       for m in chat.accepted["webhook"]))
        finally:
            await h.stop()
    assert chat.rejected == []  # Alertmanager's own webhook passes our v4 validator
    firing = next(m for m in chat.accepted["webhook"] if m["status"] == "firing")
    resolved = next(m for m in chat.accepted["webhook"] if m["status"] == "resolved")
    assert firing["version"] == "4" and firing["groupLabels"] == {"alertname": "CheckoutErrors"}
    [fa] = firing["alerts"]
    assert fa["labels"] == {"alertname": "CheckoutErrors", "service": "checkout", "env": "prod",
                            "severity": "critical"}
    assert fa["annotations"]["runbook_url"] == "https://runbooks.example/high-error-rate"
    [ra] = resolved["alerts"]
    assert ra["labels"] == fa["labels"] and ra["status"] == "resolved"
    assert ra["endsAt"] != "0001-01-01T00:00:00Z"
