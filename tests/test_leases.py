"""Leases, heartbeats and action-run claims (`watchdog.storage.leases`, `SqlTx.fence`,
`SqlRuns.claim`) against a real PostgreSQL, and the trivial single-process versions on SQLite
and memory.

Time passing is simulated by moving a row's `expires_at`/`claim_until` into the past with SQL
(the leases run on the database's clock, which a test cannot inject), never by sleeping.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from storage_support import storage_at
from test_storage_contract import run_row

from watchdog.app.replicas import owner
from watchdog.storage import Lease, LeaseLost, Storage, open_storage
from watchdog.storage.leases import ReplicaIdInUse, alive

TTL = 15.0


async def expire(conn: asyncpg.Connection, name: str) -> None:
    """As if LEASE_TTL passed without a renewal."""
    await conn.execute("UPDATE leases SET expires_at = expires_at - 1000, "
                       "renewed_at = renewed_at - 1000 WHERE name = $1", name)


async def test_a_free_lease_is_taken_once_and_renewed_by_its_holder_only(
        pg: tuple[Storage, asyncpg.Connection]) -> None:
    s, _ = pg
    c = s.coordination
    assert c.shared
    [a] = await c.acquire(["g1"], "r1", TTL)
    assert a.lease == Lease("g1", "r1", 1) and a.prev_holder is None
    assert await c.acquire(["g1"], "r2", TTL) == []  # held and unexpired
    assert await c.renew([a.lease], TTL) == [a.lease]
    assert await c.renew([Lease("g1", "r2", 1)], TTL) == []
    [rec] = await c.leases()
    assert rec.holder == "r1" and rec.token == 1 and 0 < rec.remaining <= TTL


async def test_an_expired_lease_moves_with_a_new_token_and_the_old_holder_is_fenced(
        pg: tuple[Storage, asyncpg.Connection]) -> None:
    s, conn = pg
    c = s.coordination
    [a] = await c.acquire(["g1"], "r1", TTL)
    async with s.transaction() as tx:
        await tx.fence([a.lease])  # held: passes
    await expire(conn, "g1")
    async with s.transaction() as tx:
        with pytest.raises(LeaseLost, match="expired"):
            await tx.fence([a.lease])
    [b] = await c.acquire(["g1"], "r2", TTL)
    assert b.lease == Lease("g1", "r2", 2)
    assert b.prev_holder == "r1" and b.gap is not None and b.gap >= 1000  # a failover
    assert await c.renew([a.lease], TTL) == []  # the old holder cannot renew
    with pytest.raises(LeaseLost, match="r2"):
        async with s.transaction() as tx:
            await tx.fence([a.lease])
            await tx.rule_files.save({"x.yml": ("d", b"x")})  # never committed
    async with s.transaction() as tx:
        assert await tx.rule_files.load() == {}
        await tx.fence([b.lease])


async def test_a_released_lease_is_taken_at_once_without_counting_a_failover(
        pg: tuple[Storage, asyncpg.Connection]) -> None:
    s, _ = pg
    c = s.coordination
    [a] = await c.acquire(["g1"], "r1", TTL)
    await c.release([a.lease])
    [b] = await c.acquire(["g1"], "r2", TTL)
    assert b.lease.token == 2 and b.prev_holder is None and b.gap is None
    await c.release([a.lease])  # a stale release changes nothing
    assert (await c.leases())[0].holder == "r2"


async def test_a_restart_under_the_same_replica_id_gets_a_new_token(
        pg: tuple[Storage, asyncpg.Connection]) -> None:
    s, _ = pg
    c = s.coordination
    [a] = await c.acquire(["g1"], "r1", TTL)
    [b] = await c.acquire(["g1"], "r1", TTL)
    assert b.lease.token == a.lease.token + 1  # whatever the old process writes is refused
    async with s.transaction() as tx:
        with pytest.raises(LeaseLost):
            await tx.fence([a.lease])


async def test_a_takeover_waits_for_a_fenced_transaction_in_flight(
        pg: tuple[Storage, asyncpg.Connection]) -> None:
    """The fence holds the lease row (FOR KEY SHARE) to the end of the transaction, and a
    takeover locks the row FOR UPDATE: a lease that expires while a transaction it fenced is in
    flight cannot change hands before what that transaction writes commits. A lease that
    cannot be taken (held and unexpired) is not waited for."""
    s, conn = pg
    c = s.coordination
    [a] = await c.acquire(["g1"], "r1", TTL)
    fenced, go = asyncio.Event(), asyncio.Event()

    async def writer() -> None:
        async with s.transaction() as tx:
            await tx.fence([a.lease])
            fenced.set()
            await go.wait()

    task = asyncio.create_task(writer())
    await fenced.wait()
    probe = asyncio.create_task(c.acquire(["g1"], "r2", TTL))
    probe_waited = await _blocked(conn, probe, "FROM leases")
    if not probe_waited:
        assert await probe == []  # r1's, unexpired: not taken, and not waited for
    await expire(conn, "g1")  # r1 froze past its lease with the transaction open
    takeover = asyncio.create_task(c.acquire(["g1"], "r2", TTL))
    waited = await _blocked(conn, takeover, "FROM leases")
    go.set()
    await task
    got = await takeover
    if probe_waited:
        await probe
    assert not probe_waited and waited and [x.lease for x in got] == [Lease("g1", "r2", 2)]


async def _blocked(conn: asyncpg.Connection, task: asyncio.Task[object], table: str) -> bool:
    """Until `task` finishes: whether a statement on `table` waits on a row lock meanwhile."""
    while not task.done():
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query ILIKE $1", f"%{table}%")
        if waiting:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_renewals_and_fences_do_not_wait_for_each_other(
        pg: tuple[Storage, asyncpg.Connection], postgres_url: str) -> None:
    """bench/ha.py (3 replicas, 10,600 rules, a loaded machine) lost every lease of a replica
    at once: its renewal (an UPDATE of the lease rows) waited for its own evaluations'
    fenced transactions (FOR SHARE), and new fences waited behind the renewal, past LEASE_TTL.
    A renewal goes on while a fenced transaction is in flight, and a fence does not wait for
    a renewal in progress; a takeover still waits (the test above)."""
    s, conn = pg
    c = s.coordination
    [a] = await c.acquire(["g1"], "r1", TTL)
    fenced, go = asyncio.Event(), asyncio.Event()

    async def evaluation() -> None:
        async with s.transaction() as tx:
            await tx.fence([a.lease])
            fenced.set()
            await go.wait()

    task = asyncio.create_task(evaluation())
    await fenced.wait()
    renewal = asyncio.create_task(c.renew([a.lease], TTL))
    blocked = await _blocked(conn, renewal, "UPDATE leases")
    go.set()
    await task
    assert not blocked and await renewal == [a.lease]

    # A renewal in progress (its row lock held, as while it waits for its commit).
    other = await asyncpg.connect(postgres_url)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute("UPDATE leases SET expires_at = expires_at WHERE name = 'g1'")

        async def fence() -> None:
            async with s.transaction() as t:
                await t.fence([a.lease])

        check = asyncio.create_task(fence())
        blocked = await _blocked(conn, check, "FROM leases")
        await tx.rollback()
        await check
        assert not blocked
    finally:
        await other.close()


async def test_heartbeats_refuse_a_second_live_process_under_one_replica_id(
        pg: tuple[Storage, asyncpg.Connection]) -> None:
    s, conn = pg
    c = s.coordination
    rows = await c.beat("r1", "proc-a", TTL, ["g1", "g2"])
    assert [(r.id, r.instance) for r in rows] == [("r1", "proc-a")] and rows[0].age < 1
    assert await c.keys_of(["r1"]) == {"r1": frozenset({"g1", "g2"})}
    with pytest.raises(ReplicaIdInUse, match="REPLICA_ID"):
        await c.beat("r1", "proc-b", TTL, ["g1"])
    await conn.execute("UPDATE replicas SET last_seen = last_seen - 1000")
    rows = await c.beat("r1", "proc-b", TTL, ["g3"])  # the first one is gone: taken over
    assert rows[0].instance == "proc-b"
    assert (await c.keys_of(["r1"]))["r1"] == frozenset({"g3"})
    await c.beat("r1", "proc-b", TTL, None)  # a plain heartbeat keeps the names
    assert (await c.keys_of(["r1"]))["r1"] == frozenset({"g3"})
    await c.leave("r1", "proc-b")
    assert await c.keys_of(["r1"]) == {}


async def test_run_claims_move_only_when_they_expire(
        pg: tuple[Storage, asyncpg.Connection]) -> None:
    s, conn = pg
    async with s.transaction() as tx:
        await tx.runs.insert(run_row("run1"))
        assert await tx.runs.claim("run1", "r1", TTL)
    async with s.transaction() as tx:
        assert not await tx.runs.claim("run1", "r2", TTL)
        assert await tx.runs.take_expired("r2", TTL) == []
        assert await tx.runs.renew_claims("r1", TTL, ["run1"]) == ["run1"]
        assert await tx.runs.take_expired("r1", TTL, own=True) == ["run1"]  # a restart of r1
    await conn.execute("UPDATE action_runs SET claim_until = claim_until - 1000")
    async with s.transaction() as tx:
        assert await tx.runs.renew_claims("r1", TTL, ["run1"]) == []  # too late
        assert await tx.runs.take_expired("r2", TTL) == ["run1"]
        assert not await tx.runs.claim("run1", "r1", TTL)  # the old driver stops here
        assert await tx.runs.claim("run1", "r2", TTL)
    async with s.transaction() as tx:
        await tx.runs.update("run1", status="succeeded")
    await conn.execute("UPDATE action_runs SET claim_until = claim_until - 1000")
    async with s.transaction() as tx:
        assert await tx.runs.take_expired("r3", TTL) == []  # finished runs stay put


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_one_process_stores_hold_every_lease(kind: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}" if kind == "sqlite" else "memory://"
    s = await open_storage(url)
    try:
        c = s.coordination
        assert not c.shared
        [a] = await c.acquire(["g1"], "me", TTL)
        assert await c.renew([a.lease], TTL) == [a.lease]
        async with s.transaction() as tx:
            await tx.fence([Lease("g1", "someone-else", 99)])  # nothing else can write here
            assert await tx.runs.claim("any", "me", TTL)
            assert await tx.runs.take_expired("me", TTL) == []
            await tx.signal("watchdog_alerts", "me")  # nobody else to tell
        assert await c.listen("watchdog_alerts", lambda payload: None) is False
    finally:
        await s.close()


async def test_a_signal_reaches_the_other_replicas_when_its_transaction_commits_only(
        postgres_url: str) -> None:
    """`Tx.signal` / `Coordination.listen` (NOTIFY / LISTEN): how the replica that notifies
    hears of another replica's decision at once. Waits are bounded by arrival, not timed."""
    heard: asyncio.Queue[str] = asyncio.Queue()
    async with storage_at(postgres_url) as a, storage_at(postgres_url) as b:
        assert await b.coordination.listen("watchdog_alerts", heard.put_nowait)
        assert await b.coordination.listen("watchdog_alerts", heard.put_nowait)  # idempotent

        with pytest.raises(RuntimeError):
            async with a.transaction() as tx:
                await tx.signal("watchdog_alerts", "rolled-back")
                raise RuntimeError("the decision fails to commit")
        async with a.transaction() as tx:
            await tx.signal("watchdog_alerts", "replica-a")
            await tx.signal("another_channel", "not for b")
        # One session's notifications arrive in commit order: the rolled-back one would be first.
        assert await asyncio.wait_for(heard.get(), 10) == "replica-a"

        # The listening connection dies (a PostgreSQL restart, a proxy): listening again
        # replaces it, and signals reach b again.
        admin = await asyncpg.connect(postgres_url)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                "current_database() AND query LIKE 'LISTEN%'")
        finally:
            await admin.close()
        listener = b.coordination._listener  # type: ignore[attr-defined]
        while alive(listener):  # asyncpg notices the termination by itself
            await asyncio.sleep(0.01)
        assert await b.coordination.listen("watchdog_alerts", heard.put_nowait)
        async with a.transaction() as tx:
            await tx.signal("watchdog_alerts", "again")
        assert await asyncio.wait_for(heard.get(), 10) == "again"
        assert heard.empty()


