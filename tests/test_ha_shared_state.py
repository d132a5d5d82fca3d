"""What replicas keep in memory of the shared store, and how they keep it fresh and act on it
once: the store's change counts (`tx.versions`), silences and acks re-read only when they
changed (`SilenceStore.refresh`), and deploy markers whose due work (a window to close, a report
to post) is claimed by one replica (`tx.deploys.take_due` / `claim`), on real PostgreSQL — two
storages on one database stand for two replicas — and, for the counts, on every backend. A
replica restarted under the same `REPLICA_ID` takes its killed process's claims back at once
(storage, tracker and in-process daemons), and a duplicate live one takes none.

Claims run on the database's clock: a claim running out is simulated by moving `claim_until`
into the past with SQL, never by sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from storage_support import storage_at
from test_daemon_support import settings
from test_storage_contract import (  # noqa: F401  (fixtures)
    _execute,
    _recorded_version,
    backend,
    deploy,
    read,
    run_row,
    sql_url,
    storage,
    url,
)

from watchdog.actions.deploys import DeployTracker
from watchdog.actions.store import ActionStore
from watchdog.actions.testing import RecordingSink, make_context
from watchdog.actions.timing import Waker
from watchdog.daemon import Daemon, StartupError
from watchdog.labels import fingerprint
from watchdog.notify.silences import Ack, Matcher, Silence, SilenceStore
from watchdog.rulesdir import build
from watchdog.storage import DEPLOYS, SILENCES, Lease, LeaseLost, Storage, open_storage
from watchdog.storage.records import AckRecord, DeployRow, SilenceRecord
from watchdog.storage.schema import SCHEMA_VERSION, migration
from watchdog.storage.sql import SqlSilences
from watchdog.testing import FakeSource, FixedClock, sample

TTL = 15.0
DAY = 86400.0
T0 = 1_800_000_000.0


async def counts(s: Storage) -> tuple[int, int]:
    got = await read(s, lambda tx: tx.versions.get())
    return got.get(SILENCES, 0), got.get(DEPLOYS, 0)


async def test_each_write_of_shared_state_counts_one_change_and_nothing_else_does(
        storage: Storage) -> None:  # noqa: F811
    """Every backend: silences and acks move the "silences" count, markers and baselines the
    "deploys" count; reads, a rolled-back write, the alerts a window records and the claims
    on a marker move neither."""
    base = await counts(storage)
    silence = SilenceRecord("s1", [{"name": "a", "value": "b"}], 1.0, 2.0, "me", "", 1.0)
    steps: list[tuple[str, Any, tuple[int, int]]] = [
        ("silence added", lambda tx: tx.silences.add(silence), (1, 0)),
        ("silence expired", lambda tx: tx.silences.set_times("s1", 1.0, 1.5), (1, 0)),
        ("ack", lambda tx: tx.acks.add([AckRecord("i1", "fp", {}, 1.0, "me", "")]), (1, 0)),
        ("ack pruned", lambda tx: tx.acks.delete(["i1"]), (1, 0)),
        ("silence pruned", lambda tx: tx.silences.delete(["s1"]), (1, 0)),
        ("reads", lambda tx: tx.silences.load(), (0, 0)),
        ("marker", lambda tx: tx.deploys.insert(deploy("d1", 100.0)), (0, 1)),
        ("baselines", lambda tx: tx.deploys.save_baselines(
            "d1", 100.0, [("R", "fp", 1.0, {"service": "checkout"})]), (0, 1)),
        ("an alert in the window", lambda tx: tx.deploys.record_alert(
            "d1", "R", "fp", {}, 1.0, 150.0), (0, 0)),
        ("claims", lambda tx: tx.deploys.take_due("r1", TTL, 5000.0), (0, 0)),
        ("verdict", lambda tx: tx.deploys.decide("d1", "passed", "ok", 1900.0), (0, 1)),
        ("decided again: nothing changes", lambda tx: tx.deploys.decide(
            "d1", "failed", "no", 1901.0), (0, 0)),
    ]
    for what, write, moved in steps:
        before = await counts(storage)
        async with storage.transaction() as tx:
            await write(tx)
        after = await counts(storage)
        assert (after[0] - before[0], after[1] - before[1]) == moved, what
    with pytest.raises(RuntimeError):
        async with storage.transaction() as tx:
            await tx.silences.add(SilenceRecord("s2", [], 1.0, 2.0, "", "", 1.0))
            raise RuntimeError("rolled back")
    assert (await counts(storage))[0] == base[0] + 5


async def test_a_version_6_store_migrates_to_version_7_with_its_markers(
        sql_url: str) -> None:  # noqa: F811
    """Schema 7 added the change counts and the markers' claims: an open marker of an older
    store is due, unclaimed, at its window's end; the counts start at 0 and move."""
    dialect = "sqlite" if sql_url.startswith("sqlite:") else "postgresql"
    await _execute(sql_url, [
        *(stmt for v in range(1, 7) for stmt in migration(v, dialect)),  # type: ignore[arg-type]
        "CREATE TABLE schema_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "INSERT INTO schema_meta VALUES ('version', '6')",
        "INSERT INTO deploy_markers (id, service, version, labels, at, window_end, status) "
        "VALUES ('old', 'checkout', 'v1', '{}', 10.0, 1810.0, 'open')"])
    s = await open_storage(sql_url)
    try:
        assert await counts(s) == (0, 0)
        assert [d.id for d in await read(s, lambda tx: tx.deploys.take_due(
            "r1", TTL, 1810.0))] == ["old"]
        async with s.transaction() as tx:
            assert await tx.deploys.decide("old", "passed", "ok", 1811.0)
        assert await counts(s) == (0, 1)
    finally:
        await s.close()
    assert await _recorded_version(sql_url) == str(SCHEMA_VERSION) == "7"


