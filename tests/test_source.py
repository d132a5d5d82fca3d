"""The Prometheus client against a fake Prometheus API (a real aiohttp server): results parsed,
auth sent, garbage and outages reported with the endpoint and never with secrets."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from watchdog.source import PrometheusConfig, PrometheusSource, QueryError


class FakeProm:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.reply: Any = None
        self.status = 200
        self.delay = 0.0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        form = dict(await request.post())
        self.requests.append((request.path, {k: str(v) for k, v in form.items()},
                              dict(request.headers)))
        if self.delay:
            await asyncio.sleep(self.delay)
        if isinstance(self.reply, bytes):
            return web.Response(body=self.reply, status=self.status)
        return web.json_response(self.reply, status=self.status)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/v1/query", self.handle)
        app.router.add_post("/api/v1/query_range", self.handle)
        return app


@pytest.fixture
async def prom() -> Any:
    fake = FakeProm()
    server = TestServer(fake.app())
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    yield fake
    await server.close()


async def query(fake: Any, cfg: dict[str, Any] | None = None, expr: str = "up") -> Any:
    async with aiohttp.ClientSession() as session:
        src = PrometheusSource(session, PrometheusConfig(url=fake.url, **(cfg or {})))
        return await src.query(expr, 1700000000.5)


async def test_vector_scalar_and_special_values(prom: Any) -> None:
    prom.reply = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"__name__": "up", "job": "a"}, "value": [1, "NaN"]},
        {"metric": {"job": "b"}, "value": [1, "+Inf"]},
        {"metric": {"job": "c"}, "value": [1, "0.25"]}]}}
    samples = await query(prom)
    assert math.isnan(samples[0].value) and samples[1].value == math.inf
    assert samples[2].labels == {"job": "c"} and samples[2].value == 0.25
    path, form, _ = prom.requests[0]
    assert path == "/api/v1/query" and form == {"query": "up", "time": "1700000000.500"}
    prom.reply = {"status": "success", "data": {"resultType": "scalar", "result": [1, "3"]}}
    (s,) = await query(prom, expr="scalar(up)")
    assert s.labels == {} and s.value == 3


async def test_bearer_token_file_and_basic_auth(prom: Any, tmp_path: Path) -> None:
    prom.reply = {"status": "success", "data": {"resultType": "vector", "result": []}}
    (tmp_path / "token").write_text("s3cret-token\n")
    await query(prom, {"bearer_token_file": str(tmp_path / "token")})
    assert prom.requests[-1][2]["Authorization"] == "Bearer s3cret-token"
    (tmp_path / "pw").write_text("pa55")
    await query(prom, {"basic_auth_user": "watch",
                       "basic_auth_password_file": str(tmp_path / "pw")})
    assert prom.requests[-1][2]["Authorization"] == "Basic d2F0Y2g6cGE1NQ=="


@pytest.mark.parametrize(("reply", "status", "message"), [
    (b"<html>502 Bad Gateway</html>", 502, "HTTP 502, not a Prometheus API response"),
    ({"status": "error", "errorType": "bad_data", "error": "parse error"}, 400,
     "HTTP 400: bad_data: parse error"),
    ({"status": "success", "data": {"resultType": "matrix", "result": []}}, 200,
     "malformed result: expected a vector or scalar"),
    ({"status": "success", "data": {"resultType": "vector", "result": [{"value": 1}]}}, 200,
     "malformed result"),
])
async def test_garbage_is_a_query_error_naming_the_endpoint(prom: Any, reply: Any, status: int,
                                                            message: str) -> None:
    prom.reply, prom.status = reply, status
    with pytest.raises(QueryError) as e:
        await query(prom)
    assert f"{prom.url}/api/v1/query" in str(e.value) and message in str(e.value)


async def test_timeout_and_unreachable(prom: Any, tmp_path: Path) -> None:
    prom.reply = {"status": "success", "data": {"resultType": "vector", "result": []}}
    prom.delay = 2.0
    with pytest.raises(QueryError, match=r"timed out after 0\.2s"):
        await query(prom, {"timeout": 0.2})
    async with aiohttp.ClientSession() as session:
        src = PrometheusSource(session, PrometheusConfig(url="http://127.0.0.1:9"))
        with pytest.raises(QueryError, match=r"http://127.0.0.1:9/api/v1/query: Client"):
            await src.query("up", 0)


async def test_credentials_never_appear_in_errors(prom: Any, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret-token")
    prom.reply, prom.status = {"status": "error", "error": "unauthorized"}, 401
    with pytest.raises(QueryError) as e:
        await query(prom, {"bearer_token_file": str(tmp_path / "token")})
    assert "s3cret" not in str(e.value)
    with pytest.raises(QueryError, match="cannot read Prometheus credentials file"):
        await query(prom, {"bearer_token_file": str(tmp_path / "missing")})


async def test_url_passwords_never_appear_in_errors(prom: Any) -> None:
    prom.reply, prom.status = b"oops", 500
    url = prom.url.replace("http://", "http://watch:hunter2@")
    async with aiohttp.ClientSession() as session:
        src = PrometheusSource(session, PrometheusConfig(url=url))
        with pytest.raises(QueryError) as e:
            await src.query("up", 0)
        assert "hunter2" not in str(e.value) and "watch:***@" in str(e.value)
        dead = PrometheusSource(session, PrometheusConfig(url="http://watch:hunter2@127.0.0.1:9"))
        for call in (dead.query("up", 0), dead.buildinfo()):
            with pytest.raises(QueryError) as e:
                await call
            assert "hunter2" not in str(e.value)
