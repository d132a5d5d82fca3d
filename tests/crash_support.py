"""Helpers for the SIGKILL crash matrix (tests/test_crash_matrix.py); no tests here.

- `SignalTarget`: a scrape target for a real Prometheus, served from a plain thread (so one
  target and one Prometheus can outlive each test's event loop): `/metrics` answers
  `crash_signal{case="..."} <value>` for every case the tests set.
- `HookedChat`: `fakes_chat.FakeChat` (Slack, PagerDuty, webhook) that also calls a hook the
  moment it accepts a request, before it answers or hangs: the kill can land while a
  notification is in flight.
- `ActionTarget`: the endpoint an action's webhook step calls; records every call that arrives
  and every call it answered, per case, and can hang a call after calling a hook.
- `Launcher` / `WarmProc`: `python -m watchdog run` processes whose imports are done ahead
  (a warm process waits for its settings on stdin, then runs `watchdog run` as `python -m` does):
  the matrix starts two daemons per kill point, and cold imports would be most of its time.
- `LogKiller`: a thread tailing a `watchdog run` JSON log that sends SIGKILL a fixed delay after
  a line it waits for appears (it polls the file every millisecond and never waits on the
  test's event loop, so it reacts within about a millisecond).
- `classify`: what a receiver's request says: firing, resolved, action, or something else.

Test helpers only: they bind loopback ports, kill only the pid they are given, and must not
import anything the daemon would not also see (they talk to it over HTTP and its log).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiohttp import web
from fakes_chat import FakeChat
from test_daemon_process import Proc
from test_daemon_support import TOKEN, catch_all, serve

from watchdog.promserver import free_port

# ---- the scrape target ---------------------------------------------------------------------


class SignalTarget:
    """`crash_signal{case=...}` gauges behind `/metrics`, in a daemon thread."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self._lock = threading.Lock()
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with target._lock:
                    lines = [f'crash_signal{{case="{c}"}} {v!r}'
                             for c, v in sorted(target.values.items())]
                body = ("# TYPE crash_signal gauge\n" + "".join(f"{x}\n" for x in lines)
                        ).encode()
                # A scrape that timed out (a loaded machine) has hung up: nothing to tell.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(200 if self.path == "/metrics" else 404)
                    self.send_header("Content-Type", "text/plain; version=0.0.4")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape every 250 ms would flood the test output

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="signal-target",
                                        daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def set(self, case: str, value: float) -> None:
        with self._lock:
            self.values[case] = value

    def start(self) -> SignalTarget:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# ---- receivers and the action endpoint -----------------------------------------------------

Hook = Callable[[str, Any], None]


class HookedChat(FakeChat):
    """FakeChat whose `hook(kind, body)` runs when a request is accepted — for a scripted hang
    with `accept=True` that is before the (never coming) answer."""

    def __init__(self) -> None:
        super().__init__()
        self.hook: Hook | None = None

    def _accept(self, kind: str, request: web.Request, body: Any,
                on_accept: Callable[[Any], None] | None) -> None:
        super()._accept(kind, request, body, on_accept)
        if self.hook is not None:
            self.hook(kind, body)


def classify(kind: str, body: Any) -> str:
    """"firing", "resolved", "action" or "other" for a request `FakeChat` accepted."""
    if kind == "pd_change":
        return "action"
    if kind == "pagerduty":
        return {"trigger": "firing", "resolve": "resolved"}.get(body["event_action"], "other")
    if kind == "webhook":
        k = body["watchdog"]["kind"]
        return k if k in ("firing", "resolved", "action") else "other"
    if kind == "slack":
        # The headline, e.g. "🔴 FIRING · CrashMatrix — summary", "⚙️ Action rollback started".
        words = str(body.get("text", "")).split(" — ")[0].split()
        for word, what in (("Action", "action"), ("FIRING", "firing"),
                           ("RESOLVED", "resolved")):
            if word in words[1:2]:
                return what
    return "other"


@dataclass
class ActionTarget:
    """`POST /action/{case}`: `arrived[case]` counts calls that reached it (the side effect of a
    flag service happens here), `answered[case]` those it answered 200. With `hang_next` set,
    the next call runs `hook` and then gets no answer until `release()`."""

    url: str = ""
    arrived: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    answered: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bodies: list[Any] = field(default_factory=list)
    hang_next: bool = False
    hook: Callable[[str], None] | None = None
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    async def _handle(self, request: web.Request) -> web.Response:
        case = request.match_info["tail"].removeprefix("action/")
        self.bodies.append(await request.json())
        self.arrived[case] += 1
        hang, self.hang_next = self.hang_next, False
        if self.hook is not None:
            self.hook(case)
        if hang:
            await self._release.wait()
            raise web.HTTPServiceUnavailable()
        self.answered[case] += 1
        return web.json_response({"ok": True})

    def release(self) -> None:
        self._release.set()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[ActionTarget]:
        async with serve(catch_all(self._handle)) as url:
            self.url = url
            try:
                yield self
            finally:
                self.release()