# ---- silences and acks on two replicas -----------------------------------------------------


@pytest.fixture
async def two(postgres_url: str) -> AsyncIterator[tuple[Storage, Storage]]:
    async with storage_at(postgres_url) as a, storage_at(postgres_url) as b:
        yield a, b


async def test_a_silence_made_on_one_replica_mutes_on_the_other_at_its_next_refresh_and_an_idle_refresh_reads_nothing(  # noqa: E501
        two: tuple[Storage, Storage], monkeypatch: pytest.MonkeyPatch) -> None:
    """Replica B refreshes every second (the notify loop's tick): one refresh after A's write
    is the staleness bound. When nothing changed, a refresh reads the change count and not
    the silences or acks."""
    loads: list[int] = []
    real_load = SqlSilences.load

    async def counted(self: SqlSilences) -> list[SilenceRecord]:
        loads.append(1)
        return await real_load(self)

    monkeypatch.setattr(SqlSilences, "load", counted)
    a, b = SilenceStore(two[0]), SilenceStore(two[1])
    await a.load()
    await b.load()
    labels = {"alertname": "HighErrors", "service": "checkout"}
    assert await b.refresh() is False  # nothing changed since B's load
    loads.clear()
    for _ in range(5):
        assert await b.refresh() is False
    assert loads == [] and b.reads == 1  # the full read did not happen

    now = 1000.0
    s = Silence("s1", (Matcher("service", "checkout"),), now, now + 3600, "alice", "deploy",
                now)
    await a.add(s)
    assert b.muted(labels, now + 1) is None  # B has not looked yet
    assert await b.refresh() is True  # its next tick
    assert b.muted(labels, now + 1) == s and loads == [1]
    assert await b.refresh() is False and loads == [1]

    # An expiry and an ack through A are seen at B's next refresh too.
    await a.expire("s1", now + 10)
    await a.ack([Ack("inc-1", "fp", labels, now + 10, "bob")])
    assert await b.refresh() is True
    assert b.muted(labels, now + 11) is None and b.acked("inc-1")
    # B's own write counts too: re-read once, then quiet again.
    await b.prune(now + 10 * 86400)
    assert await b.refresh() is True
    assert await b.refresh() is False


