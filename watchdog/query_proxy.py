"""Prometheus's query API through the watchdog: `/api/v1/query`, `/api/v1/query_range`,
`/api/v1/series`, `/api/v1/labels` and `/api/v1/label/{name}/values` are forwarded to the
watchdog's own Prometheus, so Grafana can use the watchdog as a Prometheus data source (its
"Save & test" posts `1+1` to `/api/v1/query` and reads `/api/v1/status/buildinfo`; its panels and
query editor use the rest) and the console can chart a rule's expression without a second URL
or a second set of credentials.

Shell, and deliberately narrow. What it does: accept the methods Prometheus accepts on each path
(GET, and POST with a form, where Prometheus takes one), forward only the parameters Prometheus
reads there, refuse an expression beyond the rule loader's PromQL limits before Prometheus sees
it, hold at most `MAX_IN_FLIGHT` forwarded requests at once (evaluation shares the HTTP
session), and pass Prometheus's answer back as it came, status and body, up to
`QUERY_PROXY_MAX_BYTES`. What it must not do: parse or rewrite answers, forward a header of the
caller's (its `Authorization` is for the watchdog, never for Prometheus), or lend the
watchdog's Prometheus credentials to a caller without an API token (`lends_credentials`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from aiohttp import web

from watchdog.rulefile import MAX_EXPR_LENGTH, promql_limit_error
from watchdog.settings import Settings, url_has_credentials
from watchdog.source import AnswerTooLarge, Forwarded, QueryError

# Requests forwarded at once; more wait their turn (within the Prometheus timeout).
MAX_IN_FLIGHT = 4
MAX_MATCHERS = 100  # `match[]` values of one request
MAX_PARAM_CHARS = 256  # every parameter but `query` and `match[]` (times, durations, numbers)

_RANGE = ("start", "end", "timeout", "limit")
_EVAL = ("timeout", "limit", "lookback_delta", "stats")
# path -> (methods Prometheus 2.x accepts there, parameters it reads there)
ENDPOINTS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "/api/v1/query": (frozenset({"GET", "POST"}), frozenset(("query", "time", *_EVAL))),
    "/api/v1/query_range": (frozenset({"GET", "POST"}),
                            frozenset(("query", "start", "end", "step", *_EVAL))),
    "/api/v1/series": (frozenset({"GET", "POST"}), frozenset(("match[]", *_RANGE))),
    "/api/v1/labels": (frozenset({"GET", "POST"}), frozenset(("match[]", *_RANGE))),
    "/api/v1/label/{name}/values": (frozenset({"GET"}), frozenset(("match[]", *_RANGE))),
}
_LABEL_VALUES = re.compile(r"^/api/v1/label/[^/]{1,1024}/values$")


class Forwarder(Protocol):
    """What the proxy needs of the datasource (`watchdog.source.PrometheusSource`)."""

    async def forward(self, method: str, path: str, params: Sequence[tuple[str, str]],
                      max_bytes: int) -> Forwarded: ...


class Proxied(Protocol):
    """What the proxy reads of the daemon."""

    settings: Settings

    @property
    def forwarder(self) -> Forwarder | None: ...


def is_read(method: str, path: str) -> bool:
    """A POST here only reads (a query in a form, as Grafana sends it by default): it needs
    the read token, if any, not the write token."""
    return method == "POST" and path in ENDPOINTS and "POST" in ENDPOINTS[path][0]


def is_proxied(path: str) -> bool:
    return path in ENDPOINTS or _LABEL_VALUES.match(path) is not None


def lends_credentials(s: Settings) -> bool:
    """Whether a forwarded request carries credentials of the watchdog's (a bearer token file,
    basic auth, or a user:password in the URL): then a caller needs an API token even where
    reads are open, as it would need Prometheus's credentials to ask Prometheus itself."""
    return bool(s.prometheus_bearer_token_file or s.prometheus_basic_auth_user
                or url_has_credentials(s.prometheus_url))


class BadParams(ValueError):
    """A parameter refused before forwarding: 400, in Prometheus's `bad_data` shape."""


def select_params(allowed: frozenset[str], pairs: Sequence[tuple[str, str]]
                  ) -> list[tuple[str, str]]:
    """The parameters to forward, from the form (first) and the query string, as Go's
    `Request.FormValue` reads them: a single-valued parameter is its first value, `match[]`
    keeps them all. Unknown parameters are dropped; values are bounded."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    matchers = 0
    for key, value in pairs:
        if key not in allowed:
            continue
        if key == "match[]":
            matchers += 1
            if matchers > MAX_MATCHERS:
                raise BadParams(f"too many match[] parameters (the limit is {MAX_MATCHERS})")
            if len(value) > MAX_EXPR_LENGTH:
                raise BadParams(f"match[]: longer than {MAX_EXPR_LENGTH:,} characters")
            out.append((key, value))
            continue
        if key in seen:
            continue
        seen.add(key)
        if key == "query":
            if (refused := promql_limit_error(value)) is not None:
                raise BadParams(f"invalid parameter \"query\": {refused}")
        elif len(value) > MAX_PARAM_CHARS:
            raise BadParams(f"invalid parameter {key!r}: longer than {MAX_PARAM_CHARS} "
                            "characters")
        out.append((key, value))
    return out


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"status": "error", "errorType": kind, "error": message},
                             status=status)


def routes(d: Proxied) -> list[web.RouteDef]:
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)

    def handler(methods: frozenset[str], allowed: frozenset[str]
                ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def forward(request: web.Request) -> web.StreamResponse:
            if request.method not in methods:
                raise web.HTTPMethodNotAllowed(request.method, sorted(methods))
            forwarder = d.forwarder
            if forwarder is None:
                return _error(503, "unavailable",
                              "this watchdog's datasource cannot be queried through it")
            pairs: list[tuple[str, str]] = []
            if request.method == "POST":
                form = await request.post()
                pairs += [(k, v) for k, v in form.items() if isinstance(v, str)]
            pairs += list(request.query.items())
            try:
                params = select_params(allowed, pairs)
            except BadParams as e:
                return _error(400, "bad_data", str(e))
            return await _forward(forwarder, request.method, request.path, params)

        return forward

    async def _forward(forwarder: Forwarder, method: str, path: str,
                       params: list[tuple[str, str]]) -> web.Response:
        timeout = d.settings.prometheus_timeout
        try:
            async with asyncio.timeout(timeout):
                await gate.acquire()
        except TimeoutError:
            return _error(503, "unavailable", f"{MAX_IN_FLIGHT} forwarded queries are still "
                                              f"running after {timeout:g}s; try again")
        try:
            answer = await forwarder.forward(method, path, params,
                                             d.settings.query_proxy_max_bytes)
        except AnswerTooLarge as e:
            return _error(422, "execution", f"{e}; narrow the query, raise its step, or raise "
                                            "WATCHDOG_QUERY_PROXY_MAX_BYTES")
        except QueryError as e:
            return _error(503, "unavailable", str(e))
        finally:
            gate.release()
        return web.Response(status=answer.status, body=answer.body,
                            headers={"Content-Type": answer.content_type})

    # Every method reaches the handler, so a wrong one gets a 405 in Prometheus's error shape.
    return [web.route("*", path, handler(methods, allowed))
            for path, (methods, allowed) in ENDPOINTS.items()]
