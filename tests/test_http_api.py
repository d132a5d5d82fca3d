"""The HTTP API: Prometheus-shaped rules and alerts, status, probes, metrics, the token guard on
every write route (handlers' included), JSON errors for bad input."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from test_daemon_support import TOKEN, get_json, post_json, settings, write

from watchdog.daemon import Daemon
from watchdog.handlers import DaemonContext
from watchdog.http_api import alert_json, go_float
from watchdog.rulesdir import RuleSet
from watchdog.state import Alert, Event
from watchdog.testing import FakeSource, FixedClock, sample

RULES = """
groups:
  - name: web
    interval: 15s
    limit: 10
    rules:
      - alert: HighErrors
        expr: errors > 0.1
        for: 1m
        keep_firing_for: 2m
        labels: {severity: page}
        annotations: {summary: "errors at {{ $value }}"}
      - alert: Quiet
        expr: quiet > 1
"""
T0 = 1_800_000_000.0


class RouteHandler:
    """A handler that registers one write route and one read route, as notify/actions do."""

    def __init__(self, ctx: DaemonContext) -> None:
        async def silence(request: web.Request) -> web.Response:
            return web.json_response({"status": "success", "data": await request.json()})

        async def listing(request: web.Request) -> web.Response:
            return web.json_response({"status": "success", "data": []})

        ctx.routes.append(web.post("/api/v1/silences", silence))
        ctx.routes.append(web.get("/api/v1/silences", listing))

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def on_rules(self, rules: RuleSet) -> None: ...
    async def on_events(self, tx: Any, events: Sequence[Event], at: float) -> None: ...


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    s = settings(tmp_path, prometheus_url="http://user:hunter2@127.0.0.1:9/")
    write(s.rules_dir / "web.yml", RULES)
    src = FakeSource({"errors > 0.1": [sample(0.25, __name__="errors", instance="i1")]})
    d = Daemon(s, clock=FixedClock(T0), source=src, plugins=False, schedule=False)
    d._extra_handlers.append(_LateRoutes(d))
    async with d:
        for _ in range(6):
            await d.evaluate_all()
            d.clock.advance(15)  # type: ignore[attr-defined]
        yield d


class _LateRoutes:
    """Creates RouteHandler once the daemon has its context (handlers come before HTTP)."""

    def __init__(self, d: Daemon) -> None:
        self.d = d

    async def start(self) -> None:
        RouteHandler(self.d.ctx)

    async def stop(self) -> None: ...
    async def on_rules(self, rules: RuleSet) -> None: ...
    async def on_events(self, tx: Any, events: Sequence[Event], at: float) -> None: ...


def test_values_are_formatted_like_go() -> None:
    assert go_float(1.0) == "1e+00"
    assert go_float(0.25) == "2.5e-01"
    assert go_float(123.456) == "1.23456e+02"
    assert go_float(0.0) == "0e+00"
    assert go_float(float("nan")) == "NaN" and go_float(float("-inf")) == "-Inf"


def test_times_are_written_as_prometheus_writes_them() -> None:
    # Go's JSON time (RFC3339Nano): the fraction's trailing zeros cut, none on a whole second
    alert = Alert(rule="R", group="g", fingerprint="f", labels={}, annotations={},
                  state="firing", active_at=1800000000.5, value=0.25, fired_at=1800000060.0)
    out = alert_json(alert)
    assert out["activeAt"] == "2027-01-15T08:00:00.5Z"
    assert out["firedAt"] == "2027-01-15T08:01:00Z"
    assert out["value"] == "2.5e-01"


async def test_rules_in_prometheus_shape(daemon: Daemon) -> None:
    status, body = await get_json(f"{daemon.http_url}/api/v1/rules")
    assert status == 200 and body["status"] == "success"
    groups = body["data"]["groups"]
    web_group = groups[0]
    assert web_group["name"] == "web" and web_group["file"].endswith("web.yml")
    assert web_group["interval"] == 15.0 and web_group["limit"] == 10
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", web_group["lastEvaluation"])
    high, quiet = web_group["rules"]
    assert high["type"] == "alerting" and high["name"] == "HighErrors"
    assert high["query"] == "errors > 0.1" and high["duration"] == 60.0
    assert high["keepFiringFor"] == 120.0 and high["labels"] == {"severity": "page"}
    assert high["health"] == "ok" and high["lastError"] == "" and high["state"] == "firing"
    (alert,) = high["alerts"]
    assert alert["state"] == "firing" and alert["value"] == "2.5e-01"
    assert alert["labels"] == {"alertname": "HighErrors", "instance": "i1", "severity": "page"}
    assert alert["annotations"] == {"summary": "errors at 0.25"}
    assert alert["activeAt"] == "2027-01-15T08:00:00Z"
    assert quiet["state"] == "inactive" and quiet["alerts"] == []
    # the last evaluations, newest first: why it fired (1 hit of 1 sample) or did not
    assert len(high["history"]) == 6
    assert high["history"][0]["samples"] == 1 and high["history"][0]["hits"] == 1
    assert high["history"][0]["at"] > high["history"][-1]["at"]
    assert groups[-1]["name"] == "watchdog" and groups[-1]["rules"][0]["name"] == (
        "WatchdogDatasourceDown")


async def test_rules_filters_and_bad_parameters(daemon: Daemon) -> None:
    url = f"{daemon.http_url}/api/v1/rules"
    _, body = await get_json(f"{url}?rule_name[]=Quiet&exclude_alerts=true")
    (g,) = body["data"]["groups"]
    assert [r["name"] for r in g["rules"]] == ["Quiet"] and "alerts" not in g["rules"][0]
    _, body = await get_json(f"{url}?type=record")
    assert body["data"]["groups"] == []
    _, body = await get_json(f"{url}?rule_group[]=nope")
    assert body["data"]["groups"] == []
    status, body = await get_json(f"{url}?type=bogus")
    assert status == 400 and body["errorType"] == "bad_data" and "type" in body["error"]
    status, body = await get_json(f"{url}?exclude_alerts=maybe")
    assert status == 400 and "exclude_alerts" in body["error"]


async def test_alerts_lists_active_alerts(daemon: Daemon) -> None:
    status, body = await get_json(f"{daemon.http_url}/api/v1/alerts")
    assert status == 200
    (a,) = body["data"]["alerts"]
    assert set(a) >= {"labels", "annotations", "state", "activeAt", "value"}
    assert a["state"] == "firing"


async def test_status_probes_and_no_secret_leaks(daemon: Daemon) -> None:
    status, body = await get_json(f"{daemon.http_url}/api/v1/status")
    assert status == 200
    data = body["data"]
    assert data["files"][0]["status"] == "loaded"
    assert data["groups"][0]["name"] == "web" and data["groups"][0]["alerts"]["firing"] == 1
    assert data["datasource"]["url"] == "http://user:***@127.0.0.1:9/"
    text = str(body)
    assert "hunter2" not in text and TOKEN not in text
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{daemon.http_url}/healthz") as r:
            assert r.status == 200
        async with s.get(f"{daemon.http_url}/readyz") as r:
            assert r.status == 200 and "ready" in await r.text()


async def test_metrics_names(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{daemon.http_url}/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    for name in ("watchdog_evaluation_duration_seconds_bucket{group=\"web\"",
                 "watchdog_evaluations_total{group=\"web\"} 12.0",
                 "watchdog_evaluation_failures_total", "watchdog_missed_iterations_total",
                 "watchdog_query_duration_seconds_count", "watchdog_query_errors_total",
                 "watchdog_queries_batched_total",
                 'watchdog_alerts{rule="HighErrors",state="firing"} 1.0',
                 'watchdog_alerts{rule="Quiet",state="pending"} 0.0',
                 'watchdog_rule_files{status="loaded"} 1.0',
                 'watchdog_rule_files{status="rejected"} 0.0'):
        assert name in text, name


async def test_write_routes_need_the_token_handlers_included(daemon: Daemon) -> None:
    url = f"{daemon.http_url}/api/v1/silences"
    status, body = await post_json(url, {"matchers": []}, token=None)
    assert status == 401 and "Bearer" in body["error"]
    status, body = await post_json(url, {"matchers": []}, token="nope")
    assert status == 403 and body["error"] == "invalid API token"
    status, body = await post_json(url, {"matchers": []})
    assert status == 200 and body["data"] == {"matchers": []}
    status, body = await get_json(url)  # reads need no token
    assert status == 200


async def test_without_a_token_every_write_endpoint_refuses(tmp_path: Path) -> None:
    s = settings(tmp_path, api_token=None)
    async with Daemon(s, clock=FixedClock(T0), source=FakeSource(), plugins=False,
                      schedule=False) as d:
        status, body = await post_json(f"{d.http_url}/-/reload", token=TOKEN)
        assert status == 403 and "WATCHDOG_API_TOKEN" in body["error"]


async def test_unknown_paths_and_methods_answer_json(daemon: Daemon) -> None:
    status, body = await get_json(f"{daemon.http_url}/api/v1/nope")
    assert status == 404 and body["errorType"] == "not_found"
    async with aiohttp.ClientSession() as s, s.delete(
            f"{daemon.http_url}/api/v1/rules",
            headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        body: Any = await r.json()
        assert r.status == 405 and body["errorType"] == "method_not_allowed"
