"""No configured secret is ever on display or at rest in clear (issue 12, "done means" 3).

A running `watchdog run` is given a secret in every place one can be configured — the API write
and read tokens, a password in the Prometheus URL, the Sentry DSN, `${VAR}` and `VAR_FILE`
values in a webhook action's URL, headers and JSON body, in a command step's argv and env, in a
webhook receiver's URL and headers — and upstreams that echo every request back (headers, URL,
body) into the response the watchdog keeps. Then the log, every API answer, the status page,
`/metrics` and the raw bytes of the SQLite state files are searched for each secret: none.

Also: Prometheus URL credentials combined with basic auth or a bearer token file are refused at
start (exit 2, naming the settings, never the password).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from test_daemon_support import FakePrometheus, catch_all, serve
from watchdog_process import READ_TOKEN, TOKEN, WatchdogProcess

pytestmark = pytest.mark.slow

SECRETS = {
    "PROM_URL_PASSWORD": "prom-url-pw-5d1c9e",
    "URL_TOKEN": "url-token-81f0c2a7",
    "FLAG_KEY": "flag-key-3e9b7d44",
    "FLAG_BEARER": "flag-bearer-0c6a1f",
    "BODY_SECRET": "body-secret-from-file-9a2e",  # via BODY_SECRET_FILE
    "CMD_ARG_SECRET": "cmd-arg-secret-44d1",
    "CMD_ENV_SECRET": "cmd-env-secret-7b3f",
    "HOOK_KEY": "hook-query-key-e5a0",
    "HOOK_HEADER": "hook-header-secret-2f8c",
    "SENTRY_KEY": "0123456789abcdef0123456789abcdef",
    "API_TOKEN": TOKEN,
    "API_READ_TOKEN": READ_TOKEN,
}

PRINT = "import os, sys; print('argv', sys.argv[1:], 'env', os.environ['PASSED'])"

RULES = f"""
groups:
  - name: g
    interval: 1s
    rules:
      - alert: Leaky
        expr: up == 0
        actions: [rollback]
actions:
  rollback:
    steps:
      - webhook:
          url: "${{FLAGS_URL}}/flags/checkout?token=${{URL_TOKEN}}"
          method: PATCH
          headers: {{X-Flag-Key: "${{FLAG_KEY}}", Authorization: "Bearer ${{FLAG_BEARER}}"}}
          json: {{enabled: false, note: "${{BODY_SECRET}}"}}
      - command:
          argv: ["{sys.executable}", "-c", "{PRINT}", "${{CMD_ARG_SECRET}}"]
          env: {{PASSED: "${{CMD_ENV_SECRET}}"}}
receivers:
  - name: hook
    webhook:
      url: "${{FLAGS_URL}}/hook?key=${{HOOK_KEY}}"
      headers: {{X-Api-Key: "${{HOOK_HEADER}}"}}
routes:
  - receivers: [hook]
    group_wait: 0s
"""


class Echo:
    """An upstream that answers every request with the request itself: headers, URL, body.
    `/hook` (the receiver) answers 500, so the echo lands in the outbox's last error."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        doc = {"method": request.method, "url": str(request.url),
               "headers": dict(request.headers), "body": await request.text()}
        text = json.dumps(doc)
        self.seen.append(text)
        return web.Response(text=text, status=500 if request.path == "/hook" else 200,
                            content_type="application/json")


@pytest.fixture
async def prom() -> AsyncIterator[FakePrometheus]:
    fake = FakePrometheus()
    fake.set("up == 0", 1.0, instance="a")
    await fake.start()
    yield fake
    await fake.stop()


