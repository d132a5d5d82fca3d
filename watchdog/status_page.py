"""The operator console (`GET /`, `GET /status`): one small HTML page and its script and style
sheet (`watchdog/static/console.{html,js,css}`, shipped as package data, served from
`/static/`), which poll the daemon's own JSON endpoints and use its write endpoints with the API
token the operator enters (kept in the tab's session storage).

Shell: it serves static assets and computes nothing itself; everything the console shows comes
from the JSON API, so the console and the API cannot disagree. It loads nothing from other hosts
(the daemon often runs without internet), and its script puts every string on the page with
`textContent`, never as markup: label values are untrusted. A Content-Security-Policy that
allows script and style only from this origin's files (no inline script, no inline style, no
eval) and same-origin `fetch` backs that up. Only the files named in ASSETS are served.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from aiohttp import web

PAGE = "static/console.html"
ASSETS = {"console.js": "text/javascript", "console.css": "text/css"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"}


@cache
def asset(name: str) -> str:
    """A file of the console, read from the installed package (`static/NAME`)."""
    return resources.files("watchdog").joinpath(f"static/{name}").read_text(encoding="utf-8")


def page() -> str:
    """The console's HTML."""
    return asset("console.html")


def wants_json(request: web.Request) -> bool:
    """A client that asks for JSON and not HTML (scripts, `curl -H Accept:application/json`)
    gets the endpoint index that `/` served before the page existed."""
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


async def status_page(request: web.Request) -> web.Response:
    return web.Response(text=page(), content_type="text/html", charset="utf-8",
                        headers=_HEADERS)


async def static_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    kind = ASSETS.get(name)
    if kind is None:  # a fixed list: no path from the request ever reaches the file system
        raise web.HTTPNotFound()
    response = web.Response(text=asset(name), content_type=kind, charset="utf-8",
                            headers=_HEADERS)
    response.enable_compression()  # gzip when the browser asks: the script is ~1/3 the size
    return response
