"""Email over SMTP with aiosmtplib: STARTTLS (unless `require_tls: false`), optional auth with the
password read from a secret file at delivery, and a multipart message with plain-text and HTML
parts built from the same facts as the Slack message.

`render(n)` is pure. SMTP replies classify like HTTP: 4xx replies and connection errors are
retryable, 5xx replies (bad recipient, auth refused) are permanent. The password never appears
in an error or a log.
"""

from __future__ import annotations

import html
from email.message import EmailMessage

from watchdog.model import EmailConfig
from watchdog.notify import message as m
from watchdog.notify.message import Notification
from watchdog.notify.receivers import DeliveryError, SendContext
from watchdog.notify.receivers.slack import colour, headline
from watchdog.notify.secrets import Redactor, SecretError, expand_env, read_file


def _plain(n: Notification) -> str:
    lines = [headline(n), ""]
    if n.action is not None:
        lines.append(m.action_line(n.action))
        if n.action_labels:
            lines.append("for " + ", ".join(f"{k}={v}" for k, v in sorted(n.action_labels.items())))
        lines.append("")
    for a in n.alerts:
        lines.append(f"* {m.summary(a)}")
        if a.status == "firing":
            lines.append(f"  value: {m.value_line(a)}")
        elif a.duration is not None:
            lines.append(f"  lasted {m.human_duration(a.duration)}")
        if a.severity:
            lines.append(f"  severity: {a.severity}")
        lines.append("  labels: " + ", ".join(f"{k}={v}" for k, v in m.key_labels(a.labels, 20)))
        for text, url in m.links(a):
            lines.append(f"  {text}: {url}")
        for note in a.actions:
            lines.append(f"  watchdog: {m.action_line(note)}")
        lines.append("")
    if n.external_url:
        lines.append(f"-- metrics-watchdog {n.external_url}")
    return "\n".join(lines)


def _html(n: Notification) -> str:
    e = html.escape
    rows = []
    for a in n.alerts:
        links = " · ".join(f'<a href="{e(u)}">{e(t)}</a>' for t, u in m.links(a))
        notes = "".join(f"<li>{e(m.action_line(x))}</li>" for x in a.actions)
        state = (e(m.value_line(a)) if a.status == "firing"
                 else f"lasted {e(m.human_duration(a.duration or 0))}")
        labels = ", ".join(f"<code>{e(k)}={e(v)}</code>" for k, v in m.key_labels(a.labels, 20))
        rows.append(f"<h3>{e(m.summary(a))}</h3><p><b>{state}</b></p><p>{labels}</p>"
                    + (f"<p>{links}</p>" if links else "")
                    + (f"<p>What the watchdog did:</p><ul>{notes}</ul>" if notes else ""))
    action = ""
    if n.action is not None:
        action = f"<p><b>{e(m.action_line(n.action))}</b></p>"
    return (f'<html><body><div style="border-left:6px solid {colour(n)};padding-left:12px">'
            f"<h2>{e(headline(n))}</h2>{action}{''.join(rows)}</div></body></html>")


def render(n: Notification, cfg: EmailConfig) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = m.truncate(headline(n), 200)
    msg["From"] = cfg.from_
    msg["To"] = ", ".join(cfg.to)
    msg.set_content(_plain(n))
    msg.add_alternative(_html(n), subtype="html")
    return msg


def split_host(smarthost: str) -> tuple[str, int]:
    host, _, port = smarthost.rpartition(":")
    if not host:
        return smarthost, 25
    return host.strip("[]"), int(port)


class EmailNotifier:
    integration = "email"

    def __init__(self, cfg: EmailConfig) -> None:
        self.cfg = cfg

    async def send(self, n: Notification, ctx: SendContext) -> None:
        import aiosmtplib

        try:
            password = (read_file(self.cfg.auth_password_file)
                        if self.cfg.auth_password_file else None)
            host, port = split_host(expand_env(self.cfg.smarthost))
        except (SecretError, ValueError) as e:
            raise DeliveryError(f"email: {e}", retryable=False) from None
        ctx.redact = Redactor([password] if password else [])
        await ctx.pace()
        try:
            await aiosmtplib.send(
                render(n, self.cfg), hostname=host, port=port,
                username=self.cfg.auth_username, password=password,
                start_tls=self.cfg.require_tls, timeout=ctx.timeout)
        except aiosmtplib.SMTPResponseException as e:
            permanent = 500 <= e.code < 600
            raise DeliveryError(f"SMTP server answered {e.code}: "
                                f"{ctx.redact(e.message[:200])}", retryable=not permanent,
                                status=e.code) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            raise DeliveryError(f"SMTP: {type(e).__name__}", retryable=True) from None
