"""The storage contract: every backend of `watchdog.storage.ports.Storage` — the in-memory fake,
SQLite and a real PostgreSQL — passes these same tests.

Each repository method is exercised for what callers rely on (orderings, conflicts, first-wins
and latest-wins, "only a pending row changes status"), and the transaction for what the daemon's
guarantees rest on: all writes of a block commit together or not at all, `on_commit` callbacks
run only after a commit, in order, and concurrent transactions neither see each other's
uncommitted writes nor break a unique rule. Results must not alias stored state. The SQL
backends also keep their data across a reopen and refuse a database of a newer schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
import structlog

from watchdog.interlocks import PastRun
from watchdog.state import Alert
from watchdog.storage import DuplicateRun, Storage, StorageError, Tx, open_storage
from watchdog.storage.records import (
    AckRecord,
    AttemptRow,
    DeployRow,
    GroupChanges,
    IncidentAction,
    IncidentChange,
    IncidentRecord,
    LockHolder,
    LogEntry,
    OutboxEntry,
    PauseRecord,
    RunRow,
    SilenceRecord,
    StepRow,
)
from watchdog.storage.schema import SCHEMA_VERSION, migration

T = TypeVar("T")

BACKENDS = ["memory", "sqlite", "postgresql"]
SQL_BACKENDS = ["sqlite", "postgresql"]

UNICODE = {"service": "checkout-サービス", "emoji": "🔥 ünïcödé", "quote": "it's \"x\" \\ y",
           "nul": "a\x00b", "empty": ""}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/s.db"
    pg: str = request.getfixturevalue("postgres_url")
    return pg


@pytest.fixture
async def storage(url: str) -> AsyncIterator[Storage]:
    s = await open_storage(url)
    yield s
    await s.close()


async def read(storage: Storage, f: Callable[[Tx], Awaitable[T]]) -> T:
    async with storage.transaction() as tx:
        return await f(tx)


def alert(fp: str, *, value: float | None = 1.0, state: str = "firing", active_at: float = 100.0,
          labels: dict[str, str] | None = None, **kw: Any) -> Alert:
    return Alert(rule="HighErrors", group="g", fingerprint=fp,
                 labels=labels if labels is not None else {"alertname": "HighErrors", "fp": fp},
                 annotations={"summary": f"value {value}"}, state=state,  # type: ignore[arg-type]
                 active_at=active_at, value=value, **kw)


def run_row(run_id: str, *, action: str = "rollback", incident: str | None = "inc-1",
            created_at: float = 1000.0, dry_run: bool = False, **kw: Any) -> RunRow:
    fields: dict[str, Any] = dict(
        id=run_id, action=action, trigger="alert", rule="HighErrors", group="file.yml;g",
        fingerprint="fp1" if incident else None, incident_id=incident,
        labels={"service": "checkout", "team": "payments"}, annotations={"summary": "s"},
        value_before=0.25, active_at=900.0, dry_run=dry_run, spec='{"name": "rollback"}',
        status="running", next_step=0, created_at=created_at, finished_at=None, detail="",
        verify_at=None, verification=None, value_after=None)
    fields.update(kw)
    return RunRow(**fields)


def entry(receiver: str = "slack", group: str = "g1", *, kind: str = "firing",
          dedup: str | None = None, supersede: bool = False, payload: str = "{}") -> OutboxEntry:
    return OutboxEntry(receiver, kind, group, payload, dedup, supersede)


def deploy(deploy_id: str, at: float, *, status: str = "open") -> DeployRow:
    return DeployRow(deploy_id, "checkout", f"v-{deploy_id}", {"env": "prod"}, at, at + 1800.0,
                     status, "")


def same_float(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or a == b


# ---- the storage and its transactions ------------------------------------------------------------


async def test_kind_and_schema_version(storage: Storage, backend: str) -> None:
    assert storage.kind == backend
    assert storage.schema_version == SCHEMA_VERSION


async def test_a_new_store_is_empty(storage: Storage) -> None:
    async with storage.transaction() as tx:
        assert await tx.alerts.load() == {}
        assert await tx.rule_files.load() == {}
        assert await tx.outbox.recent() == []
        assert await tx.outbox.pending_receivers() == []
        assert await tx.outbox.pending_count() == 0
        assert await tx.notify_log.load() == {}
        assert await tx.escalations.load() == {}
        assert await tx.action_notes.load() == []
        assert await tx.silences.load() == []
        assert await tx.acks.load() == []
        assert await tx.runs.list() == []
        assert await tx.deploys.list() == []
        assert await tx.deploys.baselines() == {}
        assert await tx.incidents.list() == []


async def _write_one_of_each(tx: Tx) -> None:
    await tx.alerts.save([GroupChanges("g", at=50.0, upserts=[("r", "sig", alert("fp1"))])])
    await tx.rule_files.save({"rules/a.yml": ("d1", b"groups: []\n")})
    await tx.outbox.insert([entry(dedup="k1")], 10.0)
    await tx.notify_log.put("slack", "g1", LogEntry({"fp1": "critical"}, 10.0))
    await tx.escalations.add(("inc-1", "route", 0), 10.0)
    await tx.action_notes.add("inc-1", '{"n": 1}', keep=5)
    await tx.silences.add(SilenceRecord("s1", [{"name": "a", "value": "b", "isRegex": False,
                                                "isEqual": True}], 1.0, 2.0, "me", "c", 0.5))
    await tx.acks.add([AckRecord("inc-1", "fp1", {"a": "b"}, 3.0, "me", "mine")])
    await tx.runs.insert(run_row("run-1"))
    await tx.steps.start("run-1", 0, "webhook", 1001.0)
    await tx.deploys.insert(deploy("d1", 500.0))
    await tx.deploys.save_baselines("d1", 500.0, [("HighErrors", "fp1", 0.5, {"a": "b"})])
    await tx.deploys.record_alert("d1", "HighErrors", "fp1", {"a": "b"}, 0.9, 510.0)
    await tx.incidents.open([incident("inc-1")])


async def _assert_one_of_each(tx: Tx) -> None:
    assert set((await tx.alerts.load())["g"].rules["r"].alerts) == {"fp1"}
    assert await tx.rule_files.load() == {"rules/a.yml": b"groups: []\n"}
    assert [r.group_key for r in await tx.outbox.recent()] == ["g1"]
    assert await tx.notify_log.load() == {("slack", "g1"): LogEntry({"fp1": "critical"}, 10.0)}
    assert await tx.escalations.load() == {("inc-1", "route", 0): False}
    assert await tx.action_notes.load() == [("inc-1", '{"n": 1}')]
    assert [s.id for s in await tx.silences.load()] == ["s1"]
    assert [a.incident_id for a in await tx.acks.load()] == ["inc-1"]
    assert await tx.runs.get("run-1") is not None
    assert [s.idx for s in await tx.steps.list("run-1")] == [0]
    assert [d.id for d in await tx.deploys.list()] == ["d1"]
    assert await tx.deploys.baselines() == {"HighErrors": {"fp1": 0.5}}
    assert len(await tx.deploys.alerts("d1")) == 1
    [inc] = await tx.incidents.list()
    assert inc.id == "inc-1" and [a.run_id for a in inc.actions] == ["run-1"]


async def _assert_nothing(tx: Tx) -> None:
    assert await tx.alerts.load() == {}
    assert await tx.rule_files.load() == {}
    assert await tx.outbox.recent() == []
    assert await tx.notify_log.load() == {}
    assert await tx.escalations.load() == {}
    assert await tx.action_notes.load() == []
    assert await tx.silences.load() == []
    assert await tx.acks.load() == []
    assert await tx.runs.get("run-1") is None
    assert await tx.steps.list("run-1") == []
    assert await tx.deploys.list() == []
    assert await tx.deploys.baselines() == {}
    assert await tx.deploys.alerts("d1") == []
    assert await tx.incidents.list() == []


async def test_writes_of_a_transaction_commit_together(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await _write_one_of_each(tx)
        await _assert_one_of_each(tx)  # a transaction reads its own writes
    async with storage.transaction() as tx:
        await _assert_one_of_each(tx)


class Boom(Exception):
    pass


async def test_a_raising_block_rolls_everything_back_and_runs_no_callback(
        storage: Storage) -> None:
    called: list[str] = []
    with pytest.raises(Boom):
        async with storage.transaction() as tx:
            await _write_one_of_each(tx)
            tx.on_commit(lambda: called.append("yes"))
            raise Boom
    assert called == []
    async with storage.transaction() as tx:
        await _assert_nothing(tx)


async def test_a_rollback_puts_back_what_was_there(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await _write_one_of_each(tx)
    with pytest.raises(Boom):
        async with storage.transaction() as tx:
            await tx.alerts.save([GroupChanges("g", drop_group=True)])
            await tx.rule_files.save({"rules/a.yml": ("d2", b"changed")})
            await tx.outbox.insert([entry(supersede=True)], 20.0)
            await tx.notify_log.delete([("slack", "g1")])
            await tx.escalations.mark_resolved(("inc-1", "route", 0))
            await tx.action_notes.delete(["inc-1"])
            await tx.silences.delete(["s1"])
            await tx.acks.delete(["inc-1"])
            await tx.runs.update("run-1", status="failed")
            await tx.steps.finish("run-1", 0, "failed", 1002.0, "x", next_step=3)
            await tx.deploys.finish("d1", "failed", "bad")
            await tx.deploys.save_baselines("d1", 600.0, [("HighErrors", "fp1", 9.0, {})])
            raise Boom
    async with storage.transaction() as tx:
        await _assert_one_of_each(tx)
        assert [r.status for r in await tx.outbox.recent()] == ["pending"]
        run = await tx.runs.get("run-1")
        assert run is not None and (run.status, run.next_step) == ("running", 0)
        assert [s.status for s in await tx.steps.list("run-1")] == ["running"]
        assert [d.status for d in await tx.deploys.list()] == ["open"]


async def test_a_cancelled_block_rolls_back(storage: Storage) -> None:
    inside = asyncio.Event()

    async def writer() -> None:
        async with storage.transaction() as tx:
            await tx.rule_files.save({"a.yml": ("d", b"x")})
            inside.set()
            await asyncio.Event().wait()  # cancelled here

    task = asyncio.create_task(writer())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await read(storage, lambda tx: tx.rule_files.load()) == {}


async def test_on_commit_runs_after_commit_in_order_and_one_failure_stops_nothing(
        storage: Storage) -> None:
    calls: list[str] = []

    def bad() -> None:
        calls.append("bad")
        raise RuntimeError("wake-up failed")

    with structlog.testing.capture_logs() as logs:
        async with storage.transaction() as tx:
            await tx.rule_files.save({"a.yml": ("d", b"x")})
            tx.on_commit(lambda: calls.append("first"))
            tx.on_commit(bad)
            tx.on_commit(lambda: calls.append("third"))
            assert calls == []  # nothing before the commit
    assert calls == ["first", "bad", "third"]
    assert any(e.get("log_level") in ("error", "exception") for e in logs), logs
    assert await read(storage, lambda tx: tx.rule_files.load()) == {"a.yml": b"x"}


async def test_on_commit_sees_the_committed_state(storage: Storage) -> None:
    seen: list[dict[str, bytes]] = []
    tasks: list[asyncio.Task[None]] = []

    async def look() -> None:
        seen.append(await read(storage, lambda tx: tx.rule_files.load()))

    async with storage.transaction() as tx:
        await tx.rule_files.save({"a.yml": ("d", b"x")})
        tx.on_commit(lambda: tasks.append(asyncio.ensure_future(look())))
    await asyncio.gather(*tasks)
    assert seen == [{"a.yml": b"x"}]


@pytest.mark.parametrize("ending", ["commit", "rollback"])
async def test_a_tx_used_after_its_block_writes_nothing(storage: Storage, ending: str) -> None:
    """A Tx kept past its block (a caller bug) must fail loudly, not write outside any
    transaction and outside the lock (SQLite would autocommit each statement)."""
    with pytest.raises(Boom) if ending == "rollback" else contextlib.nullcontext():
        async with storage.transaction() as tx:
            if ending == "rollback":
                raise Boom
    with pytest.raises(Exception):  # noqa: B017 - the port does not name the error
        await tx.rule_files.save({"a.yml": ("d", b"x")})
    with pytest.raises(Exception):  # noqa: B017
        await tx.outbox.pending_count()
    assert await read(storage, lambda tx: tx.rule_files.load()) == {}


async def test_a_duplicate_run_caught_inside_keeps_the_transaction_usable(
        storage: Storage) -> None:
    """DuplicateRun is an answer, not a failure: the caller's other writes still commit."""
    async with storage.transaction() as tx:
        await tx.runs.insert(run_row("run-1"))
        with pytest.raises(DuplicateRun):
            await tx.runs.insert(run_row("run-2"))
        await tx.outbox.insert([entry()], 5.0)
    async with storage.transaction() as tx:
        assert [r.id for r in await tx.runs.list()] == ["run-1"]
        assert await tx.outbox.pending_count() == 1


