"""Slack incoming-webhook integration: a Block Kit message a person understands in two seconds.

`render(n)` is pure (the notify-preview command and the tests call it directly): severity colour
and emoji, the summary, the value against its threshold or baseline, the key labels, links (graph,
runbook, dashboard) and what the watchdog did. It always stays inside Slack's documented limits
(50 blocks, 3,000 characters a section text, 150 a header, 10 fields of 2,000, 75 a button
label) by truncating, never by letting Slack reject the message. `SlackNotifier` only posts; the
webhook URL is a secret and appears in no error.
"""

from __future__ import annotations

from typing import Any

from watchdog.model import SEVERITY_RANK, SlackConfig
from watchdog.notify import message as m
from watchdog.notify.message import AlertDoc, Notification
from watchdog.notify.receivers import DeliveryError, SendContext
from watchdog.notify.receivers.http import post_json
from watchdog.notify.secrets import Redactor, SecretError, resolve, url_secrets

MAX_BLOCKS = 50
MAX_SECTION = 3000
MAX_HEADER = 150
MAX_FIELDS = 10
MAX_FIELD = 2000
MAX_CONTEXT = 2000
MAX_BUTTON = 75
MAX_TEXT = 3000  # the notification fallback: Slack allows 40,000, a phone banner shows ~100
DETAILED = 3  # alerts shown with fields and buttons; beyond that a compact list reads faster
LISTED = 20  # alerts listed at all; the rest are counted

RED, AMBER, BLUE, GREEN, GREY = "#D00000", "#F2A900", "#439FE0", "#2EB886", "#8A8F98"