# ---- deploy markers: due work claimed by one replica ----------------------------------------


async def expire_claim(conn: asyncpg.Connection, deploy_id: str) -> None:
    """As if LEASE_TTL passed without a renewal (the claimer died or froze)."""
    await conn.execute("UPDATE deploy_markers SET claim_until = claim_until - 1000 "
                       "WHERE id = $1", deploy_id)


def marker(deploy_id: str, at: float, *, window: float = 1800.0,
           report_days: float | None = None, status: str = "open") -> DeployRow:
    return DeployRow(deploy_id, "checkout", "v2", {"service": "checkout"}, at, at + window,
                     status, "", report_days=report_days)


async def test_a_due_marker_is_claimed_by_one_replica_and_retaken_only_when_its_claim_runs_out(
        pg: tuple[Storage, asyncpg.Connection]) -> None:
    s, conn = pg
    async with s.transaction() as tx:
        await tx.deploys.insert(marker("ended", 1000.0))  # window ends at 2800
        await tx.deploys.insert(marker("later", 2000.0))  # ends at 3800
        # decided; its report is due 0.01 days (864 s) after it: at 2864
        await tx.deploys.insert(marker("reported", 2000.0, status="passed", report_days=0.01))
        await tx.deploys.insert(marker("decided", 100.0, status="passed"))

    async def take(replica: str, now: float) -> list[str]:
        return [d.id for d in await read(s, lambda tx: tx.deploys.take_due(replica, TTL, now))]

    assert await take("r1", 2799.0) == []  # nothing due yet
    # At 3000: the first window ended, and the report is due (by window end, then id).
    assert await take("r1", 3000.0) == ["ended", "reported"]
    assert await take("r2", 3000.0) == []  # r1 is working on them
    assert await take("r1", 3000.0) == []  # and does not take its own twice
    async with s.transaction() as tx:
        assert await tx.deploys.claim("ended", "r1", TTL)  # the fence passes
        assert not await tx.deploys.claim("ended", "r2", TTL)
    assert await read(s, lambda tx: tx.deploys.renew_claims("r1", TTL, ["ended", "later"])) \
        == ["ended"]

    # r1 dies holding the claim: once it runs out, r2 takes the marker, and r1 — were it only
    # frozen — can neither renew it nor write a verdict under it.
    await expire_claim(conn, "ended")
    assert await take("r2", 3000.0) == ["ended"]
    assert await read(s, lambda tx: tx.deploys.renew_claims("r1", TTL, ["ended"])) == []
    with pytest.raises(LeaseLost):
        async with s.transaction() as tx:
            if not await tx.deploys.claim("ended", "r1", TTL):
                raise LeaseLost("deploy ended")
            await tx.deploys.decide("ended", "passed", "stale", 3001.0)
    async with s.transaction() as tx:
        assert await tx.deploys.claim("ended", "r2", TTL)
        assert await tx.deploys.decide("ended", "failed", "from r2", 3002.0)
    assert (await read(s, lambda tx: tx.deploys.get("ended"))).summary == "from r2"  # type: ignore[union-attr]
    # Decided: no longer due, whoever holds a claim on it.
    await expire_claim(conn, "ended")
    assert await take("r1", 3000.0) == []
    # A released claim is free at once; a posted report is no longer due.
    async with s.transaction() as tx:
        await tx.deploys.release("reported", "r2")  # not r2's: nothing happens
    assert await take("r2", 3000.0) == []
    async with s.transaction() as tx:
        await tx.deploys.release("reported", "r1")
    assert await take("r2", 3000.0) == ["reported"]
    async with s.transaction() as tx:
        assert await tx.deploys.mark_reported("reported", 3001.0)
        await tx.deploys.release("reported", "r2")
    assert await take("r1", 5000.0) == ["later"]


