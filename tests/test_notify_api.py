"""The notification HTTP endpoints (silences, acks, the outbox view) as the daemon mounts them
from `ctx.routes`, and the persistence of silences across a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from fakes_chat import FakeChat, FakeTime, Harness, make_alert
from storage_support import sqlite_storage

RULES = """
receivers:
  - name: chat
    slack: {webhook_url: "CHAT/slack/T0/B0/x"}
routes:
  - {receivers: [chat], group_wait: 0s, group_interval: 1m}
"""


@pytest.fixture
async def env(tmp_path: Path, aiohttp_client: Callable[..., Any]
              ) -> AsyncIterator[tuple[Harness, TestClient]]:
    chat = await FakeChat().start()
    clock = FakeTime()
    chat.clock = clock
    async with sqlite_storage(tmp_path / "w.db") as db, aiohttp.ClientSession() as s:
        h = await Harness(db, s, clock, chat, RULES).start()
        app = web.Application()
        app.add_routes(h.ctx.routes)
        client = await aiohttp_client(app)
        yield h, client
        await h.stop()
    await chat.close()


async def test_silence_lifecycle(env: tuple[Harness, TestClient]) -> None:
    _h, client = env
    r = await client.post("/api/v1/silences", json={
        "matchers": [{"name": "alertname", "value": "HighErrorRate", "isRegex": False}],
        "endsAt": "2030-01-01T00:00:00Z", "createdBy": "alice", "comment": "maintenance"})
    assert r.status == 200
    sid = (await r.json())["silenceID"]
    listed = (await (await client.get("/api/v1/silences")).json())["data"]
    assert listed[0]["id"] == sid and listed[0]["status"]["state"] == "active"
    assert listed[0]["createdBy"] == "alice"
    r = await client.delete(f"/api/v1/silences/{sid}")
    assert r.status == 200
    listed = (await (await client.get("/api/v1/silences")).json())["data"]
    assert listed[0]["status"]["state"] == "expired"
    r = await client.delete("/api/v1/silences/nope")
    assert r.status == 404 and "no silence" in (await r.json())["error"]


@pytest.mark.parametrize(("body", "message"), [
    ({"endsAt": "2030-01-01T00:00:00Z"}, "matchers must be a non-empty list"),
    ({"matchers": [{"name": "a", "value": "b"}]}, "endsAt is required"),
    ({"matchers": [{"name": "a", "value": "b"}], "endsAt": "yesterday"}, "endsAt must be"),
    ({"matchers": [{"name": "a", "value": "b"}], "endsAt": 1.0}, "in the future"),
    ({"matchers": [{"name": "a", "value": "(", "isRegex": True}], "endsAt": 2e9},
     "invalid regex"),
    ({"matchers": [{"name": "a", "value": ".*", "isRegex": True}], "endsAt": 2e9},
     "match every alert"),
    ({"matchers": [{"name": "1bad", "value": "x"}], "endsAt": 2e9}, "label name"),
])
async def test_bad_silences_get_400_with_a_message(env: tuple[Harness, TestClient],
                                                   body: dict[str, Any], message: str) -> None:
    _, client = env
    r = await client.post("/api/v1/silences", json=body)
    assert r.status == 400
    assert message in (await r.json())["error"]


async def test_not_json_is_400(env: tuple[Harness, TestClient]) -> None:
    _, client = env
    r = await client.post("/api/v1/silences", data=b"{nope")
    assert r.status == 400 and "JSON" in (await r.json())["error"]


async def test_ack_over_http_names_the_alerts(env: tuple[Harness, TestClient]) -> None:
    h, client = env
    a = make_alert(at=h.clock(), service="checkout")
    await h.fire(a, make_alert(at=h.clock(), service="search"))
    await h.drain()
    r = await client.post("/api/v1/acks", json={"matchers": [
        {"name": "service", "value": "checkout"}], "createdBy": "alice"})
    assert r.status == 200
    body = await r.json()
    assert body["count"] == 1
    assert body["acknowledged"][0]["fingerprint"] == a.fingerprint
    r = await client.post("/api/v1/acks", json={"matchers": []})
    assert r.status == 400


async def test_notifications_view_shows_failures(env: tuple[Harness, TestClient]) -> None:
    h, client = env
    from fakes_chat import status
    h.chat.then("slack", status(403, "invalid_token"))
    await h.fire(make_alert(at=h.clock()))
    await h.drain()
    r = await client.get("/api/v1/notifications", params={"status": "failed"})
    [row] = (await r.json())["data"]
    assert row["receiver"] == "chat" and "HTTP 403" in row["last_error"]
    assert "/slack/" not in row["last_error"]
    assert (await client.get("/api/v1/notifications", params={"status": "x"})).status == 400


async def test_silences_survive_a_restart(tmp_path: Path) -> None:
    chat = await FakeChat().start()
    clock = FakeTime()
    try:
        async with sqlite_storage(tmp_path / "w.db") as db, aiohttp.ClientSession() as s:
            h = await Harness(db, s, clock, chat, RULES).start()
            await h.handler.api.silence({"matchers": {"alertname": "HighErrorRate"},
                                             "endsAt": clock() + 3600})
            await h.stop()
        async with sqlite_storage(tmp_path / "w.db") as db, aiohttp.ClientSession() as s:
            h = await Harness(db, s, clock, chat, RULES).start()
            await h.fire(make_alert(at=clock()))
            await h.tick(60)
            await h.stop()
        assert chat.accepted["slack"] == []
    finally:
        await chat.close()
