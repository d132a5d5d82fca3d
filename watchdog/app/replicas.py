"""Which replica evaluates which group: heartbeats, rendezvous hashing over the live replicas,
and the leases (with fencing tokens) that make "each group by exactly one replica at a time"
hold even when a replica is frozen, partitioned or killed.

Every `LEASE_TTL / 3` a replica records itself alive, renews its leases (a lease it cannot
renew is lost: it stops evaluating that group at once) — on a clock of their own, so that a
cycle that takes long does not hold them up — and works out, for every lease name it
knows (its group keys, the built-in group, and the `~leader` role that sends notifications),
which live replica should hold it: the one with the highest `hash(replica, name)` among the live
replicas that know the name (rendezvous hashing). It takes the names that fall to it when they
are free or expired, and releases the ones that fall to another live replica, which takes them
at its next cycle. Rendezvous hashing rather than a balancer that moves leases: every replica
computes the same answer from the same two tables, with no coordinator to elect, and a replica
joining or leaving moves only the names that hash to it (1/N of them), never reshuffles the
rest.

On a store one process owns (SQLite, memory) the replica trivially holds every name and none of
this runs. Must not: evaluate, or read alert state (the callbacks do, in `watchdog.daemon`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from watchdog.handlers import LEADER
from watchdog.storage import Lease, Storage
from watchdog.storage.ports import Acquired, LeaseRecord, ReplicaRecord, StorageError

log = structlog.get_logger("watchdog.replicas")

__all__ = ["LEADER", "Coordinator", "owner"]
ACQUIRE_BATCH = 16  # groups taken and loaded between two renewals of the leases held
FAILOVER_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 300)


def owner(name: str, replicas: Iterable[str]) -> str | None:
    """Rendezvous (highest random weight) hashing: the replica `name` falls to."""
    best: tuple[bytes, str] | None = None
    for r in replicas:
        h = hashlib.sha256(f"{r}\x00{name}".encode()).digest()
        if best is None or (h, r) > best:
            best = (h, r)
    return best[1] if best is not None else None


class ReplicaMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.held = Gauge("watchdog_leases_held",
                          "Leases (rule groups and roles) this replica holds.", registry=registry)
        self.acquired = Counter("watchdog_lease_acquired",
                                "Leases this replica took (a group moved to it).",
                                registry=registry)
        self.lost = Counter("watchdog_lease_lost",
                            "Leases this replica gave up (released: rebalanced to another "
                            "replica; lost: expired or taken over before it renewed them).",
                            ["reason"], registry=registry)
        self.failover = Histogram(
            "watchdog_lease_failover_seconds",
            "From the previous holder's last renewal to this replica's takeover, for leases "
            "that expired (a replica died or froze).", buckets=FAILOVER_BUCKETS,
            registry=registry)
        self.replicas = Gauge("watchdog_replicas_live",
                              "Replicas seen within LEASE_TTL (this one included).",
                              registry=registry)


@dataclass
class Snapshot:
    """What the last cycle saw, for /api/v1/status."""

    replicas: list[ReplicaRecord] = field(default_factory=list)
    leases: list[LeaseRecord] = field(default_factory=list)


class Coordinator:
    """The leases of one replica. `held(name)` is what the evaluator and the handlers ask
    before they act; `lost(name)` is what they say when a fenced write found the lease gone."""

    def __init__(self, storage: Storage, *, replica_id: str, ttl: float,
                 names: Callable[[], Sequence[str]], registry: CollectorRegistry,
                 on_acquire: Callable[[Lease, Acquired], Awaitable[bool]],
                 on_release: Callable[[Sequence[str]], Awaitable[None]],
                 on_lost: Callable[[str], None]) -> None:
        self.storage = storage
        self.coordination = storage.coordination
        self.shared = self.coordination.shared
        self.replica_id = replica_id
        self.instance = uuid.uuid4().hex
        self.ttl = ttl
        self.names = names
        self.metrics = ReplicaMetrics(registry)
        self.on_acquire = on_acquire
        self.on_release = on_release
        self.on_lost = on_lost
        self.leases: dict[str, Lease] = {}  # held, and loaded (ready to evaluate)
        self.snapshot = Snapshot()
        self._keys_digest: str | None = None
        self._keys: dict[str, tuple[str, frozenset[str]]] = {}  # replica -> (digest, names)
        self._task: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._renew_lock = asyncio.Lock()
        self._renewed_at = -math.inf  # loop time the last renewal started
        self._identified = False  # this process holds the replica id (`identify`)

    @property
    def every(self) -> float:
        return max(0.2, self.ttl / 3)

    # ---- what others ask -----------------------------------------------------------------

    def held(self, name: str) -> Lease | None:
        if not self.shared:
            return Lease(name, self.replica_id, 0)
        return self.leases.get(name)

    def lost(self, name: str, detail: str = "") -> None:
        """A fenced write found the lease gone: stop acting on it now."""
        if self.leases.pop(name, None) is not None:
            self.metrics.lost.labels("lost").inc()
            self.metrics.held.set(len(self.leases))
            log.warning("lease lost: another replica holds it now; this replica stops "
                        "acting on it", lease=name, replica=self.replica_id, detail=detail)
            self.on_lost(name)

    # ---- lifecycle -----------------------------------------------------------------------

    async def identify(self) -> None:
        """Make this process the one holding the replica id: a replica id in use by a live
        process is waited out for one LEASE_TTL (a restarted pod's predecessor), then refused.
        Once this returns, what the store records under the id (leases, run and marker claims)
        is this process's to take: the daemon calls it before the handlers start, since they
        take back their earlier process's claims at start. Idempotent."""
        if not self.shared or self._identified:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ttl + 1.0
        while not await self.coordination.identify(self.replica_id):
            if loop.time() >= deadline:
                raise StorageError(
                    f"WATCHDOG_REPLICA_ID: {self.replica_id!r} is in use by another live "
                    "watchdog process on this database; give each replica its own REPLICA_ID")
            await asyncio.sleep(0.5)
        self._identified = True

    async def start(self) -> None:
        """`identify` (when not done yet), the first cycle (the groups this replica gets are
        loaded before it evaluates), then one every LEASE_TTL/3."""
        if not self.shared:
            return
        await self.identify()
        await self.cycle()
        self._task = asyncio.create_task(self._loop(), name="replicas")
        self._keepalive = asyncio.create_task(self._keep_alive(), name="replica-keepalive")

    async def stop(self) -> None:
        """Give every lease back (the others take them at their next cycle instead of after
        LEASE_TTL) and leave the replica table."""
        for task in (self._task, self._keepalive):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._keepalive = None
        if not self.shared:
            return
        with contextlib.suppress(Exception):
            async with self._lock:
                leases = list(self.leases.values())
                self.leases.clear()
                await self.coordination.release(leases)
                await self.coordination.leave(self.replica_id, self.instance)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.cycle()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # The database is unreachable: leases run out by themselves after LEASE_TTL
                # and every fenced write fails meanwhile; say so once per cycle.
                log.error("replica heartbeat failed", replica=self.replica_id,
                          error=f"{type(e).__name__}: {e}")

    async def _keep_alive(self) -> None:
        """The heartbeat and the renewals whenever the last renewal is `every` old, whatever
        the cycle is doing: a cycle that rebalances waits for the in-flight evaluations of the
        groups it gives away and loads the state of those it takes, which on an overloaded
        replica outlasted LEASE_TTL — every lease it kept ran out at once, the other replica
        took them all and was then overloaded in turn (bench/ha.py: the leases swung between
        two replicas every ~35 s at 10,600 rules)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.every / 3)
            if loop.time() - self._renewed_at < self.every:
                continue
            try:
                records = await self.coordination.beat(self.replica_id, self.instance, 0.0,
                                                       None)
                me = next((r for r in records if r.id == self.replica_id), None)
                self._keys_digest = me.keys_digest if me is not None else None
                await self._renew()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.error("replica heartbeat failed", replica=self.replica_id,
                          error=f"{type(e).__name__}: {e}")

    # ---- one cycle ------------------------------------------------------------------------

    async def cycle(self) -> None:
        """Heartbeat, renew, rebalance. Safe to call at any time (a reload calls it)."""
        if not self.shared:
            return
        async with self._lock:
            await self._cycle()

    async def _cycle(self) -> None:
        c = self.coordination
        mine = sorted(set(self.names()))
        digest = hashlib.sha256("\n".join(mine).encode()).hexdigest()[:16]
        # ttl 0: this process holds the replica id's lock, so a row under the same id is an
        # earlier process's, dead — taken over at once.
        records = await c.beat(self.replica_id, self.instance, 0.0,
                               mine if digest != self._keys_digest else None)
        me = next((r for r in records if r.id == self.replica_id), None)
        self._keys_digest = me.keys_digest if me is not None else None
        # Renew first: a lease that cannot be renewed is gone before anything else is decided.
        await self._renew()
        live = [r for r in records if r.age < self.ttl or r.id == self.replica_id]
        self.metrics.replicas.set(len(live))
        stale = [r.id for r in live if r.id != self.replica_id
                 and self._keys.get(r.id, ("", frozenset()))[0] != r.keys_digest]
        if stale:
            for rid, keys in (await c.keys_of(stale)).items():
                digest_of = next(r.keys_digest for r in live if r.id == rid)
                self._keys[rid] = (digest_of, keys)
        mine_set = frozenset(mine)
        knows = {r.id: (mine_set if r.id == self.replica_id
                        else self._keys.get(r.id, ("", frozenset()))[1]) for r in live}
        want: list[str] = []
        give: list[str] = []
        for name in mine:
            who = owner(name, [rid for rid, ks in knows.items() if name in ks])
            if who == self.replica_id and name not in self.leases:
                want.append(name)
            elif who != self.replica_id and name in self.leases:
                give.append(name)
        give += [n for n in self.leases if n not in mine_set]  # a group gone from the rules
        for i in range(0, len(give), ACQUIRE_BATCH):
            await self._renew_if_due()
            batch = give[i:i + ACQUIRE_BATCH]
            # In-flight evaluations of those groups finish first: waited for together, not
            # one after another (an overloaded group can take seconds).
            await asyncio.gather(*(self.on_release([n]) for n in batch))
            leases = [self.leases.pop(n) for n in batch if n in self.leases]
            await c.release(leases)
            self.metrics.lost.labels("released").inc(len(leases))
            log.info("leases released to other replicas", replica=self.replica_id,
                     leases=sorted(x.name for x in leases))
        # Taken a batch at a time, renewing between batches: loading many groups' state (a
        # replica starting beside others, or taking over from a dead one) can outlast LEASE_TTL,
        # and the leases held meanwhile must not run out.
        for i in range(0, len(want), ACQUIRE_BATCH):
            await self._renew_if_due()
            await self._take(want[i:i + ACQUIRE_BATCH])
        self.metrics.held.set(len(self.leases))
        self.snapshot = Snapshot(records, await c.leases())

    async def _renew_if_due(self) -> None:
        if asyncio.get_running_loop().time() - self._renewed_at >= self.every:
            await self._renew()

    async def _renew(self) -> None:
        """Renew every lease held; one that was not renewed is lost. The cycle and the
        keep-alive both call this (one at a time); a lease given back or taken again meanwhile
        is left to whoever changed it."""
        async with self._renew_lock:
            started = asyncio.get_running_loop().time()
            held = dict(self.leases)
            if held:
                kept = {x.name: x.token for x in
                        await self.coordination.renew(list(held.values()), self.ttl)}
                for name, lease in held.items():
                    if kept.get(name) != lease.token and self.leases.get(name) == lease:
                        self.lost(name, "not renewed in time")
            self._renewed_at = started

    async def _take(self, want: Sequence[str]) -> None:
        c = self.coordination
        for got in await c.acquire(want, self.replica_id, self.ttl):
            if got.gap is not None:
                self.metrics.failover.observe(got.gap)
            self.metrics.acquired.inc()
            try:
                ready = await self.on_acquire(got.lease, got)
            except Exception:
                log.exception("cannot take over a group; released", lease=got.lease.name)
                ready = False
            if ready:
                self.leases[got.lease.name] = got.lease
                log.info("lease acquired", lease=got.lease.name, token=got.lease.token,
                         replica=self.replica_id, previous=got.prev_holder,
                         failover_seconds=None if got.gap is None else round(got.gap, 3))
            else:
                await c.release([got.lease])

    # ---- status --------------------------------------------------------------------------

    def status(self, names: Sequence[str], now: float) -> tuple[list[dict[str, object]],
                                                                 dict[str, str | None]]:
        """(`replicas` for /api/v1/status, lease name -> holding replica)."""
        if not self.shared:
            holders: dict[str, str | None] = {n: self.replica_id for n in names}
            return ([{"id": self.replica_id, "groups": sorted(names), "lastSeen": now,
                      "live": True, "self": True}], holders)
        holders = {}
        for x in self.snapshot.leases:
            holders[x.name] = x.holder if x.holder is not None and x.remaining > 0 else None
        out: list[dict[str, object]] = []
        for r in self.snapshot.replicas:
            out.append({"id": r.id, "groups": sorted(n for n, h in holders.items() if h == r.id),
                        "lastSeen": r.last_seen, "live": r.age < self.ttl,
                        "self": r.id == self.replica_id,
                        "startedAt": r.started_at if math.isfinite(r.started_at) else None})
        return out, holders
