"""Prometheus's query API through the watchdog (`watchdog.query_proxy`), for Grafana's
Prometheus data source: every request is sent as Grafana's client sends it (pkg/promlib/client:
POST with a form by default, GET when the data source is set to GET; the health check posts
`query=1+1&time=4`, then reads buildinfo), once to the watchdog and once to the real Prometheus
behind it, and the answers must be the same.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import BackfilledPrometheus
from hypothesis import given
from hypothesis import strategies as st
from test_daemon_support import TOKEN, settings

from watchdog import query_proxy
from watchdog.daemon import Daemon
from watchdog.promserver import PrometheusServer
from watchdog.rulefile import MAX_EXPR_LENGTH
from watchdog.series import Series

pytestmark = pytest.mark.prometheus

READ = "read-token-for-grafana"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
# Three series of a counter over an hour, every 15 s (times from 0, as the backfill writes them).
SERIES = [Series({"__name__": "http_requests_total", "job": "api", "code": code},
                 [(float(t), float(t * rate)) for t in range(0, 3601, 15)])
          for code, rate in (("200", 10), ("500", 1), ("404", 2))]


@dataclass
class Pair:
    watchdog: str
    prometheus: str
    session: aiohttp.ClientSession
    daemon: Daemon

    async def both(self, method: str, path: str, params: dict[str, str] | list[tuple[str, str]],
                   token: str | None = None) -> tuple[tuple[int, Any], tuple[int, Any]]:
        ours = await self.call(self.watchdog, method, path, params, token)
        theirs = await self.call(self.prometheus, method, path, params, None)
        return ours, theirs

    async def call(self, base: str, method: str, path: str,
                   params: dict[str, str] | list[tuple[str, str]], token: str | None = None
                   ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if method == "POST":
            kwargs: dict[str, Any] = {"data": params, "headers": {**headers, **FORM}}
        else:
            kwargs = {"params": params, "headers": headers}
        async with self.session.request(method, base + path, **kwargs) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text


@pytest.fixture
def prometheus(backfilled_prometheus: BackfilledPrometheus) -> PrometheusServer:
    return backfilled_prometheus(SERIES)


async def _pair(tmp_path: Path, prom_url: str, **overrides: Any) -> AsyncIterator[Pair]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    s = settings(tmp_path, prometheus_url=prom_url, **overrides)
    async with Daemon(s, schedule=False) as d, aiohttp.ClientSession() as session:
        assert d.http_url is not None
        yield Pair(d.http_url, prom_url, session, d)


@pytest.fixture
async def pair(tmp_path: Path, prometheus: PrometheusServer) -> AsyncIterator[Pair]:
    async for p in _pair(tmp_path, prometheus.url):
        yield p


async def test_grafana_save_and_test(pair: Pair) -> None:
    """CheckHealth: an instant query of `1+1` at time 4, POSTed as a form (GET when the data
    source is set to GET), then `GET api/v1/status/buildinfo` for its heuristics."""
    for method in ("POST", "GET"):
        ours, theirs = await pair.both(method, "/api/v1/query", {"query": "1+1", "time": "4"})
        assert ours == theirs == (200, {"status": "success", "data": {
            "resultType": "scalar", "result": [4, "2"]}})
    status, body = await pair.call(pair.watchdog, "GET", "/api/v1/status/buildinfo", {})
    _, prom = await pair.call(pair.prometheus, "GET", "/api/v1/status/buildinfo", {})
    assert status == 200 and body["status"] == "success"
    assert set(body["data"]) == set(prom["data"])  # the same six fields as Prometheus's
    # no "features": Grafana's heuristics call the data source "Prometheus" (not Mimir), so it
    # does not look for a ruler API
    assert "features" not in body["data"]


async def test_instant_and_range_queries_answer_as_prometheus(pair: Pair) -> None:
    rate = 'sum by (code) (rate(http_requests_total{job="api"}[5m]))'
    for method in ("POST", "GET"):
        # as Grafana's QueryInstant and QueryRange send them (strconv 'f', -1 times and step)
        cases: list[tuple[str, dict[str, str]]] = [
            ("/api/v1/query", {"query": rate, "time": "1800"}),
            ("/api/v1/query", {"query": "http_requests_total", "time": "1800.5",
                               "timeout": "30s"}),
            ("/api/v1/query_range", {"query": rate, "start": "600", "end": "3600",
                                     "step": "60"}),
            ("/api/v1/query_range", {"query": "http_requests_total[1m]", "start": "0",
                                     "end": "60", "step": "15"}),  # a range vector: 400
            ("/api/v1/query", {"query": "sum(", "time": "10"}),  # a parse error: 400 bad_data
            ("/api/v1/query_range", {"query": "up", "start": "10", "end": "0", "step": "1"}),
            ("/api/v1/query_range", {"query": "up", "start": "0", "end": "100000",
                                     "step": "1"}),  # > 11,000 points: 400
        ]
        for path, params in cases:
            ours, theirs = await pair.both(method, path, params)
            assert ours == theirs, (method, path, params)
    status, body = await pair.call(pair.watchdog, "POST", "/api/v1/query_range",
                                   {"query": rate, "start": "600", "end": "3600", "step": "60"})
    assert status == 200
    assert {r["metric"]["code"] for r in body["data"]["result"]} == {"200", "500", "404"}
    assert len(body["data"]["result"][0]["values"]) == 51


async def test_query_editor_endpoints_answer_as_prometheus(pair: Pair) -> None:
    """The metrics browser: label names, label values, series (Grafana GETs label values)."""
    cases: list[tuple[str, str, list[tuple[str, str]]]] = [
        ("GET", "/api/v1/labels", [("start", "0"), ("end", "3600")]),
        ("POST", "/api/v1/labels", [("match[]", 'http_requests_total{code="500"}')]),
        ("GET", "/api/v1/label/__name__/values", [("start", "0"), ("end", "3600")]),
        ("GET", "/api/v1/label/code/values", [("match[]", "http_requests_total"),
                                              ("start", "0"), ("end", "3600")]),
        ("POST", "/api/v1/series", [("match[]", 'http_requests_total{code="200"}'),
                                    ("match[]", 'http_requests_total{code="404"}'),
                                    ("start", "0"), ("end", "3600")]),
        ("GET", "/api/v1/series", []),  # no match[]: Prometheus's 400
    ]
    for method, path, params in cases:
        ours, theirs = await pair.both(method, path, params)
        assert ours == theirs, (method, path, params)
    status, body = await pair.call(pair.watchdog, "GET", "/api/v1/label/code/values",
                                   [("start", "0"), ("end", "3600")])
    assert (status, body["data"]) == (200, ["200", "404", "500"])
    # Prometheus takes label values by GET only; so does the watchdog (Grafana's client knows)
    # (a POST that is not a query is a write to the watchdog, so it needs the API token first)
    status, body = await pair.call(pair.watchdog, "POST", "/api/v1/label/code/values", {},
                                   token=TOKEN)
    assert status == 405 and body["status"] == "error"
    status, body = await pair.call(pair.watchdog, "DELETE", "/api/v1/series",
                                   [("match[]", "up")], token=TOKEN)
    assert status == 405, "deleting series is never forwarded"


async def test_the_proxy_is_bounded(pair: Pair, tmp_path: Path,
                                    prometheus: PrometheusServer) -> None:
    huge = "+".join(["up"] * 2_100)
    status, body = await pair.call(pair.watchdog, "POST", "/api/v1/query", {"query": huge})
    assert status == 400 and body["errorType"] == "bad_data"
    assert "too large" in body["error"]
    status, body = await pair.call(pair.watchdog, "GET", "/api/v1/query",
                                   {"query": "1", "time": "1" * 300})
    assert status == 400 and "'time'" in body["error"]
    # an answer over QUERY_PROXY_MAX_BYTES is refused, not buffered
    async for small in _pair(tmp_path / "small", prometheus.url, query_proxy_max_bytes=1024):
        status, body = await small.call(small.watchdog, "POST", "/api/v1/query_range", {
            "query": "http_requests_total", "start": "0", "end": "3600", "step": "15"})
        assert status == 422 and body["errorType"] == "execution"
        assert "QUERY_PROXY_MAX_BYTES" in body["error"]


async def test_an_unreachable_prometheus_is_a_503(tmp_path: Path) -> None:
    async for p in _pair(tmp_path, "http://127.0.0.1:9"):
        status, body = await p.call(p.watchdog, "POST", "/api/v1/query", {"query": "1+1"})
        assert status == 503 and body["errorType"] == "unavailable"
        assert "127.0.0.1:9/api/v1/query" in body["error"]


async def test_read_token_and_borrowed_credentials(tmp_path: Path,
                                                   prometheus: PrometheusServer) -> None:
    q = {"query": "1+1", "time": "4"}
    # API_READ_TOKEN set: the read token (or the write token) is needed, also for a POST
    async for p in _pair(tmp_path / "a", prometheus.url, api_read_token=READ):
        assert (await p.call(p.watchdog, "POST", "/api/v1/query", q))[0] == 401
        assert (await p.call(p.watchdog, "POST", "/api/v1/query", q, token="nope"))[0] == 403
        for token in (READ, TOKEN):
            for method in ("POST", "GET"):
                status, _ = await p.call(p.watchdog, method, "/api/v1/query", q, token=token)
                assert status == 200, (method, token)
    # reads open, no Prometheus credentials: open like every other read
    async for p in _pair(tmp_path / "b", prometheus.url):
        assert (await p.call(p.watchdog, "POST", "/api/v1/query", q))[0] == 200
    # reads open, but Prometheus takes the watchdog's bearer token: the API token is needed
    secret = tmp_path / "prom-token"
    secret.write_text("prometheus-secret\n")
    async for p in _pair(tmp_path / "c", prometheus.url,
                         prometheus_bearer_token_file=str(secret)):
        status, body = await p.call(p.watchdog, "POST", "/api/v1/query", q)
        assert status == 401
        assert (await p.call(p.watchdog, "POST", "/api/v1/query", q, token=TOKEN))[0] == 200
        # the rest of the read API stays open
        assert (await p.call(p.watchdog, "GET", "/api/v1/rules", {}))[0] == 200
    async for p in _pair(tmp_path / "d", prometheus.url, api_token=None,
                         prometheus_bearer_token_file=str(secret)):
        status, body = await p.call(p.watchdog, "GET", "/api/v1/query", q)
        assert status == 403 and "WATCHDOG_API_READ_TOKEN" in body["error"]


@given(st.lists(st.tuples(st.sampled_from(["query", "time", "match[]", "step", "x", "start"]),
                          st.text(max_size=20)), max_size=12))
def test_select_params_keeps_the_first_of_each_and_every_matcher(
        pairs: list[tuple[str, str]]) -> None:
    allowed = query_proxy.ENDPOINTS["/api/v1/query"][1] | {"match[]"}
    out = query_proxy.select_params(allowed, pairs)
    firsts: dict[str, str] = {}
    for k, v in pairs:
        if k in allowed and k != "match[]":
            firsts.setdefault(k, v)
    assert [kv for kv in out if kv[0] != "match[]"] == list(firsts.items())
    assert [kv for kv in out if kv[0] == "match[]"] == [kv for kv in pairs if kv[0] == "match[]"]


def test_select_params_bounds() -> None:
    with pytest.raises(query_proxy.BadParams, match="too many match"):
        query_proxy.select_params(frozenset({"match[]"}), [("match[]", "up")] * 101)
    with pytest.raises(query_proxy.BadParams, match="match"):
        query_proxy.select_params(frozenset({"match[]"}),
                                  [("match[]", "u" * (MAX_EXPR_LENGTH + 1))])
