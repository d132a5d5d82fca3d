"""The actions plugin inside the real daemon: loaded through `create_handler`, triggered by the
daemon's own evaluation, its endpoints behind the daemon's API token, its deploy baselines fed
back into evaluation, its counter on /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_daemon_support import (
    get_json,
    post_json,
    recording_paths,
    serve,
    settings,
    wait_for,
    write,
)

from watchdog.daemon import Daemon
from watchdog.labels import fingerprint
from watchdog.testing import FakeSource, FixedClock, sample

RULES = """
groups:
  - name: checkout
    rules:
      - alert: HighErrorRate
        expr: error_ratio
        threshold: "> 0.1"
        actions: [flag-off]
      - alert: LatencyVsDeploy
        expr: p95
        baseline: {deploy: true}
        threshold: "> 1.5"
actions:
  flag-off:
    cooldown: 30m
    steps:
      - webhook: {url: "${HOOK}/flags/checkout-v2", method: PATCH, json: {enabled: false}}
"""


@pytest.fixture
async def hook(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[str]]:
    calls: list[str] = []
    async with serve(recording_paths(calls)) as url:
        monkeypatch.setenv("HOOK", url)
        yield calls


async def test_actions_plugin_in_the_daemon(tmp_path: Path, hook: list[str]) -> None:
    s = settings(tmp_path)
    write(s.rules_dir / "r.yml", RULES)
    clock = FixedClock(1_800_000_000.0)
    src = FakeSource({"error_ratio": [sample(0.3, __name__="error_ratio", service="checkout")],
                      "p95": [sample(0.2, __name__="p95", service="checkout")]})
    async with Daemon(s, clock=clock, source=src, schedule=False) as d:
        assert d.plugins["watchdog.actions"] == "loaded"
        await d.evaluate_all()
        await wait_for(lambda: hook == ["/flags/checkout-v2"], what="the rollback webhook")
        clock.advance(60)
        await d.evaluate_all()  # still firing: no second run
        base = d.http_url
        assert base is not None
        status, _ = await post_json(f"{base}/api/v1/actions/flag-off/run", {}, token=None)
        assert status in (401, 403)
        status, doc = await post_json(f"{base}/api/v1/actions/flag-off/run",
                                      {"labels": {"service": "checkout"}})
        assert status == 202, doc
        await wait_for(lambda: len(hook) == 2, what="the manual run")
        status, runs = await get_json(f"{base}/api/v1/actions/runs")
        assert status == 200
        assert sorted(r["trigger"] for r in runs["data"]) == ["alert", "manual"]
        status, deploy = await post_json(f"{base}/api/v1/deploys",
                                         {"service": "checkout", "version": "v2"})
        assert status == 201 and deploy["baselines"] == {"LatencyVsDeploy": 1}
        fp = fingerprint({"service": "checkout"})
        assert d.eval_context().deploy_baselines == {"LatencyVsDeploy": {fp: 0.2}}
        status, text = await get_json(f"{base}/metrics")
        assert 'watchdog_actions_total{action="flag-off",outcome="succeeded"} 2.0' in text
    assert hook == ["/flags/checkout-v2"] * 2
