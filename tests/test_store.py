"""The SQLite alert store: what goes in comes out, one transaction per save, only changes."""

from __future__ import annotations

import math
from pathlib import Path

import aiosqlite
import pytest

from watchdog.state import Alert
from watchdog.store import (
    GroupChanges,
    SqliteAlertStore,
    StoreError,
    alert_from_json,
    alert_to_json,
    open_db,
    sqlite_path,
    transaction,
)


def alert(fp: str = "f1", state: str = "firing", value: float | None = 1.5, **kw: object) -> Alert:
    base: dict[str, object] = dict(
        rule="R", group="g", fingerprint=fp, labels={"alertname": "R", "i": fp},
        annotations={"summary": "s"}, state=state, active_at=100.0, value=value,
        fired_at=160.0 if state == "firing" else None, last_seen_at=200.0)
    base.update(kw)
    return Alert(**base)  # type: ignore[arg-type]


def test_sqlite_urls() -> None:
    assert sqlite_path("sqlite:///data/w.db") == "data/w.db"
    assert sqlite_path("sqlite:////var/lib/w.db") == "/var/lib/w.db"
    assert sqlite_path("sqlite://:memory:") == ":memory:"
    assert sqlite_path("sqlite://") == ":memory:"
    with pytest.raises(StoreError, match=r"WATCHDOG_STATE_URL.*postgresql"):
        sqlite_path("postgresql://db/watchdog")


def test_alert_json_round_trip_keeps_nan_and_optional_fields() -> None:
    a = alert(value=math.nan, keep_firing_since=300.0, severity="critical", threshold="> 1",
              baseline=2.0, compared=0.5)
    b = alert_from_json(alert_to_json(a))
    assert b.value is not None and math.isnan(b.value)
    assert b.labels == a.labels and b.keep_firing_since == 300.0 and b.severity == "critical"
    assert b.incident_id == a.incident_id


async def test_open_db_uses_wal_and_normal_sync(tmp_path: Path) -> None:
    db = await open_db(f"sqlite:///{tmp_path / 'sub' / 'w.db'}")
    try:
        async with db.execute("PRAGMA journal_mode") as cur:
            assert (await cur.fetchone()) == ("wal",)
        async with db.execute("PRAGMA synchronous") as cur:
            assert (await cur.fetchone()) == (1,)  # NORMAL
    finally:
        await db.close()


async def test_save_load_delete(tmp_path: Path) -> None:
    db = await open_db(f"sqlite:///{tmp_path / 'w.db'}")
    try:
        store = SqliteAlertStore(db)
        await store.init()
        await store.init()  # idempotent
        a1, a2 = alert("f1"), alert("f2", state="pending")
        await store.save([GroupChanges("file;g", at=200.0, upserts=[("R", "sig", a1),
                                                                    ("R", "sig", a2)]),
                          GroupChanges("file;h", at=200.0, upserts=[("S", "sig2", alert("f3"))])])
        loaded = await store.load()
        assert loaded["file;g"].last_eval_at == 200.0
        assert loaded["file;g"].rules["R"].sig == "sig"
        assert loaded["file;g"].rules["R"].alerts == {"f1": a1, "f2": a2}
        await store.save([GroupChanges("file;g", at=210.0, deletes=[("R", "f2")]),
                          GroupChanges("file;h", drop_group=True)])
        loaded = await store.load()
        assert set(loaded) == {"file;g"}
        assert set(loaded["file;g"].rules["R"].alerts) == {"f1"}
        await store.save([GroupChanges("file;g", drop_rules=["R"])])
        assert (await store.load())["file;g"].rules == {}
    finally:
        await db.close()


async def test_a_failed_save_changes_nothing(tmp_path: Path) -> None:
    db = await open_db(f"sqlite:///{tmp_path / 'w.db'}")
    try:
        store = SqliteAlertStore(db)
        await store.init()
        await store.save([GroupChanges("k", at=1.0, upserts=[("R", "s", alert("f1"))])])
        with pytest.raises(RuntimeError):
            async with transaction(db) as tx:
                await tx.execute("DELETE FROM alert_instances")
                raise RuntimeError("boom")
        assert set((await store.load())["k"].rules["R"].alerts) == {"f1"}
    finally:
        await db.close()


async def test_rule_files_keep_the_last_accepted_content(tmp_path: Path) -> None:
    db = await open_db(f"sqlite:///{tmp_path / 'w.db'}")
    try:
        store = SqliteAlertStore(db)
        await store.init()
        await store.save_rule_files({"a.yml": ("d1", b"one"), "b.yml": ("d2", b"two")})
        await store.save_rule_files({"a.yml": ("d3", b"three")}, forget=["b.yml"])
        assert await store.load_rule_files() == {"a.yml": b"three"}
    finally:
        await db.close()


async def test_state_survives_a_new_connection(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    db = await open_db(url)
    store = SqliteAlertStore(db)
    await store.init()
    await store.save([GroupChanges("k", at=5.0, upserts=[("R", "s", alert())])])
    await db.close()
    async with aiosqlite.connect(tmp_path / "w.db") as again:
        store2 = SqliteAlertStore(again)
        assert (await store2.load())["k"].rules["R"].alerts["f1"] == alert()
