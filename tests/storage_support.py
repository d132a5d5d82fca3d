"""Opening a state store in tests: `async with sqlite_storage(tmp_path / "w.db") as storage:`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from watchdog.state import Event
from watchdog.storage import Storage, open_storage


@contextlib.asynccontextmanager
async def storage_at(url: str) -> AsyncIterator[Storage]:
    storage = await open_storage(url)
    try:
        yield storage
    finally:
        await storage.close()


def sqlite_storage(path: Path | str) -> contextlib.AbstractAsyncContextManager[Storage]:
    return storage_at(f"sqlite:///{path}")


async def on_events_tx(handler: Any, events: Sequence[Event], at: float) -> None:
    """Hand `events` to a handler as the daemon does: inside one transaction of its storage."""
    async with handler.ctx.storage.transaction() as tx:
        await handler.on_events(tx, events, at)
