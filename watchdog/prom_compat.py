"""Prometheus's own probe and build-info endpoints, so tools that expect a Prometheus server
(Kubernetes probes copied from a Prometheus manifest, blackbox checks, Grafana's feature
discovery) work against the watchdog unchanged: `/-/healthy`, `/-/ready` and
`GET /api/v1/status/buildinfo`, byte for byte in Prometheus 2.42's shapes.

Read-only and stateless: it asks the daemon (through the `Probed` Protocol, so it does not
import it) whether it is healthy and ready, and says nothing else — the reasons are on
`/healthz` and `/readyz`. It must not invent a Prometheus version: buildinfo reports the
watchdog's.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from watchdog import __version__

# Prometheus's bodies (web/web.go), newline included; a not-ready server answers 503 with
# "Service Unavailable" and no newline.
HEALTHY = "Prometheus Server is Healthy.\n"
READY = "Prometheus Server is Ready.\n"
NOT_READY = "Service Unavailable"
NOT_HEALTHY = "Service Unavailable"


class Probed(Protocol):
    """What the probes ask of the daemon (`watchdog.daemon.Daemon` provides it)."""

    def healthy(self) -> bool: ...

    def readiness(self) -> tuple[bool, str]: ...


def build_info() -> dict[str, str]:
    """`data` of `/api/v1/status/buildinfo`: Prometheus's six fields, with the watchdog's
    version; what a Go build stamps (revision, branch, build user and date, Go version) does not
    exist for a Python package, so those say "unknown" rather than something made up."""
    return {"version": __version__, "revision": "unknown", "branch": "unknown",
            "buildUser": "unknown", "buildDate": "unknown", "goVersion": "unknown"}


def routes(d: Probed) -> list[web.RouteDef]:
    # aiohttp answers HEAD on every GET route, as Prometheus does on these.
    async def healthy(request: web.Request) -> web.Response:
        if d.healthy():
            return web.Response(text=HEALTHY)
        return web.Response(text=NOT_HEALTHY, status=503)

    async def ready(request: web.Request) -> web.Response:
        if d.readiness()[0]:
            return web.Response(text=READY)
        return web.Response(text=NOT_READY, status=503)

    async def buildinfo(request: web.Request) -> web.Response:
        return web.json_response({"status": "success", "data": build_info()})

    return [web.get("/-/healthy", healthy), web.get("/-/ready", ready),
            web.get("/api/v1/status/buildinfo", buildinfo)]
