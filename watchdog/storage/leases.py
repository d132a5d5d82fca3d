"""Replicas and leases on PostgreSQL (`ports.Coordination`): the rows that let any number of
`watchdog run` processes share one database, each rule group evaluated by one of them at a time.

- `replicas`: one row per replica (`REPLICA_ID`), its process `instance`, the database time it
  was last seen, and the lease names it can hold (its group keys). A replica is live while
  `last_seen` is within `LEASE_TTL` of the database's clock.
- `leases`: one row per group (or singleton role). A lease is taken when free, released or
  expired, and every take adds one to its `token` (monotonic per name, never reset). A fenced
  transaction (`SqlTx.fence`) checks holder, token and expiry with `FOR KEY SHARE`, and a
  takeover locks the rows it takes `FOR UPDATE` first, so a takeover waits for every fenced
  transaction in flight on them; a process that was frozen past its lease finds a newer token
  and writes nothing. A renewal (an UPDATE of the expiry: `FOR NO KEY UPDATE`) neither waits
  for fenced transactions nor holds them up: with `FOR SHARE`, bench/ha.py saw a replica's
  renewals queue behind its own evaluations' transactions (and their fences behind the
  renewal) under load until the leases ran out, all of them at once.

Every time comparison uses the database's clock (`clock_timestamp()`), never a replica's: skew
between replicas' clocks cannot make a lease look live to one and expired to another.

Chosen over advisory locks: a session-level advisory lock dies with its connection, which a
pool recycles, and carries no token, so a process paused past a network timeout could not be
told apart from the new holder at write time; a row with a token can be checked inside the very
transaction that writes. Must not: decide who should hold what (that is `watchdog.app.replicas`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from watchdog.storage.ports import (
    Acquired,
    Lease,
    LeaseRecord,
    ReplicaRecord,
    StorageError,
)
from watchdog.storage.sql import PG_NOW as NOW

FORGET_REPLICAS_AFTER = 3600.0  # a replica gone this long leaves the status page


class ReplicaIdInUse(StorageError):
    """Another live process records itself under the same `REPLICA_ID`."""


def keys_digest(keys: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]


def alive(conn: Any) -> bool:
    """Whether a pooled connection still has its session (the pool detaches a connection it
    found lost: the proxy then raises instead of answering)."""
    try:
        return not conn.is_closed()
    except Exception:
        return False


class PgCoordination:
    shared = True

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self._identity: Any = None  # the connection holding this process's replica-id lock
        # the connection LISTENing for `Tx.signal`s, and what it listens for
        self._listener: Any = None
        self._listening: dict[str, Callable[..., None]] = {}

    async def identify(self, replica: str) -> bool:
        """Hold a session advisory lock named after the replica id for the life of this
        process: true when it was free. A predecessor killed under the same id released it
        with its connection (so its rows are this process's to take at once); a live — or
        frozen — process with the same id still holds it."""
        if self._identity is None:
            self._identity = await self.pool.acquire()
        got = await self._identity.fetchval(
            "SELECT pg_try_advisory_lock(hashtextextended('watchdog-replica:' || $1, 0))",
            replica)
        return bool(got)

    async def close(self) -> None:
        if self._listener is not None:
            conn, self._listener = self._listener, None
            for channel, fn in self._listening.items():
                with contextlib.suppress(Exception):
                    await conn.remove_listener(channel, fn)
            self._listening.clear()
            with contextlib.suppress(Exception):  # lost already: the identity lock still goes
                await self.pool.release(conn)
        if self._identity is not None:
            conn, self._identity = self._identity, None
            await self.pool.release(conn)  # asyncpg resets the session: the lock goes

    async def listen(self, channel: str, on_signal: Callable[[str], None]) -> bool:
        """LISTEN on a connection held for the life of the process (NOTIFY reaches only a
        session that is listening). A connection that was lost is replaced; what was signalled
        while it was gone is lost, hence `Coordination.listen`'s "listeners must also poll"."""
        conn = self._listener
        if conn is not None and not alive(conn):
            self._listener, self._listening = None, {}
            with contextlib.suppress(Exception):
                await self.pool.release(conn)
            conn = None
        if conn is None:
            conn = self._listener = await self.pool.acquire()
        if channel not in self._listening:
            def deliver(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
                on_signal(payload)

            await conn.add_listener(channel, deliver)
            self._listening[channel] = deliver
        return True

    async def beat(self, replica: str, instance: str, ttl: float, keys: Sequence[str] | None
                   ) -> list[ReplicaRecord]:
        async with self.pool.acquire() as c, c.transaction():
            if keys is None:
                n = await c.execute(
                    f"UPDATE replicas SET last_seen = {NOW} WHERE id = $1 AND instance = $2",
                    replica, instance)
                if n.endswith(" 0"):
                    keys = []  # the row went away (pruned): write it again, keys follow
            if keys is not None:
                row = await c.fetchrow(
                    "INSERT INTO replicas AS r (id, instance, started_at, last_seen, keys, "
                    f"keys_digest) VALUES ($1, $2, {NOW}, {NOW}, $3, $4) "
                    "ON CONFLICT (id) DO UPDATE SET instance = excluded.instance, "
                    "last_seen = excluded.last_seen, keys = excluded.keys, "
                    "keys_digest = excluded.keys_digest, started_at = CASE WHEN "
                    "r.instance = excluded.instance THEN r.started_at ELSE excluded.started_at "
                    "END WHERE r.instance = excluded.instance OR r.last_seen <= "
                    f"{NOW} - $5::float8 RETURNING id",
                    replica, instance, json.dumps(sorted(keys)), keys_digest(keys), float(ttl))
                if row is None:
                    raise ReplicaIdInUse(
                        f"WATCHDOG_REPLICA_ID: {replica!r} is in use by another live watchdog "
                        "process on this database; give each replica its own REPLICA_ID")
            await c.execute(f"DELETE FROM replicas WHERE last_seen < {NOW} - $1::float8",
                            FORGET_REPLICAS_AFTER)
            rows = await c.fetch(f"SELECT id, instance, started_at, last_seen, {NOW} - last_seen,"
                                 " keys_digest FROM replicas ORDER BY id")
        return [ReplicaRecord(r[0], r[1], float(r[2]), float(r[3]), float(r[4]), r[5])
                for r in rows]

    async def keys_of(self, replicas: Sequence[str]) -> dict[str, frozenset[str]]:
        async with self.pool.acquire() as c:
            rows = await c.fetch("SELECT id, keys FROM replicas WHERE id = ANY($1::text[])",
                                 list(replicas))
        return {r[0]: frozenset(json.loads(r[1])) for r in rows}

    async def acquire(self, names: Sequence[str], replica: str, ttl: float) -> list[Acquired]:
        if not names:
            return []
        # Taken when free (released: holder NULL), expired, or recorded as ours (a restart under
        # the same REPLICA_ID): the token always grows, so whatever an earlier holder — even an
        # earlier process of this replica — still tries to write is refused.
        async with self.pool.acquire() as c, c.transaction():
            # The rows that can be taken, locked FOR UPDATE: this waits for the fenced
            # transactions in flight on them (FOR KEY SHARE), and only these rows (and names
            # with no row yet) are written below — a row that expires meanwhile is taken next
            # cycle, never without that wait.
            existing = {r[0] for r in await c.fetch(
                "SELECT name FROM leases WHERE name = ANY($1::text[])", list(names))}
            takeable = [r[0] for r in await c.fetch(
                "SELECT name FROM leases WHERE name = ANY($1::text[]) AND (holder IS NULL OR "
                f"holder = $2 OR expires_at <= {NOW}) ORDER BY name FOR UPDATE",
                list(names), replica)]
            names = [*takeable, *(n for n in names if n not in existing)]
            if not names:
                return []
            rows = await c.fetch(
                "INSERT INTO leases AS l (name, holder, token, expires_at, acquired_at, "
                f"renewed_at) SELECT n, $2, 1, {NOW} + $3::float8, {NOW}, {NOW} "
                "FROM unnest($1::text[]) AS n "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "token = l.token + 1, expires_at = excluded.expires_at, "
                "acquired_at = excluded.acquired_at, renewed_at = excluded.renewed_at, "
                "prev_holder = l.holder, prev_renewed_at = l.renewed_at "
                f"WHERE l.holder IS NULL OR l.holder = excluded.holder OR l.expires_at <= {NOW} "
                f"RETURNING name, token, prev_holder, {NOW} - prev_renewed_at",
                list(names), replica, float(ttl))
        out = []
        for name, token, prev, gap in rows:
            moved = prev is not None and prev != replica
            out.append(Acquired(Lease(name, replica, int(token)), prev if moved else None,
                                float(gap) if moved and gap is not None else None,
                                restarted=prev == replica))
        return out

    async def renew(self, leases: Sequence[Lease], ttl: float) -> list[Lease]:
        if not leases:
            return []
        holder = leases[0].holder
        async with self.pool.acquire() as c:
            rows = await c.fetch(
                f"UPDATE leases SET expires_at = {NOW} + $3::float8, renewed_at = {NOW} "
                f"WHERE name = ANY($1::text[]) AND holder = $2 AND expires_at > {NOW} "
                "RETURNING name, token", [x.name for x in leases], holder, float(ttl))
        now_held = {r[0]: int(r[1]) for r in rows}
        return [x for x in leases if now_held.get(x.name) == x.token]

    async def release(self, leases: Sequence[Lease]) -> None:
        if not leases:
            return
        async with self.pool.acquire() as c:
            await c.executemany(
                f"UPDATE leases SET holder = NULL, expires_at = {NOW} "
                "WHERE name = $1 AND holder = $2 AND token = $3",
                [(x.name, x.holder, x.token) for x in leases])

    async def leases(self) -> list[LeaseRecord]:
        async with self.pool.acquire() as c:
            rows = await c.fetch(f"SELECT name, holder, token, expires_at, expires_at - {NOW} "
                                 "FROM leases ORDER BY name")
        return [LeaseRecord(r[0], r[1], int(r[2]), float(r[3]), float(r[4])) for r in rows]

    async def leave(self, replica: str, instance: str) -> None:
        async with self.pool.acquire() as c:
            await c.execute("DELETE FROM replicas WHERE id = $1 AND instance = $2",
                            replica, instance)