def test_rendezvous_moves_only_the_names_of_the_replica_that_left() -> None:
    names = [f"group-{i}" for i in range(300)]
    three = {n: owner(n, ["a", "b", "c"]) for n in names}
    two = {n: owner(n, ["a", "b"]) for n in names}
    assert all(two[n] == three[n] for n in names if three[n] != "c")
    counts = {r: sum(1 for v in three.values() if v == r) for r in "abc"}
    assert all(60 <= n <= 140 for n in counts.values()), counts
    assert owner("x", []) is None


async def test_heartbeat_and_renewal_go_on_while_evaluations_hold_every_pooled_connection(
        pg: tuple[Storage, asyncpg.Connection]) -> None:
    """bench/ha.py found leases swinging between replicas under overload: evaluations'
    transactions held the whole pool, the heartbeat queued behind them past LEASE_TTL, and
    every lease was lost at once. Coordination has connections of its own."""
    s, _ = pg
    c = s.coordination
    [a] = await c.acquire(["g1"], "r1", TTL)
    pool = s.pool  # type: ignore[attr-defined]
    busy = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        async with asyncio.timeout(5):
            assert await c.renew([a.lease], TTL) == [a.lease]
            assert [r.id for r in await c.beat("r1", "i1", TTL, ["g1"])] == ["r1"]
            assert await c.identify("r1")
    finally:
        for conn in busy:
            await pool.release(conn)


