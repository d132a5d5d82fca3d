"""`watchdog run` as a real process, for tests that must only use its public surface (HTTP, log,
state file) so that they survive rewrites of the daemon's insides. No tests here.

Requests go through `http.client` with raw bytes, so a test can send what no polite client would
(a non-UTF-8 byte in a header, a body that is not what its Content-Type says).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from watchdog.promserver import free_port

TOKEN = "write-token-4b1d-9e2f-secret"
READ_TOKEN = "read-token-77c3-0a5e-secret"


class Response:
    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<{self.status} {self.body[:300]!r}>"


class WatchdogProcess:
    """One `watchdog run` in `tmp` (rules in tmp/rules, state in tmp/data), JSON log to a file."""

    def __init__(self, tmp: Path, env: Mapping[str, str] | None = None,
                 name: str = "watchdog") -> None:
        self.tmp = tmp
        self.rules = tmp / "rules"
        self.rules.mkdir(exist_ok=True)
        self.data = tmp / "data"
        self.log_path = tmp / f"{name}.log"
        self.port = free_port()
        full = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
        full.update({
            "WATCHDOG_HTTP_LISTEN": f"127.0.0.1:{self.port}", "WATCHDOG_LOG_FORMAT": "json",
            "WATCHDOG_API_TOKEN": TOKEN, "WATCHDOG_RULES_DIR": str(self.rules),
            "WATCHDOG_DATA_DIR": str(self.data), "WATCHDOG_RULES_POLL_INTERVAL": "0.2",
            "WATCHDOG_PROMETHEUS_URL": "http://127.0.0.1:9", "WATCHDOG_SHUTDOWN_TIMEOUT": "2",
        })
        full.update(env or {})
        self.env = full
        self.p: subprocess.Popen[bytes] | None = None

    def start(self) -> WatchdogProcess:
        with self.log_path.open("ab") as log:
            self.p = subprocess.Popen([sys.executable, "-m", "watchdog", "run"], env=self.env,
                                      stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> None:
        assert self.p is not None
        if self.p.poll() is not None:
            raise AssertionError(f"watchdog exited {self.p.returncode}:\n{self.log()[-3000:]}")

    def wait_up(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.alive()
            try:
                if self.request("GET", "/healthz").status == 200:
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, self.log()[-3000:]
            time.sleep(0.1)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str | bytes] | None = None,
                token: str | bytes | None = None, timeout: float = 30.0) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            all_headers: dict[str, str | bytes] = dict(headers or {})
            if token is not None:
                raw = token.encode() if isinstance(token, str) else token
                all_headers["Authorization"] = b"Bearer " + raw
            if body is not None:
                all_headers.setdefault("Content-Length", str(len(body)))
            for k, v in all_headers.items():
                conn.putheader(k, v)
            conn.endheaders(body)
            r = conn.getresponse()
            return Response(r.status, dict(r.getheaders()), r.read())
        finally:
            conn.close()

    def get_json(self, path: str, token: str | None = READ_TOKEN) -> Any:
        r = self.request("GET", path, token=token)
        assert r.status == 200, (path, r)
        return r.json()

    def stop(self) -> None:
        if self.p is None or self.p.poll() is not None:
            return
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(10)
