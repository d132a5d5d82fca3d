"""State storage: one port (`ports.Storage`), three backends chosen by `STATE_URL`.

- `sqlite:///path.db` (default): embedded, WAL, one process per file.
- `postgresql://user:pass@host:5432/db`: shared by any number of replicas.
- `memory://`: the in-process fake for unit tests (nothing survives the process).

Nothing outside this package writes SQL or imports a database driver (import-linter says so).
"""

from __future__ import annotations

from watchdog.storage.ports import (
    DEPLOYS,
    SILENCES,
    DuplicateRun,
    Lease,
    LeaseLost,
    Storage,
    StorageError,
    Tx,
)

__all__ = ["DEPLOYS", "SILENCES", "DuplicateRun", "Lease", "LeaseLost", "Storage", "StorageError",
           "Tx", "check_url", "open_storage"]


def check_url(url: str) -> str:
    """The backend a `STATE_URL` names ("sqlite", "postgresql", "memory"); raises
    `StorageError` naming the setting for anything else."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        return "sqlite"
    if scheme in ("postgresql", "postgres") or scheme.startswith("postgresql+"):
        return "postgresql"
    if scheme == "memory":
        return "memory"
    shown = scheme or url[:40]
    raise StorageError(
        f"WATCHDOG_STATE_URL: unsupported store {shown!r}; use sqlite:///relative/path.db, "
        "sqlite:////absolute/path.db or postgresql://user:password@host:5432/database")


async def open_storage(url: str) -> Storage:
    """Open (and create or migrate the schema of) the store `url` names."""
    kind = check_url(url)
    if kind == "memory":
        from watchdog.storage.memory import MemoryStorage

        return MemoryStorage()
    if kind == "sqlite":
        from watchdog.storage.sqlite import SqliteStorage

        return await SqliteStorage.open(url)
    # Imported only when used: asyncpg is not needed (nor loaded) by SQLite deployments.
    from watchdog.storage.postgres import PostgresStorage

    return await PostgresStorage.open(url)
