"""The daemon against a real Prometheus (Debian's `prometheus`) that scrapes an in-process
target every second: a `for: 3s` rule fires within one interval of the data crossing and
resolves after recovery; with Prometheus stopped nothing resolves, `WatchdogDatasourceDown`
fires and `/readyz` says why, and evaluations resume once it is back — no restart.

Real clock and real scheduler here (that is the point), so these take seconds, bounded by
`wait_for` timeouts.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_daemon_support import Recorder, Target, get_json, settings, wait_for, write

from watchdog.daemon import DATASOURCE_DOWN, Daemon
from watchdog.promserver import PrometheusServer
from watchdog.state import Event

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

# Slack on "within one interval": the sample's timestamp is when the scrape *started*; it is
# queryable a few milliseconds later, so an evaluation in that gap sees it one interval late.
SLACK = 0.3


async def samples(prom: PrometheusServer, expr: str) -> list[tuple[float, float]]:
    """The raw (timestamp, value) samples of `expr` over the last minute."""
    async with aiohttp.ClientSession() as s, s.get(
            f"{prom.url}/api/v1/query", params={"query": f"{expr}[1m]"}) as r:
        body: Any = await r.json()
    result = body["data"]["result"]
    return [(float(t), float(v)) for t, v in result[0]["values"]] if result else []


def first_event(rec: Recorder, kind: str, rule: str) -> Event | None:
    return next((e for e in rec.events if e.kind == kind and e.alert.rule == rule), None)


async def crossing(prom: PrometheusServer, after: float, pred: Any) -> float:
    points = await samples(prom, "test_value")
    return min(t for t, v in points if t >= after and pred(v))


async def test_for_3s_fires_within_one_interval_and_resolves(tmp_path: Path,
                                                            prometheus_binary: str) -> None:
    target = Target()
    await target.start()
    prom = PrometheusServer.scraping([target.address], "1s", tsdb_dir=tmp_path / "tsdb",
                                     binary=prometheus_binary)
    try:
        async with prom:
            s = settings(tmp_path, prometheus_url=prom.url)
            write(s.rules_dir / "live.yml", """
groups:
  - name: live
    interval: 1s
    rules:
      - alert: ValueHigh
        expr: test_value > 5
        for: 3s
""")
            rec = Recorder()
            async with Daemon(s, handlers=[rec], plugins=False) as d:
                await wait_for(lambda: d.datasource_up, 10, what="Prometheus to answer")
                status, _ = await get_json(f"{d.http_url}/readyz")
                assert status == 200
                started = time.time()
                # Prometheus's discovery hands over targets up to 5s after start: wait for the
                # first scrape of the low value before the data crosses.
                for _ in range(100):
                    if await samples(prom, "test_value"):
                        break
                    await asyncio.sleep(0.1)
                target.value = 10.0
                fired = await wait_for(lambda: first_event(rec, "firing", "ValueHigh"), 10,
                                       what="the alert to fire")
                crossed = await crossing(prom, started, lambda v: v > 5)
                assert fired.at >= crossed + 3.0  # `for` is honoured...
                assert fired.at <= crossed + 3.0 + 1.0 + SLACK  # ...and not a tick later
                assert fired.alert.active_at <= crossed + 1.0 + SLACK

                recovered_at = time.time()
                target.value = 0.0
                resolved = await wait_for(lambda: first_event(rec, "resolved", "ValueHigh"),
                                          10, what="the alert to resolve")
                back = await crossing(prom, recovered_at - 1.0, lambda v: v <= 5)
                assert back <= resolved.at <= back + 1.0 + SLACK
                assert rec.kinds("ValueHigh") == ["pending", "firing", "resolved"]
    finally:
        await target.stop()


async def test_prometheus_down_then_back(tmp_path: Path, prometheus_binary: str) -> None:
    target = Target()
    target.value = 10.0
    await target.start()
    prom = PrometheusServer.scraping([target.address], "1s", tsdb_dir=tmp_path / "tsdb",
                                     binary=prometheus_binary)
    try:
        async with prom:
            s = settings(tmp_path, prometheus_url=prom.url, evaluation_interval=0.5,
                         datasource_down_after=3, prometheus_timeout=1.0)
            write(s.rules_dir / "live.yml",
                  "groups: [{name: live, rules: [{alert: Up, expr: test_value > 5}]}]\n")
            rec = Recorder()
            async with Daemon(s, handlers=[rec], plugins=False) as d:
                await wait_for(lambda: first_event(rec, "firing", "Up"), 10,
                               what="the alert to fire")
                await asyncio.to_thread(prom.stop)
                down = await wait_for(lambda: first_event(rec, "firing", DATASOURCE_DOWN), 10,
                                      what="WatchdogDatasourceDown")
                assert down.alert.labels["datasource"] == prom.url
                status, body = await get_json(f"{d.http_url}/readyz")
                reason = body["reason"]  # /readyz answers JSON; the reason text is unchanged
                assert status == 503
                assert f"Prometheus at {prom.url} is not answering" in reason
                assert "consecutive evaluations failed" in reason
                await asyncio.sleep(1.5)  # three more failed evaluations
                assert rec.kinds("Up") == ["pending", "firing"]  # nothing resolved
                _, body = await get_json(f"{d.http_url}/api/v1/alerts")
                assert {a["labels"]["alertname"] for a in body["data"]["alerts"]} == {
                    "Up", DATASOURCE_DOWN}

                await asyncio.to_thread(prom.start)  # same port, same TSDB
                await wait_for(lambda: first_event(rec, "resolved", DATASOURCE_DOWN), 10,
                               what="WatchdogDatasourceDown to resolve")
                status, reason = await get_json(f"{d.http_url}/readyz")
                assert status == 200, reason
                rt = next(iter(d.runtimes.values()))
                last = rt.last_at
                await wait_for(lambda: rt.last_at is not None and last is not None
                               and rt.last_at > last and rt.last_error is None, 5,
                               what="evaluations to resume")
                assert rec.kinds("Up") == ["pending", "firing"]  # same incident throughout
    finally:
        await target.stop()
