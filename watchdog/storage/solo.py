"""Coordination on a store one process owns (SQLite, the in-memory fake): that process is the
only replica, so it trivially holds every lease it asks for.

SQLite refuses a second process on the same file (`sqlite.py`'s flock), which is the fence
here: no other writer can exist. Tokens still count up per lease, so the code above this port
runs the same way on every backend. No I/O and no clock: ages and remaining times are 0 /
infinite, since nothing here can expire.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from watchdog.storage.ports import Acquired, Lease, LeaseRecord, ReplicaRecord


class SoloCoordination:
    shared = False

    def __init__(self) -> None:
        self._replica: ReplicaRecord | None = None
        self._keys: frozenset[str] = frozenset()
        self._leases: dict[str, Lease] = {}
        self._tokens: dict[str, int] = {}

    async def identify(self, replica: str) -> bool:
        return True

    async def beat(self, replica: str, instance: str, ttl: float, keys: Sequence[str] | None
                   ) -> list[ReplicaRecord]:
        if keys is not None:
            self._keys = frozenset(keys)
        self._replica = ReplicaRecord(replica, instance, 0.0, 0.0, 0.0, "")
        return [self._replica]

    async def keys_of(self, replicas: Sequence[str]) -> dict[str, frozenset[str]]:
        return {r: self._keys for r in replicas}

    async def acquire(self, names: Sequence[str], replica: str, ttl: float) -> list[Acquired]:
        out = []
        for name in names:
            held = self._leases.get(name)
            if held is not None and held.holder == replica:
                out.append(Acquired(held, None, None))
                continue
            token = self._tokens[name] = self._tokens.get(name, 0) + 1
            lease = self._leases[name] = Lease(name, replica, token)
            out.append(Acquired(lease, None, None))
        return out

    async def renew(self, leases: Sequence[Lease], ttl: float) -> list[Lease]:
        return [x for x in leases if self._leases.get(x.name) == x]

    async def release(self, leases: Sequence[Lease]) -> None:
        for x in leases:
            if self._leases.get(x.name) == x:
                del self._leases[x.name]

    async def leases(self) -> list[LeaseRecord]:
        return [LeaseRecord(x.name, x.holder, x.token, math.inf, math.inf)
                for x in sorted(self._leases.values(), key=lambda x: x.name)]

    async def leave(self, replica: str, instance: str) -> None:
        self._replica = None

    async def listen(self, channel: str, on_signal: Callable[[str], None]) -> bool:
        return False  # the only process: its own signals are no-ops
