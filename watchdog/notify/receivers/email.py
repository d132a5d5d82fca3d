"""Email over SMTP with aiosmtplib: STARTTLS (unless `require_tls: false`), optional auth with the
password read from a secret file at delivery, and a multipart message with plain-text and HTML
parts built from the same facts as the Slack message.

STARTTLS verifies the server against `ca_file` when set (instead of the system's CAs, like
Alertmanager's `tls_config`), or not at all with `insecure_skip_verify`. With `require_tls`, a
server that does not offer STARTTLS is refused before any AUTH, so the password is never sent in
clear.

`render(n)` is pure. SMTP replies classify like HTTP: 4xx replies and connection errors are
retryable, 5xx replies (bad recipient, auth refused) are permanent; so are a certificate that
does not verify, a missing STARTTLS and an unreadable `ca_file`, which retrying cannot fix. The
password never appears in an error or a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import ssl
from email.message import EmailMessage

from watchdog.model import EmailConfig
from watchdog.notify import message as m
from watchdog.notify.message import Notification
from watchdog.notify.receivers import DeliveryError, SendContext
from watchdog.notify.receivers.slack import colour, headline
from watchdog.notify.secrets import Redactor, SecretError, expand_env, read_file


def _plain(n: Notification) -> str:
    lines = [headline(n), ""]
    if n.paused:
        lines += [f"⏸ {n.paused}", ""]
    if n.digest is not None:
        lines += [*m.digest_summary(n.digest), ""]
        lines += [f"* {m.digest_item(x, n.digest.timezone)}" for x in n.digest.items]
        if n.digest.more:
            lines.append(f"…and {n.digest.more} more")
        lines.append("")
    if n.report is not None:
        lines += [*m.report_lines(n.report), ""]
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
    if n.digest is not None:
        d = n.digest
        items = "".join(f"<li>{e(m.digest_item(x, d.timezone))}</li>" for x in d.items)
        more = f"<p>…and {d.more} more</p>" if d.more else ""
        action = ("<p>" + "<br>".join(e(line) for line in m.digest_summary(d)) + "</p>"
                  + (f"<ul>{items}</ul>" if items else "") + more)
    if n.report is not None:
        action = "<p>" + "<br>".join(e(line) for line in m.report_lines(n.report)) + "</p>"
    paused = f"<p><i>⏸ {e(n.paused)}</i></p>" if n.paused else ""
    return (f'<html><body><div style="border-left:6px solid {colour(n)};padding-left:12px">'
            f"<h2>{e(headline(n))}</h2>{paused}{action}{''.join(rows)}</div></body></html>")


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


def tls_context(cfg: EmailConfig) -> ssl.SSLContext:
    """The client context for STARTTLS: the system's CAs, or only those in `ca_file`; no
    verification at all with `insecure_skip_verify`. Raises SecretError (naming the file)."""
    cafile = expand_env(cfg.ca_file) if cfg.ca_file else None
    try:
        context = ssl.create_default_context(cafile=cafile)
    except OSError as e:  # ssl.SSLError too: a file that holds no PEM certificate
        raise SecretError(f"cannot load ca_file {cafile}: "
                          f"{getattr(e, 'reason', None) or e.strerror or type(e).__name__}"
                          ) from None
    if cfg.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


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
            tls = await asyncio.to_thread(tls_context, self.cfg) if self.cfg.require_tls else None
        except (SecretError, ValueError) as e:
            raise DeliveryError(f"email: {e}", retryable=False) from None
        ctx.redact = Redactor([password] if password else [])
        where = f"{host}:{port}"
        await ctx.pace()
        smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, tls_context=tls,
                               timeout=ctx.timeout)
        try:
            await smtp.connect()
            if tls is not None:
                await smtp.ehlo()
                if not smtp.supports_extension("starttls"):
                    raise DeliveryError(f"SMTP server {where} does not offer STARTTLS and "
                                        "require_tls is true; nothing was sent",
                                        retryable=False)
                await smtp.starttls()
            if self.cfg.auth_username is not None:
                await smtp.login(self.cfg.auth_username, password or "")
            await smtp.send_message(render(n, self.cfg))
            # Sent: a failing QUIT must not turn into a retry and a duplicate email.
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await smtp.quit()
        except DeliveryError:
            raise
        except ssl.SSLCertVerificationError as e:
            reason = ctx.redact(str(e.verify_message or e.reason or "rejected").rstrip("."))
            hint = ("use the host name the certificate is for" if e.verify_code == 62
                    else "set ca_file to the CA that signed it")  # 62: hostname mismatch
            raise DeliveryError(f"SMTP server {where}: TLS certificate not trusted ({reason}); "
                                f"{hint}", retryable=False) from None
        except aiosmtplib.SMTPResponseException as e:
            permanent = 500 <= e.code < 600
            raise DeliveryError(f"SMTP server answered {e.code}: "
                                f"{ctx.redact(e.message[:200])}", retryable=not permanent,
                                status=e.code) from None
        except ssl.SSLError as e:
            raise DeliveryError(f"SMTP server {where}: TLS failed ({e.reason or type(e).__name__})",
                                retryable=True) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            raise DeliveryError(f"SMTP: {type(e).__name__}", retryable=True) from None
        finally:
            smtp.close()