async def test_leases_held_are_renewed_while_many_groups_are_taken_over(
        pg: tuple[Storage, asyncpg.Connection]) -> None:
    """Taking over 60 groups whose state takes longer to load than LEASE_TTL: the first
    groups' leases used to run out before the cycle ended (all taken at once, renewed only at
    the next cycle). They are taken in batches now, with a renewal between batches."""
    from prometheus_client import CollectorRegistry

    from watchdog.app.replicas import Coordinator
    s, _ = pg
    names = [f"g{i:02}" for i in range(60)]

    async def load(lease: Lease, got: object) -> bool:
        await asyncio.sleep(0.03)  # 60 x 0.03 s = 1.8 s of loading against a 1 s TTL
        return True

    async def release(names: object) -> None:
        return None

    lost: list[str] = []
    coord = Coordinator(s, replica_id="r1", ttl=1.0, names=lambda: names,
                        registry=CollectorRegistry(), on_acquire=load, on_release=release,
                        on_lost=lost.append)
    await coord.cycle()
    await coord.cycle()  # renews: what expired during the first cycle is lost here
    assert lost == [] and sorted(coord.leases) == names
    await s.coordination.close()  # type: ignore[attr-defined]


async def test_leases_kept_are_renewed_while_a_cycle_waits_to_give_others_away(
        pg: tuple[Storage, asyncpg.Connection]) -> None:
    """bench/ha.py, 2 replicas at 10,600 rules on a loaded machine: the leases swung between
    the replicas every ~35 s. A replica giving groups to a newcomer waits for their in-flight
    evaluations first, and an overloaded evaluation outlasted LEASE_TTL — meanwhile nothing
    renewed the leases it kept, they all ran out, and the newcomer took everything. Renewals
    (and the heartbeat) now go on while the cycle waits."""
    from prometheus_client import CollectorRegistry

    from watchdog.app.replicas import Coordinator
    s, conn = pg
    names = [f"g{i:02}" for i in range(40)]
    releasing, gate = asyncio.Event(), asyncio.Event()

    async def load(lease: Lease, got: object) -> bool:
        return True

    async def release(names: object) -> None:
        releasing.set()
        await gate.wait()  # an evaluation of a group given away, still running

    lost: list[str] = []
    coord = Coordinator(s, replica_id="r1", ttl=1.0, names=lambda: names,
                        registry=CollectorRegistry(), on_acquire=load, on_release=release,
                        on_lost=lost.append)
    await coord.start()
    newcomer: asyncio.Task[None] | None = None
    try:
        assert sorted(coord.leases) == names
        kept = [n for n in names if owner(n, ["r1", "r2"]) == "r1"]

        async def beat_r2() -> None:
            while True:
                await s.coordination.beat("r2", "i2", 0.0, names)
                await asyncio.sleep(0.1)

        newcomer = asyncio.create_task(beat_r2())
        await releasing.wait()
        blocked_at = await conn.fetchval("SELECT extract(epoch from clock_timestamp())::float8")

        async def renewed_since_twice_the_ttl() -> bool:
            rows = await conn.fetch("SELECT name, renewed_at FROM leases WHERE holder = 'r1'")
            at = {r[0]: r[1] for r in rows}
            return all(at.get(n, 0) > blocked_at + 2.0 for n in kept)

        deadline = asyncio.get_running_loop().time() + 20
        while not await renewed_since_twice_the_ttl():
            assert asyncio.get_running_loop().time() < deadline, (lost, await conn.fetch(
                "SELECT name, holder, renewed_at - $1 FROM leases ORDER BY name", blocked_at))
            await asyncio.sleep(0.05)
        assert lost == [] and all(n in coord.leases for n in kept)
        gate.set()
        while set(coord.leases) != set(kept):
            await asyncio.sleep(0.05)
        assert lost == []
    finally:
        gate.set()
        if newcomer is not None:
            newcomer.cancel()
        await coord.stop()
        await s.coordination.close()  # type: ignore[attr-defined]