@pytest.mark.parametrize("commit", [True, False], ids=["commit", "rollback"])
async def test_another_transaction_never_sees_uncommitted_writes(
        storage: Storage, commit: bool) -> None:
    written, go = asyncio.Event(), asyncio.Event()
    writer_done = False

    async def writer() -> None:
        nonlocal writer_done
        async with storage.transaction() as tx:
            await tx.rule_files.save({"a.yml": ("d", b"x")})
            written.set()
            await go.wait()
            writer_done = True
            if not commit:
                raise Boom

    async def reader() -> tuple[dict[str, bytes], bool]:
        await written.wait()
        async with storage.transaction() as tx:
            files = await tx.rule_files.load()
            return files, writer_done

    w, r = asyncio.create_task(writer()), asyncio.create_task(reader())
    # Give a backend that runs transactions side by side (PostgreSQL) the time to read while
    # the writer is still open; one that serialises them (memory, SQLite) makes the reader wait.
    # The assertions below hold either way: only how much they exercise depends on this.
    await asyncio.wait([r], timeout=0.5)
    go.set()
    if commit:
        await w
    else:
        with pytest.raises(Boom):
            await w
    files, writer_was_done = await r
    if files:
        assert commit and writer_was_done, "read a write that was not committed"
    assert await read(storage, lambda tx: tx.rule_files.load()) == (
        {"a.yml": b"x"} if commit else {})


async def test_concurrent_transactions_keep_unique_rules(storage: Storage) -> None:
    added: list[int] = []
    outcomes: list[str] = []

    async def enqueue(i: int) -> None:
        async with storage.transaction() as tx:
            await asyncio.sleep(0)
            added.append(len(await tx.outbox.insert([entry(dedup="same", payload=str(i))],
                                                    float(i))))
            await asyncio.sleep(0)

    async def start_run(i: int) -> None:
        try:
            async with storage.transaction() as tx:
                await asyncio.sleep(0)
                await tx.runs.insert(run_row(f"run-{i}", incident="inc-x"))
                await asyncio.sleep(0)
            outcomes.append("inserted")
        except DuplicateRun:
            outcomes.append("duplicate")

    await asyncio.gather(*(enqueue(i) for i in range(6)), *(start_run(i) for i in range(6)))
    assert sorted(added) == [0, 0, 0, 0, 0, 1]
    assert sorted(outcomes) == ["duplicate"] * 5 + ["inserted"]
    async with storage.transaction() as tx:
        assert await tx.outbox.pending_count() == 1
        assert len(await tx.runs.for_incident("inc-x")) == 1


async def test_concurrent_writers_lose_no_update(storage: Storage) -> None:
    async def note(i: int) -> None:
        async with storage.transaction() as tx:
            await asyncio.sleep(0)
            await tx.action_notes.add("inc", f'{{"i": {i}}}', keep=100)
            await tx.escalations.add(("inc", "r", i), float(i))

    await asyncio.gather(*(note(i) for i in range(8)))
    async with storage.transaction() as tx:
        assert len(await tx.action_notes.load()) == 8
        assert len(await tx.escalations.load()) == 8


# ---- alert state ---------------------------------------------------------------------------------


async def test_alerts_round_trip_with_nan_infinity_and_unicode(storage: Storage) -> None:
    nan = alert("fp-nan", value=math.nan, labels=UNICODE, baseline=math.inf,
                compared=-math.inf, severity="critical", threshold="> 0.1", fired_at=110.0)
    inf = alert("fp-inf", value=math.inf, state="pending")
    neg = alert("fp-neg", value=-math.inf, state="inactive", resolved_at=120.0)
    none = alert("fp-none", value=None)
    async with storage.transaction() as tx:
        await tx.alerts.save([GroupChanges("file.yml;g", at=130.0, upserts=[
            ("HighErrors", "sig-1", nan), ("HighErrors", "sig-1", inf),
            ("HighErrors", "sig-1", neg), ("Other", "sig-2", none)])])
    groups = await read(storage, lambda tx: tx.alerts.load())
    assert set(groups) == {"file.yml;g"}
    g = groups["file.yml;g"]
    assert g.last_eval_at == 130.0
    assert {k: r.sig for k, r in g.rules.items()} == {"HighErrors": "sig-1", "Other": "sig-2"}
    got = g.rules["HighErrors"].alerts
    assert set(got) == {"fp-nan", "fp-inf", "fp-neg"}
    assert got["fp-nan"].value is not None and math.isnan(got["fp-nan"].value)
    assert got["fp-nan"].baseline == math.inf and got["fp-nan"].compared == -math.inf
    assert dict(got["fp-nan"].labels) == UNICODE
    assert got["fp-inf"] == inf
    assert got["fp-neg"] == neg
    assert g.rules["Other"].alerts == {"fp-none": none}
    a = got["fp-nan"]
    assert (a.state, a.active_at, a.fired_at, a.severity, a.threshold, a.annotations) == (
        nan.state, nan.active_at, nan.fired_at, nan.severity, nan.threshold, nan.annotations)


