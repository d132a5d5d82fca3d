"""The status page (`GET /`, `GET /status`): one self-contained HTML file with inline CSS and a
little vanilla JS that polls the daemon's own JSON endpoints every 5 s — readiness with each
check, the datasource, active alerts, rule files and groups, action runs, deploy markers and
failed notifications.

Shell: it serves a static asset (`watchdog/static/status.html`, shipped as package data) and
computes nothing itself; everything it shows comes from the JSON API, so the page and the API
cannot disagree. It loads nothing from other hosts (the daemon often runs without internet), and
its script renders every string with `textContent`, never as markup: label values are untrusted.
A Content-Security-Policy that allows only the page's own inline script and style (by hash) and
same-origin `fetch` backs that up.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib import resources

from aiohttp import web

ASSET = "static/status.html"

_INLINE = {"script": re.compile(r"<script>(.*?)</script>", re.S),
           "style": re.compile(r"<style>(.*?)</style>", re.S)}


def page() -> str:
    """The page's HTML, read from the installed package."""
    return _load()[0]


@cache
def _load() -> tuple[str, str]:
    html = resources.files("watchdog").joinpath(ASSET).read_text(encoding="utf-8")
    hashes = {kind: " ".join(f"'sha256-{_sha256(block)}'" for block in rx.findall(html))
              or "'none'" for kind, rx in _INLINE.items()}
    csp = ("default-src 'none'; "
           f"script-src {hashes['script']}; style-src {hashes['style']}; "
           "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
           "frame-ancestors 'none'")
    return html, csp


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def wants_json(request: web.Request) -> bool:
    """A client that asks for JSON and not HTML (scripts, `curl -H Accept:application/json`)
    gets the endpoint index that `/` served before the page existed."""
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


async def status_page(request: web.Request) -> web.Response:
    html, csp = _load()
    return web.Response(text=html, content_type="text/html", charset="utf-8", headers={
        "Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