async def test_a_restart_under_the_same_replica_id_takes_its_claims_back_at_once(
        pg: tuple[Storage, asyncpg.Connection]) -> None:
    """r1's process claimed a due marker and was killed (a pod restarted in place keeps its
    name): the new process of r1 takes it back at its first look (`own`), with a fresh claim of
    one TTL, while r2 still waits for the old claim to run out."""
    s, conn = pg
    async with s.transaction() as tx:
        await tx.deploys.insert(marker("ended", 1000.0))

    async def take(replica: str, *, own: bool = False) -> list[str]:
        return [d.id for d in await read(s, lambda tx: tx.deploys.take_due(
            replica, TTL, 3000.0, own=own))]

    assert await take("r1") == ["ended"]
    # The old process's claim, far from running out.
    await conn.execute("UPDATE deploy_markers SET claim_until = claim_until + 86400")
    assert await take("r2") == [] and await take("r2", own=True) == []  # not r2's
    assert await take("r1") == []  # r1's ordinary looks leave it to the process working on it
    assert await take("r1", own=True) == ["ended"]  # the restarted r1, at once
    left = await conn.fetchval("SELECT claim_until - extract(epoch from clock_timestamp()) "
                               "FROM deploy_markers WHERE id = 'ended'")
    assert 0 < left <= TTL  # a claim of its own, not the old one's
    async with s.transaction() as tx:
        assert await tx.deploys.claim("ended", "r1", TTL)
        assert not await tx.deploys.claim("ended", "r2", TTL)


async def test_one_process_stores_answer_every_due_marker_without_claims(
        storage: Storage, backend: str) -> None:  # noqa: F811
    if backend == "postgresql":
        pytest.skip("claims are real there (the test above)")
    async with storage.transaction() as tx:
        await tx.deploys.insert(marker("a", 1000.0))
        await tx.deploys.insert(marker("b", 500.0, status="failed", report_days=1.0))
    due = await read(storage, lambda tx: tx.deploys.take_due("r1", TTL, 1000.0 + DAY))
    assert [d.id for d in due] == ["b", "a"]  # by window end, then id
    assert [d.id for d in await read(storage, lambda tx: tx.deploys.take_due(
        "r1", TTL, 1000.0 + DAY))] == ["b", "a"]  # nothing claimed: the same again
    assert [d.id for d in await read(storage, lambda tx: tx.deploys.take_due(
        "r1", TTL, 1000.0 + DAY, own=True))] == ["b", "a"]  # a restart: the same
    async with storage.transaction() as tx:
        assert await tx.deploys.claim("a", "anyone", TTL)


# ---- the deploy tracker of two replicas -----------------------------------------------------


class SharedLeases:
    """A replica's `LeaseView` on a shared store (its leases do not matter here)."""

    shared = True

    def __init__(self, replica_id: str) -> None:
        self.replica_id, self.ttl = replica_id, TTL

    def held(self, name: str) -> Lease | None:
        return None

    def lost(self, name: str, detail: str = "") -> None:
        pass


RULES = b"""
groups:
  - name: api
    rules:
      - alert: ApiLatencyRegressed
        expr: api_p95
        baseline: {deploy: true}
        threshold: "> 1.5"
"""


def tracker(store: Storage, session: aiohttp.ClientSession, replica: str, clock: FixedClock,
            sink: RecordingSink) -> DeployTracker:
    source = FakeSource({"api_p95": lambda at: [sample(0.2, __name__="api_p95", service="api")]})
    ctx = make_context(store, session, source, clock=clock, sinks=[sink])
    ctx.leases = SharedLeases(replica)
    t = DeployTracker(ctx, ActionStore(store, replica, TTL), Waker(clock))
    t.set_rules([(g, r) for _, g in build({"r.yml": RULES}).groups() for r in g.alerting_rules])
    return t


