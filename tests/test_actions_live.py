"""Live: a real Prometheus scrapes an in-process service whose error rate flips, the engine
evaluates a rollback rule every half second, and the actions handler calls the service's flag
endpoints. Three services in one run, to keep the wall time down:
- `c`: the rollback webhook fixes it — called exactly once although the alert keeps firing
  for a few evaluations (the rate window still holds the bad scrapes);
- `a`: a two-stage sequence whose stage 1 fixes it — stage 2 never runs;
- `b`: stage 1 does not fix it — stage 2 runs when the wait ends and the alert still fires.
Most of the ~18 s is Prometheus itself: its target discovery hands the first target to the
scrape loop about 5 s after start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from storage_support import on_events_tx, sqlite_storage

from watchdog.actions.handler import ActionsHandler
from watchdog.actions.testing import RecordingSink, RuntimeAlerts, make_context
from watchdog.engine import GroupRuntime, tick
from watchdog.evaluate import Context
from watchdog.promserver import PrometheusServer
from watchdog.rulesdir import build
from watchdog.source import PrometheusConfig, PrometheusSource

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

RULES = """
groups:
  - name: checkout
    rules:
      - alert: ErrorRateRollback
        expr: |
          sum by (service) (rate(app_errors_total{service="c"}[3s]))
            / sum by (service) (rate(app_requests_total{service="c"}[3s]))
        threshold: "> 0.1"
        for: 1s
        actions: [rollback]
      - alert: ErrorRateStaged
        expr: |
          sum by (service) (rate(app_errors_total{service=~"a|b"}[3s]))
            / sum by (service) (rate(app_requests_total{service=~"a|b"}[3s]))
        threshold: "> 0.1"
        for: 1s
        actions: [staged]
actions:
  rollback:
    verify_for: 4s
    steps:
      - webhook: {url: "${SVC}/c/flags/checkout-v2", method: PATCH, json: {enabled: false}}
  staged:
    steps:
      - webhook: {url: "${SVC}/{{ $labels.service }}/flags/newest", method: PATCH,
                  json: {enabled: false}}
      - wait: {for: 5s, until: resolved}
      - webhook: {url: "${SVC}/{{ $labels.service }}/flags/master", method: PATCH,
                  json: {enabled: false}}
"""


class Service:
    """Counts 100 requests per scrape; while bad, 30 of them are errors (30% error rate). A
    flag PATCH in `fixes` makes it healthy again — what a good rollback does."""

    def __init__(self) -> None:
        self.bad = {"a": True, "b": True, "c": True}
        self.fixes = {("a", "newest"), ("b", "master"), ("c", "checkout-v2")}
        self.requests = dict.fromkeys(self.bad, 0)
        self.errors = dict.fromkeys(self.bad, 0)
        self.calls: list[str] = []

    async def metrics(self, request: web.Request) -> web.Response:
        lines = ["# TYPE app_requests_total counter", "# TYPE app_errors_total counter"]
        for s in self.bad:
            self.requests[s] += 100
            self.errors[s] += 30 if self.bad[s] else 0
            lines.append(f'app_requests_total{{service="{s}"}} {self.requests[s]}')
            lines.append(f'app_errors_total{{service="{s}"}} {self.errors[s]}')
        return web.Response(text="\n".join(lines) + "\n")

    async def flag(self, request: web.Request) -> web.Response:
        svc, name = request.match_info["svc"], request.match_info["name"]
        self.calls.append(f"/{svc}/flags/{name}")
        if (svc, name) in self.fixes:
            self.bad[svc] = False
        return web.json_response({"enabled": False})


@pytest.fixture
async def service(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Service, str]]:
    svc = Service()
    app = web.Application()
    app.router.add_get("/metrics", svc.metrics)
    app.router.add_patch("/{svc}/flags/{name}", svc.flag)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    monkeypatch.setenv("SVC", f"http://127.0.0.1:{server.port}")
    try:
        yield svc, f"127.0.0.1:{server.port}"
    finally:
        await server.close()


async def test_rollback_against_a_real_prometheus(service: tuple[Service, str],
                                                  prometheus_binary: str,
                                                  tmp_path: Path) -> None:
    svc, target = service
    prom = PrometheusServer.scraping([target], scrape_interval="1s",
                                     tsdb_dir=tmp_path / "tsdb", binary=prometheus_binary)
    await asyncio.to_thread(prom.start)
    rs = build({"r.yml": RULES.encode()})
    assert not rs.rejected, rs.problems
    runtimes = [GroupRuntime.new(f, g) for f, g in rs.groups()]
    sink = RecordingSink()
    transitions: list[tuple[str, str, str]] = []
    try:
        async with aiohttp.ClientSession() as session, \
                sqlite_storage(tmp_path / "state.db") as db:
            source = PrometheusSource(session, PrometheusConfig(url=prom.url, timeout=5))
            ctx = make_context(db, session, source, alerts=RuntimeAlerts(runtimes),
                               sinks=[sink])
            h = ActionsHandler(ctx)
            await h.on_rules(rs)
            await h.start()

            async def runs() -> dict[str, dict[str, Any]]:
                return {r["labels"]["service"]: r for r in await h.runs()}

            deadline = time.monotonic() + 60
            settled_at: float | None = None
            while time.monotonic() < deadline:
                at = time.time()
                for rt in runtimes:
                    res = await tick(rt, at, source, Context())
                    transitions += [(e.alert.labels["service"], e.alert.rule, e.kind)
                                    for e in res.events]
                    await on_events_tx(h, res.events, at)
                r = await runs()
                done = (set(r) == {"a", "b", "c"}
                        and all(x["status"] != "running" for x in r.values())
                        and "verified" in sink.kinds("rollback")
                        and all(a.state == "inactive" for rt in runtimes for a in rt.alerts()))
                if done and settled_at is None:
                    settled_at = time.monotonic()
                if settled_at is not None and time.monotonic() - settled_at > 1.5:
                    break  # a few more evaluations: nothing may run again
                await asyncio.sleep(0.5)
            r = await runs()
            await h.stop()
    finally:
        await asyncio.to_thread(prom.stop)

    # c: one rollback, although it kept firing for a few evaluations after it
    assert svc.calls.count("/c/flags/checkout-v2") == 1, (svc.calls, transitions)
    assert r["c"]["status"] == "succeeded"
    assert ("c", "ErrorRateRollback", "resolved") in transitions
    verified = next(e for e in sink.events if e.kind == "verified")
    assert verified.detail.startswith("helped: 0.3 → ")
    # a: stage 1 was enough
    assert [c for c in svc.calls if c.startswith("/a/")] == ["/a/flags/newest"]
    assert r["a"]["status"] == "resolved", r["a"]
    assert [s["status"] for s in r["a"]["steps"]] == ["succeeded", "succeeded"]
    # b: still bad after the wait, so stage 2 ran
    assert [c for c in svc.calls if c.startswith("/b/")] == ["/b/flags/newest",
                                                              "/b/flags/master"]
    assert r["b"]["status"] == "succeeded", r["b"]
    assert not any(e.kind == "failed" for e in sink.events)
