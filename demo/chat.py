"""A local stand-in for Slack: accepts incoming-webhook posts and prints them readably.

Not part of the product: the demo points a `slack` receiver here so the messages the watchdog
would post to a channel appear in the terminal. It checks the request the way Slack does (JSON
with `text` and/or `blocks`) and renders Block Kit sections, fields and context as plain text.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any

from aiohttp import web

_LINK = re.compile(r"<([^|>]+)\|([^>]+)>")


def mrkdwn(text: str) -> str:
    text = _LINK.sub(r"\2 (\1)", text)
    # Slack escapes &, < and > in message text; show them as a reader would see them
    text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return text.replace("*", "")


def render(doc: dict[str, Any]) -> str:
    lines: list[str] = []
    blocks = list(doc.get("blocks") or [])
    for att in doc.get("attachments") or []:
        blocks += att.get("blocks") or []
    for b in blocks:
        kind = b.get("type")
        if kind == "header":
            lines.append(b["text"]["text"])
        elif kind == "section":
            if b.get("text"):
                lines.append(mrkdwn(b["text"]["text"]))
            for f in b.get("fields") or []:
                lines.append("  " + mrkdwn(f["text"]).replace("\n", " "))
        elif kind == "context":
            lines.append("  " + " · ".join(mrkdwn(e.get("text", "")) for e in b["elements"]))
        elif kind == "divider":
            lines.append("  " + "─" * 40)
    if not lines:
        lines.append(mrkdwn(str(doc.get("text", ""))))
    return "\n".join(lines)


class ChatReceiver:
    def __init__(self, out: Callable[[str], None] | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        self._out = out or (lambda s: print(s, file=sys.stdout, flush=True))

    async def post(self, request: web.Request) -> web.Response:
        try:
            doc = await request.json()
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        if not isinstance(doc, dict) or not (doc.get("text") or doc.get("blocks")):
            return web.Response(status=400, text="no_text")
        self.messages.append(doc)
        body = render(doc).splitlines() or [""]
        box = "\n".join("  │ " + line for line in body)
        self._out(f"\n  ┌─ #incidents ─ metrics-watchdog\n{box}\n  └─")
        return web.Response(text="ok")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/services/{path:.*}", self.post)
        return app
