"""The actions' HTTP endpoints: manual triggers, deploy markers, and the run history.

`POST /api/v1/actions/{name}/run` `{labels, force?, dry_run?}` -> 202 `{runID, ...}`;
`POST /api/v1/deploys` `{service, version, labels?, window?}` -> 201 `{id, baselines, ...}`;
`GET /api/v1/actions/runs[?action=&status=&limit=]`, `GET /api/v1/actions/runs/{id}`,
`GET /api/v1/deploys[?status=&limit=]`;
`POST /api/v1/pause` `{until | for, reason, by?}`, `DELETE /api/v1/pause`, `GET /api/v1/pause`
(maintenance mode).

Shell: HTTP in, JSON out; the work is `ActionsHandler`'s, shared with the MQTT commands so the
same JSON does the same thing everywhere. Authentication is the daemon's (it guards every
non-GET route with the API token); this module must not implement it, and answers bad input with
a 4xx and a message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from watchdog.actions.errors import CommandError
from watchdog.webinput import BadInput, read_json

if TYPE_CHECKING:
    from watchdog.storage.records import DeployRow


class _Deploys(Protocol):
    async def deploys(self, *, status: str | None = None, limit: int = 100
                      ) -> list[DeployRow]: ...


class ActionsHandler(Protocol):
    """What the routes ask of the actions subsystem (`actions.handler.ActionsHandler`)."""

    @property
    def store(self) -> _Deploys: ...
    def require_started(self) -> None: ...
    async def run_action(self, name: str, body: Any) -> dict[str, Any]: ...
    async def deploy(self, body: Mapping[str, Any]) -> dict[str, Any]: ...
    async def runs(self, *, action: str | None = None, status: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]: ...
    async def run(self, run_id: str) -> dict[str, Any]: ...
    async def pause_state(self) -> dict[str, Any]: ...
    async def pause(self, body: Any, default_by: str = "api") -> dict[str, Any]: ...
    async def resume(self, body: Any = None) -> dict[str, Any]: ...

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(e: CommandError) -> web.Response:
    return web.json_response({"status": "error", "error": str(e)}, status=e.status,
                             headers=e.headers)


async def _body(request: web.Request) -> Any:
    try:
        return await read_json(request, default={})
    except BadInput as e:
        raise CommandError(str(e), e.status) from None


def _limit(request: web.Request) -> int:
    try:
        return min(1000, max(1, int(request.query.get("limit", "100"))))
    except ValueError:
        raise CommandError("limit must be an integer") from None


def _guarded(fn: Callable[[web.Request], Awaitable[web.Response]]) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except CommandError as e:
            return _error(e)
    return handle


def routes(h: ActionsHandler) -> list[web.RouteDef]:
    async def run_action(request: web.Request) -> web.Response:
        doc = await h.run_action(request.match_info["name"], await _body(request))
        return web.json_response(doc, status=202)

    async def deploy(request: web.Request) -> web.Response:
        return web.json_response(await h.deploy(await _body(request)), status=201)

    async def runs(request: web.Request) -> web.Response:
        h.require_started()
        data = await h.runs(action=request.query.get("action"),
                            status=request.query.get("status"), limit=_limit(request))
        return web.json_response({"status": "success", "data": data})

    async def run(request: web.Request) -> web.Response:
        h.require_started()
        return web.json_response({"status": "success",
                                  "data": await h.run(request.match_info["id"])})

    async def deploys(request: web.Request) -> web.Response:
        h.require_started()
        rows = await h.store.deploys(status=request.query.get("status"), limit=_limit(request))
        data = [{"id": d.id, "service": d.service, "version": d.version, "labels": d.labels,
                 "at": d.at, "windowEnd": d.window_end, "status": d.status,
                 "summary": d.summary} for d in rows]
        return web.json_response({"status": "success", "data": data})

    async def get_pause(request: web.Request) -> web.Response:
        h.require_started()
        return web.json_response({"status": "success", "data": await h.pause_state()})

    async def set_pause(request: web.Request) -> web.Response:
        h.require_started()
        return web.json_response({"status": "success", "data": await h.pause(
            await _body(request))})

    async def end_pause(request: web.Request) -> web.Response:
        h.require_started()
        return web.json_response({"status": "success", "data": await h.resume()})

    return [
        web.get("/api/v1/pause", _guarded(get_pause)),
        web.post("/api/v1/pause", _guarded(set_pause)),
        web.delete("/api/v1/pause", _guarded(end_pause)),
        web.post("/api/v1/actions/{name}/run", _guarded(run_action)),
        web.get("/api/v1/actions/runs", _guarded(runs)),
        web.get("/api/v1/actions/runs/{id}", _guarded(run)),
        web.post("/api/v1/deploys", _guarded(deploy)),
        web.get("/api/v1/deploys", _guarded(deploys)),
    ]
