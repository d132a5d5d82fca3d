"""Each integration's wire format, checked by the fake servers' validators (and by a real SMTP
server for email): Slack's limits on huge groups, PagerDuty's fields and severity mapping, the
Alertmanager webhook v4 document, Alertmanager's alert API with Prometheus-style re-sends, email
with plain and HTML parts, and the MQTT receiver."""

from __future__ import annotations

import json
from email import message_from_bytes
from pathlib import Path
from typing import Any

import aiohttp
import aiosqlite
import pytest
from fakes_chat import (
    FakeChat,
    FakeTime,
    Harness,
    free_port,
    make_alert,
    validate_pagerduty,
    validate_slack,
    validate_webhook_v4,
)

from watchdog.model import EmailConfig
from watchdog.notify.message import ActionNote, Notification, alert_doc
from watchdog.notify.receivers import email as email_receiver
from watchdog.notify.receivers import pagerduty, slack, webhook
from watchdog.notify.secrets import Redactor, SecretError, expand_env, resolve

T0 = 1_800_000_000.0


def notification(n_alerts: int = 1, kind: str = "firing", **kw: Any) -> Notification:
    docs = []
    for i in range(n_alerts):
        a = make_alert("HighErrorRate", at=T0, service="checkout", instance=f"web-{i}",
                       annotations=kw.pop("annotations", None) if i == 0 else None)
        docs.append(alert_doc(a, generator="http://prom.example/graph?g0.expr=x"))
    return Notification(kind=kind, receiver="r", group_key="g", created_at=T0 + 60,
                        alerts=tuple(docs), external_url="http://watchdog.example", **kw)


def test_slack_message_reads_in_two_seconds() -> None:
    n = notification(annotations={
        "summary": "Checkout error rate 17%", "description": "5xx over 5m",
        "runbook_url": "https://runbooks.example/err", "dashboard_url": "https://grafana/x"})
    doc = n.alerts[0].model_copy(update={"actions": (
        ActionNote(action="rollback-checkout", kind="succeeded", at=T0 + 30,
                   detail="flag off"),)})
    n = n.model_copy(update={"alerts": (doc,)})
    body = slack.render(n)
    assert validate_slack(body) == []
    text = json.dumps(body, ensure_ascii=False)
    assert body["text"] == "🔴 FIRING · HighErrorRate — Checkout error rate 17%"
    assert body["attachments"][0]["color"] == "#D00000"
    for needle in ("*Value*\\n0.17 (threshold &gt; 0.1)", "*Severity*\\ncritical",
                   "*service*\\ncheckout", "Runbook", "Dashboard", "Graph",
                   "What the watchdog did", "rollback-checkout succeeded: flag off",
                   "Firing since", "(1m)"):
        assert needle in text, needle


def test_slack_resolved_says_how_long_it_lasted() -> None:
    a = make_alert(at=T0, service="checkout")
    from dataclasses import replace
    done = replace(a, state="inactive", resolved_at=T0 + 23 * 60 + 5, value=None)
    n = Notification(kind="resolved", receiver="r", group_key="g", created_at=T0 + 1400,
                     alerts=(alert_doc(done),))
    body = slack.render(n)
    assert validate_slack(body) == []
    assert body["text"].startswith("✅ RESOLVED · HighErrorRate")
    assert "*Lasted*\\n23m5s" in json.dumps(body, ensure_ascii=False)


def test_slack_stays_inside_its_limits_for_huge_groups() -> None:
    huge = {"summary": "x" * 5000, "description": "<b>&" * 3000,
            "runbook_url": "https://r.example/" + "a" * 4000}
    for count in (1, 3, 4, 400):
        n = notification(count, annotations=dict(huge))
        body = slack.render(n)
        assert validate_slack(body) == [], count
        blocks = body["attachments"][0]["blocks"]
        assert len(blocks) <= 50
    assert "…and 380 more alerts" in json.dumps(slack.render(notification(400)),
                                              ensure_ascii=False)


def test_slack_escapes_control_characters() -> None:
    n = notification(annotations={"summary": "<!channel> & <http://evil|click>"})
    text = json.dumps(slack.render(n))
    assert "<!channel>" not in text and "&lt;!channel&gt; &amp;" in text


