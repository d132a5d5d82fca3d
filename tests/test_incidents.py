"""Incident history inside the real daemon (plugin `watchdog.incidents`): records follow the
alerts' own timestamps, `GET /api/v1/incidents` answers CONTRACT §8's shape with its filters, the
MTTR and time-to-act histograms agree with the records, pending-only incidents are closed,
records survive a restart (a restored pending alert keeps its record), and pruning keeps the table
bounded. Time is a FixedClock moved by the test; evaluations are called, never waited for."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fakes_chat import FakeChat
from test_daemon_support import get_json, recording_paths, serve, settings, wait_for, write

from watchdog.daemon import Daemon, rfc3339
from watchdog.incidents.handler import IncidentsHandler
from watchdog.testing import FakeSource, FixedClock, sample

T0 = 1_800_000_000.0
KEY = "R0UT1NGKEY0123456789abcdefABCDEF"


def rules(chat_url: str | None = None, hook_url: str = "http://127.0.0.1:9") -> str:
    text = f"""
groups:
  - name: checkout
    interval: 1m
    rules:
      - alert: CheckoutErrors
        expr: errors
        for: 2m
        severities: {{warning: "> 0.1", critical: "> 0.5"}}
        actions: [flag-off]
      - alert: Latency
        expr: latency
        for: 5m
        threshold: "> 1"
        labels: {{severity: warning}}
actions:
  flag-off:
    steps:
      - webhook: {{url: "{hook_url}/flags/checkout-v2", method: PATCH, json: {{enabled: false}}}}
"""
    if chat_url is None:
        return text
    return text + f"""
receivers:
  - name: chat
    slack: {{webhook_url: "{chat_url}/slack/T0/B0/x"}}
  - name: pd
    pagerduty: {{routing_key: "{KEY}", url: "{chat_url}/v2/enqueue"}}
routes:
  - {{receivers: [chat], group_wait: 0s, group_interval: 1m}}
  - {{match: {{severity: critical}}, receivers: [pd], group_wait: 0s}}
