"""The incidents repository (`Tx.incidents`), held to one contract on every backend: the
in-memory fake, SQLite and a real PostgreSQL. Also: a database of schema version 1 migrates to
version 2 with its rows intact (SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from watchdog.storage import Storage, Tx, open_storage
from watchdog.storage.records import (
    AckRecord,
    IncidentAction,
    IncidentChange,
    IncidentRecord,
    RunRow,
)
from watchdog.storage.schema import SCHEMA_VERSION, migration

T = TypeVar("T")

BACKENDS = ["memory", "sqlite", "postgresql"]
LABELS = {"alertname": "HighErrors", "service": "checkout-サービス", "quote": "it's \"x\"",
          "nul": "a\x00b", "empty": ""}


def _postgres_url(request: pytest.FixtureRequest) -> str:
    try:
        url: str = request.getfixturevalue("postgres_url")
    except pytest.FixtureLookupError:
        pytest.skip("no PostgreSQL fixture (tests/conftest.py postgres_url)")
    return url


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/s.db"
    return _postgres_url(request)


@pytest.fixture
async def storage(url: str) -> AsyncIterator[Storage]:
    s = await open_storage(url)
    yield s
    await s.close()


async def read(storage: Storage, f: Callable[[Tx], Awaitable[T]]) -> T:
    async with storage.transaction() as tx:
        return await f(tx)


def incident(inc: str = "fp1@100.000", *, rule: str = "HighErrors", active_at: float = 100.0,
             **kw: Any) -> IncidentRecord:
    fields: dict[str, Any] = dict(id=inc, rule=rule, group="checkout",
                                  fingerprint=inc.split("@")[0], labels=LABELS,
                                  severity="warning", active_at=active_at)
    fields.update(kw)
    return IncidentRecord(**fields)


def run_row(run_id: str, incident_id: str | None, *, action: str = "rollback",
            created_at: float = 1000.0, **kw: Any) -> RunRow:
    fields: dict[str, Any] = dict(
        id=run_id, action=action, trigger="alert", rule="HighErrors", group="g",
        fingerprint="fp1", incident_id=incident_id, labels={"service": "checkout"},
        annotations={}, value_before=0.2, active_at=100.0, dry_run=False, spec="{}",
        status="running", next_step=0, created_at=created_at, finished_at=None, detail="",
        verify_at=None, verification=None, value_after=None)
    fields.update(kw)
    return RunRow(**fields)


async def test_open_is_first_wins_and_reads_back_what_was_written(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.incidents.open([incident()])
        await tx.incidents.open([incident(severity="critical", active_at=5.0),
                                 incident("fp2@100.000")])
        await tx.incidents.open([])
    got = await read(storage, lambda tx: tx.incidents.get("fp1@100.000"))
    assert got is not None
    assert (got.rule, got.group, got.fingerprint, got.severity, got.active_at) == (
        "HighErrors", "checkout", "fp1", "warning", 100.0)
    assert got.labels == LABELS  # JSON text: unicode, quotes and NUL survive every backend
    assert (got.fired_at, got.resolved_at, got.ack_by, got.ack_at) == (None, None, None, None)
    assert got.notifications == 0 and got.first_action_at is None and got.actions == ()
    assert got.open
    assert await read(storage, lambda tx: tx.incidents.get("nope")) is None
    found = await read(storage, lambda tx: tx.incidents.find(
        ["fp2@100.000", "nope", "fp1@100.000", "fp1@100.000"]))
    assert sorted(found) == ["fp1@100.000", "fp2@100.000"]
    assert found["fp1@100.000"] == got


async def test_firing_keeps_the_first_time_and_takes_the_latest_severity(
        storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.incidents.open([incident()])
        await tx.incidents.update([IncidentChange("fp1@100.000", "warning", LABELS, 160.0)])
        await tx.incidents.update([IncidentChange("fp1@100.000", "critical", {"a": "b"}, 999.0),
                                   IncidentChange("unknown@1.000", "critical", {}, 1.0)])
        await tx.incidents.update([])
    got = await read(storage, lambda tx: tx.incidents.get("fp1@100.000"))
    assert got is not None and got.fired_at == 160.0
    assert got.severity == "critical" and got.labels == {"a": "b"}
    assert await read(storage, lambda tx: tx.incidents.get("unknown@1.000")) is None
    async with storage.transaction() as tx:
        await tx.incidents.update([IncidentChange("fp1@100.000", None, {"c": "d"})])
    got = await read(storage, lambda tx: tx.incidents.get("fp1@100.000"))
    assert got is not None and got.severity is None and got.labels == {"c": "d"}
    assert got.fired_at == 160.0


async def test_resolve_once_and_keep_the_ack_after_the_acks_are_pruned(
        storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.incidents.open([incident(), incident("fp2@100.000")])
        await tx.acks.add([AckRecord("fp1@100.000", "fp1", {"a": "b"}, 300.0, "alice", "")])
    live = await read(storage, lambda tx: tx.incidents.get("fp1@100.000"))
    assert live is not None and (live.ack_by, live.ack_at) == ("alice", 300.0)
    async with storage.transaction() as tx:
        await tx.incidents.resolve([("fp1@100.000", 400.0), ("fp2@100.000", 450.0),
                                    ("unknown@1.000", 1.0)])  # fp2 has no ack: none kept
        await tx.incidents.resolve([("fp1@100.000", 500.0)])  # resolved already: kept
        await tx.incidents.resolve([])
        await tx.acks.delete(["fp1@100.000"])  # what the notifier's prune does
    got = await read(storage, lambda tx: tx.incidents.get("fp1@100.000"))
    assert got is not None and got.resolved_at == 400.0 and not got.open
    assert (got.ack_by, got.ack_at) == ("alice", 300.0)
    other = await read(storage, lambda tx: tx.incidents.get("fp2@100.000"))
    assert other is not None and (other.ack_by, other.ack_at) == (None, None)


async def test_list_is_newest_first_with_filters(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.incidents.open([
            incident("a@100.000", active_at=100.0, resolved_at=150.0),
            incident("b@200.000", active_at=200.0),
            incident("c@200.000", active_at=200.0, rule="Latency", resolved_at=900.0),
            incident("d@300.000", active_at=300.0, resolved_at=350.0)])

    async def ids(**kw: Any) -> list[str]:
        return [i.id for i in await read(storage, lambda tx: tx.incidents.list(**kw))]

    assert await ids() == ["d@300.000", "b@200.000", "c@200.000", "a@100.000"]
    assert await ids(limit=2) == ["d@300.000", "b@200.000"]
    assert await ids(limit=None) == await ids()
    assert await ids(limit=0) == []
    assert await ids(rule="Latency") == ["c@200.000"]
    assert await ids(state="open") == ["b@200.000"]
    assert await ids(state="resolved") == ["d@300.000", "c@200.000", "a@100.000"]
    # since: open at any moment since then — still open, or resolved at or after it
    assert await ids(since=350.0) == ["d@300.000", "b@200.000", "c@200.000"]
    assert await ids(since=351.0) == ["b@200.000", "c@200.000"]
    assert await ids(since=351.0, state="resolved", rule="Latency") == ["c@200.000"]
    with pytest.raises(ValueError, match="open"):
        await ids(state="closed")


async def test_action_runs_are_joined_by_incident(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.incidents.open([incident()])
        await tx.incidents.open([incident("fp2@100.000")])
        await tx.runs.insert(run_row("r2", "fp1@100.000", action="second", created_at=20.0))
        await tx.runs.insert(run_row("r1", "fp1@100.000", action="first", created_at=10.0))
        await tx.runs.insert(run_row("r3", "other@1.000", created_at=5.0))
        await tx.runs.insert(run_row("r4", None, created_at=5.0))
        await tx.runs.update("r1", status="succeeded", verification="not_helped")
    got = await read(storage, lambda tx: tx.incidents.get("fp1@100.000"))
    assert got is not None
    assert got.actions == (IncidentAction("first", "r1", "succeeded", "not_helped"),
                           IncidentAction("second", "r2", "running", None))
    listed = await read(storage, lambda tx: tx.incidents.list())
    assert {i.id: i.actions for i in listed}["fp2@100.000"] == ()
    assert {i.id: len(i.actions) for i in listed}["fp1@100.000"] == 2


async def test_counters_and_first_action(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.incidents.open([incident()])
        await tx.incidents.add_notifications({"fp1@100.000": 2, "unknown@1.000": 5})
        await tx.incidents.add_notifications({"fp1@100.000": 3})
        await tx.incidents.add_notifications({})
        assert await tx.incidents.first_action("fp1@100.000", 170.0)
        assert not await tx.incidents.first_action("fp1@100.000", 180.0)
        assert not await tx.incidents.first_action("unknown@1.000", 180.0)
    got = await read(storage, lambda tx: tx.incidents.get("fp1@100.000"))
    assert got is not None and got.notifications == 5 and got.first_action_at == 170.0


async def test_rekey_moves_the_record_and_a_newer_row_wins(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.incidents.open([incident("fp1@100.000")])
        await tx.incidents.add_notifications({"fp1@100.000": 1})
        await tx.incidents.rekey("fp1@100.000", "fp1@130.000", 130.0)
        await tx.incidents.open([incident("fp2@100.000")])
        await tx.incidents.open([incident("fp2@140.000", active_at=140.0)])
        await tx.incidents.rekey("fp2@100.000", "fp2@140.000", 140.0)
        await tx.incidents.rekey("missing@1.000", "missing@2.000", 2.0)
    listed = await read(storage, lambda tx: tx.incidents.list())
    assert [(i.id, i.active_at, i.notifications) for i in listed] == [
        ("fp2@140.000", 140.0, 0), ("fp1@130.000", 130.0, 1)]


async def test_prune_deletes_only_incidents_resolved_before_the_cutoff(
        storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.incidents.open([incident("old@1.000", active_at=1.0, resolved_at=10.0)])
        await tx.incidents.open([incident("edge@1.000", active_at=1.0, resolved_at=20.0)])
        await tx.incidents.open([incident("open@1.000", active_at=1.0)])
    assert await read(storage, lambda tx: tx.incidents.prune(20.0)) == 1
    assert sorted(i.id for i in await read(storage, lambda tx: tx.incidents.list())) == [
        "edge@1.000", "open@1.000"]
    assert await read(storage, lambda tx: tx.incidents.prune(1e12)) == 1
    assert [i.id for i in await read(storage, lambda tx: tx.incidents.list())] == ["open@1.000"]


async def test_incident_writes_roll_back_with_their_transaction(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.incidents.open([incident()])
    with pytest.raises(RuntimeError):
        async with storage.transaction() as tx:
            await tx.incidents.open([incident("fp2@100.000")])
            await tx.incidents.update([IncidentChange("fp1@100.000", "critical", {}, 160.0)])
            await tx.incidents.add_notifications({"fp1@100.000": 4})
            await tx.incidents.resolve([("fp1@100.000", 200.0)])
            raise RuntimeError("boom")
    [only] = await read(storage, lambda tx: tx.incidents.list())
    assert only.id == "fp1@100.000" and only.fired_at is None and only.open
    assert only.notifications == 0 and only.severity == "warning"


# ---- migration from schema version 1 --------------------------------------------------------


async def test_a_version_1_sqlite_database_migrates_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    for stmt in migration(1, "sqlite"):
        db.execute(stmt)
    db.execute("CREATE TABLE schema_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO schema_meta VALUES ('version', '1')")
    db.execute("INSERT INTO notify_acks VALUES ('fp1@100.000', 'fp1', '{}', 300.0, 'bob', '')")
    db.commit()
    db.close()
    storage = await open_storage(f"sqlite:///{path}")
    try:
        assert [a.created_by for a in await read(storage, lambda tx: tx.acks.load())] == ["bob"]
        async with storage.transaction() as tx:
            await tx.incidents.open([incident()])
        got = await read(storage, lambda tx: tx.incidents.get("fp1@100.000"))
        assert got is not None and got.ack_by == "bob"
    finally:
        await storage.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM schema_meta").fetchone() == (str(SCHEMA_VERSION),)
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"incidents_by_time", "action_runs_by_incident"} <= indexes
    db.close()


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    return _postgres_url(request)


async def test_a_version_1_postgresql_database_migrates_with_its_rows(pg_url: str) -> None:
    import asyncpg

    url = pg_url
    conn = await asyncpg.connect(url)
    try:
        for stmt in migration(1, "postgresql"):
            await conn.execute(stmt)
        await conn.execute("CREATE TABLE schema_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        await conn.execute("INSERT INTO schema_meta VALUES ('version', '1')")
        await conn.execute("INSERT INTO notify_acks VALUES ('fp1@100.000', 'fp1', '{}', 300.0, "
                           "'bob', '')")
    finally:
        await conn.close()
    storage = await open_storage(url)
    try:
        async with storage.transaction() as tx:
            await tx.incidents.open([incident()])
        got = await read(storage, lambda tx: tx.incidents.get("fp1@100.000"))
        assert got is not None and got.ack_by == "bob"
    finally:
        await storage.close()
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT value FROM schema_meta") == str(SCHEMA_VERSION)
    finally:
        await conn.close()
