"""Sleeping until a wall-clock deadline in a way tests and restarts can control: `Waker`.

Shell (it uses the event loop's timers). Time is the injected clock (`DaemonContext.clock`),
never read directly, so a test moves a fake clock and calls `poke()` and a `wait: {for: 30m}`
ends in milliseconds; the daemon pokes on every evaluation tick. It must not decide what
happens after a wait — it only says "the deadline has passed" or raises `Stopping`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class Stopping(Exception):
    """The daemon is shutting down: leave the wait as persisted, a restart resumes it."""


class Waker:
    # Re-read the clock at least this often even when nobody pokes: guards against a wall
    # clock that jumps (NTP) and against a caller that forgets to poke.
    MAX_SLEEP = 30.0

    def __init__(self, clock: Callable[[], float], max_sleep: float = MAX_SLEEP) -> None:
        self._clock = clock
        self._max_sleep = max_sleep
        self._event = asyncio.Event()
        self._stopping = False

    def poke(self) -> None:
        """Wake every sleeper to re-check the clock."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    def stop(self) -> None:
        self._stopping = True
        self.poke()

    def restart(self) -> None:
        self._stopping = False

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def sleep_until(self, deadline: float,
                          interrupt: Callable[[], bool] | None = None) -> bool:
        """True at the deadline; False as soon as `interrupt()` says so (asked at every poke,
        so whoever makes it true pokes)."""
        while True:
            if self._stopping:
                raise Stopping
            if interrupt is not None and interrupt():
                return False
            remaining = deadline - self._clock()
            if remaining <= 0:
                return True
            event = self._event
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=min(remaining, self._max_sleep))
