"""The embedded backend: one SQLite file (WAL) owned by one process.

WAL with `synchronous=NORMAL`: a crash (SIGKILL, power loss) loses at most the last commits,
never corrupts; fsync on every evaluation would cost more than the evaluation. One aiosqlite
connection, and one asyncio lock around each transaction, because coroutines sharing a
connection would otherwise commit each other's half-done writes. The file is locked (`flock` on
a `-lock` file beside it) for the life of the process: a second watchdog on the same file is
refused at start, since two processes deciding from one file would both act.

Must not: contain repository SQL (that is `sql.py`) or decide anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from watchdog.storage.ports import Coordination, StorageError
from watchdog.storage.schema import META, SCHEMA_VERSION, migration, too_new
from watchdog.storage.solo import SoloCoordination
from watchdog.storage.sql import Row, SqlTx


def sqlite_path(url: str) -> str:
    """`sqlite:///rel/path.db`, `sqlite:////abs/path.db` (SQLAlchemy's spelling) or
    `sqlite://:memory:` -> the path to open."""
    for prefix in ("sqlite:///", "sqlite://"):
        if url.startswith(prefix):
            return url[len(prefix):] or ":memory:"
    raise StorageError(f"WATCHDOG_STATE_URL: {url!r} is not a sqlite:// URL")


class _Conn:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cur = await self.db.execute(sql, params)
        n = cur.rowcount
        await cur.close()
        return max(n, 0)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self.db.executemany(sql, rows)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self.db.execute(sql, params) as cur:
            return [tuple(r) for r in await cur.fetchall()]


class SqliteStorage:
    kind = "sqlite"
    schema_version = SCHEMA_VERSION

    def __init__(self, db: aiosqlite.Connection, path: str, lock_fd: int | None) -> None:
        self.db = db
        self.path = path
        self.coordination: Coordination = SoloCoordination()
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[object] | None = None
        self._lock_fd = lock_fd
        self._conn = _Conn(db)

    @classmethod
    async def open(cls, url: str) -> SqliteStorage:
        path = sqlite_path(url)
        lock_fd: int | None = None
        if path != ":memory:":
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                lock_fd = _lock_file(path)
            except OSError as e:
                raise StorageError(f"WATCHDOG_STATE_URL: cannot open {path}: "
                                   f"{e.strerror or e}") from None
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            _unlock(lock_fd)
            raise StorageError(f"WATCHDOG_STATE_URL: cannot open {path}: {e}") from None
        store = cls(db, path, lock_fd)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA busy_timeout=5000")
            await store._migrate()
        except sqlite3.Error as e:
            await store.close()
            raise StorageError(f"WATCHDOG_STATE_URL: {path} is not a usable SQLite database: "
                               f"{e}") from None
        except BaseException:
            await store.close()
            raise
        return store

    async def _migrate(self) -> None:
        async with self._begin() as c:
            await c.execute(META)
            row = await c.fetchall("SELECT value FROM schema_meta WHERE key = 'version'")
            found = int(row[0][0]) if row else 0
            if found > SCHEMA_VERSION:
                raise StorageError(too_new(found, self.path))
            for v in range(found + 1, SCHEMA_VERSION + 1):
                for stmt in migration(v, "sqlite"):
                    await c.execute(stmt)
            if found != SCHEMA_VERSION:
                await c.execute(
                    "INSERT INTO schema_meta (key, value) VALUES ('version', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),))

    @contextlib.asynccontextmanager
    async def _begin(self) -> AsyncIterator[_Conn]:
        me = asyncio.current_task()
        if me is not None and me is self._owner:
            # The lock is not re-entrant: waiting for it here would wait forever.
            raise StorageError("a transaction was opened inside another one in the same task; "
                               "pass the open Tx down instead")
        async with self._lock:
            self._owner = me
            try:
                # IMMEDIATE: take the write lock now, so a read-then-write in one transaction
                # cannot be overtaken by another connection (an operator's sqlite3 shell).
                # Inside the try: a task cancelled while BEGIN is queued must still roll back,
                # or the connection stays in a transaction for the next one.
                await self.db.execute("BEGIN IMMEDIATE")
                yield self._conn
                await self.db.execute("COMMIT")
            except BaseException:
                # Queued after whatever the cancelled statement was, so it runs after it.
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await self.db.execute("ROLLBACK")
                raise
            finally:
                self._owner = None

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlTx]:
        async with self._begin() as c:
            tx = SqlTx(c)
            try:
                yield tx
            except BaseException:
                tx.close()
                raise
        tx.committed()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.db.close()
        _unlock(self._lock_fd)
        self._lock_fd = None


def _lock_file(path: str) -> int:
    fd = os.open(path + "-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(
            f"WATCHDOG_STATE_URL: {path} is in use by another watchdog process. One SQLite "
            "file serves one process; to run several replicas, give them one PostgreSQL "
            "database (WATCHDOG_STATE_URL=postgresql://user:password@host:5432/db)") from None
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)  # closing the descriptor releases the flock