"""


def handler(d: Daemon) -> IncidentsHandler:
    [h] = [x for x in d.handlers if isinstance(x, IncidentsHandler)]
    return h


async def incidents(d: Daemon, query: str = "") -> list[dict[str, Any]]:
    status, doc = await get_json(f"{d.http_url}/api/v1/incidents{query}")
    assert status == 200, doc
    assert doc["status"] == "success"
    data: list[dict[str, Any]] = doc["data"]
    return data


def histogram(d: Daemon, name: str, **labels: str) -> tuple[float, float]:
    reg = d.metrics.registry
    count = reg.get_sample_value(f"{name}_count", labels) or 0.0
    total = reg.get_sample_value(f"{name}_sum", labels) or 0.0
    return count, total


async def test_an_incident_from_pending_to_resolved(tmp_path: Path, chat: FakeChat) -> None:
    calls: list[str] = []
    async with serve(recording_paths(calls)) as hook:
        s = settings(tmp_path)
        write(s.rules_dir / "r.yml", rules(chat.url, hook))
        clock = FixedClock(T0)
        src = FakeSource({"errors": [sample(0.2, service="checkout")]})
        async with Daemon(s, clock=clock, source=src, schedule=False) as d:
            assert d.plugins["watchdog.incidents"] == "loaded"
            await d.evaluate_all()
            [inc] = await incidents(d)
            [pending] = d.alerts()
            assert inc == {
                "id": pending.incident_id, "rule": "CheckoutErrors", "group": "checkout",
                "labels": {"alertname": "CheckoutErrors", "service": "checkout",
                           "severity": "warning"},
                "severity": "warning", "state": "open", "activeAt": rfc3339(T0),
                "firedAt": None, "resolvedAt": None, "durationSeconds": None, "ack": None,
                "actions": [], "notifications": 0}

            clock.advance(120)
            src.answers["errors"] = [sample(0.7, service="checkout")]  # fires at critical
            await d.evaluate_all()
            await wait_for(lambda: calls == ["/flags/checkout-v2"], what="the action")
            [alert] = d.alerts()
            assert alert.incident_id == inc["id"]  # the tier moved; the incident did not
            clock.advance(60)
            src.answers["errors"] = [sample(0.3, service="checkout")]  # back to warning
            await d.evaluate_all()
            status, _ = await get_json(f"{d.http_url}/api/v1/incidents?state=closed")
            assert status == 400
            [inc] = await incidents(d, "?state=open")
            assert inc["firedAt"] == rfc3339(T0 + 120) and inc["state"] == "open"
            # the same times as the alert's own, on /api/v1/alerts
            status, alerts = await get_json(f"{d.http_url}/api/v1/alerts")
            [live] = alerts["data"]["alerts"]
            assert (live["activeAt"], live["firedAt"]) == (inc["activeAt"], inc["firedAt"])
            assert inc["severity"] == "critical"  # the highest reached
            assert inc["labels"]["severity"] == "critical"
            assert inc["durationSeconds"] == 60.0  # so far
            [run] = inc["actions"]
            assert run["name"] == "flag-off" and run["status"] in ("running", "succeeded")
            assert inc["notifications"] >= 2  # chat and PagerDuty were told it fires
            # time-to-act: the run started with the firing evaluation
            assert histogram(d, "watchdog_incident_time_to_act_seconds",
                             rule="CheckoutErrors", severity="critical") == (1.0, 0.0)
            assert d.metrics.registry.get_sample_value(
                "watchdog_incidents_total", {"rule": "CheckoutErrors",
                                             "severity": "critical"}) == 1.0

            status, ack = await get_json(f"{d.http_url}/api/v1/incidents?rule=Nope")
            assert status == 200 and ack["data"] == []
            from test_daemon_support import post_json

            status, _ = await post_json(f"{d.http_url}/api/v1/acks",
                                        {"matchers": {"service": "checkout"},
                                         "createdBy": "alice"})
            assert status == 200
            clock.advance(240)
            src.answers["errors"] = []
            await d.evaluate_all()
            [done] = await incidents(d, "?state=resolved")
            assert await incidents(d, "?state=open") == []
            assert done["resolvedAt"] == rfc3339(T0 + 420)
            assert done["durationSeconds"] == 300.0
            assert done["ack"] == {"by": "alice", "at": rfc3339(T0 + 180)}
            assert histogram(d, "watchdog_incident_duration_seconds", rule="CheckoutErrors",
                             severity="critical") == (1.0, 300.0)
            status, text = await get_json(f"{d.http_url}/metrics")
            assert ('watchdog_incident_duration_seconds_bucket{le="300.0",'
                    'rule="CheckoutErrors",severity="critical"} 1.0') in text
            # since: incidents open at any moment since T
            assert len(await incidents(d, f"?since={T0 + 420}")) == 1
            assert await incidents(d, f"?since={rfc3339(T0 + 421)}") == []
            for bad in ("?since=yesterday", "?limit=0", "?limit=x", "?since=nan"):
                status, doc = await get_json(f"{d.http_url}/api/v1/incidents{bad}")
                assert status == 400 and doc["errorType"] == "bad_data", (bad, doc)


async def test_a_pending_alert_that_goes_away_closes_its_incident(tmp_path: Path) -> None:
    s = settings(tmp_path)
    write(s.rules_dir / "r.yml", rules())
    clock = FixedClock(T0)
    src = FakeSource({"latency": [sample(2.0, service="api")]})
    async with Daemon(s, clock=clock, source=src, schedule=False) as d:
        await d.evaluate_all()
        clock.advance(60)
        src.answers["latency"] = []  # dropped while pending: no event at all
        await d.evaluate_all()
        h = handler(d)
        clock.advance(5)
        assert await h.reconcile(clock()) == 1
        [inc] = await incidents(d)
        assert inc["state"] == "resolved" and inc["firedAt"] is None
        assert inc["resolvedAt"] == rfc3339(T0 + 65) and inc["durationSeconds"] is None
        assert histogram(d, "watchdog_incident_duration_seconds", rule="Latency",
                         severity="warning") == (0.0, 0.0)
        assert await h.reconcile(clock()) == 0


async def test_incidents_survive_a_restart_and_a_restored_pending_alert_keeps_its_record(
        tmp_path: Path) -> None:
    s = settings(tmp_path, for_grace_period=0.0)
    write(s.rules_dir / "r.yml", rules())
    clock = FixedClock(T0)
    src = FakeSource({"latency": [sample(2.0, service="api")]})
    async with Daemon(s, clock=clock, source=src, schedule=False) as d:
        await d.evaluate_all()
        clock.advance(120)
        await d.evaluate_all()
        [before] = await incidents(d)
    clock.advance(600)  # ten minutes down: the downtime does not count as pending time
    async with Daemon(s, clock=clock, source=src, schedule=False) as d:
        [alert] = d.alerts()
        assert alert.state == "pending" and alert.active_at == T0 + 600
        [after] = await incidents(d)
        assert after["id"] == alert.incident_id != before["id"]
        assert after["activeAt"] == rfc3339(alert.active_at) and after["state"] == "open"
        clock.advance(60)
        await d.evaluate_all()  # 3 of 5 minutes pending counted; not yet
        clock.advance(120)
        await d.evaluate_all()
        [fired] = await incidents(d)
        assert fired["id"] == after["id"] and fired["firedAt"] == rfc3339(clock())


async def test_pruning_keeps_the_table_bounded(tmp_path: Path) -> None:
    s = settings(tmp_path, incident_retention="60h")
    assert s.incident_retention == 60 * 3600.0
    write(s.rules_dir / "r.yml", rules())
    clock = FixedClock(T0)
    src = FakeSource({"latency": []})
    async with Daemon(s, clock=clock, source=src, schedule=False) as d:
        h = handler(d)
        counts = []
        for day in range(5):  # one incident a day (five minutes pending, then firing)
            for value in ([sample(2.0, service="api", day=str(day))],) * 7 + ([],):
                src.answers["latency"] = value
                await d.evaluate_all()
                clock.advance(60)
            clock.advance(86400 - 8 * 60)
            await h.prune(clock())
            counts.append(len(await incidents(d)))
        assert counts == [1, 2, 2, 2, 2]
        kept = await incidents(d)
        assert all(math.isclose(i["durationSeconds"], 120.0) for i in kept)


async def test_the_incidents_command_reads_a_running_daemon(tmp_path: Path) -> None:
    import asyncio
    import io
    import json

    from watchdog.cli import build_parser
    from watchdog.incidents.client import main as incidents_main

    s = settings(tmp_path, api_read_token="read-123")
    token = tmp_path / "token"
    token.write_text("read-123\n")
    write(s.rules_dir / "r.yml", rules())
    clock = FixedClock(T0)
    src = FakeSource({"latency": [sample(2.0, service="api", instance="web-1")],
                      "errors": [sample(0.7, service="checkout")]})
    async with Daemon(s, clock=clock, source=src, schedule=False) as d:
        for _ in range(7):
            await d.evaluate_all()
            clock.advance(60)
        src.answers["latency"] = []
        await d.evaluate_all()

        async def run(*argv: str, auth: bool = True) -> tuple[int, str, str]:
            args = build_parser().parse_args(["incidents", "--url", str(d.http_url), *argv,
                                              *(["--token-file", str(token)] if auth else [])])
            out, err = io.StringIO(), io.StringIO()
            code = await asyncio.to_thread(incidents_main, args, out, err)
            return code, out.getvalue(), err.getvalue()

        code, out, _ = await run()
        assert code == 0
        header, first, second = out.splitlines()
        assert header.split() == ["STARTED", "(UTC)", "STATE", "SEVERITY", "RULE", "FIRING",
                                  "FOR", "ACK", "ACTIONS", "NOTIFIED", "LABELS"]
        # Both started at T0; ties are by id. The Latency one fired at 5m and resolved at 7m.
        by_rule = {line.split()[4]: line for line in (first, second)}
        assert by_rule["Latency"].split()[2:7] == ["resolved", "warning", "Latency", "2m",
                                                   "-"]
        assert by_rule["Latency"].endswith("instance=web-1,service=api")
        assert by_rule["CheckoutErrors"].split()[2:4] == ["open", "critical"]
        assert "flag-off:" in by_rule["CheckoutErrors"]

        code, out, _ = await run("--json", "--state", "resolved", "--since", str(T0))
        assert code == 0
        [doc] = json.loads(out)
        assert doc["rule"] == "Latency" and doc["durationSeconds"] == 120.0
        code, out, _ = await run("--rule", "Nope")
        assert (code, out) == (0, "no incidents\n")
        code, _, err = await run(auth=False)  # API_READ_TOKEN is set
        assert code == 1 and "HTTP 401" in err and "read-123" not in err
    args = build_parser().parse_args(["incidents", "--url", "http://127.0.0.1:9"])
    err = io.StringIO()
    assert incidents_main(args, io.StringIO(), err) == 1
    assert "cannot reach http://127.0.0.1:9" in err.getvalue()
