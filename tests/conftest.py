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

import contextlib
import glob
import itertools
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol

import aiohttp
import pytest
from fakes_chat import FakeChat

from watchdog.promserver import APT_HINT, PrometheusServer, backfill, find_binary, free_port
from watchdog.series import Series


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing(name: str, hint: str = APT_HINT) -> NoReturn:
    message = f"{name} is not installed; {hint}"
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


# ---- PostgreSQL --------------------------------------------------------------------------------

PG_HINT = ("install Debian's postgresql package (apt-get install postgresql), or set "
           "WATCHDOG_TEST_POSTGRES_URL=postgresql://user@host:port/db of a server to use")


def _pg_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<major>/bin with initdb and pg_ctl."""
    found = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin")
             if os.access(Path(d) / "initdb", os.X_OK) and os.access(Path(d) / "pg_ctl", os.X_OK)]
    found.sort(key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)
    return found[-1] if found else None


def _with_database(url: str, name: str) -> str:
    return urllib.parse.urlsplit(url)._replace(path="/" + name).geturl()


@contextlib.contextmanager
def _throwaway_cluster(bindir: Path) -> Iterator[str]:
    """initdb + pg_ctl start in a temp dir, trust auth, loopback only; stopped and deleted after.

    PostgreSQL refuses to run as root, so as root it runs as the `postgres` user, in a directory
    that user owns (pytest's own tmp dirs are private to root).
    """
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="watchdog-pg-"))
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base)
            _missing("the postgres user", PG_HINT)
        os.chown(base, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", free_port()

    def run(*args: str | Path) -> None:
        done = subprocess.run([*as_user, *map(str, args)], capture_output=True, text=True,
                              timeout=120, check=False)
        if done.returncode != 0:
            message = f"{Path(args[0]).name} failed: {(done.stdout + done.stderr).strip()[-2000:]}"
            if _in_ci():
                pytest.fail(message, pytrace=False)
            pytest.skip(message)

    try:
        run(bindir / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--no-locale", "--no-sync")
        # Durability settings off: a test cluster dies with the session anyway.
        run(bindir / "pg_ctl", "-D", data, "-l", base / "server.log", "-w", "-t", "60", "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            "start")
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                            "-w", "stop"], capture_output=True, timeout=60, check=False)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A PostgreSQL server for the session: WATCHDOG_TEST_POSTGRES_URL when set, else a
    throwaway cluster of Debian's postgresql package on a free port. Skipped when neither is
    possible (failed under CI)."""
    url = os.environ.get("WATCHDOG_TEST_POSTGRES_URL", "").strip()
    if url:
        yield url
        return
    bindir = _pg_bindir()
    if bindir is None:
        _missing("PostgreSQL (/usr/lib/postgresql/*/bin/initdb)", PG_HINT)
    with _throwaway_cluster(bindir) as url:
        yield url


@pytest.fixture
async def postgres_url(postgres_server_url: str) -> AsyncIterator[str]:
    """A fresh, empty database on the session's server for one test, dropped afterwards."""
    import asyncpg

    admin = _with_database(postgres_server_url, "postgres")
    name = f"wd_test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield _with_database(postgres_server_url, name)
    conn = await asyncpg.connect(admin)
    try:
        # FORCE: a test that failed with its store still open must not leak the database.
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[tuple[Any, Any]]:
    """A store on a fresh PostgreSQL database and a raw connection beside it, for tests that
    move the database's clock-based columns by hand (expire a lease, a claim)."""
    import asyncpg
    from storage_support import storage_at

    async with storage_at(postgres_url) as s:
        conn = await asyncpg.connect(postgres_url)
        try:
            yield s, conn
        finally:
            await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """`WATCHDOG_STATE_URL` for one test, once per backend: a SQLite file, and a fresh
    PostgreSQL database (`postgres_url`). The persistence, restart and crash tests use it."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return str(request.getfixturevalue("postgres_url"))
