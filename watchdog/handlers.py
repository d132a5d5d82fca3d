"""The seam between the evaluation loop and what reacts to it (notifications, actions).

Interfaces only: the daemon calls every registered `EventHandler` after each (re)load and inside
each tick's transaction; handlers never call back into the scheduler. Nothing here does I/O.

The promise the seam carries: `on_events(tx, ...)` runs inside the transaction that also saves
the alert state the events came from. A handler writes what the events cause (outbox rows, action
runs) through `tx` and starts side effects only from `tx.on_commit`, so one evaluation's decision
is durable as a whole before anything is sent or executed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from watchdog.rulesdir import RuleSet
from watchdog.state import Alert, Event
from watchdog.storage.ports import Lease

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from watchdog.settings import Settings
    from watchdog.source import Source
    from watchdog.storage import Storage, Tx


LEADER = "~leader"  # the lease of the one replica that decides and delivers notifications


class LeaseView(Protocol):
    """Which leases this replica holds (`watchdog.app.replicas.Coordinator`). On a store one
    process owns, every name is held (`shared` is false and fences are no-ops)."""

    shared: bool
    replica_id: str
    ttl: float

    def held(self, name: str) -> Lease | None: ...

    def lost(self, name: str, detail: str = "") -> None:
        """A fenced write found the lease gone: stop acting on it."""


class SoloLeases:
    """Every lease held: for daemons and tests on a store one process owns."""

    shared = False

    def __init__(self, replica_id: str = "solo", ttl: float = 15.0) -> None:
        self.replica_id, self.ttl = replica_id, ttl

    def held(self, name: str) -> Lease | None:
        return Lease(name, self.replica_id, 0)

    def lost(self, name: str, detail: str = "") -> None:
        pass


class AlertView(Protocol):
    """Read access to the live alert state (all groups)."""

    def alerts(self) -> list[Alert]: ...

    def find(self, rule: str, fingerprint: str) -> Alert | None: ...


@dataclass(frozen=True)
class ActionEvent:
    """Something an action did, to be notified like an alert event."""

    kind: Literal["started", "succeeded", "failed", "would_run", "verified", "not_helped",
                  "report"]  # report: extra["report"] is a deploy report, posted to chat
    action: str
    at: float
    labels: Mapping[str, str]
    rule: str | None = None
    step: str | None = None
    detail: str = ""
    run_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    # Notify as a page, not as an action's progress: a firing notification with
    # `severity: critical` to every route its labels match (a PagerDuty trigger rather than a
    # change event), deduplicated by `run_id`. `labels["alertname"]` names it.
    page: bool = False


class ActionEventSink(Protocol):
    async def on_action_event(self, event: ActionEvent, tx: Tx | None = None) -> None:
        """Record what the event causes; inside `tx` when the caller has one open (the run
        that started is committed with its announcement), else in a transaction of its own."""


class EventHandler(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def on_rules(self, rules: RuleSet) -> None:
        """Called with the accepted rule set after startup and after every reload."""

    async def on_events(self, tx: Tx, events: Sequence[Event], at: float) -> None:
        """Called with each tick's transitions inside the transaction that saves them: write
        through `tx`, start side effects with `tx.on_commit`."""


class MqttPublisher(Protocol):
    async def publish(self, topic: str, payload: bytes | str, qos: int = 0,
                      retain: bool = False) -> None:
        """Raises on failure (no broker); callers that must not lose the message retry."""


CommandFn = Callable[[Mapping[str, Any]], Awaitable[Any]]


@dataclass
class DaemonContext:
    """What the daemon hands to each subsystem when it is created (see `watchdog.daemon`)."""

    settings: Settings
    storage: Storage  # every persisted record (`watchdog.storage`), one transaction at a time
    session: aiohttp.ClientSession  # the one shared HTTP client session
    source: Source  # Prometheus
    alerts: AlertView
    clock: Callable[[], float]  # wall clock (Unix seconds); tests inject a fake
    registry: CollectorRegistry  # the watchdog's own /metrics
    routes: list[web.RouteDef] = field(default_factory=list)  # extra HTTP routes; non-GET ones
    # are behind the API token automatically
    commands: dict[str, CommandFn] = field(default_factory=dict)  # "deploy", "silence", "ack",
    # "run_action": the same JSON as the HTTP API; MQTT commands dispatch here
    action_sinks: list[ActionEventSink] = field(default_factory=list)
    mqtt: MqttPublisher | None = None
    rules: RuleSet | None = None
    leases: LeaseView = field(default_factory=SoloLeases)

    async def emit_action_event(self, event: ActionEvent, tx: Tx | None = None) -> None:
        for sink in self.action_sinks:
            await sink.on_action_event(event, tx)