async def test_a_marker_taken_on_one_replica_is_closed_by_another_and_a_stale_claimer_writes_nothing(  # noqa: E501
        two: tuple[Storage, Storage], pg_conn: asyncpg.Connection) -> None:
    """Replica A takes the marker; B learns of it and of its baselines at its next look. When
    the window ends A claims it and freezes; its claim runs out, B claims and closes it (pass);
    A, waking, finds its claim gone and writes no second verdict."""
    clock = FixedClock(T0)
    sink_a, sink_b = RecordingSink(), RecordingSink()
    async with aiohttp.ClientSession() as session:
        a = tracker(two[0], session, "r1", clock, sink_a)
        b = tracker(two[1], session, "r2", clock, sink_b)
        await a.start()
        await b.start()
        try:
            created, doc = await a.mark("api", "v2", {}, 60.0)
            assert created
            assert b.baselines() == {}  # B has not looked yet
            assert await b.claim_due() == 0  # its next look: nothing due, the marker known
            fp = fingerprint({"service": "api"})
            assert b.baselines() == {"ApiLatencyRegressed": {fp: 0.2}}
            assert list(b._open) == [doc["id"]]
            assert await b.claim_due() == 0 and await b.sync() is False  # nothing changed

            clock.advance(61)
            [d] = await a.store.take_due_deploys(clock())  # A claims the ended window ...
            assert await b.claim_due() == 0  # ... so B leaves it
            await pg_conn.execute("UPDATE deploy_markers SET claim_until = claim_until - 1000")
            assert await b.claim_due() == 1  # A froze past its claim: B takes it over
            await asyncio.gather(*b._working.values())
            with pytest.raises(LeaseLost):
                await a.close(d, claimed=True)  # A wakes up and tries to write its verdict
        finally:
            await a.stop()
            await b.stop()
    assert [e.kind for e in sink_b.events if e.action == "deploy"] == ["succeeded"]
    assert [e.kind for e in sink_a.events if e.action == "deploy"] == ["started"]
    async with two[0].transaction() as tx:
        got = await tx.deploys.get(doc["id"])
    assert got is not None and got.status == "passed" and "PASS" in got.summary


async def test_a_replica_restarted_under_its_id_closes_the_window_its_killed_process_claimed_at_once(  # noqa: E501
        two: tuple[Storage, Storage], pg_conn: asyncpg.Connection) -> None:
    """r1's process claims an ended window and is SIGKILLed before the verdict (its claim
    stays, LEASE_TTL from running out). r2 leaves the marker; r1's new process — same
    REPLICA_ID — closes it at its first look instead of waiting for the claim to run out."""
    clock = FixedClock(T0)
    sink_old, sink_b, sink_new = RecordingSink(), RecordingSink(), RecordingSink()
    async with aiohttp.ClientSession() as session:
        old = tracker(two[0], session, "r1", clock, sink_old)
        _, doc = await old.mark("api", "v2", {}, 60.0)
        clock.advance(61)
        [d] = await old.store.take_due_deploys(clock())  # claimed; then killed: never stopped
        await pg_conn.execute("UPDATE deploy_markers SET claim_until = claim_until + 86400")
        b = tracker(two[1], session, "r2", clock, sink_b)
        new = tracker(two[0], session, "r1", clock, sink_new)
        try:
            assert await b.claim_due() == 0  # another replica waits for the claim
            assert await new.claim_due() == 1  # the same replica id takes it at once
            await asyncio.gather(*new._working.values())
            assert await new.claim_due() == 0 and await b.claim_due() == 0  # decided
        finally:
            await b.stop()
            await new.stop()
    assert [e.kind for e in sink_new.events if e.action == "deploy"] == ["succeeded"]
    assert [e.kind for e in sink_b.events if e.action == "deploy"] == []
    async with two[1].transaction() as tx:
        got = await tx.deploys.get(doc["id"])
    assert got is not None and got.status == "passed" and d.id == doc["id"]


