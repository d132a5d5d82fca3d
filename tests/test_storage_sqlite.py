"""What only the SQLite backend promises: its URLs, WAL, one process per file, adopting a file
written by v0.1.0 with all its state, and refusing a file from a newer release. (What every
backend promises is tests/test_storage_contract.py.)"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watchdog.state import Alert
from watchdog.storage import StorageError, check_url, open_storage
from watchdog.storage.schema import SCHEMA_VERSION
from watchdog.storage.sql import alert_from_json, alert_to_json
from watchdog.storage.sqlite import SqliteStorage, sqlite_path

V010 = Path(__file__).parent / "data" / "state" / "v0.1.0.sqlite"


def alert(fp: str = "f1", value: float | None = 1.5, **kw: object) -> Alert:
    base: dict[str, object] = dict(
        rule="R", group="g", fingerprint=fp, labels={"alertname": "R", "i": fp},
        annotations={"summary": "s"}, state="firing", active_at=100.0, value=value,
        fired_at=160.0, last_seen_at=200.0)
    base.update(kw)
    return Alert(**base)  # type: ignore[arg-type]


def test_urls() -> None:
    assert sqlite_path("sqlite:///data/w.db") == "data/w.db"
    assert sqlite_path("sqlite:////var/lib/w.db") == "/var/lib/w.db"
    assert sqlite_path("sqlite://:memory:") == ":memory:"
    assert check_url("postgresql://u:p@db:5432/w") == "postgresql"
    assert check_url("postgres://db/w") == "postgresql"
    assert check_url("sqlite:///x.db") == "sqlite"
    with pytest.raises(StorageError, match=r"WATCHDOG_STATE_URL.*'mysql'.*postgresql://"):
        check_url("mysql://db/watchdog")


def test_alert_json_round_trip_keeps_nan_and_optional_fields() -> None:
    a = alert(value=math.nan, keep_firing_since=300.0, severity="critical", threshold="> 1",
              baseline=2.0, compared=0.5)
    b = alert_from_json(alert_to_json(a))
    assert b.value is not None and math.isnan(b.value)
    assert b.labels == a.labels and b.keep_firing_since == 300.0 and b.severity == "critical"
    assert b.incident_id == a.incident_id


@given(st.builds(
    Alert, rule=st.text(), group=st.text(), fingerprint=st.text(),
    labels=st.dictionaries(st.text(), st.text(), max_size=4),
    annotations=st.dictionaries(st.text(), st.text(), max_size=3),
    state=st.sampled_from(["pending", "firing", "inactive"]), active_at=st.floats(),
    value=st.none() | st.floats(), fired_at=st.none() | st.floats(),
    severity=st.none() | st.text(), compared=st.none() | st.floats()))
def test_alert_json_is_the_stored_format(a: Alert) -> None:
    """What is stored stays what earlier releases wrote and read (every field, sorted keys)."""
    d = dataclasses.asdict(a)
    d["labels"], d["annotations"] = dict(a.labels), dict(a.annotations)
    assert alert_to_json(a) == json.dumps(d, separators=(",", ":"), sort_keys=True)


async def test_wal_and_normal_sync(tmp_path: Path) -> None:
    store = await SqliteStorage.open(f"sqlite:///{tmp_path / 'sub' / 'w.db'}")
    try:
        assert await (await store.db.execute("PRAGMA journal_mode")).fetchone() == ("wal",)
        assert await (await store.db.execute("PRAGMA synchronous")).fetchone() == (1,)
    finally:
        await store.close()


async def test_a_second_process_on_the_same_file_is_refused_naming_postgresql(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    first = await open_storage(url)
    try:
        with pytest.raises(StorageError, match=r"in use by another watchdog.*PostgreSQL"):
            await open_storage(url)
    finally:
        await first.close()
    again = await open_storage(url)  # released with the first one
    await again.close()


async def test_a_v010_file_is_adopted_with_all_its_state(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(V010, path)
    store = await open_storage(f"sqlite:///{path}")
    try:
        async with store.transaction() as tx:
            groups = await tx.alerts.load()
            g = groups["rules/app.yml;checkout"]
            assert g.last_eval_at == 1_700_000_120.0
            firing = g.rules["HighErrorRate"].alerts["f1"]
            assert firing.state == "firing" and firing.incident_id == "f1@1700000000.000"
            pending = g.rules["Latency"].alerts["f2"]
            assert pending.value is not None and math.isnan(pending.value)
            assert await tx.rule_files.load() == {"rules/app.yml": b"groups: []\n"}
            assert await tx.outbox.pending_count() == 1
            assert (await tx.outbox.next("slack")) is not None
            assert await tx.notify_log.load() != {}
            assert await tx.escalations.load() == {("f1@1700000000.000", "r0", 0): False}
            assert len(await tx.action_notes.load()) == 1
            assert [s.id for s in await tx.silences.load()] == ["s1"]
            assert [a.created_by for a in await tx.acks.load()] == ["alice"]
            runs = await tx.runs.list(status=["running"])
            assert [r.id for r in runs] == ["run-1"]
            assert [s.status for s in await tx.steps.list("run-1")] == ["running"]
            assert [d.id for d in await tx.deploys.list(status="open")] == ["dep-1"]
            assert await tx.deploys.baselines() == {"Latency": {"fpx": 0.3}}
            assert len(await tx.deploys.alerts("dep-1")) == 1
            # Schema 2 added incident history: empty, and usable, on an adopted file.
            assert await tx.incidents.list() == []
            from watchdog.storage.records import IncidentRecord
            await tx.incidents.open([IncidentRecord(
                "f1@1700000000.000", "HighErrorRate", "checkout", "f1", {}, None, 1.7e9)])
            assert [i.id for i in await tx.incidents.list()] == ["f1@1700000000.000"]
            # The v0.1.0 unique index still holds: one run per action and incident.
            from watchdog.storage import DuplicateRun
            with pytest.raises(DuplicateRun):
                await tx.runs.insert(runs[0].__class__(**{**runs[0].__dict__, "id": "run-2"}))
    finally:
        await store.close()
    version = sqlite3.connect(path).execute(
        "SELECT value FROM schema_meta WHERE key = 'version'").fetchone()
    assert version == (str(SCHEMA_VERSION),)


async def test_a_file_from_a_newer_release_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    store = await open_storage(f"sqlite:///{path}")
    await store.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_meta SET value = ? WHERE key = 'version'",
               (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(StorageError, match=r"schema version \d+, newer than this watchdog"):
        await open_storage(f"sqlite:///{path}")
    assert sqlite3.connect(path).execute(
        "SELECT value FROM schema_meta").fetchone() == (str(SCHEMA_VERSION + 1),)
