"""A small demo service: serves simulated traffic, exposes Prometheus metrics, and has feature
flags that a "bad deploy" turns on and the watchdog's rollback turns off.

Not part of the product: it exists so the demo shows a real Prometheus scraping a real service.
With `checkout-v2` on, 35% of requests fail and p95 latency triples; `recommendations-v3` (the
newest feature of the same release) is harmless, so the staged rollback shows a first stage that
does not help and a second one that does.
"""

from __future__ import annotations

import asyncio
import json
import random

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

RATE = 40  # simulated requests per second


class DemoService:
    def __init__(self) -> None:
        self.flags: dict[str, bool] = {"checkout-v2": False, "recommendations-v3": False}
        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests", "Requests served", ["service", "code"],
                                registry=self.registry)
        self.latency = Histogram("http_request_duration_seconds", "Request latency",
                                 ["service"], registry=self.registry,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.flag_changes: list[tuple[str, bool]] = []
        self._rng = random.Random(1)
        self._task: asyncio.Task[None] | None = None

    @property
    def bad(self) -> bool:
        return self.flags["checkout-v2"]

    async def _traffic(self) -> None:
        while True:
            for _ in range(RATE // 10):
                failed = self._rng.random() < (0.35 if self.bad else 0.005)
                self.requests.labels("checkout", "500" if failed else "200").inc()
                base = 0.3 if self.bad else 0.08
                self.latency.labels("checkout").observe(self._rng.expovariate(1 / base))
            await asyncio.sleep(0.1)

    async def metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def set_flag(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.flags:
            return web.json_response({"error": f"no flag {name}"}, status=404)
        try:
            body = await request.json()
            enabled = bool(body["enabled"])
        except (json.JSONDecodeError, KeyError, TypeError):
            return web.json_response({"error": 'expected {"enabled": true|false}'}, status=400)
        self.flags[name] = enabled
        self.flag_changes.append((name, enabled))
        return web.json_response({"flag": name, "enabled": enabled})

    async def get_flags(self, _: web.Request) -> web.Response:
        return web.json_response(self.flags)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/flags", self.get_flags)
        app.router.add_route("PATCH", "/flags/{name}", self.set_flag)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, _: web.Application) -> None:
        self._task = asyncio.create_task(self._traffic())

    async def _stop(self, _: web.Application) -> None:
        if self._task is not None:
            self._task.cancel()
