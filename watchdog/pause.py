"""Maintenance mode ("pause"), as every part of the watchdog shows it: whether a recorded pause
still holds at a given moment, and the one sentence that says so in messages, logs and the API
("actions paused until 2026-11-29 22:00 UTC by alice (deploy freeze)").

Functional core: no I/O, no clock (`now` is always an argument). Where the pause is kept is
`watchdog.storage` (`Tx.pause`); who sets it is the actions subsystem (HTTP, MQTT, CLI).
Notifications read the same record in their own transaction and print `notice(...)`, so this
module is the only place the wording lives.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class PauseLike(Protocol):
    @property
    def until(self) -> float: ...

    @property
    def reason(self) -> str: ...

    @property
    def by(self) -> str: ...


def active(p: PauseLike | None, now: float) -> bool:
    """A pause ends by itself at `until`."""
    return p is not None and now < p.until


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def notice(p: PauseLike) -> str:
    by = f" by {p.by}" if p.by else ""
    reason = f" ({p.reason})" if p.reason else ""
    return f"actions paused until {when(p.until)}{by}{reason}"


def current_notice(p: PauseLike | None, now: float) -> str | None:
    return notice(p) if p is not None and active(p, now) else None