# ---- daemons restarted under the same REPLICA_ID ---------------------------------------------


async def left_by_a_killed_r1(db: str) -> float:
    """A due marker and an unfinished run claimed by r1's process, killed (its claims a day
    from running out); the marker's claim_until."""
    now = time.time()
    async with storage_at(db) as s, s.transaction() as tx:
        await tx.deploys.insert(marker("dep", now - 120.0, window=60.0))
        await tx.runs.insert(run_row("run1", created_at=now - 60.0))
    conn = await asyncpg.connect(db)
    try:
        await conn.execute("UPDATE deploy_markers SET claimed_by = 'r1', claim_until = "
                           "extract(epoch from clock_timestamp()) + 86400")
        await conn.execute("UPDATE action_runs SET claimed_by = 'r1', claim_until = "
                           "extract(epoch from clock_timestamp()) + 86400")
        return float(await conn.fetchval("SELECT claim_until FROM deploy_markers"))
    finally:
        await conn.close()


async def marker_row(db: str) -> tuple[str, str | None, float | None]:
    conn = await asyncpg.connect(db)
    try:
        r = await conn.fetchrow("SELECT status, claimed_by, claim_until FROM deploy_markers")
        assert r is not None
        return r[0], r[1], r[2]
    finally:
        await conn.close()


async def test_a_daemon_restarted_under_its_replica_id_closes_its_claimed_window_at_once(
        tmp_path: Path, postgres_url: str) -> None:
    """A pod restarted in place: the window its killed process had claimed is closed by the
    new process at its first look — well before LEASE_TTL (30 s here) — while a daemon of
    another replica id, running all along, leaves it alone."""
    await left_by_a_killed_r1(postgres_url)

    def daemon(replica: str) -> Daemon:
        s = settings(tmp_path, state_url=postgres_url, replica_id=replica, lease_ttl=30.0)
        return Daemon(s, source=FakeSource({}), schedule=False)

    async with daemon("r2"):
        await asyncio.sleep(2.5)  # a few of its one-second looks
        assert (await marker_row(postgres_url))[:2] == ("open", "r1")
        started = time.monotonic()
        async with daemon("r1"):
            async def decided() -> bool:
                return (await marker_row(postgres_url))[0] == "passed"
            while not await decided():
                assert time.monotonic() - started < 10.0, "r1 waited for its old claim"
                await asyncio.sleep(0.1)


async def test_a_second_live_process_of_a_replica_id_takes_none_of_its_claims(
        tmp_path: Path, postgres_url: str) -> None:
    """A duplicate REPLICA_ID (a misconfiguration): while the first process lives (it holds
    the id's lock), the second waits one LEASE_TTL and refuses to start — having taken back
    none of the claims recorded under the id: its handlers start only once it holds the id."""
    until = await left_by_a_killed_r1(postgres_url)
    holder = await asyncpg.connect(postgres_url)
    try:
        assert await holder.fetchval(
            "SELECT pg_try_advisory_lock(hashtextextended('watchdog-replica:' || $1, 0))", "r1")
        s = settings(tmp_path, state_url=postgres_url, replica_id="r1", lease_ttl=1.0)
        with pytest.raises(StartupError, match="REPLICA_ID"):
            await Daemon(s, source=FakeSource({}), schedule=False).start()
    finally:
        await holder.close()
    assert await marker_row(postgres_url) == ("open", "r1", until)
    conn = await asyncpg.connect(postgres_url)
    try:
        assert await conn.fetchval("SELECT claim_until > extract(epoch from clock_timestamp()) "
                                   "+ 80000 FROM action_runs")  # the run: not taken either
    finally:
        await conn.close()


@pytest.fixture
async def pg_conn(postgres_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(postgres_url)
    try:
        yield conn
    finally:
        await conn.close()
