"""Incidents end to end with `watchdog run` as a real process: one series flaps bad/good three
times within a single `group_interval` (the default, 5m). Every receiver — Slack, PagerDuty and
an Alertmanager-style webhook — hears three firings and three resolves, PagerDuty gets three
dedup keys, and `/api/v1/incidents` and the duration histogram on `/metrics` agree with the
daemon's own alert events. The process is restarted in the middle, so the re-armed group timers
are part of the test.

Prometheus is the in-process `FakePrometheus` (the subject is the daemon's notification state,
not PromQL); receivers are `FakeChat`. Every wait is for an observable outcome, never for time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fakes_chat import FakeChat
from test_daemon_process import Proc, env_for, until
from test_daemon_support import FakePrometheus, get_json, write

pytestmark = pytest.mark.slow

KEY = "R0UT1NGKEY0123456789abcdefABCDEF"


def rules(chat: FakeChat) -> str:
    return f"""
groups:
  - name: g
    interval: 1s
    rules:
      - alert: Flap
        expr: flap > 1
        labels: {{severity: critical}}
        annotations: {{summary: "flapping"}}
receivers:
  - name: chat
    slack: {{webhook_url: "{chat.url}/slack/T0/B0/x"}}
  - name: pd
    pagerduty: {{routing_key: "{KEY}", url: "{chat.url}/v2/enqueue"}}
  - name: audit
    webhook: {{url: "{chat.url}/hook/audit"}}
routes:
  - receivers: [chat, pd, audit]
    group_wait: 1s        # group_interval: the default 5m, Alertmanager's
"""


@pytest.fixture
async def prom() -> Any:
    fake = FakePrometheus()
    await fake.start()
    yield fake
    await fake.stop()


def told(chat: FakeChat) -> dict[str, list[str]]:
    return {
        "slack": [m["text"].split(" · ")[0].split(" ")[-1] for m in chat.accepted["slack"]],
        "pagerduty": [e["event_action"] for e in chat.accepted["pagerduty"]],
        "webhook": [b["status"] for b in chat.accepted["webhook"]],
    }


async def test_a_flapping_series_is_three_incidents_for_every_receiver(
        tmp_path: Path, prom: FakePrometheus, chat: FakeChat) -> None:
    write(tmp_path / "rules" / "r.yml", rules(chat))
    env = env_for(tmp_path, prom)
    procs: list[Proc] = []
    expected = {"slack": [], "pagerduty": [], "webhook": []}  # type: dict[str, list[str]]
    started = time.monotonic()
    try:
        proc = Proc(tmp_path, env, "first")
        procs.append(proc)
        await proc.up()
        for n in range(3):
            prom.set("flap > 1", 5.0, instance="a")
            expected["slack"].append("FIRING")
            expected["pagerduty"].append("trigger")
            expected["webhook"].append("firing")
            await until(_async(lambda: told(chat) == expected), 30, f"firing #{n + 1}")
            if n == 1:  # a restart re-arms every group timer; the receivers knew the group
                proc.kill()
                proc = Proc(tmp_path, env, "second")
                procs.append(proc)
                await proc.up()
            prom.set("flap > 1", None)
            expected["slack"].append("RESOLVED")
            expected["pagerduty"].append("resolve")
            expected["webhook"].append("resolved")
            await until(_async(lambda: told(chat) == expected), 30, f"resolve #{n + 1}")
        assert time.monotonic() - started < 300  # all within one group_interval
        assert len({e["dedup_key"] for e in chat.accepted["pagerduty"]}) == 3
        assert chat.pages == 3 and set(chat.incidents.values()) == {"resolved"}
        assert chat.rejected == []

        # The incident history agrees with the daemon's own alert events.
        _, body = await get_json(f"{proc.url}/api/v1/incidents?rule=Flap")
        incidents = body["data"]
        events = [e for p in procs for e in p.alert_events()]
        fired = [e["incident"] for e in events if e["kind"] == "firing"]
        assert sorted(i["id"] for i in incidents) == sorted(fired) and len(fired) == 3
        assert [i["activeAt"] for i in incidents] == sorted(
            (i["activeAt"] for i in incidents), reverse=True)  # newest first
        for i in incidents:
            assert i["state"] == "resolved" and i["severity"] == "critical"
            assert i["notifications"] == 6  # firing and resolved, to each of three receivers
            assert i["durationSeconds"] >= 0
        assert {e["dedup_key"] for e in chat.accepted["pagerduty"]} == set(fired)
        # The histogram counts what the second process saw resolve (metrics start at zero
        # with each process), with the same durations as the records.
        _, text = await get_json(f"{proc.url}/metrics")
        count = _sample(text, "watchdog_incident_duration_seconds_count")
        total = _sample(text, "watchdog_incident_duration_seconds_sum")
        mine = [i for i in incidents if i["id"] in
                {e["incident"] for e in procs[1].alert_events("resolved")}]
        assert count == len(mine) == 2
        assert abs(total - sum(i["durationSeconds"] for i in mine)) < 1e-6
    finally:
        for p in procs:
            p.stop()


def _async(pred: Any) -> Any:
    async def check() -> Any:
        return pred()
    return check


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and 'rule="Flap"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not on /metrics")