def test_pagerduty_events_follow_events_api_v2() -> None:
    key = "R0UT1NGKEY0123456789abcdefABCDEF"
    n = notification(2, annotations={"summary": "s" * 2000, "runbook_url": "https://rb/x"})
    events = pagerduty.render(n, key)
    assert [validate_pagerduty(e) for e in events] == [[], []]
    [e] = [x for x in events if x["dedup_key"] == n.alerts[0].fingerprint]
    assert e["event_action"] == "trigger" and e["routing_key"] == key
    p = e["payload"]
    assert p["severity"] == "critical" and len(p["summary"]) == 1024
    assert p["component"] == "checkout" and p["class"] == "HighErrorRate"
    assert p["custom_details"]["value"] == "0.17 (threshold > 0.1)"
    assert {"href": "https://rb/x", "text": "Runbook"} in e["links"]
    # stable across renders and processes: a hash of the labels
    assert [x["dedup_key"] for x in pagerduty.render(n, key)] == [
        x["dedup_key"] for x in events]
    assert e["dedup_key"] == n.alerts[0].fingerprint


@pytest.mark.parametrize(("severity", "expected"), [
    ("critical", "critical"), ("page", "critical"), ("error", "error"), ("high", "error"),
    ("warning", "warning"), ("info", "info"), ("none", "info"), ("weird", "error"),
    (None, "error")])
def test_pagerduty_severity_mapping(severity: str | None, expected: str) -> None:
    a = alert_doc(make_alert(at=T0, severity=severity))
    assert pagerduty.pd_severity(a) == expected


def test_webhook_is_alertmanager_v4() -> None:
    n = notification(2, group_labels={"alertname": "HighErrorRate"})
    body = webhook.render(n)
    assert validate_webhook_v4(body) == []
    assert body["commonLabels"] == {"alertname": "HighErrorRate", "severity": "critical",
                                    "service": "checkout"}
    assert body["alerts"][0]["endsAt"] == "0001-01-01T00:00:00Z"
    assert body["alerts"][0]["startsAt"] == "2027-01-15T07:55:00.000Z"


def test_secrets_expand_and_redact(tmp_path: Path) -> None:
    f = tmp_path / "k"
    f.write_text("from-file\n")
    env = {"A": "one", "B_FILE": str(f)}
    assert expand_env("x${A}y${B}", env) == "xoneyfrom-file"
    with pytest.raises(SecretError, match=r"MISSING\} is not set") as e:
        expand_env("${MISSING}", env)
    assert "one" not in str(e.value)
    assert resolve(None, str(f), "k", env) == "from-file"
    r = Redactor(["s3cr3t/value"])
    assert r("got s3cr3t/value and s3cr3t%2Fvalue") == "got <secret> and <secret>"


# ---- through the outbox ---------------------------------------------------------------------

async def run_harness(tmp_path: Path, chat: FakeChat, rules: str,
                      ) -> tuple[Harness, aiosqlite.Connection, aiohttp.ClientSession]:
    clock = FakeTime(T0)
    chat.clock = clock
    db = await aiosqlite.connect(tmp_path / "w.db")
    s = aiohttp.ClientSession()
    return await Harness(db, s, clock, chat, rules).start(), db, s