# ---- warm `watchdog run` processes ---------------------------------------------------------

# What a warm process runs: import the daemon's modules (best effort: a module that moved in a
# refactoring only makes the start slower), wait for one JSON line {"env", "cwd"} on stdin, then
# do exactly what `python -m watchdog run` does.
_WARM = """
import contextlib, importlib, json, os, runpy, sys
for name in sys.argv[1:]:
    with contextlib.suppress(ImportError):
        importlib.import_module(name)
line = sys.stdin.readline()
if not line:
    raise SystemExit(0)
order = json.loads(line)
os.environ.update(order["env"])
os.chdir(order["cwd"])
sys.argv = ["watchdog", "run"]
runpy.run_module("watchdog", run_name="__main__", alter_sys=True)
"""
WARM_IMPORTS = ("aiohttp", "structlog", "watchdog.settings", "watchdog.cli", "watchdog.daemon",
                "watchdog.http_api", "watchdog.notify.handler", "watchdog.actions.handler")


class WarmProc(Proc):
    """A `Proc` whose `python -m watchdog run` had its imports done before it was needed (see
    `Launcher`); everything after the imports — settings, state, the daemon — is the real
    start, in a fresh process of its own."""

    def __init__(self, p: subprocess.Popen[bytes], log_path: Path, env: dict[str, str],
                 cwd: Path) -> None:
        self.p, self.log_path, self.port = p, log_path, free_port()
        full = {"WATCHDOG_HTTP_LISTEN": f"127.0.0.1:{self.port}",
                "WATCHDOG_LOG_FORMAT": "json", "WATCHDOG_API_TOKEN": TOKEN, **env}
        assert p.stdin is not None
        p.stdin.write(json.dumps({"env": full, "cwd": str(cwd)}).encode() + b"\n")
        p.stdin.close()
        self.started = time.time()


class Launcher:
    """Keeps `standby` processes that have imported the daemon's modules and wait for their
    settings, so a crash test pays ~1.5 CPU-seconds of imports for neither of its two starts
    (on a 2-core machine that is most of a start). `take` hands one out and starts the next.
    A setting read at import time would be read before the order comes; none is (settings.py
    reads the environment, WATCHDOG_SECRETS_DIR too, when the settings are loaded)."""

    def __init__(self, workdir: Path, standby: int = 1) -> None:
        self.workdir = workdir
        self.standby = standby
        self._count = 0
        self._waiting: list[tuple[subprocess.Popen[bytes], Path]] = []

    def _spawn(self) -> None:
        self._count += 1
        log_path = self.workdir / f"watchdog-{self._count}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
        with log_path.open("wb") as log:
            p = subprocess.Popen([sys.executable, "-c", _WARM, *WARM_IMPORTS], env=env,
                                 stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                 cwd=self.workdir)
        self._waiting.append((p, log_path))

    def start(self) -> Launcher:
        while len(self._waiting) < self.standby:
            self._spawn()
        return self

    def take(self, env: dict[str, str], cwd: Path) -> WarmProc:
        if not self._waiting:
            self._spawn()
        p, log_path = self._waiting.pop(0)
        proc = WarmProc(p, log_path, env, cwd)
        self.start()
        return proc

    def close(self) -> None:
        for p, _ in self._waiting:
            assert p.stdin is not None
            p.stdin.close()  # an empty line: the process exits without starting
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        self._waiting.clear()


# ---- the kill ------------------------------------------------------------------------------


class LogKiller:
    """Tails `log_path` in a thread; `delay` seconds after the first JSON line for which
    `match(line)` is true, SIGKILLs `pid`; `line` is the line it acted on (None if none
    matched)."""

    POLL = 0.001

    def __init__(self, log_path: Path, pid: int, match: Callable[[dict[str, Any]], bool],
                 delay: float) -> None:
        self.log_path, self.pid, self.match, self.delay = log_path, pid, match, delay
        self.line: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-killer", daemon=True)

    def start(self) -> LogKiller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        buf = b""
        with self.log_path.open("rb") as f:
            while not self._stop.is_set():
                chunk = f.read()
                if not chunk:
                    time.sleep(self.POLL)
                    continue
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    try:
                        line = json.loads(raw)
                    except ValueError:
                        continue
                    if isinstance(line, dict) and self.match(line):
                        self.line = line
                        if self.delay > 0:
                            time.sleep(self.delay)
                        kill(self.pid)
                        return


def kill(pid: int) -> None:
    """SIGKILL `pid`, which may already be gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
