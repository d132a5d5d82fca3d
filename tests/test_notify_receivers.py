"""Each integration's wire format, checked by the fake servers' validators (and by a real SMTP
server for email): Slack's limits on huge groups, PagerDuty's fields and severity mapping, the
Alertmanager webhook v4 document, Alertmanager's alert API with Prometheus-style re-sends, email
with plain and HTML parts, and the MQTT receiver."""

from __future__ import annotations

import json
from dataclasses import replace
from email import message_from_bytes
from pathlib import Path
from typing import Any

import aiohttp
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
from watchdog.storage import Storage, open_storage

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
    [e] = [x for x in events if x["dedup_key"] == n.alerts[0].incident_id]
    assert e["event_action"] == "trigger" and e["routing_key"] == key
    p = e["payload"]
    assert p["severity"] == "critical" and len(p["summary"]) == 1024
    assert p["component"] == "checkout" and p["class"] == "HighErrorRate"
    assert p["custom_details"]["value"] == "0.17 (threshold > 0.1)"
    assert {"href": "https://rb/x", "text": "Runbook"} in e["links"]
    # stable across renders and processes: the series' hash and the incident's start
    assert [x["dedup_key"] for x in pagerduty.render(n, key)] == [
        x["dedup_key"] for x in events]
    assert e["dedup_key"] == f"{n.alerts[0].fingerprint}@{n.alerts[0].starts_at:.3f}"


def test_pagerduty_dedup_key_is_per_incident_and_a_v010_page_is_resolved_too() -> None:
    key = "R0UT1NGKEY0123456789abcdefABCDEF"
    first = make_alert(at=T0)
    again = replace(first, active_at=T0 + 600, fired_at=T0 + 900)  # same series, next incident
    [t1], [t2] = (pagerduty.render(Notification(kind="firing", receiver="pd", group_key="g",
                                                created_at=T0, alerts=(alert_doc(a),)), key)
                  for a in (first, again))
    assert t1["dedup_key"] != t2["dedup_key"]  # a late resolve of one cannot merge the other
    done = replace(first, state="inactive", resolved_at=T0 + 60, value=None)
    n = Notification(kind="resolved", receiver="pd", group_key="g", created_at=T0 + 60,
                     alerts=(alert_doc(done, series_dedup=True),))
    assert [(e["event_action"], e["dedup_key"]) for e in pagerduty.render(n, key)] == [
        ("resolve", first.incident_id), ("resolve", first.fingerprint)]


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
                      ) -> tuple[Harness, Storage, aiohttp.ClientSession]:
    clock = FakeTime(T0)
    chat.clock = clock
    db = await open_storage(f"sqlite:///{tmp_path / 'w.db'}")
    s = aiohttp.ClientSession()
    return await Harness(db, s, clock, chat, rules).start(), db, s


async def fire_then_resolve(tmp_path: Path, chat: FakeChat, rules: str) -> None:
    """One alert fires, is sent at once, resolves, and its all-clear is sent."""
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
    await fire_then_resolve(tmp_path, chat, rules)
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


# ---- email over STARTTLS, against aiosmtpd with a throwaway CA ------------------------------

SMTP_PASSWORD = "hunter2-starttls-password"


