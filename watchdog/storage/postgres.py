"""The shared backend: PostgreSQL through asyncpg, for one or many replicas.

A small pool; each `transaction()` takes a connection and runs one READ COMMITTED transaction.
Statements are the `?`-style SQL of `sql.py`, rewritten once to `$1..$n` and cached. Schema
creation and migration run under a transaction-scoped advisory lock, so replicas starting at the
same moment migrate once. NUL characters (which PostgreSQL text cannot hold) are replaced in
text parameters; everything structured is JSON text, where they arrive escaped already.

Chosen over SQLAlchemy Core (async) + asyncpg: the repositories need nothing an ORM or a query
builder adds, and importing SQLAlchemy costs ~10 MiB of resident memory that a SQLite
deployment would pay too. Must not: contain repository SQL or decide anything.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from watchdog.storage.leases import PgCoordination
from watchdog.storage.ports import Coordination, StorageError
from watchdog.storage.schema import META, SCHEMA_VERSION, migration, too_new
from watchdog.storage.sql import Row, SqlTx

MIGRATION_LOCK = 0x77617463  # "watc": the advisory lock key replicas migrate under
_PLACEHOLDER = re.compile(r"\?")
_STATUS_COUNT = re.compile(r"(\d+)$")


def shown(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _dsn(url: str) -> str:
    # "postgresql+asyncpg://" (SQLAlchemy's spelling) and "postgres://" are accepted too.
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme != "postgresql" else url


class _Conn:
    def __init__(self, conn: Any, cache: dict[str, str]) -> None:
        self.conn = conn
        self.cache = cache

    def _sql(self, sql: str) -> str:
        out = self.cache.get(sql)
        if out is None:
            n = 0

            def number(_: re.Match[str]) -> str:
                nonlocal n
                n += 1
                return f"${n}"

            out = self.cache[sql] = _PLACEHOLDER.sub(number, sql)
        return out

    @staticmethod
    def _params(params: Sequence[Any]) -> list[Any]:
        return [p.replace("\x00", "\ufffd") if isinstance(p, str) and "\x00" in p else p
                for p in params]

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        status: str = await self.conn.execute(self._sql(sql), *self._params(params))
        m = _STATUS_COUNT.search(status or "")
        return int(m.group(1)) if m else 0

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self.conn.executemany(self._sql(sql), [self._params(r) for r in rows])

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return [tuple(r) for r in await self.conn.fetch(self._sql(sql),
                                                        *self._params(params))]


class PostgresStorage:
    kind = "postgresql"
    schema_version = SCHEMA_VERSION

    def __init__(self, pool: Any, url: str, coordination_pool: Any = None) -> None:
        self.pool = pool
        self.url = shown(url)
        # Heartbeats and lease renewals get connections of their own: behind evaluations that
        # hold the whole pool (an overloaded replica) they would wait past LEASE_TTL and every
        # lease would be lost at once, then taken and lost again by the next replica
        # (bench/ha.py saw that swing).
        self._coordination_pool = coordination_pool
        self.coordination: Coordination = PgCoordination(coordination_pool or pool)
        self._cache: dict[str, str] = {}

    @classmethod
    async def open(cls, url: str, *, min_size: int = 1, max_size: int = 10) -> PostgresStorage:
        where = shown(url)
        pool: Any = None
        try:
            pool = await asyncpg.create_pool(_dsn(url), min_size=min_size, max_size=max_size,
                                             timeout=10, command_timeout=30)
            # one held for the replica id's lock, one listening for other replicas' signals,
            # one for the heartbeat cycle, one spare
            coordination = await asyncpg.create_pool(_dsn(url), min_size=1, max_size=4,
                                                     timeout=10, command_timeout=30)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError,
                ValueError) as e:
            if pool is not None:
                with contextlib.suppress(Exception):
                    await pool.close()
            raise StorageError(f"WATCHDOG_STATE_URL: cannot connect to {where}: "
                               f"{type(e).__name__}: {e}".replace(url, where)) from None
        store = cls(pool, url, coordination)
        try:
            await store._migrate()
        except BaseException:
            await store.close()
            raise
        return store

    async def _migrate(self) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(META)
            value = await conn.fetchval("SELECT value FROM schema_meta WHERE key = 'version'")
            found = int(value) if value is not None else 0
            if found > SCHEMA_VERSION:
                raise StorageError(too_new(found, self.url))
            for v in range(found + 1, SCHEMA_VERSION + 1):
                for stmt in migration(v, "postgresql"):
                    await conn.execute(stmt)
            if found != SCHEMA_VERSION:
                await conn.execute(
                    "INSERT INTO schema_meta (key, value) VALUES ('version', $1) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    str(SCHEMA_VERSION))

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlTx]:
        async with self.pool.acquire() as conn:
            tx = SqlTx(_Conn(conn, self._cache), shared=True)
            try:
                async with conn.transaction():
                    yield tx
            except BaseException:
                tx.close()
                raise
            tx.committed()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.coordination.close()  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):
            await self.pool.close()
        if self._coordination_pool is not None:
            with contextlib.suppress(Exception):
                await self._coordination_pool.close()
