"""Where the daemon keeps alert state between evaluations and across restarts (`STATE_URL`).

Shell: the `AlertStore` interface and its SQLite implementation over aiosqlite (WAL,
`synchronous=NORMAL`: a crash loses at most the last transactions, never corrupts; fsync on
every tick would cost more than the evaluation). A PostgreSQL backend implements the same
`AlertStore`. Each tick writes only the alert instances that changed, in one transaction; a
group whose alerts did not change costs no write at all. The store also keeps the last accepted
content of each rule file, so a file broken while the daemon was down still runs its last good
version after a restart.

It must not interpret alerts (no firing semantics: that is `watchdog.state`; no restart
arithmetic: that is `watchdog.reload`) and must not read the clock.

`open_db` also makes the one connection the daemon shares with notifications and actions
(`DaemonContext.db`); `transaction(db)` serialises multi-statement writes on it, since
coroutines interleave on one connection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiosqlite

from watchdog.state import Alert

SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_instances (
    group_key   TEXT NOT NULL,           -- "<file>;<group name>", as Prometheus keys groups
    rule_key    TEXT NOT NULL,           -- engine.rule_keys: the alert name, numbered on repeats
    fingerprint TEXT NOT NULL,
    rule_sig    TEXT NOT NULL,           -- the rule (expr + labels) the state belongs to
    state       TEXT NOT NULL,
    active_at   REAL NOT NULL,
    data        TEXT NOT NULL,           -- the whole Alert as JSON (NaN kept)
    PRIMARY KEY (group_key, rule_key, fingerprint)
);
CREATE TABLE IF NOT EXISTS alert_groups (
    group_key    TEXT PRIMARY KEY,
    last_eval_at REAL                    -- Prometheus's "downAt" for restoring `for` state
);
CREATE TABLE IF NOT EXISTS rule_files (
    path    TEXT PRIMARY KEY,
    digest  TEXT NOT NULL,
    content BLOB NOT NULL                -- last accepted version
);
"""


class StoreError(Exception):
    """A bad STATE_URL; the message names the setting."""


def sqlite_path(state_url: str) -> str:
    """`sqlite:///rel/path.db`, `sqlite:////abs/path.db` (SQLAlchemy's spelling) or
    `sqlite://:memory:` -> the path aiosqlite opens."""
    for prefix in ("sqlite:///", "sqlite://"):
        if state_url.startswith(prefix):
            path = state_url[len(prefix):]
            return path or ":memory:"
    scheme = state_url.split("://", 1)[0] if "://" in state_url else state_url
    raise StoreError(f"WATCHDOG_STATE_URL: unsupported store {scheme!r}; only SQLite is "
                     "implemented (sqlite:///relative/path.db or sqlite:////absolute/path.db)")


async def open_db(state_url: str) -> aiosqlite.Connection:
    path = sqlite_path(state_url)
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(path)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        # Notifications and actions may open their own connections to the same file.
        await db.execute("PRAGMA busy_timeout=5000")
        await db.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        await db.close()
        raise
    return db


_tx_locks: weakref.WeakKeyDictionary[aiosqlite.Connection, asyncio.Lock] = (
    weakref.WeakKeyDictionary())


@asynccontextmanager
async def transaction(db: aiosqlite.Connection) -> AsyncIterator[aiosqlite.Connection]:
    """Statements inside run as one transaction, committed at the end, rolled back on error.

    One lock per connection, because coroutines sharing a connection would otherwise commit
    each other's half-done writes. sqlite3 opens the transaction at the first write.
    """
    lock = _tx_locks.setdefault(db, asyncio.Lock())
    async with lock:
        try:
            yield db
        except BaseException:
            await db.rollback()
            raise
        await db.commit()


# ---- the interface ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredRule:
    sig: str
    alerts: dict[str, Alert]  # fingerprint -> alert


@dataclass(frozen=True)
class StoredGroup:
    last_eval_at: float | None
    rules: dict[str, StoredRule]  # rule key -> its alerts


@dataclass
class GroupChanges:
    """What one tick (or a reload) changed in one group; saved as one unit."""

    group_key: str
    at: float | None = None  # evaluation time to record as the group's last
    upserts: list[tuple[str, str, Alert]] = field(default_factory=list)  # (rule key, sig, alert)
    deletes: list[tuple[str, str]] = field(default_factory=list)  # (rule key, fingerprint)
    drop_rules: list[str] = field(default_factory=list)  # rule keys whose alerts all go
    drop_group: bool = False

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes or self.drop_rules or self.drop_group)