async def test_webhook_receiver_posts_v4_with_secret_headers(tmp_path: Path, chat: FakeChat,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.setenv("AUDIT_TOKEN", "tok-123456")
    seen: list[str] = []
    orig = chat._webhook

    async def spy(request: Any) -> Any:
        seen.append(request.headers.get("Authorization", ""))
        return await orig(request)

    chat._webhook = spy  # type: ignore[method-assign]
    from aiohttp import web
    assert chat._runner is not None
    app: web.Application = chat._runner.app
    for r in app.router.routes():
        if r.resource is not None and r.resource.canonical == "/hook/{name}":
            r._handler = spy  # type: ignore[attr-defined]
    rules = """
receivers:
  - name: audit
    webhook: {url: "CHAT/hook/audit", headers: {Authorization: "Bearer ${AUDIT_TOKEN}"}}
routes:
  - {receivers: [audit], group_by: [alertname], group_wait: 0s, send_resolved: true}
"""
    h, db, s = await run_harness(tmp_path, chat, rules)
    try:
        a = make_alert(at=h.clock(), service="checkout")
        await h.fire(a)
        await h.tick(0)
        await h.resolve(a)
        await h.tick(300)
    finally:
        await h.stop()
        await s.close()
        await db.close()
    assert chat.rejected == []
    firing, resolved = chat.accepted["webhook"]
    assert firing["status"] == "firing" and resolved["status"] == "resolved"
    assert resolved["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
    assert firing["groupLabels"] == {"alertname": "HighErrorRate"}
    assert firing["receiver"] == "audit"
    assert seen == ["Bearer tok-123456"] * 2


async def test_alertmanager_receiver_resends_like_prometheus(tmp_path: Path, chat: FakeChat
                                                             ) -> None:
    rules = """
receivers:
  - name: am
    alertmanager: {url: "CHAT"}
routes:
  - {receivers: [am]}
"""
    h, db, s = await run_harness(tmp_path, chat, rules)
    try:
        a = make_alert(at=h.clock(), service="checkout")
        await h.fire(a)
        await h.drain()
        await h.tick(30)  # within resend_delay: nothing new
        await h.tick(31)  # resend_delay (60s) passed: re-sent
        await h.resolve(a)
        await h.tick(0)
        await h.tick(61)  # resolved alerts keep being sent for a while
    finally:
        await h.stop()
        await s.close()
        await db.close()
    posts = chat.accepted["alertmanager"]
    assert len(posts) == 4
    from datetime import datetime
    first = posts[0][0]
    ends = datetime.fromisoformat(first["endsAt"].replace("Z", "+00:00")).timestamp()
    # endsAt = now + 4 × max(evaluation_interval 30s, resend_delay 60s)
    assert ends == pytest.approx(T0 + 240, abs=2)
    assert first["labels"]["alertname"] == "HighErrorRate"
    resolved = posts[2][0]
    assert datetime.fromisoformat(resolved["endsAt"].replace("Z", "+00:00")).timestamp() \
        == pytest.approx(T0 + 61, abs=2)


async def test_mqtt_receiver_publishes_through_the_bus(tmp_path: Path, chat: FakeChat) -> None:
    published: list[tuple[str, Any, int, bool]] = []

    class Bus:
        async def publish(self, topic: str, payload: Any, qos: int = 0,
                          retain: bool = False) -> None:
            published.append((topic, payload, qos, retain))

    rules = """
receivers:
  - name: bus
    mqtt: {topic: "watchdog/alerts", qos: 1, retain: true}
routes:
  - {receivers: [bus], group_wait: 0s}
"""
    h, db, s = await run_harness(tmp_path, chat, rules)
    h.ctx.mqtt = Bus()
    try:
        await h.fire(make_alert(at=h.clock()))
        await h.drain()
    finally:
        await h.stop()
        await s.close()
        await db.close()
    [(topic, payload, qos, retain)] = published
    assert (topic, qos, retain) == ("watchdog/alerts", 1, True)
    assert validate_webhook_v4(json.loads(payload)) == []


# ---- email, against a real SMTP server (aiosmtpd) -------------------------------------------

def test_email_has_plain_and_html_parts() -> None:
    cfg = EmailConfig.model_validate({"to": ["oncall@example.com"],
                                      "from": "watchdog@example.com", "smarthost": "x:25"})
    msg = email_receiver.render(notification(annotations={"summary": "Errors <high>"}), cfg)
    assert msg["Subject"] == "🔴 FIRING · HighErrorRate"
    plain = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert plain is not None and html is not None
    assert "value: 0.17 (threshold > 0.1)" in plain.get_content()
    assert "Errors &lt;high&gt;" in html.get_content()


async def test_email_receiver_sends_over_smtp_with_auth(tmp_path: Path, chat: FakeChat) -> None:
    aiosmtpd = pytest.importorskip("aiosmtpd.controller")
    from aiosmtpd.smtp import AuthResult

    received: list[bytes] = []
    logins: list[tuple[bytes, bytes]] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope.content)
            return "250 OK"

    def auth(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"hunter2-password")

    port = free_port()
    ctl = aiosmtpd.Controller(Handler(), hostname="127.0.0.1", port=port,
                              authenticator=auth, auth_require_tls=False)
    ctl.start()
    (tmp_path / "pw").write_text("hunter2-password\n")
    rules = f"""
receivers:
  - name: mail
    email:
      to: [oncall@example.com]
      from: watchdog@example.com
      smarthost: "127.0.0.1:{port}"
      auth_username: watchdog
      auth_password_file: {tmp_path / "pw"}
      require_tls: false
routes:
  - {{receivers: [mail], group_wait: 0s}}
"""
    try:
        h, db, s = await run_harness(tmp_path, chat, rules)
        try:
            await h.fire(make_alert(at=h.clock(), service="checkout"))
            await h.drain()
            [row] = await h.handler.outbox.recent()
        finally:
            await h.stop()
            await s.close()
            await db.close()
    finally:
        ctl.stop()
    assert row["status"] == "delivered", row
    assert logins == [(b"watchdog", b"hunter2-password")]
    [raw] = received
    msg = message_from_bytes(raw)
    assert msg["To"] == "oncall@example.com"
    types = [p.get_content_type() for p in msg.walk()]
    assert "text/plain" in types and "text/html" in types
