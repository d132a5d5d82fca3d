"""The notification endpoints and commands: silences, acknowledgements and the outbox view.

HTTP (`POST/GET /api/v1/silences`, `DELETE /api/v1/silences/{id}`, `POST /api/v1/acks`,
`GET /api/v1/notifications`) and the MQTT/CLI commands `silence`, `unsilence`, `ack` share one
implementation, so the same JSON does the same thing everywhere. Authentication is the daemon's
(it guards every non-GET route); this module validates input and answers 4xx with a message.
It must not decide anything about notifications itself: silences and acks go to their store and
the pipeline picks them up at its next flush.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from watchdog.gocompat import rfc3339_millis
from watchdog.notify.silences import InputError, parse_matchers, silence_from_request
from watchdog.webinput import BadInput, read_json

if TYPE_CHECKING:
    from watchdog.notify.silences import Matcher, SilenceStore
    from watchdog.state import Alert


class _Outbox(Protocol):
    async def recent(self, *, status: str | None = None, receiver: str | None = None,
                     limit: int = 100) -> list[dict[str, Any]]: ...


class NotifyHandler(Protocol):
    """What the endpoints ask of the notification subsystem (`notify.handler.NotifyHandler`)."""

    @property
    def silences(self) -> SilenceStore: ...
    @property
    def outbox(self) -> _Outbox: ...
    async def acknowledge(self, matchers: Sequence[Matcher], created_by: str = "",
                          comment: str = "") -> list[Alert]: ...


class NotFound(InputError):
    """The thing named does not exist (404 over HTTP)."""


class Api:
    def __init__(self, handler: NotifyHandler, clock: Callable[[], float]) -> None:
        self.h = handler
        self.clock = clock

    # ---- commands (JSON in, JSON out) -----------------------------------------------------

    async def silence(self, body: Mapping[str, Any]) -> dict[str, Any]:
        s = silence_from_request(body, self.clock())
        await self.h.silences.add(s)
        return {"silenceID": s.id}

    async def unsilence(self, body: Mapping[str, Any]) -> dict[str, Any]:
        sid = body.get("silenceID", body.get("id")) if isinstance(body, Mapping) else None
        if not isinstance(sid, str) or not sid:
            raise InputError("expected {\"silenceID\": \"...\"}")
        ended = await self.h.silences.expire(sid, self.clock())
        if ended is None:
            raise NotFound(f"no silence with id {sid}")
        return {"silenceID": sid, "status": "expired"}

    async def ack(self, body: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(body, Mapping):
            raise InputError("expected a JSON object {matchers, createdBy, comment}")
        matchers = parse_matchers(body.get("matchers"))
        by, comment = body.get("createdBy", ""), body.get("comment", "")
        if not isinstance(by, str) or not isinstance(comment, str):
            raise InputError("createdBy and comment must be strings")
        alerts = await self.h.acknowledge(matchers, by, comment)
        return {"acknowledged": [{"labels": dict(a.labels), "fingerprint": a.fingerprint,
                                  "incident": a.incident_id,
                                  "activeAt": rfc3339_millis(a.active_at)} for a in alerts],
                "count": len(alerts)}

    def list_silences(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [s.to_json(now) for s in sorted(self.h.silences.silences.values(),
                                               key=lambda s: s.created_at, reverse=True)]

    # ---- HTTP --------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/v1/silences", self._post_silence),
            web.get("/api/v1/silences", self._get_silences),
            web.delete("/api/v1/silences/{id}", self._delete_silence),
            web.post("/api/v1/acks", self._post_ack),
            web.get("/api/v1/notifications", self._get_notifications),
        ]

    async def _json(self, request: web.Request) -> Any:
        # one bounded JSON reader for every endpoint; its BadInput answers 4xx (http_api)
        return await read_json(request)

    @staticmethod
    def _error(e: InputError | BadInput) -> web.Response:
        status = e.status if isinstance(e, BadInput) else 404 if isinstance(e, NotFound) else 400
        return web.json_response({"status": "error", "error": str(e)}, status=status)

    async def _post_silence(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(await self.silence(await self._json(request)))
        except (InputError, BadInput) as e:
            return self._error(e)

    async def _get_silences(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "success", "data": self.list_silences()})

    async def _delete_silence(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(await self.unsilence({"silenceID":
                                                           request.match_info["id"]}))
        except (InputError, BadInput) as e:
            return self._error(e)

    async def _post_ack(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(await self.ack(await self._json(request)))
        except (InputError, BadInput) as e:
            return self._error(e)

    async def _get_notifications(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = min(1000, max(1, int(q.get("limit", "100"))))
        except ValueError:
            return self._error(InputError("limit must be an integer"))
        status = q.get("status")
        if status is not None and status not in ("pending", "delivered", "failed",
                                                 "superseded"):
            return self._error(InputError("status must be pending, delivered, failed or "
                                          "superseded"))
        rows = await self.h.outbox.recent(status=status, receiver=q.get("receiver"),
                                          limit=limit)
        return web.json_response({"status": "success", "data": rows})
