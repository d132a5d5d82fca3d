"""Notifications inside the real daemon: `create_handler` is loaded as a plugin, a tick that
fires a rule reaches fake Slack and PagerDuty, the daemon's HTTP server serves our endpoints
behind its API token, and an MQTT bus from `watchdog.mqtt` carries the event stream."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from fakes_chat import FakeChat, FakeTime
from test_daemon_support import TOKEN, settings, wait_for, write

from watchdog.daemon import Daemon
from watchdog.notify.handler import NotifyHandler
from watchdog.testing import FakeSource, sample

KEY = "R0UT1NGKEY0123456789abcdefABCDEF"


def rules(chat: FakeChat) -> str:
    return f"""
groups:
  - name: checkout
    interval: 1m
    rules:
      - alert: CheckoutErrors
        expr: errors
        threshold: "> 0.1"
        labels: {{severity: critical}}
        annotations:
          summary: "errors {{{{ $value | humanizePercentage }}}}"
          runbook_url: https://runbooks.example/errors
receivers:
  - name: chat
    slack: {{webhook_url: "{chat.url}/slack/T0/B0/x"}}
  - name: pd
    pagerduty: {{routing_key: "{KEY}", url: "{chat.url}/v2/enqueue"}}
routes:
  - {{receivers: [chat], group_wait: 0s, group_interval: 1m}}
  - {{match: {{severity: critical}}, receivers: [pd], group_wait: 0s}}
"""


async def test_daemon_notifies_through_the_plugin(tmp_path: Path, chat: FakeChat) -> None:
    s = settings(tmp_path, external_url="http://wd.example")
    write(s.rules_dir / "r.yml", rules(chat))
    clock = FakeTime(1_800_000_000.0)
    src = FakeSource({"errors": [sample(0.25, service="checkout")]})
    async with Daemon(s, clock=clock, source=src, schedule=False) as d:
        [h] = [x for x in d.handlers if isinstance(x, NotifyHandler)]
        await d.evaluate_all()
        assert await h.outbox.drain(5)
        [msg] = chat.accepted["slack"]
        assert msg["text"] == "🔴 FIRING · CheckoutErrors — errors 25%"
        [page] = chat.accepted["pagerduty"]
        assert page["payload"]["summary"] == "[CheckoutErrors] errors 25%"
        assert "g0.expr=errors" in page["links"][0]["href"]

        async with aiohttp.ClientSession() as http:
            url = d.http_url
            assert url is not None
            r = await http.post(f"{url}/api/v1/acks", json={"matchers": {"service": "checkout"}})
            assert r.status in (401, 403)  # the daemon's token check guards our routes
            r = await http.post(f"{url}/api/v1/acks", json={"matchers": {"service": "checkout"}},
                                headers={"Authorization": f"Bearer {TOKEN}"})
            assert r.status == 200 and (await r.json())["count"] == 1
            r = await http.get(f"{url}/api/v1/notifications")
            rows = (await r.json())["data"]
            assert {x["receiver"] for x in rows} == {"chat", "pd"}

        src.answers["errors"] = []
        clock.advance(60)
        await d.evaluate_all()
        await h.flush(clock() + 300)  # the default group_interval (5m), as Alertmanager
        assert await h.outbox.drain(5)
    assert [e["event_action"] for e in chat.accepted["pagerduty"]] == ["trigger", "resolve"]
    assert chat.accepted["slack"][-1]["text"].startswith("✅ RESOLVED · CheckoutErrors")
    assert chat.rejected == []


MOSQUITTO = Path("/usr/sbin/mosquitto")


@pytest.mark.skipif(not MOSQUITTO.exists(), reason="needs mosquitto")
async def test_daemon_streams_events_over_mqtt(tmp_path: Path, chat: FakeChat) -> None:
    from test_notify_mqtt import Broker, Subscriber

    broker = Broker(tmp_path)
    broker.start()
    try:
        s = settings(tmp_path, mqtt_url=broker.url, mqtt_commands=True)
        write(s.rules_dir / "r.yml", rules(chat))
        clock = FakeTime(1_800_000_000.0)
        src = FakeSource({"errors": [sample(0.25, service="checkout")]})
        async with Subscriber(broker.port) as sub:
            async with Daemon(s, clock=clock, source=src, schedule=False) as d:
                await wait_for(lambda: d.ctx.mqtt is not None and d.ctx.mqtt.connected,
                               what="mqtt connected")
                await d.evaluate_all()
                raws = await sub.wait("watchdog/events/CheckoutErrors", 2)
                assert [json.loads(r)["kind"] for r in raws] == ["pending", "firing"]
                await sub.client.publish("watchdog/commands/ack", json.dumps(
                    {"matchers": {"alertname": "CheckoutErrors"}}), qos=1)
                [reply] = await sub.wait("watchdog/responses/ack")
                assert json.loads(reply)["result"]["count"] == 1
            assert (await sub.wait("watchdog/status", 2))[-1] == b"offline"
    finally:
        broker.stop()