async def until(what: str, pred: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def forms(secret: str) -> list[bytes]:
    from urllib.parse import quote

    return sorted({secret.encode(), quote(secret, safe="").encode(),
                   json.dumps(secret)[1:-1].encode()})


async def test_no_secret_anywhere(tmp_path: Path, prom: FakePrometheus) -> None:
    echo = Echo()
    (tmp_path / "body_secret").write_text(SECRETS["BODY_SECRET"] + "\n")
    async with serve(catch_all(echo.handle)) as upstream:
        env = {
            "WATCHDOG_PROMETHEUS_URL": prom.url.replace(
                "http://", f"http://watchdog:{SECRETS['PROM_URL_PASSWORD']}@"),
            "WATCHDOG_API_READ_TOKEN": READ_TOKEN,
            "WATCHDOG_SENTRY_DSN": f"http://{SECRETS['SENTRY_KEY']}@127.0.0.1:9/1",
            "WATCHDOG_EVALUATION_INTERVAL": "1s", "WATCHDOG_LOG_LEVEL": "DEBUG",
            "FLAGS_URL": upstream, "BODY_SECRET_FILE": str(tmp_path / "body_secret"),
            **{k: v for k, v in SECRETS.items()
               if k not in ("BODY_SECRET", "API_TOKEN", "API_READ_TOKEN", "SENTRY_KEY",
                            "PROM_URL_PASSWORD")},
        }
        wd = WatchdogProcess(tmp_path, env)
        (wd.rules / "leaky.yml").write_text(RULES)
        wd.start()
        try:
            await asyncio.to_thread(wd.wait_up)

            async def get(path: str) -> Any:
                r = await asyncio.to_thread(wd.request, "GET", path, None, None, READ_TOKEN)
                assert r.status == 200, (path, r)
                return r.json()

            async def run_done() -> list[dict[str, Any]]:
                runs = (await get("/api/v1/actions/runs"))["data"]
                return [r for r in runs if r["status"] in ("succeeded", "failed")]

            (run,) = await until("the rollback to finish", run_done)
            assert run["status"] == "succeeded", run

            async def delivery_failed() -> Any:
                return (await get("/api/v1/notifications?status=failed"))["data"] or [
                    n for n in (await get("/api/v1/notifications"))["data"] if n.get("last_error")]

            await until("the receiver's echo to fail a delivery", delivery_failed)
            # a manual run too, and a reload (both log)
            r = await asyncio.to_thread(
                wd.request, "POST", "/api/v1/actions/rollback/run",
                json.dumps({"labels": {"instance": "b"}, "force": True}).encode(),
                {"Content-Type": "application/json"}, TOKEN)
            assert r.status == 202, r
            assert (await asyncio.to_thread(wd.request, "POST", "/-/reload", None, None,
                                            TOKEN)).status == 200

            async def two_runs() -> bool:
                return len(await run_done()) == 2

            await until("the manual run to finish", two_runs)

            # The upstreams did get (and echo) the secrets: the test can fail.
            echoed = "\n".join(echo.seen)
            for name in ("URL_TOKEN", "FLAG_KEY", "FLAG_BEARER", "BODY_SECRET", "HOOK_KEY",
                         "HOOK_HEADER"):
                assert SECRETS[name] in echoed, name
            steps = (await get(f"/api/v1/actions/runs/{run['id']}"))["data"]["steps"]
            assert "<secret>" in steps[0]["output"] and "<secret>" in steps[1]["output"]

            shown: dict[str, bytes] = {}
            for path in ("/api/v1/status", "/api/v1/rules", "/api/v1/alerts",
                         "/api/v1/silences", "/api/v1/notifications", "/api/v1/actions/runs",
                         "/api/v1/deploys", "/readyz", "/healthz", "/metrics", "/", "/status",
                         *(f"/api/v1/actions/runs/{x['id']}" for x in await run_done())):
                r = await asyncio.to_thread(wd.request, "GET", path, None, None, READ_TOKEN)
                assert r.status in (200, 503), (path, r)
                shown[path] = r.body
            r = await asyncio.to_thread(wd.request, "GET", "/", None,
                                        {"Accept": "application/json"}, READ_TOKEN)
            shown["/ (JSON)"] = r.body
        finally:
            await asyncio.to_thread(wd.stop)

    shown["log"] = wd.log_path.read_bytes()
    state = sorted(wd.data.glob("watchdog.db*"))
    assert state, list(wd.data.iterdir())
    for f in state:
        shown[f.name] = f.read_bytes()
    leaks = [(name, where) for name, secret in SECRETS.items() for where, data in shown.items()
             for form in forms(secret) if form in data]
    assert leaks == []


@pytest.mark.parametrize("auth", [
    {"WATCHDOG_PROMETHEUS_BASIC_AUTH_PASSWORD_FILE": "{pw}"},
    {"WATCHDOG_PROMETHEUS_BASIC_AUTH_USER": "someone"},
    {"WATCHDOG_PROMETHEUS_BEARER_TOKEN_FILE": "{pw}"},
])
def test_url_credentials_plus_other_auth_are_refused_at_start(tmp_path: Path,
                                                              auth: dict[str, str]) -> None:
    pw = tmp_path / "password"
    pw.write_text("file-password-1a2b3c\n")
    env = {"WATCHDOG_PROMETHEUS_URL": f"http://user:{SECRETS['PROM_URL_PASSWORD']}@127.0.0.1:9",
           **{k: v.format(pw=pw) for k, v in auth.items()}}
    wd = WatchdogProcess(tmp_path, env)
    proc = subprocess.run([sys.executable, "-m", "watchdog", "run"], env=wd.env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc
    (setting,) = auth
    assert f"invalid setting {setting}: cannot be combined with credentials in " \
           "WATCHDOG_PROMETHEUS_URL" in proc.stderr, proc.stderr
    assert SECRETS["PROM_URL_PASSWORD"] not in proc.stderr + proc.stdout
    assert "file-password" not in proc.stderr + proc.stdout


def test_basic_auth_and_bearer_file_together_are_refused(tmp_path: Path) -> None:
    pw = tmp_path / "password"
    pw.write_text("x\n")
    wd = WatchdogProcess(tmp_path, {"WATCHDOG_PROMETHEUS_BEARER_TOKEN_FILE": str(pw),
                                    "WATCHDOG_PROMETHEUS_BASIC_AUTH_USER": "u"})
    proc = subprocess.run([sys.executable, "-m", "watchdog", "run"], env=wd.env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert "WATCHDOG_PROMETHEUS_BASIC_AUTH_USER: cannot be combined with " \
           "WATCHDOG_PROMETHEUS_BEARER_TOKEN_FILE" in proc.stderr, proc.stderr
