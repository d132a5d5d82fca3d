"""The actions' HTTP endpoints: manual triggers, deploy markers, and the run history.

`POST /api/v1/actions/{name}/run` `{labels, force?, dry_run?}` -> 202 `{runID, ...}`;
`POST /api/v1/deploys` `{id?, service, version, labels?, window?, on_fail?}` -> 201
`{id, baselines, ...}` (200 when a client-chosen id exists already for that deploy);
`GET /api/v1/actions/runs[?action=&status=&limit=]`, `GET /api/v1/actions/runs/{id}`,
`GET /api/v1/deploys[?status=&service=&version=&limit=]`, `GET /api/v1/deploys/{id}` (the
verdict), and the gates a CD tool polls: `GET /api/v1/deploys/{id}/gate[?want=fail]` and
`POST /api/v1/deploys/gate` (Flagger's webhook payload) answer 200 only when the verdict is the
one wanted (pass by default), 409 while it is open, 412 when it is the other one;
`GET /api/v1/deploys/{id}/report[?days=N]` compares the N days before and after the deploy, and
`POST` of the same path also posts it to chat.
`POST /api/v1/pause` `{until | for, reason, by?}`, `DELETE /api/v1/pause`, `GET /api/v1/pause`
(maintenance mode).

Shell: HTTP in, JSON out; the work is `ActionsHandler`'s, shared with the MQTT commands so the
same JSON does the same thing everywhere. Authentication is the daemon's (it guards every
non-GET route with the API token) except for `POST /api/v1/deploys/gate`, which writes nothing
and which Flagger calls without headers: the daemon lets it through as a read
(`SELF_AUTHENTICATED`), and it asks for the read token itself only when one is configured — as
`metadata.token` in Flagger's payload or as a bearer token — compared in constant time. Bad input
gets a 4xx and a message.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from watchdog.actions.errors import CommandError
from watchdog.deploy_report import MAX_DAYS
from watchdog.webinput import BadInput, bearer_token, read_json

if TYPE_CHECKING:
    from watchdog.storage.records import DeployRow


# The one POST that authenticates itself (see the module's docstring).
GATE_PATH = "/api/v1/deploys/gate"
SELF_AUTHENTICATED = frozenset({("POST", GATE_PATH)})


class _Deploys(Protocol):
    async def deploys(self, *, status: str | None = None, limit: int = 100,
                      service: str | None = None, version: str | None = None
                      ) -> list[DeployRow]: ...


class ActionsHandler(Protocol):
    """What the routes ask of the actions subsystem (`actions.handler.ActionsHandler`)."""

    @property
    def store(self) -> _Deploys: ...
    def require_started(self) -> None: ...
    async def run_action(self, name: str, body: Any) -> dict[str, Any]: ...
    async def mark_deploy(self, body: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]: ...
    async def verdict(self, deploy_id: str) -> dict[str, Any]: ...
    async def report(self, deploy_id: str, days: float | None, post: bool = False
                     ) -> dict[str, Any]: ...
    async def newest_deploy(self, service: str, version: str | None = None
                            ) -> dict[str, Any] | None: ...
    def read_tokens(self) -> Sequence[str]:
        """The tokens a read must show, empty when reads are open (no API_READ_TOKEN)."""
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
        created, doc = await h.mark_deploy(await _body(request))
        return web.json_response(doc, status=201 if created else 200)

    async def verdict(request: web.Request) -> web.Response:
        h.require_started()
        return web.json_response(await h.verdict(request.match_info["id"]))

    async def gate(request: web.Request) -> web.Response:
        h.require_started()
        doc = await h.verdict(request.match_info["id"])
        return gate_answer(doc, _want(request.query.get("want", "pass")))

    async def flagger_gate(request: web.Request) -> web.Response:
        body = await _body(request)
        meta = body.get("metadata") if isinstance(body, Mapping) else None
        meta = meta if isinstance(meta, Mapping) else {}
        tokens = h.read_tokens()
        if tokens:
            given = bearer_token(request) or str(meta.get("token", "")).encode()
            if not any(hmac.compare_digest(given, t.encode()) for t in tokens):
                raise CommandError("this gate needs the read token: metadata.token in "
                                   "Flagger's webhook, or Authorization: Bearer", 401)
        h.require_started()
        want = _want(str(meta.get("want", "pass")))
        if meta.get("deploy_id"):
            doc = await h.verdict(str(meta["deploy_id"]))
        else:
            service = meta.get("service") or (body.get("name") if isinstance(body, Mapping)
                                              else None)
            if not isinstance(service, str) or not service:
                raise CommandError("expected Flagger's webhook payload: name, or "
                                   "metadata.service or metadata.deploy_id")
            version = meta.get("version")
            newest = await h.newest_deploy(service, str(version) if version else None)
            if newest is None:
                raise CommandError(f"no deploy marker for service {service!r}"
                                   + (f" version {version!r}" if version else ""), 404)
            doc = newest
        return gate_answer(doc, want)

    async def report(request: web.Request) -> web.Response:
        doc = await h.report(request.match_info["id"], _days(request),
                             post=request.method == "POST")
        return web.json_response({"status": "success", "data": doc})

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
        q = request.query
        rows = await h.store.deploys(status=q.get("status"), limit=_limit(request),
                                     service=q.get("service"), version=q.get("version"))
        data = [{"id": d.id, "service": d.service, "version": d.version, "labels": d.labels,
                 "at": d.at, "windowEnd": d.window_end, "status": d.status,
                 "verdict": API_VERDICT.get(d.status, d.status), "decidedAt": d.decided_at,
                 "onFail": list(d.on_fail), "summary": d.summary} for d in rows]
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
        web.post(GATE_PATH, _guarded(flagger_gate)),
        web.get("/api/v1/deploys/{id}", _guarded(verdict)),
        web.get("/api/v1/deploys/{id}/gate", _guarded(gate)),
        web.get("/api/v1/deploys/{id}/report", _guarded(report)),
        web.post("/api/v1/deploys/{id}/report", _guarded(report)),
    ]


API_VERDICT = {"open": "open", "passed": "pass", "failed": "fail"}


def _days(request: web.Request) -> float | None:
    text = request.query.get("days")
    if text is None:
        return None
    try:
        days = float(text)
    except ValueError:
        raise CommandError(f"days: expected a number of days, got {text[:20]!r}") from None
    if not 0 < days <= MAX_DAYS:  # NaN fails this too
        raise CommandError(f"days: expected more than 0 and at most {MAX_DAYS:g}")
    return days


def _want(text: str) -> str:
    if text not in ("pass", "fail"):
        raise CommandError(f"want: expected pass or fail, got {text!r}")
    return text


def gate_answer(doc: Mapping[str, Any], want: str) -> web.Response:
    """200 when the verdict is the one wanted; 409 while open (a CD tool retries); 412 when it
    is the other verdict. The body says which, for the tool's log."""
    status = doc.get("status")
    code = 200 if status == want else 409 if status == "open" else 412
    body = {"id": doc.get("id"), "service": doc.get("service"), "version": doc.get("version"),
            "status": status, "want": want, "summary": doc.get("summary", "")}
    return web.json_response(body, status=code)