class AlertStore(Protocol):
    async def init(self) -> None:
        """Create the schema if missing."""

    async def load(self) -> dict[str, StoredGroup]:
        """Everything saved, by group key."""

    async def save(self, changes: Sequence[GroupChanges]) -> None:
        """Apply all `changes` in one transaction."""

    async def load_rule_files(self) -> dict[str, bytes]:
        """The last accepted content of each rule file, by path."""

    async def save_rule_files(self, files: Mapping[str, tuple[str, bytes]],
                              forget: Sequence[str] = ()) -> None:
        """Record accepted files ({path: (digest, content)}); forget deleted ones."""


# ---- (de)serialisation -------------------------------------------------------------------------

_ALERT_FIELDS = frozenset(f.name for f in dataclasses.fields(Alert))


def alert_to_json(a: Alert) -> str:
    d = dataclasses.asdict(a)
    d["labels"], d["annotations"] = dict(a.labels), dict(a.annotations)
    return json.dumps(d, separators=(",", ":"), sort_keys=True)  # NaN/Inf kept as NaN/Infinity


def alert_from_json(text: str) -> Alert:
    d: dict[str, Any] = json.loads(text)
    # Ignore fields a newer version wrote; missing optional ones take their defaults.
    return Alert(**{k: v for k, v in d.items() if k in _ALERT_FIELDS})


# ---- SQLite ------------------------------------------------------------------------------------


class SqliteAlertStore:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def init(self) -> None:
        async with transaction(self.db) as db:
            await db.executescript(SCHEMA)

    async def load(self) -> dict[str, StoredGroup]:
        groups: dict[str, StoredGroup] = {}
        async with self.db.execute("SELECT group_key, last_eval_at FROM alert_groups") as cur:
            async for key, last in cur:
                groups[key] = StoredGroup(last, {})
        async with self.db.execute(
                "SELECT group_key, rule_key, fingerprint, rule_sig, data FROM alert_instances"
        ) as cur:
            async for gkey, rkey, fp, sig, data in cur:
                g = groups.setdefault(gkey, StoredGroup(None, {}))
                rule = g.rules.setdefault(rkey, StoredRule(sig, {}))
                rule.alerts[fp] = alert_from_json(data)
        return groups

    async def save(self, changes: Sequence[GroupChanges]) -> None:
        changes = [c for c in changes if c or c.at is not None]
        if not changes:
            return
        async with transaction(self.db) as db:
            for c in changes:
                if c.drop_group:
                    await db.execute("DELETE FROM alert_instances WHERE group_key = ?",
                                     (c.group_key,))
                    await db.execute("DELETE FROM alert_groups WHERE group_key = ?",
                                     (c.group_key,))
                    continue
                if c.drop_rules:
                    await db.executemany(
                        "DELETE FROM alert_instances WHERE group_key = ? AND rule_key = ?",
                        [(c.group_key, r) for r in c.drop_rules])
                if c.deletes:
                    await db.executemany(
                        "DELETE FROM alert_instances WHERE group_key = ? AND rule_key = ? "
                        "AND fingerprint = ?", [(c.group_key, r, fp) for r, fp in c.deletes])
                if c.upserts:
                    await db.executemany(
                        "INSERT OR REPLACE INTO alert_instances (group_key, rule_key, "
                        "fingerprint, rule_sig, state, active_at, data) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [(c.group_key, r, a.fingerprint, sig, a.state, a.active_at,
                          alert_to_json(a)) for r, sig, a in c.upserts])
                if c.at is not None:
                    await db.execute(
                        "INSERT OR REPLACE INTO alert_groups (group_key, last_eval_at) "
                        "VALUES (?, ?)", (c.group_key, c.at))

    async def load_rule_files(self) -> dict[str, bytes]:
        async with self.db.execute("SELECT path, content FROM rule_files") as cur:
            return {path: bytes(content) async for path, content in cur}

    async def save_rule_files(self, files: Mapping[str, tuple[str, bytes]],
                              forget: Sequence[str] = ()) -> None:
        if not files and not forget:
            return
        async with transaction(self.db) as db:
            if forget:
                await db.executemany("DELETE FROM rule_files WHERE path = ?",
                                     [(p,) for p in forget])
            if files:
                await db.executemany(
                    "INSERT OR REPLACE INTO rule_files (path, digest, content) VALUES (?, ?, ?)",
                    [(p, d, c) for p, (d, c) in files.items()])
