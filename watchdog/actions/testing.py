"""Fakes for driving the actions subsystem without a daemon: an alert view, a recording action
sink, a recording MQTT publisher, and `make_context` to assemble a `DaemonContext` from them.
For our tests and for users testing their own action definitions.

No network I/O of its own and nothing the daemon imports. It must stay a thin adapter: any
behaviour worth testing belongs in the real modules, not here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from watchdog.handlers import ActionEvent, DaemonContext
from watchdog.settings import Settings
from watchdog.state import Alert

if TYPE_CHECKING:
    import aiohttp

    from watchdog.engine import GroupRuntime
    from watchdog.source import Source
    from watchdog.storage import Storage, Tx


@dataclass
class StaticAlerts:
    """An `AlertView` over alerts the test sets by hand."""

    items: dict[tuple[str, str], Alert] = field(default_factory=dict)

    def set(self, *alerts: Alert) -> None:
        for a in alerts:
            self.items[(a.rule, a.fingerprint)] = a

    def clear(self) -> None:
        self.items.clear()

    def alerts(self) -> list[Alert]:
        return list(self.items.values())

    def find(self, rule: str, fingerprint: str) -> Alert | None:
        return self.items.get((rule, fingerprint))


@dataclass
class RuntimeAlerts:
    """An `AlertView` over engine runtimes, as the daemon's is."""

    runtimes: list[GroupRuntime]

    def alerts(self) -> list[Alert]:
        return [a for rt in self.runtimes for a in rt.alerts()]

    def find(self, rule: str, fingerprint: str) -> Alert | None:
        for a in self.alerts():
            if a.rule == rule and a.fingerprint == fingerprint:
                return a
        return None


@dataclass
class RecordingSink:
    events: list[ActionEvent] = field(default_factory=list)
    fail_next: bool = False  # the next event raises, as a sink whose write failed would

    async def on_action_event(self, event: ActionEvent, tx: Tx | None = None) -> None:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the sink could not record the event")
        # Recorded as the real sinks act: only once the caller's transaction committed.
        if tx is None:
            self.events.append(event)
        else:
            tx.on_commit(lambda: self.events.append(event))

    def kinds(self, action: str | None = None) -> list[str]:
        return [e.kind for e in self.events if action is None or e.action == action]


@dataclass
class RecordingMqtt:
    messages: list[tuple[str, str, int, bool]] = field(default_factory=list)
    fail: Exception | None = None

    async def publish(self, topic: str, payload: bytes | str, qos: int = 0,
                      retain: bool = False) -> None:
        if self.fail is not None:
            raise self.fail
        text = payload.decode() if isinstance(payload, bytes) else payload
        self.messages.append((topic, text, qos, retain))


def make_context(storage: Storage, session: aiohttp.ClientSession, source: Source, *,
                 alerts: Any = None, clock: Callable[[], float] = time.time,
                 settings: Settings | None = None, mqtt: Any = None,
                 sinks: Iterable[Any] = ()) -> DaemonContext:
    return DaemonContext(
        settings=settings or Settings.load(), storage=storage, session=session, source=source,
        alerts=alerts if alerts is not None else StaticAlerts(), clock=clock,
        registry=CollectorRegistry(), action_sinks=list(sinks), mqtt=mqtt)


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 5.0,
                     interval: float = 0.01) -> None:
    """Until `check()` is true (it may be async); AssertionError after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > end:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