def escape(text: str) -> str:
    """Slack mrkdwn control characters (its docs: escape &, < and > in any text we didn't write)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def link(url: str, text: str) -> str:
    return f"<{url}|{escape(text)}>"


def severity_of(a: AlertDoc) -> str:
    return (a.severity or a.labels.get("severity") or "").lower()


def colour(n: Notification) -> str:
    if n.kind == "digest":
        return BLUE
    if n.kind == "report" and n.report is not None:
        verdicts = {x.verdict for x in n.report.items}
        return RED if "missed" in verdicts else GREEN if "met" in verdicts else BLUE
    if n.kind == "action" and n.action is not None:
        return {"failed": RED, "succeeded": GREEN, "verified": GREEN,
                "not_helped": AMBER}.get(n.action.kind, GREY)
    if n.status == "resolved":
        return GREEN
    rank = max((SEVERITY_RANK.get(severity_of(a), 30) for a in n.firing), default=30)
    if rank >= SEVERITY_RANK["error"]:
        return RED
    if rank >= SEVERITY_RANK["warning"]:
        return AMBER
    return BLUE


def emoji(n: Notification) -> str:
    if n.kind in ("digest", "report"):
        return "📋"
    if n.kind == "action" and n.action is not None:
        return {"started": "⚙️", "succeeded": "✅", "failed": "❌", "would_run": "🧪",
                "verified": "✅", "not_helped": "⚠️"}.get(n.action.kind, "⚙️")
    if n.kind == "resolved" or n.status == "resolved":
        return "✅"
    if n.kind == "escalated":
        return "📣" if n.level is not None else "🔺"
    if n.kind == "repeated":
        return "🔁"
    return {RED: "🔴", AMBER: "🟠"}.get(colour(n), "🔵")


def headline(n: Notification) -> str:
    """`🔴 FIRING · HighErrorRate` — the words a phone banner shows."""
    name = n.title_name
    if n.kind == "digest" and n.digest is not None:
        count = n.digest.count
        return (f"{emoji(n)} DIGEST · {count} incident{'' if count == 1 else 's'} · "
                f"{m.digest_period(n.digest)}")
    if n.kind == "report" and n.report is not None:
        return f"{emoji(n)} REPORT · {n.report.service} {n.report.version} · {n.report.days:g}d"
    if n.kind == "action" and n.action is not None:
        verb = m.ACTION_VERB.get(n.action.kind, n.action.kind)
        step = f" / {n.action.step}" if n.action.step else ""
        page = "PAGE · " if n.action.page else ""
        return f"{emoji(n)} {page}Action {name}{step} {verb}"
    firing, resolved = len(n.firing), len(n.resolved)
    if n.kind == "escalated" and n.level is not None:
        word = f"ESCALATED · level {n.level}"
    elif n.kind == "escalated":
        word = f"ESCALATED to {severity_of(n.firing[0]) if n.firing else '?'}"
    elif n.kind == "repeated":
        word = "STILL FIRING"
    elif firing:
        word = "FIRING" if firing == 1 else f"FIRING ×{firing}"
        if resolved:
            word += f", {resolved} resolved"
    else:
        word = "RESOLVED" if resolved <= 1 else f"RESOLVED ×{resolved}"
    return f"{emoji(n)} {word} · {name}"


def _text_block(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": m.truncate(text, MAX_SECTION)}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context",
            "elements": [{"type": "mrkdwn", "text": m.truncate(text, MAX_CONTEXT)}]}


def _labels_text(labels: dict[str, str], limit: int = 12) -> str:
    pairs = m.key_labels(labels, limit)
    return "  ".join(f"`{escape(k)}={escape(v)}`" for k, v in pairs)


def _timing(a: AlertDoc, now: float) -> tuple[str, str]:
    if a.status == "resolved" and a.duration is not None and a.ends_at is not None:
        return "Lasted", f"{m.human_duration(a.duration)} (resolved {m.clock_time(a.ends_at)})"
    start = a.fired_at if a.fired_at is not None else a.starts_at
    return "Firing since", f"{m.clock_time(start)} ({m.human_duration(now - start)})"


def _detailed(a: AlertDoc, now: float) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    title = escape(m.summary(a))
    desc = a.annotations.get("description", "")
    text = f"*{title}*"
    if desc and desc != m.summary(a):
        text += "\n" + escape(desc)
    fields = []
    if a.status == "firing":
        fields.append(f"*Value*\n{escape(m.value_line(a))}")
    if severity_of(a):
        fields.append(f"*Severity*\n{escape(severity_of(a))}")
    label, when = _timing(a, now)
    fields.append(f"*{label}*\n{when}")
    if a.acked:
        fields.append("*Acknowledged*\nyes: no repeats or escalation until it resolves")
    for k, v in m.key_labels(a.labels, MAX_FIELDS - len(fields)):
        fields.append(f"*{escape(k)}*\n{escape(v)}")
    blocks.append({
        "type": "section",
        "text": {"type": "mrkdwn", "text": m.truncate(text, MAX_SECTION)},
        "fields": [{"type": "mrkdwn", "text": m.truncate(f, MAX_FIELD)}
                   for f in fields[:MAX_FIELDS]],
    })
    if a.actions:
        lines = [f"{_note_emoji(x.kind)} {escape(m.action_line(x))} · {m.clock_time(x.at)}"
                 for x in a.actions[-8:]]
        blocks.append(_text_block("*What the watchdog did*\n" + "\n".join(lines)))
    buttons = [{"type": "button", "text": {"type": "plain_text", "text": m.truncate(t, MAX_BUTTON)},
                "url": u} for t, u in m.links(a) if len(u) <= 3000]
    if buttons:
        blocks.append({"type": "actions", "elements": buttons})
    return blocks


def _note_emoji(kind: str) -> str:
    return {"started": "⚙️", "succeeded": "✅", "failed": "❌", "would_run": "🧪",
            "verified": "✅", "not_helped": "⚠️"}.get(kind, "•")


def _compact_line(a: AlertDoc, now: float) -> str:
    label, when = _timing(a, now)
    head = escape(m.summary(a))
    links = " ".join(link(u, t) for t, u in m.links(a))
    state = escape(m.value_line(a)) if a.status == "firing" else f"{label.lower()} {when}"
    line = f"• *{head}* — {state}"
    labels = _labels_text(a.labels, 4)
    if labels:
        line += f"\n   {labels}"
    if links:
        line += f"  {links}"
    return line


def _digest_blocks(n: Notification) -> list[dict[str, Any]]:
    d = n.digest
    assert d is not None
    blocks = [_text_block("\n".join(escape(line) for line in m.digest_summary(d)))]
    lines = [f"• {escape(m.digest_item(x, d.timezone))}" for x in d.items[:LISTED]]
    chunk: list[str] = []
    for line in lines:  # one section per ~3,000 characters
        if chunk and len("\n".join([*chunk, line])) > MAX_SECTION:
            blocks.append(_text_block("\n".join(chunk)))
            chunk = []
        chunk.append(line)
    if chunk:
        blocks.append(_text_block("\n".join(chunk)))
    more = d.more + max(0, len(d.items) - LISTED)
    if more:
        blocks.append(_context(f"…and {more} more incidents: GET /api/v1/incidents"))
    return blocks


def _report_blocks(n: Notification) -> list[dict[str, Any]]:
    assert n.report is not None
    blocks = []
    chunk: list[str] = []
    for line in m.report_lines(n.report):  # one section per ~3,000 characters
        line = escape(line)
        if chunk and len("\n".join([*chunk, line])) > MAX_SECTION:
            blocks.append(_text_block("\n".join(chunk)))
            chunk = []
        chunk.append(line)
    if chunk:
        blocks.append(_text_block("\n".join(chunk)))
    return blocks


def render(n: Notification, now: float | None = None) -> dict[str, Any]:
    """The incoming-webhook JSON for a notification (`now` only for "firing for 12m")."""
    at = n.created_at if now is None else now
    head = headline(n)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": m.truncate(head, MAX_HEADER),
                                    "emoji": True}}]
    if n.paused:
        blocks.append(_context(f"⏸ *{escape(n.paused)}*"))
    if n.kind == "escalated" and n.level is not None:
        after = (f" after {m.human_duration(n.escalated_after)}"
                 if n.escalated_after is not None else "")
        blocks.append(_text_block(
            f"*Not acknowledged{after}: escalated to level {n.level}.* "
            "Acknowledge with `POST /api/v1/acks` to stop escalation and repeats."))
    elif n.kind == "escalated" and n.previous_severity:
        blocks.append(_text_block(
            f"Severity went up: *{escape(n.previous_severity)}* → "
            f"*{escape(severity_of(n.firing[0]) if n.firing else '?')}*"))
    elif n.kind == "repeated":
        blocks.append(_context("Still firing and not acknowledged; this reminder repeats until "
                               "it resolves or is acknowledged."))
    elif n.kind == "digest" and n.digest is not None:
        blocks.extend(_digest_blocks(n))
    elif n.kind == "report" and n.report is not None:
        blocks.extend(_report_blocks(n))

    if n.kind == "action" and n.action is not None:
        text = f"*{escape(m.action_line(n.action))}*"
        labels = _labels_text(n.action_labels)
        if labels:
            text += f"\nfor {labels}"
        blocks.append(_text_block(text))
        for doc in n.alerts[:1]:
            blocks.append(_text_block(f"Alert: *{escape(m.summary(doc))}* — "
                                      f"{escape(m.value_line(doc))}"))

    alerts = sorted(n.alerts, key=lambda a: (a.status != "firing",
                                             -SEVERITY_RANK.get(severity_of(a), 0),
                                             a.starts_at, a.fingerprint))
    if n.kind not in ("action", "digest", "report"):
        if len(alerts) <= DETAILED:
            for i, a in enumerate(alerts):
                if i:
                    blocks.append({"type": "divider"})
                blocks.extend(_detailed(a, at))
        else:
            lines = [_compact_line(a, at) for a in alerts[:LISTED]]
            chunk: list[str] = []
            for line in lines:  # one section per ~3,000 characters
                if chunk and len("\n".join([*chunk, line])) > MAX_SECTION:
                    blocks.append(_text_block("\n".join(chunk)))
                    chunk = []
                chunk.append(line)
            if chunk:
                blocks.append(_text_block("\n".join(chunk)))
            if len(alerts) > LISTED:
                blocks.append(_context(f"…and {len(alerts) - LISTED} more alerts in this group"))
            common = _labels_text(n.common_labels)
            if common:
                blocks.append(_context(f"Common labels: {common}"))

    footer = "metrics-watchdog"
    if n.group_labels:
        footer += " · group " + " ".join(f"{escape(k)}={escape(v)}"
                                         for k, v in sorted(n.group_labels.items()))
    if n.external_url:
        footer += " · " + link(n.external_url, "open the watchdog")
    blocks.append(_context(footer))

    if len(blocks) > MAX_BLOCKS:  # cannot happen with the caps above; kept as the last guard
        blocks = [*blocks[: MAX_BLOCKS - 1], _context("…message shortened to fit Slack")]

    fallback = head
    first = n.firing[0] if n.firing else (n.alerts[0] if n.alerts else None)
    if first is not None and n.kind != "action":
        fallback += f" — {m.summary(first)}"
    # The fallback is what phones show; Slack parses it as mrkdwn too, so it is escaped like
    # everything else (an annotation saying <!channel> must not ping a channel).
    fallback = m.truncate(escape(fallback), MAX_TEXT)
    return {"text": fallback,
            "attachments": [{"color": colour(n), "fallback": fallback,
                             "blocks": blocks}]}


class SlackNotifier:
    integration = "slack"

    def __init__(self, cfg: SlackConfig) -> None:
        self.cfg = cfg

    async def send(self, n: Notification, ctx: SendContext) -> None:
        try:
            url = resolve(self.cfg.webhook_url, self.cfg.webhook_url_file, "slack webhook_url")
        except SecretError as e:
            raise DeliveryError(str(e), retryable=False) from None
        ctx.redact = Redactor(url_secrets(url))
        body = render(n, ctx.now)
        if self.cfg.channel:
            body["channel"] = self.cfg.channel
        if self.cfg.username:
            body["username"] = self.cfg.username
        await post_json(ctx, url, body, what="Slack")
