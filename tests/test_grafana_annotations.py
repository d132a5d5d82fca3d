"""Deploys and action runs as Grafana annotations: the watchdog counts them on /metrics
(`watchdog_deploys_total{service, event}`, `watchdog_action_events_total{action, event}`),
and deploy/grafana-dashboard.json's annotation queries over those counters are evaluated by a
real Prometheus over the counters' history, as Grafana would ask it, and mark the minutes in
which something happened.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import BackfilledPrometheus, prom_api
from prometheus_client.parser import text_string_to_metric_families
from test_daemon_support import TOKEN, recording_paths, serve, settings, write

from watchdog.daemon import Daemon
from watchdog.series import Series
from watchdog.testing import FakeSource

DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana-dashboard.json"

RULES = """
groups:
  - name: api
    rules:
      - alert: ApiDown
        expr: api_up == 0
actions:
  rollback:
    steps:
      - webhook: {url: "HOOK/flag", method: PATCH, json: {enabled: false}}
"""


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_deploys_and_action_runs_are_counted(tmp_path: Path) -> None:
    calls: list[str] = []
    async with serve(recording_paths(calls)) as hook:
        s = settings(tmp_path)
        write(s.rules_dir / "api.yml", RULES.replace("HOOK", hook))
        async with Daemon(s, clock=time.time, source=FakeSource({}), schedule=False) as d, \
                aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            url = d.http_url
            async with http.post(f"{url}/api/v1/deploys", json={
                    "service": "checkout", "version": "2.0", "window": "1s"}) as r:
                assert r.status in (200, 201), await r.text()
            async with http.post(f"{url}/api/v1/actions/rollback/run",
                                 json={"labels": {"service": "checkout"}}) as r:
                assert r.status in (200, 201, 202), await r.text()

            async def scrape() -> str:
                async with http.get(f"{url}/metrics") as r:
                    return await r.text()

            deadline = time.monotonic() + 20
            while True:
                text = await scrape()
                deploys = samples(text, "watchdog_deploys_total")
                actions = samples(text, "watchdog_action_events_total")
                done = ((("event", "succeeded"), ("service", "checkout")) in deploys
                        and (("action", "rollback"), ("event", "succeeded")) in actions)
                if done or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
    assert deploys == {(("event", "started"), ("service", "checkout")): 1.0,
                       (("event", "succeeded"), ("service", "checkout")): 1.0}
    assert actions == {(("action", "rollback"), ("event", "started")): 1.0,
                       (("action", "rollback"), ("event", "succeeded")): 1.0}
    assert calls == ["/flag"]


def annotation(name: str) -> dict[str, Any]:
    dash = json.loads(DASHBOARD.read_text())
    [a] = [a for a in dash["annotations"]["list"] if a.get("name") == name]
    return a


@pytest.mark.prometheus
def test_the_dashboard_annotations_mark_the_minutes_of_deploys_and_runs(
        backfilled_prometheus: BackfilledPrometheus) -> None:
    """The counters as Prometheus scrapes them every 15 s over an hour: a deploy of checkout at
    10m (its verdict at 40m), a rollback started at 20m that succeeded at 21m."""
    def counter(labels: dict[str, str], steps: list[float]) -> Series:
        pts = [(float(t), float(sum(1 for s in steps if s <= t))) for t in range(0, 3601, 15)]
        return Series({"job": "metrics-watchdog", **labels}, pts)

    prom = backfilled_prometheus([
        counter({"__name__": "watchdog_deploys_total", "service": "checkout",
                 "event": "started"}, [600]),
        counter({"__name__": "watchdog_deploys_total", "service": "checkout",
                 "event": "succeeded"}, [2400]),
        counter({"__name__": "watchdog_action_events_total", "action": "rollback",
                 "event": "started"}, [1200]),
        counter({"__name__": "watchdog_action_events_total", "action": "rollback",
                 "event": "succeeded"}, [1260]),
        counter({"__name__": "watchdog_action_events_total", "action": "rollback",
                 "event": "already_ran"}, [1800]),  # an interlock, not an annotation
    ])
    for name, expect in (
            ("Deploys", {("checkout", "started"): 600, ("checkout", "succeeded"): 2400}),
            ("Action runs", {("rollback", "started"): 1200, ("rollback", "succeeded"): 1260})):
        a = annotation(name)
        # Grafana replaces its variables, then asks for a range at the annotation's step
        expr = a["expr"].replace("$job", ".*")
        data = prom_api(prom, "query_range", query=expr, start=0, end=3600, step=60)
        got = {}
        for series in data["result"]:
            key = tuple(series["metric"][k] for k in a["tagKeys"].split(","))
            first = min(float(t) for t, _ in series["values"])
            got[key] = first
        assert set(got) == set(expect), (name, got)
        for key, at in expect.items():
            # the annotation starts in the minute of the event (within one step after it)
            assert at <= got[key] <= at + 120, (name, key, got[key])
        for field in ("titleFormat", "textFormat"):
            for label in re.findall(r"\{\{(\w+)\}\}", a[field]):
                assert label in a["tagKeys"].split(",")