@pytest.fixture(scope="module")
def smtp_pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it, made with the openssl CLI."""
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the STARTTLS tests need the openssl command to make a throwaway CA")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True, timeout=60)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=metrics-watchdog test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


class SmtpServer:
    """aiosmtpd on 127.0.0.1 with AUTH: with `pki`, STARTTLS is offered and required before
    AUTH and MAIL (as a real submission server does); without, it offers neither STARTTLS nor
    a reason to withhold AUTH, so a client that logs in anyway would hand over the password."""

    def __init__(self, pki: dict[str, Path] | None) -> None:
        import ssl

        from aiosmtpd.controller import Controller

        self.received: list[bytes] = []
        self.over_tls: list[bool] = []
        self.logins: list[tuple[bytes, bytes]] = []
        self.port = free_port()
        kw: dict[str, Any] = {"auth_require_tls": False}
        if pki is not None:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(pki["cert"], pki["key"])
            kw = {"require_starttls": True, "tls_context": tls, "auth_require_tls": True}
        self.ctl = Controller(self, hostname="127.0.0.1", port=self.port,
                              authenticator=self._auth, **kw)

    def _auth(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        from aiosmtpd.smtp import AuthResult

        self.logins.append((data.login, data.password))
        return AuthResult(success=data.password == SMTP_PASSWORD.encode())

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(envelope.content)
        self.over_tls.append(session.ssl is not None)
        return "250 OK"

    def __enter__(self) -> SmtpServer:
        self.ctl.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ctl.stop()


async def deliver_email(tmp_path: Path, chat: FakeChat, smarthost: str, **fields: Any
                        ) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """One firing alert through the outbox to an email receiver (auth from a password file):
    its outbox row, every log event, and the permanent-error count."""
    import structlog

    (tmp_path / "pw").write_text(SMTP_PASSWORD + "\n")
    email = {"to": ["oncall@example.com"], "from": "watchdog@example.com",
             "smarthost": smarthost, "auth_username": "watchdog",
             "auth_password_file": str(tmp_path / "pw"), **fields}
    rules = json.dumps({"receivers": [{"name": "mail", "email": email}],
                        "routes": [{"receivers": ["mail"], "group_wait": "0s"}]})
    with structlog.testing.capture_logs() as logs:
        h, db, s = await run_harness(tmp_path, chat, rules)
        try:
            await h.fire(make_alert(at=h.clock(), service="checkout"))
            await h.drain()
            [row] = await h.handler.outbox.recent()
            permanent = h.metric("watchdog_notification_attempt_errors_total", receiver="mail",
                                 integration="email", retryable="false")
        finally:
            await h.stop()
            await s.close()
            await db.close()
    assert SMTP_PASSWORD not in json.dumps(row, default=str)
    assert SMTP_PASSWORD not in repr(logs)
    return row, logs, permanent


async def test_email_starttls_verifies_the_server_with_ca_file(
        tmp_path: Path, chat: FakeChat, smtp_pki: dict[str, Path]) -> None:
    with SmtpServer(smtp_pki) as srv:
        row, _, _ = await deliver_email(tmp_path, chat, f"127.0.0.1:{srv.port}",
                                        ca_file=str(smtp_pki["ca"]))
    assert row["status"] == "delivered", row
    assert srv.logins == [(b"watchdog", SMTP_PASSWORD.encode())]
    assert srv.over_tls == [True]
    assert message_from_bytes(srv.received[0])["To"] == "oncall@example.com"


async def test_email_starttls_insecure_skip_verify(
        tmp_path: Path, chat: FakeChat, smtp_pki: dict[str, Path]) -> None:
    with SmtpServer(smtp_pki) as srv:
        row, _, _ = await deliver_email(tmp_path, chat, f"127.0.0.1:{srv.port}",
                                        insecure_skip_verify=True)
    assert row["status"] == "delivered", row
    assert srv.over_tls == [True] and len(srv.logins) == 1


@pytest.mark.parametrize(("host", "with_ca", "reason"), [
    ("127.0.0.1", False, "certificate"),  # the system's CAs do not know the throwaway CA
    ("localhost", True, "mismatch"),      # the right CA, but the certificate is for 127.0.0.1
])
async def test_email_untrusted_certificate_is_permanent_and_sends_nothing(
        tmp_path: Path, chat: FakeChat, smtp_pki: dict[str, Path],
        host: str, with_ca: bool, reason: str) -> None:
    fields = {"ca_file": str(smtp_pki["ca"])} if with_ca else {}
    with SmtpServer(smtp_pki) as srv:
        row, logs, permanent = await deliver_email(tmp_path, chat, f"{host}:{srv.port}",
                                                   **fields)
    assert row["status"] == "failed" and row["attempts"] == 1, row
    assert permanent == 1
    error = row["last_error"]
    assert f"{host}:{srv.port}" in error and "TLS certificate not trusted" in error, error
    assert reason in error.lower(), error
    assert any(e["event"] == "notification failed permanently" for e in logs)
    assert srv.logins == [] and srv.received == []


async def test_email_require_tls_refuses_a_server_without_starttls(
        tmp_path: Path, chat: FakeChat) -> None:
    with SmtpServer(None) as srv:
        row, _, permanent = await deliver_email(tmp_path, chat, f"127.0.0.1:{srv.port}")
    assert row["status"] == "failed" and permanent == 1, row
    assert f"127.0.0.1:{srv.port} does not offer STARTTLS" in row["last_error"]
    assert srv.logins == [] and srv.received == []  # the password never went out in clear


@pytest.mark.parametrize("name", ["missing.pem", "not-a-ca.pem"])
async def test_email_unreadable_ca_file_is_permanent(tmp_path: Path, chat: FakeChat,
                                                     smtp_pki: dict[str, Path], name: str
                                                     ) -> None:
    (tmp_path / "not-a-ca.pem").write_text("not a certificate\n")
    with SmtpServer(smtp_pki) as srv:
        row, _, permanent = await deliver_email(tmp_path, chat, f"127.0.0.1:{srv.port}",
                                                ca_file=str(tmp_path / name))
    assert row["status"] == "failed" and permanent == 1, row
    assert f"cannot load ca_file {tmp_path / name}" in row["last_error"], row
    assert srv.logins == [] and srv.received == []


async def test_pagerduty_url_expands_env_like_every_receiver_field(
        tmp_path: Path, chat: FakeChat, monkeypatch: pytest.MonkeyPatch) -> None:
    """CONTRACT §3: `${VAR}` in receiver fields expands; the PagerDuty `url` (a self-hosted
    events proxy, say) used to be posted to literally, `${PD_BASE}` and all."""
    monkeypatch.setenv("PD_BASE", chat.url)
    monkeypatch.setenv("PD_KEY", "k" * 32)
    rules = """
receivers:
  - name: oncall
    pagerduty: {routing_key: "${PD_KEY}", url: "${PD_BASE}/v2/enqueue"}
routes:
  - {receivers: [oncall], group_by: [alertname], group_wait: 0s, send_resolved: true}
"""
    await fire_then_resolve(tmp_path, chat, rules)
    assert chat.rejected == []
    events = [e["event_action"] for e in chat.accepted["pagerduty"]]
    assert events == ["trigger", "resolve"]
