"""Helpers shared by the daemon's tests (no tests here): a recording event handler, settings for
a daemon in a temporary directory, a fake Prometheus HTTP API that can be stopped and restarted
on the same port, a scrape target whose value the test sets, a bounded wait, and `serve` /
`recording_paths` for the small webhook servers the actions tests point `${HOOK}` at.

Real HTTP servers in-process (aiohttp), never mocks of the client: the daemon talks to them the
way it talks to a real Prometheus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from watchdog.promserver import free_port
from watchdog.rulesdir import RuleSet
from watchdog.settings import Settings
from watchdog.state import Event
from watchdog.storage import Tx

TOKEN = "test-token-123"


class Recorder:
    """An `EventHandler` that remembers everything it is given."""

    def __init__(self, check: Callable[[Sequence[Event]], Awaitable[None]] | None = None) -> None:
        self.events: list[Event] = []
        self.rule_sets: list[RuleSet] = []
        self.started = self.stopped = False
        self._check = check

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def on_rules(self, rules: RuleSet) -> None:
        self.rule_sets.append(rules)

    async def on_events(self, tx: Tx, events: Sequence[Event], at: float) -> None:
        if self._check is not None:
            await self._check(tx, events)
        self.events.extend(events)

    def kinds(self, rule: str | None = None) -> list[str]:
        return [e.kind for e in self.events if rule is None or e.alert.rule == rule]


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    base: dict[str, Any] = {
        "rules_dir": rules, "state_url": f"sqlite:///{tmp_path / 'state.db'}",
        "http_listen": "127.0.0.1:0", "api_token": TOKEN, "evaluation_interval": 10.0,
        "rules_poll_interval": 3600.0, "shutdown_timeout": 5.0, "sentry_dsn": None,
        "mqtt_url": None,
    }
    base.update(overrides)
    return Settings.load(None, **base)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0,
                   interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


async def post_json(url: str, body: Any = None, token: str | None = TOKEN
                    ) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=headers) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """`app` served on 127.0.0.1 (a free port) for the block; gives its URL without the
    trailing slash, and closes the server on the way out."""
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def catch_all(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
              ) -> web.Application:
    """An app sending every method and path to `handler`."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


def recording_paths(calls: list[str]) -> web.Application:
    """An app that answers every request 200 and appends its path to `calls`."""

    async def handle(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.Response()

    return catch_all(handle)


class PortServer:
    """An aiohttp app on 127.0.0.1 at a port chosen once, so `stop()`/`start()` keep it.
    Subclasses build the app in `app()`."""

    reuse_address: bool | None = None

    def __init__(self) -> None:
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        raise NotImplementedError

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app())
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port,
                          reuse_address=self.reuse_address).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class FakePrometheus(PortServer):
    """Prometheus's query API answering from `vectors[expr]` ({labels: value}); an expr mapped
    to a string answers 400 bad_data with that message. `stop()`/`start()` keep the port."""

    reuse_address = True

    def __init__(self) -> None:
        self.vectors: dict[str, dict[tuple[tuple[str, str], ...], float] | str] = {}
        self.queries = 0
        super().__init__()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, expr: str, value: float | None, **labels: str) -> None:
        """Answer `expr` with one series (or nothing when value is None)."""
        self.vectors[expr] = {} if value is None else {tuple(sorted(labels.items())): value}

    async def _query(self, request: web.Request) -> web.Response:
        form = await request.post() if request.method == "POST" else request.query
        expr, at = str(form.get("query", "")), float(str(form.get("time", "0")))
        self.queries += 1
        answer = self.vectors.get(expr, {})
        if isinstance(answer, str):
            return web.json_response({"status": "error", "errorType": "bad_data",
                                      "error": answer}, status=400)
        result = [{"metric": dict(k), "value": [at, repr(v)]} for k, v in answer.items()]
        return web.json_response({"status": "success",
                                  "data": {"resultType": "vector", "result": result}})

    async def _buildinfo(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "success", "data": {"version": "fake"}})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/api/v1/query", self._query)
        app.router.add_get("/api/v1/status/buildinfo", self._buildinfo)
        return app


class Target(PortServer):
    """A scrape target: `/metrics` serves `test_value <value>`; the test sets `value`."""

    def __init__(self) -> None:
        self.value = 0.0
        super().__init__()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=f"# TYPE test_value gauge\ntest_value {self.value!r}\n")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        return app