async def test_alert_changes_upsert_delete_drop(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.alerts.save([
            GroupChanges("g1", at=10.0, upserts=[("r1", "s", alert("a")), ("r1", "s", alert("b")),
                                                  ("r2", "s", alert("c"))]),
            GroupChanges("g2", at=10.0, upserts=[("r1", "s", alert("d"))]),
        ])
    async with storage.transaction() as tx:
        await tx.alerts.save([
            # Upsert replaces the row (new state, new sig); deletes and drops go first.
            GroupChanges("g1", at=20.0, upserts=[("r1", "s2", alert("a", state="pending",
                                                                     value=2.0))],
                         deletes=[("r1", "b")], drop_rules=["r2"]),
            GroupChanges("g2", drop_group=True, at=20.0),  # at is ignored with drop_group
        ])
    groups = await read(storage, lambda tx: tx.alerts.load())
    assert set(groups) == {"g1"}
    assert groups["g1"].last_eval_at == 20.0
    assert set(groups["g1"].rules) == {"r1"}
    r1 = groups["g1"].rules["r1"]
    assert r1.sig == "s2"
    assert set(r1.alerts) == {"a"}
    assert (r1.alerts["a"].state, r1.alerts["a"].value) == ("pending", 2.0)


async def test_alert_changes_without_content_or_time_write_nothing(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.alerts.save([GroupChanges("empty")])
        await tx.alerts.save([GroupChanges("timed", at=5.0)])
        await tx.alerts.save([GroupChanges("untimed", upserts=[("r", "s", alert("x"))])])
    groups = await read(storage, lambda tx: tx.alerts.load())
    assert set(groups) == {"timed", "untimed"}
    assert groups["timed"].last_eval_at == 5.0 and groups["timed"].rules == {}
    assert groups["untimed"].last_eval_at is None  # instances without a group row


async def test_alert_deletes_are_scoped_to_their_group(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.alerts.save([GroupChanges(g, upserts=[("r", "s", alert("x"))])
                              for g in ("g1", "g2")])
        await tx.alerts.save([GroupChanges("g1", drop_rules=["r"]),
                              GroupChanges("g2", deletes=[("other", "x"), ("r", "nope")])])
    groups = await read(storage, lambda tx: tx.alerts.load())
    assert set(groups) == {"g2"}
    assert set(groups["g2"].rules["r"].alerts) == {"x"}


# ---- rule files ----------------------------------------------------------------------------------


async def test_rule_files_keep_bytes_exactly(storage: Storage) -> None:
    raw = bytes(range(256)) + "グループ\n".encode() + b"\x00\xff\xfe"
    async with storage.transaction() as tx:
        await tx.rule_files.save({"rules/a.yml": ("d1", raw), "rules/ü.yml": ("d2", b""),
                                  "rules/c.yml": ("d3", b"old")})
    async with storage.transaction() as tx:
        # forget goes first, so a path both forgotten and saved is saved.
        await tx.rule_files.save({"rules/c.yml": ("d4", b"new"), "rules/b.yml": ("d5", b"b")},
                                 forget=["rules/ü.yml", "rules/c.yml", "rules/never.yml"])
    files = await read(storage, lambda tx: tx.rule_files.load())
    assert files == {"rules/a.yml": raw, "rules/c.yml": b"new", "rules/b.yml": b"b"}
    assert all(type(v) is bytes for v in files.values())


# ---- the outbox ----------------------------------------------------------------------------------


async def test_outbox_insert_dedups_and_next_takes_the_oldest_pending(storage: Storage) -> None:
    async with storage.transaction() as tx:
        first = [entry("slack", "g1", dedup="k1", payload="p1"), entry("slack", "g2", payload="p2"),
                 entry("slack", "g3", dedup="k1", payload="dup-in-batch"),
                 entry("pager", "g1", payload="p3")]
        assert await tx.outbox.insert(first, 100.0) == [first[0], first[1], first[3]]
        again = [entry("slack", "g1", dedup="k1"), entry("slack", "g4"), entry("slack", "g4")]
        assert await tx.outbox.insert(again, 101.0) == again[1:]  # no key: never a duplicate
    async with storage.transaction() as tx:
        row = await tx.outbox.next("slack")
        assert row is not None
        assert (row.receiver, row.kind, row.group_key, row.payload, row.attempts,
                row.created_at, row.next_attempt_at) == ("slack", "firing", "g1", "p1", 0,
                                                         100.0, 100.0)
        assert await tx.outbox.next("nobody") is None
        assert await tx.outbox.pending_receivers() == ["pager", "slack"]
        assert await tx.outbox.pending_count() == 5
        assert await tx.outbox.pending_count("slack") == 4
        assert await tx.outbox.pending_count("nobody") == 0
        recent = await tx.outbox.recent()
        assert [r.id for r in recent] == sorted((r.id for r in recent), reverse=True)
        assert [(r.group_key, r.created_at) for r in recent] == [
            ("g4", 101.0), ("g4", 101.0), ("g1", 100.0), ("g2", 100.0), ("g1", 100.0)]
        # The oldest by insertion, even when a later one is due sooner.
        await tx.outbox.finish(row.id, "pending", "timeout", next_at=500.0)
        again_row = await tx.outbox.next("slack")
        assert again_row is not None and again_row.id == row.id
        assert (again_row.attempts, again_row.next_attempt_at) == (1, 500.0)


async def test_outbox_finish_records_the_attempt(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.outbox.insert([entry(group="a"), entry(group="b"), entry(group="c")], 10.0)
    async with storage.transaction() as tx:
        a, b, c = sorted(r.id for r in await tx.outbox.recent())
        await tx.outbox.finish(a, "delivered", None, finished=12.0)
        await tx.outbox.finish(b, "pending", "HTTP 503", next_at=20.0)
        await tx.outbox.finish(b, "failed", "HTTP 400", finished=21.0)
        await tx.outbox.finish(c, "pending", "HTTP 429", next_at=30.0)
        await tx.outbox.finish(10**9, "delivered", None, finished=1.0)  # no such row: nothing
    async with storage.transaction() as tx:
        rows = {r.id: r for r in await tx.outbox.recent()}
        assert (rows[a].status, rows[a].attempts, rows[a].last_error, rows[a].finished_at,
                rows[a].next_attempt_at) == ("delivered", 1, None, 12.0, 10.0)
        assert (rows[b].status, rows[b].attempts, rows[b].last_error, rows[b].finished_at,
                rows[b].next_attempt_at) == ("failed", 2, "HTTP 400", 21.0, 20.0)
        assert (rows[c].status, rows[c].attempts, rows[c].last_error, rows[c].finished_at,
                rows[c].next_attempt_at) == ("pending", 1, "HTTP 429", None, 30.0)
        assert rows[a].to_json()["status"] == "delivered"
        assert await tx.outbox.pending_count() == 1


async def test_outbox_supersede_and_only_pending_rows_change_status(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.outbox.insert([entry("slack", "g1", payload="old-1"),
                                entry("slack", "g1", payload="old-2"),
                                entry("slack", "g2", payload="other-group"),
                                entry("pager", "g1", payload="other-receiver")], 10.0)
        delivered = (await tx.outbox.recent())[-1]
        await tx.outbox.finish(delivered.id, "delivered", None, finished=11.0)
    async with storage.transaction() as tx:
        added = await tx.outbox.insert([entry("slack", "g1", payload="new", supersede=True)],
                                       20.0)
        assert len(added) == 1
    async with storage.transaction() as tx:
        rows = await tx.outbox.recent(limit=10)
        by_id = {r.id: r for r in rows}
        statuses = [(r.receiver, r.group_key, r.status, r.finished_at) for r in rows]
        assert statuses == [("slack", "g1", "pending", None), ("pager", "g1", "pending", None),
                            ("slack", "g2", "pending", None),
                            ("slack", "g1", "superseded", 20.0),
                            ("slack", "g1", "delivered", 11.0)]
        superseded = rows[3].id
        # A worker that was sending the superseded row records its attempt; the row stays
        # superseded.
        await tx.outbox.finish(superseded, "delivered", None, finished=21.0)
        row = {r.id: r for r in await tx.outbox.recent()}[superseded]
        assert (row.status, row.attempts) == ("superseded", 1)
        next_row = await tx.outbox.next("slack")
        assert next_row is not None and next_row.payload in ("other-group", "new")
        assert next_row.id == min(r.id for r in by_id.values()
                                  if r.status == "pending" and r.receiver == "slack")


async def test_outbox_supersede_applies_even_when_the_new_row_is_a_duplicate(
        storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.outbox.insert([entry(dedup="k")], 10.0)
        assert await tx.outbox.insert([entry(dedup="k", supersede=True)], 11.0) == []
        assert [r.status for r in await tx.outbox.recent()] == ["superseded"]
        assert await tx.outbox.pending_count() == 0


async def test_outbox_recent_filters_and_limits(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.outbox.insert([entry("slack", f"g{i}") for i in range(5)]
                               + [entry("pager", "p")], 10.0)
        rows = await tx.outbox.recent()
        await tx.outbox.finish(rows[-1].id, "failed", "nope", finished=11.0)  # slack g0
    async with storage.transaction() as tx:
        assert [r.group_key for r in await tx.outbox.recent(limit=2)] == ["p", "g4"]
        assert [r.group_key for r in await tx.outbox.recent(receiver="slack", limit=3)] == [
            "g4", "g3", "g2"]
        assert [r.group_key for r in await tx.outbox.recent(status="failed")] == ["g0"]
        assert [r.group_key for r in await tx.outbox.recent(status="pending",
                                                             receiver="pager")] == ["p"]
        assert await tx.outbox.recent(status="delivered") == []
        assert len(await tx.outbox.recent(status=None, receiver=None)) == 6
        assert len(await tx.outbox.recent(status="", receiver="")) == 6  # empty: no filter


async def test_outbox_prune_deletes_old_finished_rows_only(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.outbox.insert([entry(group=g, dedup=g) for g in "abcde"], 10.0)
        ids = {r.group_key: r.id for r in await tx.outbox.recent()}
        await tx.outbox.finish(ids["a"], "delivered", None, finished=100.0)
        await tx.outbox.finish(ids["b"], "failed", "x", finished=150.0)
        await tx.outbox.finish(ids["c"], "delivered", None, finished=300.0)
        await tx.outbox.finish(ids["d"], "pending", "retry", next_at=50.0)  # still pending
    async with storage.transaction() as tx:
        assert await tx.outbox.prune(200.0) == 2
        assert await tx.outbox.prune(200.0) == 0
        assert sorted(r.group_key for r in await tx.outbox.recent()) == ["c", "d", "e"]
        # A pruned row's dedup key is free again (the row, and its unique key, are gone).
        assert len(await tx.outbox.insert([entry(group="a", dedup="a"),
                                           entry(group="c", dedup="c")], 400.0)) == 1


# ---- notification log, escalations, action notes -------------------------------------------------


async def test_notify_log_put_replaces_and_delete(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.notify_log.put("slack", "g1", LogEntry({"fp1": "warning"}, 10.0))
        await tx.notify_log.put("slack", "g1", LogEntry({"fp1": "critical", "fp2": "ℹ️"}, 20.0))
        await tx.notify_log.put("slack", "g2", LogEntry({}, 21.0))
        await tx.notify_log.put("pager", "g1", LogEntry({"fp9": "critical"}, 22.0))
    async with storage.transaction() as tx:
        assert await tx.notify_log.load() == {
            ("slack", "g1"): LogEntry({"fp1": "critical", "fp2": "ℹ️"}, 20.0),
            ("slack", "g2"): LogEntry({}, 21.0),
            ("pager", "g1"): LogEntry({"fp9": "critical"}, 22.0)}
        await tx.notify_log.delete([("slack", "g1"), ("nobody", "g1")])
        await tx.notify_log.delete([])
        assert set(await tx.notify_log.load()) == {("slack", "g2"), ("pager", "g1")}


async def test_escalations_add_is_idempotent_and_resolved_is_remembered(
        storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.escalations.add(("inc-1", "r", 0), 10.0)
        await tx.escalations.add(("inc-1", "r", 1), 20.0)
        await tx.escalations.add(("inc-2", "r", 0), 20.0)
        await tx.escalations.mark_resolved(("inc-1", "r", 0))
        await tx.escalations.add(("inc-1", "r", 0), 30.0)  # exists: keeps its resolved flag
        await tx.escalations.mark_resolved(("inc-9", "r", 0))  # nothing to mark
    async with storage.transaction() as tx:
        assert await tx.escalations.load() == {("inc-1", "r", 0): True,
                                               ("inc-1", "r", 1): False,
                                               ("inc-2", "r", 0): False}
        await tx.escalations.delete([("inc-1", "r", 0), ("inc-1", "r", 1)])
        await tx.escalations.delete([])
        assert await tx.escalations.load() == {("inc-2", "r", 0): False}


async def test_action_notes_keep_the_newest_per_incident_in_insertion_order(
        storage: Storage) -> None:
    async with storage.transaction() as tx:
        for i in range(5):
            await tx.action_notes.add("inc-a", f"a{i}", keep=3)
            await tx.action_notes.add("inc-b", f"b{i}", keep=10)
    async with storage.transaction() as tx:
        assert await tx.action_notes.load() == [
            ("inc-b", "b0"), ("inc-b", "b1"), ("inc-a", "a2"), ("inc-b", "b2"),
            ("inc-a", "a3"), ("inc-b", "b3"), ("inc-a", "a4"), ("inc-b", "b4")]
        await tx.action_notes.add("inc-b", "b5", keep=2)
        await tx.action_notes.delete(["inc-a", "inc-none"])
        assert await tx.action_notes.load() == [("inc-b", "b4"), ("inc-b", "b5")]
        await tx.action_notes.delete([])
        assert len(await tx.action_notes.load()) == 2


# ---- silences and acks ---------------------------------------------------------------------------


async def test_silences_round_trip_in_creation_order(storage: Storage) -> None:
    matchers: list[dict[str, Any]] = [
        {"name": "service", "value": "checkout|サービス", "isRegex": True, "isEqual": True},
        {"name": "env", "value": "prod", "isRegex": False, "isEqual": False}]
    s2 = SilenceRecord("b", matchers, 100.0, 200.0, "alice", "deploy 🚀", 50.0)
    s1 = SilenceRecord("z", [], 10.0, 20.0, "bob", "", 40.0)
    s3 = SilenceRecord("a", matchers[:1], 0.0, math.inf, "carol", "forever", 50.0)
    async with storage.transaction() as tx:
        for s in (s2, s1, s3):
            await tx.silences.add(s)
    async with storage.transaction() as tx:
        assert await tx.silences.load() == [s1, s3, s2]  # created_at, then id
        await tx.silences.set_times("b", 100.0, 150.0)
        await tx.silences.set_times("missing", 1.0, 2.0)
        await tx.silences.delete(["z", "missing"])
        await tx.silences.delete([])
    async with storage.transaction() as tx:
        assert await tx.silences.load() == [
            s3, SilenceRecord("b", matchers, 100.0, 150.0, "alice", "deploy 🚀", 50.0)]


async def test_a_silence_id_is_unique(storage: Storage) -> None:
    s = SilenceRecord("s", [], 1.0, 2.0, "me", "", 0.0)
    async with storage.transaction() as tx:
        await tx.silences.add(s)
    with pytest.raises(Exception):  # noqa: B017 - the port does not name the error yet
        async with storage.transaction() as tx:
            await tx.rule_files.save({"a.yml": ("d", b"x")})
            await tx.silences.add(SilenceRecord("s", [], 5.0, 6.0, "other", "", 3.0))
    async with storage.transaction() as tx:
        assert await tx.silences.load() == [s]
        assert await tx.rule_files.load() == {}


async def test_acks_first_wins_and_load_by_time(storage: Storage) -> None:
    first = AckRecord("inc-1", "fp1", UNICODE, 20.0, "alice", "on it")
    async with storage.transaction() as tx:
        await tx.acks.add([first, AckRecord("inc-1", "fp1", {}, 21.0, "bob", "me too")])
        await tx.acks.add([AckRecord("inc-0", "fp0", {"a": "b"}, 30.0)])
        await tx.acks.add([])
    async with storage.transaction() as tx:
        await tx.acks.add([AckRecord("inc-1", "fp1", {}, 40.0, "carol", "late"),
                           AckRecord("inc-2", "fp2", {}, 20.0)])
    async with storage.transaction() as tx:
        acks = await tx.acks.load()
        assert [(a.incident_id, a.at, a.created_by) for a in acks] == [
            ("inc-1", 20.0, "alice"), ("inc-2", 20.0, ""), ("inc-0", 30.0, "")]
        assert acks[0] == first
        await tx.acks.delete(["inc-1", "inc-none"])
        await tx.acks.delete([])
        assert [a.incident_id for a in await tx.acks.load()] == ["inc-2", "inc-0"]


# ---- action runs and steps -----------------------------------------------------------------------


async def test_run_round_trip(storage: Storage) -> None:
    run = run_row("run-1", labels=UNICODE, annotations={"summary": "über 50%"},
                  value_before=math.inf, active_at=-1.5, dry_run=True, detail="d",
                  verify_at=2000.0, verification="pending", value_after=-math.inf,
                  finished_at=1500.0, status="succeeded", next_step=3,
                  lock_key="deploy/prod/チェックアウト", deferred_to="run-0", tier="critical")
    manual = run_row("run-2", incident=None, trigger="manual", rule=None, group=None,
                     value_before=None, active_at=None)
    async with storage.transaction() as tx:
        await tx.runs.insert(run)
        await tx.runs.insert(manual)
    async with storage.transaction() as tx:
        assert await tx.runs.get("run-1") == run
        assert await tx.runs.get("run-2") == manual
        assert await tx.runs.get("nope") is None
        got = await tx.runs.get("run-1")
        assert got is not None and got.dry_run is True and type(got.next_step) is int


async def test_run_float_values_keep_nan(storage: Storage, backend: str,
                                         request: pytest.FixtureRequest) -> None:
    """An alert's value may be NaN (0/0 in PromQL); the run that alert started keeps it."""
    if backend == "sqlite":
        request.applymarker(pytest.mark.xfail(
            strict=True, reason="SQLite stores a NaN REAL as NULL: value_before comes back None"))
    async with storage.transaction() as tx:
        await tx.runs.insert(run_row("run-1", value_before=math.nan))
        await tx.runs.update("run-1", value_after=math.nan)
        await tx.deploys.record_alert("d", "r", "fp", {}, math.nan, 1.0)
    async with storage.transaction() as tx:
        got = await tx.runs.get("run-1")
        assert got is not None
        assert same_float(got.value_before, math.nan) and same_float(got.value_after, math.nan)
        ((_, _, value, _),) = await tx.deploys.alerts("d")
        assert same_float(value, math.nan)


async def test_one_run_per_action_and_incident(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.runs.insert(run_row("run-1", action="rollback", incident="inc-1"))
        await tx.runs.insert(run_row("run-2", action="page", incident="inc-1"))
        await tx.runs.insert(run_row("run-3", action="rollback", incident="inc-2"))
        await tx.runs.insert(run_row("run-4", action="rollback", incident=None))
        await tx.runs.insert(run_row("run-5", action="rollback", incident=None))
    for dup in (run_row("run-6", action="rollback", incident="inc-1"),
                run_row("run-1", action="other", incident="inc-9")):  # an id is unique too
        with pytest.raises(DuplicateRun):
            async with storage.transaction() as tx:
                await tx.runs.insert(dup)
    async with storage.transaction() as tx:
        assert sorted(r.id for r in await tx.runs.list()) == [f"run-{i}" for i in range(1, 6)]
        original = await tx.runs.get("run-1")
        assert original is not None and original.action == "rollback"


async def test_run_update_changes_only_updatable_fields(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.runs.insert(run_row("run-1"))
    async with storage.transaction() as tx:
        await tx.runs.update("run-1", status="succeeded", next_step=2, finished_at=1100.0,
                             detail="done ✓", verify_at=1200.0, verification="pending",
                             value_after=0.01)
        await tx.runs.update("run-1")
        await tx.runs.update("missing", status="failed")
        with pytest.raises(ValueError):
            await tx.runs.update("run-1", action="other")
        with pytest.raises(ValueError):
            await tx.runs.update("run-1", status="failed", created_at=5.0)
    async with storage.transaction() as tx:
        got = await tx.runs.get("run-1")
    assert got == run_row("run-1", status="succeeded", next_step=2, finished_at=1100.0,
                          detail="done ✓", verify_at=1200.0, verification="pending",
                          value_after=0.01)


async def test_run_queries_and_their_order(storage: Storage) -> None:
    rows = [
        run_row("b", action="rollback", incident="i1", created_at=100.0, status="succeeded"),
        run_row("a", action="rollback", incident="i2", created_at=100.0, status="running"),
        run_row("c", action="rollback", incident="i3", created_at=300.0, status="failed",
                verification="pending"),
        run_row("d", action="page", incident="i1", created_at=200.0, status="running",
                verification="pending"),
        run_row("e", action="rollback", incident="i4", created_at=50.0, status="dry_run",
                dry_run=True),
        run_row("f", action="rollback", incident=None, created_at=400.0, status="succeeded",
                verification="verified"),
    ]
    async with storage.transaction() as tx:
        for r in rows:
            await tx.runs.insert(r)
    async with storage.transaction() as tx:
        # Newest first; equal times by id.
        assert [r.id for r in await tx.runs.list()] == ["f", "c", "d", "a", "b", "e"]
        assert [r.id for r in await tx.runs.list(limit=2)] == ["f", "c"]
        assert [r.id for r in await tx.runs.list(action="rollback")] == ["f", "c", "a", "b", "e"]
        assert [r.id for r in await tx.runs.list(status=["running", "failed"])] == ["c", "d", "a"]
        assert [r.id for r in await tx.runs.list(status=["running"], action="rollback")] == ["a"]
        assert [r.id for r in await tx.runs.list(status=[], action="")] == [
            "f", "c", "d", "a", "b", "e"]  # empty filters filter nothing
        assert [r.id for r in await tx.runs.pending_verifications()] == ["d", "c"]
        assert [r.id for r in await tx.runs.for_incident("i1")] == ["b", "d"]
        assert await tx.runs.for_incident("none") == []

        def past(*ids: str) -> list[PastRun]:
            by_id = {r.id: r for r in rows}
            return [PastRun(by_id[i].action, by_id[i].created_at, by_id[i].fingerprint,
                            by_id[i].incident_id) for i in ids]

        # Recent runs of the action (oldest first) plus any of the incident; dry runs only
        # when asked for.
        assert await tx.runs.history("rollback", 150.0, None, include_dry=False) == past("c", "f")
        assert await tx.runs.history("rollback", 150.0, "i1", include_dry=False) == past(
            "b", "c", "f")
        assert await tx.runs.history("rollback", 0.0, None, include_dry=False) == past(
            "a", "b", "c", "f")
        assert await tx.runs.history("rollback", 0.0, None, include_dry=True) == past(
            "e", "a", "b", "c", "f")
        assert await tx.runs.history("rollback", 500.0, "i4", include_dry=False) == []
        assert await tx.runs.history("rollback", 500.0, "i4", include_dry=True) == past("e")
        assert await tx.runs.history("page", 500.0, "i1", include_dry=False) == past("d")
        assert await tx.runs.history("none", 0.0, "i1", include_dry=True) == []


async def test_steps_start_finish_and_the_runs_next_step(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.runs.insert(run_row("run-1"))
        await tx.steps.start("run-1", 1, "wait", 1010.0, deadline=1070.0)
        await tx.steps.start("run-1", 0, "webhook", 1000.0)
        await tx.steps.start("run-1", 2, "script", 1080.0, status="would_run")
        await tx.steps.start("run-2", 0, "webhook", 5.0)  # steps of another run
    async with storage.transaction() as tx:
        assert await tx.steps.list("run-1") == [
            StepRow("run-1", 0, "webhook", "running", 1000.0, None, None, None, "", ""),
            StepRow("run-1", 1, "wait", "running", 1010.0, None, None, 1070.0, "", ""),
            StepRow("run-1", 2, "script", "would_run", 1080.0, None, None, None, "", "")]
        await tx.steps.finish("run-1", 0, "succeeded", 1002.5, "HTTP 200", "ok ✓",
                              next_step=1)
        await tx.steps.finish("run-1", 1, "interrupted", 1020.0, "restart")
        await tx.steps.finish("run-1", 7, "succeeded", 1.0, "no such step")
    async with storage.transaction() as tx:
        steps = await tx.steps.list("run-1")
        assert steps[0] == StepRow("run-1", 0, "webhook", "succeeded", 1000.0, 1002.5, 2.5,
                                   None, "HTTP 200", "ok ✓")
        assert steps[1] == StepRow("run-1", 1, "wait", "interrupted", 1010.0, 1020.0, 10.0,
                                   1070.0, "restart", "")
        run = await tx.runs.get("run-1")
        assert run is not None and run.next_step == 1  # only the call with next_step moved it
        assert [s.run_id for s in await tx.steps.list("run-2")] == ["run-2"]
        assert await tx.steps.list("run-9") == []


async def test_a_step_index_is_unique(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.steps.start("run-1", 0, "webhook", 1.0)
    with pytest.raises(Exception):  # noqa: B017 - the port does not name the error yet
        async with storage.transaction() as tx:
            await tx.steps.start("run-1", 0, "script", 2.0)
    assert [s.kind for s in await read(storage, lambda tx: tx.steps.list("run-1"))] == [
        "webhook"]


# ---- deploys, baselines, deploy alerts -----------------------------------------------------------


async def test_deploys_list_finish_and_order(storage: Storage) -> None:
    async with storage.transaction() as tx:
        for d in (deploy("b", 100.0), deploy("a", 100.0), deploy("c", 300.0),
                  deploy("d", 50.0)):
            await tx.deploys.insert(d)
        await tx.deploys.finish("c", "failed", "HighErrors fired ✗")
        await tx.deploys.finish("missing", "passed", "")
    async with storage.transaction() as tx:
        got = await tx.deploys.list()
        assert [d.id for d in got] == ["c", "a", "b", "d"]
        assert got[0] == DeployRow("c", "checkout", "v-c", {"env": "prod"}, 300.0, 2100.0,
                                   "failed", "HighErrors fired ✗")
        assert [d.id for d in await tx.deploys.list(limit=2)] == ["c", "a"]
        assert [d.id for d in await tx.deploys.list(status="open")] == ["a", "b", "d"]
        assert [d.id for d in await tx.deploys.list(status="")] == ["c", "a", "b", "d"]
        assert await tx.deploys.list(status="passed") == []


async def test_a_deploy_report_is_posted_once(storage: Storage) -> None:
    """A marker with a report keeps its declared queries and days; `mark_reported` records the
    posting once (two replicas at the window's end: one posts), and `unreported` lists those
    still due, oldest first. A marker without a report is never due."""
    queries = ({"name": "p95", "query": "latency", "target": "> 10% faster"},)
    async with storage.transaction() as tx:
        await tx.deploys.insert(replace(deploy("late", 300.0), report=queries, report_days=7.0))
        await tx.deploys.insert(replace(deploy("early", 100.0), report_days=1.0))
        await tx.deploys.insert(deploy("none", 50.0))
    async with storage.transaction() as tx:
        got = await tx.deploys.get("late")
        assert got is not None and got.report == queries and got.report_days == 7.0
        assert got.reported_at is None
        assert [d.id for d in await tx.deploys.unreported()] == ["early", "late"]
        assert [d.id for d in await tx.deploys.unreported(limit=1)] == ["early"]
        assert await tx.deploys.mark_reported("early", 86_500.0)
        assert not await tx.deploys.mark_reported("early", 86_600.0)
        assert not await tx.deploys.mark_reported("none", 86_600.0)
        assert not await tx.deploys.mark_reported("missing", 86_600.0)
    async with storage.transaction() as tx:
        early = await tx.deploys.get("early")
        assert early is not None and early.reported_at == 86_500.0
        assert [d.id for d in await tx.deploys.unreported()] == ["late"]
    with pytest.raises(RuntimeError):
        async with storage.transaction() as tx:
            assert await tx.deploys.mark_reported("late", 1.0)
            raise RuntimeError("rolled back: the report is due again")
    assert [d.id for d in await read(storage, lambda tx: tx.deploys.unreported())] == ["late"]


async def test_a_deploy_verdict_is_decided_once(storage: Storage) -> None:
    """`decide` sets the verdict of an open marker only: the first decision stands (a window's
    end and a firing alert, or two replicas, cannot both decide)."""
    marker = replace(deploy("d", 100.0), on_fail=("rollback", "page-owner"))
    async with storage.transaction() as tx:
        await tx.deploys.insert(marker)
        await tx.deploys.insert(deploy("e", 200.0))
    async with storage.transaction() as tx:
        got = await tx.deploys.get("d")
        assert got == marker and got.on_fail == ("rollback", "page-owner")
        assert await tx.deploys.get("missing") is None
        assert await tx.deploys.decide("d", "failed", "HighErrors fired", 150.0) is True
        assert await tx.deploys.decide("d", "passed", "no alerts", 1900.0) is False
        assert await tx.deploys.decide("missing", "passed", "", 1.0) is False
    async with storage.transaction() as tx:
        got = await tx.deploys.get("d")
        assert got is not None
        assert (got.status, got.summary, got.decided_at) == ("failed", "HighErrors fired", 150.0)
        assert [d.id for d in await tx.deploys.list(service="checkout")] == ["e", "d"]
        assert [d.id for d in await tx.deploys.list(version="v-d")] == ["d"]
        assert await tx.deploys.list(service="other") == []
    # A decision rolled back leaves the marker open, to be decided again.
    with pytest.raises(RuntimeError):
        async with storage.transaction() as tx:
            assert await tx.deploys.decide("e", "passed", "ok", 2000.0)
            raise RuntimeError("crash before commit")
    async with storage.transaction() as tx:
        got = await tx.deploys.get("e")
        assert got is not None and (got.status, got.decided_at) == ("open", None)


async def test_a_deploy_id_is_unique(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.deploys.insert(deploy("d", 1.0))
    with pytest.raises(Exception):  # noqa: B017 - the port does not name the error yet
        async with storage.transaction() as tx:
            await tx.deploys.insert(deploy("d", 2.0))
    assert [d.at for d in await read(storage, lambda tx: tx.deploys.list())] == [1.0]


async def test_baselines_latest_deploy_wins_per_series(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.deploys.save_baselines("d1", 100.0, [
            ("Latency", "fp2", 0.2, {"route": "/b"}), ("Latency", "fp1", 0.1, {"route": "/a"}),
            ("Errors", "fp1", 0.01, {"route": "/a"})])
        await tx.deploys.save_baselines("d1", 100.0, [])
    async with storage.transaction() as tx:
        await tx.deploys.save_baselines("d2", 200.0, [("Latency", "fp1", 0.3, UNICODE),
                                                      ("Latency", "fp3", math.inf, {})])
    async with storage.transaction() as tx:
        assert await tx.deploys.baselines() == {
            "Latency": {"fp1": 0.3, "fp2": 0.2, "fp3": math.inf}, "Errors": {"fp1": 0.01}}
        # By rule, then fingerprint; a series another deploy took over is no longer d1's.
        assert await tx.deploys.baselines_of("d1") == [("Errors", {"route": "/a"}, 0.01),
                                                       ("Latency", {"route": "/b"}, 0.2)]
        assert await tx.deploys.baselines_of("d2") == [("Latency", UNICODE, 0.3),
                                                       ("Latency", {}, math.inf)]
        assert await tx.deploys.baselines_of("none") == []


async def test_deploy_alerts_first_firing_counts(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.deploys.record_alert("d1", "Latency", "fp1", {"route": "/a"}, 0.9, 300.0)
        await tx.deploys.record_alert("d1", "Errors", "fp1", UNICODE, None, 200.0)
        await tx.deploys.record_alert("d1", "Latency", "fp1", {"route": "/x"}, 5.0, 310.0)
        await tx.deploys.record_alert("d1", "Apdex", "fp2", {}, -math.inf, 300.0)
        await tx.deploys.record_alert("d2", "Latency", "fp1", {}, 1.0, 100.0)
    async with storage.transaction() as tx:
        assert await tx.deploys.alerts("d1") == [
            ("Errors", UNICODE, None, 200.0), ("Apdex", {}, -math.inf, 300.0),
            ("Latency", {"route": "/a"}, 0.9, 300.0)]
        assert await tx.deploys.alerts("d2") == [("Latency", {}, 1.0, 100.0)]
        assert await tx.deploys.alerts("none") == []


# ---- incidents ----------------------------------------------------------------------------------


def incident(inc: str = "fp1@100.000", *, rule: str = "HighErrors", active_at: float = 100.0,
             **kw: Any) -> IncidentRecord:
    fields: dict[str, Any] = dict(id=inc, rule=rule, group="checkout",
                                  fingerprint=inc.split("@")[0], labels=UNICODE,
                                  severity="warning", active_at=active_at)
    fields.update(kw)
    return IncidentRecord(**fields)


def incident_run(run_id: str, incident_id: str | None, *, action: str = "rollback",
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
    assert got.labels == UNICODE  # JSON text: unicode, quotes and NUL survive every backend
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
        await tx.incidents.update([IncidentChange("fp1@100.000", "warning", UNICODE, 160.0)])
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
        await tx.runs.insert(incident_run("r2", "fp1@100.000", action="second", created_at=20.0))
        await tx.runs.insert(incident_run("r1", "fp1@100.000", action="first", created_at=10.0))
        await tx.runs.insert(incident_run("r3", "other@1.000", created_at=5.0))
        await tx.runs.insert(incident_run("r4", None, created_at=5.0))
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


# ---- results are copies --------------------------------------------------------------------------


async def test_results_and_arguments_do_not_alias_stored_state(storage: Storage) -> None:
    labels = {"service": "checkout"}
    firing = {"fp1": "critical"}
    matchers: list[dict[str, Any]] = [{"name": "a", "value": "b", "isRegex": False,
                                       "isEqual": True}]
    run = run_row("run-1", labels=labels)
    async with storage.transaction() as tx:
        await tx.alerts.save([GroupChanges("g", at=1.0, upserts=[("r", "s",
                                                                  alert("fp1", labels=labels))])])
        await tx.notify_log.put("slack", "g1", LogEntry(firing, 1.0))
        await tx.silences.add(SilenceRecord("s", matchers, 1.0, 2.0, "me", "", 0.0))
        await tx.acks.add([AckRecord("inc", "fp1", labels, 1.0)])
        await tx.runs.insert(run)
        await tx.deploys.insert(DeployRow("d", "svc", "v", labels, 1.0, 2.0, "open", ""))
        await tx.deploys.save_baselines("d", 1.0, [("r", "fp1", 1.0, labels)])
        await tx.deploys.record_alert("d", "r", "fp1", labels, 1.0, 1.0)
    # Callers mutate what they passed in ...
    labels["service"] = "MUTATED"
    firing["fp2"] = "MUTATED"
    matchers[0]["value"] = "MUTATED"
    matchers.append({"name": "MUTATED"})
    run.labels["service"] = "MUTATED"

    async def mutate_results(tx: Tx) -> None:
        groups = await tx.alerts.load()
        labels_of_alert = groups["g"].rules["r"].alerts["fp1"].labels
        assert isinstance(labels_of_alert, dict)
        labels_of_alert["service"] = "MUTATED"
        groups["g"].rules["r"].alerts.clear()
        groups["g"].rules.clear()
        (await tx.notify_log.load())[("slack", "g1")].firing["fp2"] = "MUTATED"
        (await tx.silences.load())[0].matchers[0]["value"] = "MUTATED"
        ack_labels = (await tx.acks.load())[0].labels
        assert isinstance(ack_labels, dict)
        ack_labels["service"] = "MUTATED"
        got = await tx.runs.get("run-1")
        assert got is not None
        got.labels["service"] = "MUTATED"
        (await tx.runs.list())[0].annotations["summary"] = "MUTATED"
        (await tx.deploys.list())[0].labels["service"] = "MUTATED"
        (await tx.deploys.baselines())["r"]["fp1"] = -1.0
        (await tx.deploys.baselines_of("d"))[0][1]["service"] = "MUTATED"
        (await tx.deploys.alerts("d"))[0][1]["service"] = "MUTATED"

    # ... and what they got back, inside the transaction and after it.
    async with storage.transaction() as tx:
        await mutate_results(tx)
        await _assert_unmutated(tx)
    async with storage.transaction() as tx:
        await _assert_unmutated(tx)


async def _assert_unmutated(tx: Tx) -> None:
    a = (await tx.alerts.load())["g"].rules["r"].alerts["fp1"]
    assert dict(a.labels) == {"service": "checkout"}
    assert (await tx.notify_log.load())[("slack", "g1")].firing == {"fp1": "critical"}
    assert (await tx.silences.load())[0].matchers == [
        {"name": "a", "value": "b", "isRegex": False, "isEqual": True}]
    assert dict((await tx.acks.load())[0].labels) == {"service": "checkout"}
    got = await tx.runs.get("run-1")
    assert got is not None and got.labels == {"service": "checkout"}
    assert got.annotations == {"summary": "s"}
    assert (await tx.deploys.list())[0].labels == {"service": "checkout"}
    assert await tx.deploys.baselines() == {"r": {"fp1": 1.0}}
    assert await tx.deploys.baselines_of("d") == [("r", {"service": "checkout"}, 1.0)]
    assert (await tx.deploys.alerts("d"))[0][1] == {"service": "checkout"}


# ---- persistence and schema versions (the SQL backends) ------------------------------------------


@pytest.fixture(params=SQL_BACKENDS)
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/s.db"
    pg: str = request.getfixturevalue("postgres_url")
    return pg


async def test_a_reopened_store_keeps_everything(sql_url: str) -> None:
    s = await open_storage(sql_url)
    try:
        async with s.transaction() as tx:
            await _write_one_of_each(tx)
    finally:
        await s.close()
    s = await open_storage(sql_url)
    try:
        assert s.schema_version == SCHEMA_VERSION
        async with s.transaction() as tx:
            await _assert_one_of_each(tx)
            await tx.outbox.insert([entry(group="g2")], 11.0)
        ids = [r.id for r in await read(s, lambda tx: tx.outbox.recent())]
        assert ids[0] > ids[1]  # the id sequence continued
    finally:
        await s.close()


async def _set_recorded_version(url: str, version: str) -> None:
    if url.startswith("sqlite:"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute("UPDATE schema_meta SET value = ? WHERE key = 'version'", (version,))
        return
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("UPDATE schema_meta SET value = $1 WHERE key = 'version'", version)
    finally:
        await conn.close()


async def _execute(sql_url: str, stmts: list[str]) -> None:
    """Writes an older store by hand, as an earlier release left it, outside the backend."""
    if sql_url.startswith("sqlite:"):
        with sqlite3.connect(sql_url.removeprefix("sqlite:///")) as db:
            for stmt in stmts:
                db.execute(stmt)
        return
    conn = await asyncpg.connect(sql_url)
    try:
        for stmt in stmts:
            await conn.execute(stmt)
    finally:
        await conn.close()


async def _recorded_version(url: str) -> str:
    if url.startswith("sqlite:"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            (value,) = db.execute("SELECT value FROM schema_meta WHERE key = 'version'").fetchone()
        return str(value)
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SELECT value FROM schema_meta WHERE key = 'version'"))
    finally:
        await conn.close()


async def test_a_store_of_a_newer_schema_is_refused_untouched(sql_url: str) -> None:
    s = await open_storage(sql_url)
    async with s.transaction() as tx:
        await tx.rule_files.save({"a.yml": ("d", b"x")})
    await s.close()
    assert await _recorded_version(sql_url) == str(SCHEMA_VERSION)
    newer = str(SCHEMA_VERSION + 1)
    await _set_recorded_version(sql_url, newer)
    with pytest.raises(StorageError) as e:
        await open_storage(sql_url)
    assert "STATE_URL" in str(e.value)
    assert newer in str(e.value)
    assert await _recorded_version(sql_url) == newer
    # Once the version is one this code knows again, the data is all there.
    await _set_recorded_version(sql_url, str(SCHEMA_VERSION))
    s = await open_storage(sql_url)
    try:
        assert await read(s, lambda tx: tx.rule_files.load()) == {"a.yml": b"x"}
    finally:
        await s.close()


async def test_a_version_1_store_migrates_to_version_2_with_its_rows(sql_url: str) -> None:
    """Schema 2 added incident history to a store of schema 1 (the first release's tables)."""
    v1 = migration(1, "sqlite" if sql_url.startswith("sqlite:") else "postgresql")
    meta = "CREATE TABLE schema_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
    ack = ("INSERT INTO notify_acks VALUES ('fp1@100.000', 'fp1', '{}', 300.0, 'bob', '')")
    if sql_url.startswith("sqlite:"):
        with sqlite3.connect(sql_url.removeprefix("sqlite:///")) as db:
            for stmt in [*v1, meta, "INSERT INTO schema_meta VALUES ('version', '1')", ack]:
                db.execute(stmt)
    else:
        conn = await asyncpg.connect(sql_url)
        try:
            for stmt in [*v1, meta, "INSERT INTO schema_meta VALUES ('version', '1')", ack]:
                await conn.execute(stmt)
        finally:
            await conn.close()
    s = await open_storage(sql_url)
    try:
        assert [a.created_by for a in await read(s, lambda tx: tx.acks.load())] == ["bob"]
        async with s.transaction() as tx:
            await tx.incidents.open([incident()])
        got = await read(s, lambda tx: tx.incidents.get("fp1@100.000"))
        assert got is not None and got.ack_by == "bob"
    finally:
        await s.close()
    assert await _recorded_version(sql_url) == str(SCHEMA_VERSION)


async def test_a_version_2_store_migrates_to_version_3_with_its_deploys(sql_url: str) -> None:
    """Schema 3 added deploy verdicts (on_fail actions, when decided) to the markers of
    schema 2: an open marker stays open with no on_fail; a decided one reads as decided at
    its window's end."""
    dialect = "sqlite" if sql_url.startswith("sqlite:") else "postgresql"
    stmts = [*migration(1, dialect), *migration(2, dialect),
             "CREATE TABLE schema_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
             "INSERT INTO schema_meta VALUES ('version', '2')",
             "INSERT INTO deploy_markers VALUES ('d1', 'checkout', 'v1', '{}', 100.0, 200.0, "
             "'passed', 'PASS')",
             "INSERT INTO deploy_markers VALUES ('d2', 'checkout', 'v2', '{}', 300.0, 400.0, "
             "'open', '')"]
    await _execute(sql_url, stmts)
    s = await open_storage(sql_url)
    try:
        d1 = await read(s, lambda tx: tx.deploys.get("d1"))
        d2 = await read(s, lambda tx: tx.deploys.get("d2"))
        assert d1 is not None and (d1.status, d1.decided_at, d1.on_fail) == ("passed", 200.0, ())
        assert d2 is not None and (d2.status, d2.decided_at, d2.on_fail) == ("open", None, ())
        async with s.transaction() as tx:
            assert await tx.deploys.decide("d2", "failed", "FAIL", 350.0)
    finally:
        await s.close()
    assert await _recorded_version(sql_url) == str(SCHEMA_VERSION)


async def test_a_version_4_store_migrates_to_version_5_with_its_deploys(sql_url: str) -> None:
    """Schema 5 added deploy reports: a marker set before it has no report queries and no
    report days, so no report becomes due for it; its verdict is kept."""
    dialect = "sqlite" if sql_url.startswith("sqlite:") else "postgresql"
    stmts = [*(stmt for v in (1, 2, 3, 4) for stmt in migration(v, dialect)),
             "CREATE TABLE schema_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
             "INSERT INTO schema_meta VALUES ('version', '4')",
             "INSERT INTO deploy_markers VALUES ('d1', 'checkout', 'v1', '{}', 100.0, 200.0, "
             "'failed', 'FAIL', '[\"rollback\"]', 150.0)"]
    await _execute(sql_url, stmts)
    s = await open_storage(sql_url)
    try:
        d1 = await read(s, lambda tx: tx.deploys.get("d1"))
        assert d1 is not None
        assert (d1.status, d1.decided_at, d1.on_fail) == ("failed", 150.0, ("rollback",))
        assert (d1.report, d1.report_days, d1.reported_at) == ((), None, None)
        assert await read(s, lambda tx: tx.deploys.unreported()) == []
    finally:
        await s.close()
    assert await _recorded_version(sql_url) == str(SCHEMA_VERSION)


# ---- actions, continued (schema 6): target locks, attempts, pause ----------------------------


async def test_a_lock_names_its_holder_and_whether_its_incident_is_open(storage: Storage) -> None:
    async with storage.transaction() as tx:
        assert await tx.locks.holder("deploy/prod/checkout") is None  # never taken
        await tx.runs.insert(run_row("r1", incident="fp1@100.000"))
        await tx.locks.take("deploy/prod/checkout", "r1", 1000.0)
    got = await read(storage, lambda tx: tx.locks.holder("deploy/prod/checkout"))
    assert got == LockHolder("deploy/prod/checkout", "r1", "rollback", 1000.0, "running",
                             "fp1@100.000", False)  # no incident record: not known open
    async with storage.transaction() as tx:
        await tx.incidents.open([incident("fp1@100.000")])
        await tx.runs.update("r1", status="succeeded")
    got = await read(storage, lambda tx: tx.locks.holder("deploy/prod/checkout"))
    assert got is not None and got.incident_open and got.status == "succeeded"
    async with storage.transaction() as tx:
        await tx.incidents.resolve([("fp1@100.000", 2000.0)])
    got = await read(storage, lambda tx: tx.locks.holder("deploy/prod/checkout"))
    assert got is not None and not got.incident_open
    # another run takes it over; a rolled-back take leaves the holder as it was
    async with storage.transaction() as tx:
        await tx.runs.insert(run_row("r2", incident=None))
        await tx.locks.take("deploy/prod/checkout", "r2", 3000.0)
    with contextlib.suppress(Boom):
        async with storage.transaction() as tx:
            await tx.runs.insert(run_row("r3", incident=None))
            await tx.locks.take("deploy/prod/checkout", "r3", 4000.0)
            raise Boom
    got = await read(storage, lambda tx: tx.locks.holder("deploy/prod/checkout"))
    assert got is not None and (got.run_id, got.at, got.incident_id) == ("r2", 3000.0, None)
    assert await read(storage, lambda tx: tx.locks.holder("deploy/prod/api")) is None


async def test_concurrent_claims_of_one_lock_key_let_exactly_one_through(
        storage: Storage) -> None:
    """Each transaction asks who holds the key and takes it when nobody does: whatever the
    interleaving (on PostgreSQL, separate connections, as separate replicas would be), one
    wins and every other one sees the winner."""
    outcomes: list[str] = []
    async with storage.transaction() as tx:  # taken once before, by a run long finished
        await tx.runs.insert(run_row("r-old", incident=None, status="succeeded"))
        await tx.locks.take("deploy/prod/checkout", "r-old", 0.0)

    async def claim(i: int) -> None:
        async with storage.transaction() as tx:
            held = await tx.locks.holder("deploy/prod/checkout")
            await asyncio.sleep(0.01)  # let the others ask too
            if held is None or held.run_id == "r-old":
                await tx.runs.insert(run_row(f"r{i}", incident=f"inc-{i}"))
                await tx.locks.take("deploy/prod/checkout", f"r{i}", float(i))
                outcomes.append("took")
            else:
                outcomes.append(f"held by {held.run_id}")

    await asyncio.gather(*(claim(i) for i in range(6)))
    assert outcomes.count("took") == 1, outcomes
    winner = await read(storage, lambda tx: tx.locks.holder("deploy/prod/checkout"))
    assert winner is not None
    assert sorted(outcomes) == sorted(["took"] + [f"held by {winner.run_id}"] * 5)


async def test_a_locked_run_is_listed_but_never_counts_as_having_run(storage: Storage) -> None:
    async with storage.transaction() as tx:
        await tx.runs.insert(run_row("r1", incident="inc-1", created_at=1000.0))
        await tx.runs.insert(run_row("r2", incident="inc-2", created_at=1001.0,
                                     status="locked", deferred_to="r1",
                                     lock_key="deploy/prod/checkout"))
    async with storage.transaction() as tx:
        history = await tx.runs.history("rollback", 0.0, "inc-2", include_dry=True)
        assert [p.incident_id for p in history] == ["inc-1"]
        [got] = await tx.runs.list(status=["locked"])
        assert (got.id, got.deferred_to, got.lock_key) == ("r2", "r1", "deploy/prod/checkout")
        # it holds the incident's one slot for the action all the same
        with pytest.raises(DuplicateRun):
            await tx.runs.insert(run_row("r3", incident="inc-2"))


async def test_attempts_round_trip_idempotently_in_order(storage: Storage) -> None:
    rows = [AttemptRow("r1", 0, 2, 11.0, 12.0, "retrying", "HTTP 503; try 3/3 in 2s"),
            AttemptRow("r1", 0, 1, 10.0, 10.5, "retrying", "HTTP 503 über"),
            AttemptRow("r1", 1, 1, 20.0, 21.0, "succeeded", "HTTP 200"),
            AttemptRow("r2", 0, 1, 5.0, 6.0, "failed", "refused")]
    async with storage.transaction() as tx:
        for a in rows:
            await tx.steps.add_attempt(a)
        await tx.steps.add_attempt(AttemptRow("r1", 0, 1, 99.0, 99.0, "failed", "again"))
    got = await read(storage, lambda tx: tx.steps.attempts("r1"))
    assert got == [rows[1], rows[0], rows[2]]
    assert await read(storage, lambda tx: tx.steps.attempts("nope")) == []


async def test_the_pause_is_one_record_set_replaced_and_cleared(storage: Storage) -> None:
    assert await read(storage, lambda tx: tx.pause.get()) is None
    async with storage.transaction() as tx:
        await tx.pause.set(PauseRecord(5000.0, "migration ü", "alice", 1000.0))
    assert await read(storage, lambda tx: tx.pause.get()) == PauseRecord(
        5000.0, "migration ü", "alice", 1000.0)
    async with storage.transaction() as tx:
        await tx.pause.set(PauseRecord(9000.0, "longer", "bob", 2000.0))
    assert await read(storage, lambda tx: tx.pause.get()) == PauseRecord(
        9000.0, "longer", "bob", 2000.0)
    async with storage.transaction() as tx:
        assert await tx.pause.clear() is True
        assert await tx.pause.clear() is False
    assert await read(storage, lambda tx: tx.pause.get()) is None


async def test_a_version_5_store_migrates_to_version_6_with_its_runs(sql_url: str) -> None:
    """Schema 6 added target locks, attempts, the pause and three run columns."""
    dialect = "sqlite" if sql_url.startswith("sqlite:") else "postgresql"
    stmts = [*(stmt for v in (1, 2, 3, 4, 5) for stmt in migration(v, dialect)),
             "CREATE TABLE schema_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
             "INSERT INTO schema_meta VALUES ('version', '5')",
             "INSERT INTO action_runs (id, action, trigger, labels, dry_run, spec, status, "
             "created_at) VALUES ('old', 'rollback', 'manual', '{}', 0, '{}', 'succeeded', 10.0)"]
    await _execute(sql_url, stmts)
    s = await open_storage(sql_url)
    try:
        got = await read(s, lambda tx: tx.runs.get("old"))
        assert got is not None and (got.lock_key, got.deferred_to, got.tier) == (None, None,
                                                                               None)
        async with s.transaction() as tx:
            await tx.locks.take("k", "old", 11.0)
            await tx.pause.set(PauseRecord(50.0, "r", "b", 1.0))
        held = await read(s, lambda tx: tx.locks.holder("k"))
        assert held is not None and held.run_id == "old"
    finally:
        await s.close()
    assert await _recorded_version(sql_url) == str(SCHEMA_VERSION)
