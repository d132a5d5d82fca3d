"""Shared fixtures: the real Prometheus and promtool from Debian's ``prometheus`` package, an
aiohttp client ``session``, and ``chat`` (a started ``fakes_chat.FakeChat``).

Tests that need them ask for ``prometheus_binary``/``promtool_binary`` (or call
``require_binary``): on a developer machine without the package they are skipped with the
apt-get hint; under CI (the ``CI`` environment variable set) they fail instead, because a CI
run that silently skips the real-Prometheus tests proves nothing. This file must not start
anything at import time or share one Prometheus between tests: each test gets its own, over its
own TSDB, stopped at teardown.
"""

from __future__ import annotations

import itertools
import json
import os
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol

import aiohttp
import pytest
from fakes_chat import FakeChat

from watchdog.promserver import APT_HINT, PrometheusServer, backfill, find_binary
from watchdog.series import Series


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing(name: str) -> NoReturn:
    message = f"{name} is not installed; {APT_HINT}"
    if _in_ci():
        pytest.fail(f"{message} (CI is set: these tests must run, not skip)", pytrace=False)
    pytest.skip(message)


def require_binary(name: str) -> str:
    """The path of ``name``; skips the test if it is missing, or fails it when CI is set."""
    path = find_binary(name)
    if path is None:
        _missing(name)
    return path


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return require_binary("prometheus")


@pytest.fixture(scope="session")
def promtool_binary() -> str:
    return require_binary("promtool")


class BackfilledPrometheus(Protocol):
    def __call__(
        self,
        series: Iterable[Series],
        *,
        config: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> PrometheusServer: ...


@pytest.fixture
def backfilled_prometheus(
    tmp_path: Path, prometheus_binary: str, promtool_binary: str
) -> Iterator[BackfilledPrometheus]:
    """Factory: ``prom = backfilled_prometheus([Series...])`` is a started Prometheus.

    Each call backfills a fresh TSDB under tmp_path (its log and config beside it, kept by
    pytest for a look after a failure); every server is stopped at teardown.
    """
    servers: list[PrometheusServer] = []
    numbers = itertools.count()

    def make(
        series: Iterable[Series],
        *,
        config: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> PrometheusServer:
        tsdb = tmp_path / f"prometheus-{next(numbers)}" / "tsdb"
        backfill(series, tsdb, promtool=promtool_binary)
        server = PrometheusServer(
            tsdb, config=config, extra_args=extra_args, binary=prometheus_binary
        )
        servers.append(server)
        server.start()
        return server

    yield make
    for server in reversed(servers):
        server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def chat() -> AsyncIterator[FakeChat]:
    c = await FakeChat().start()
    yield c
    await c.close()


# No proxy for loopback requests, whatever http_proxy says.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def prom_api(server: PrometheusServer, path: str, **params: str | float) -> Any:
    """GET ``/api/v1/<path>`` on ``server`` and return ``data``; fails the test on an error."""
    query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
    with _opener.open(f"{server.url}/api/v1/{path}?{query}", timeout=30) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def instant_query(server: PrometheusServer, expr: str, at: float) -> list[dict[str, Any]]:
    """The vector result of ``expr`` evaluated at Unix time ``at``."""
    data = prom_api(server, "query", query=expr, time=at)
    assert data["resultType"] == "vector", data
    result: list[dict[str, Any]] = data["result"]
    return result
