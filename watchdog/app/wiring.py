"""Which subsystems a daemon runs, built with plain imports in one place: the MQTT bus (when
`MQTT_URL` is set), the incident, notification and action handlers, and the commands MQTT
dispatches by name (the same JSON as the HTTP API).

Must not: start anything (the daemon starts what this returns) or hold state of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from watchdog.actions.handler import ActionsHandler
from watchdog.handlers import DaemonContext, EventHandler
from watchdog.incidents.handler import IncidentsHandler
from watchdog.notify.handler import NotifyHandler

log = structlog.get_logger("watchdog.daemon")


@dataclass
class Wired:
    handlers: list[EventHandler] = field(default_factory=list)
    parts: dict[str, str] = field(default_factory=dict)  # name -> "loaded" | "failed: ..."
    mqtt: object | None = None


def wire(ctx: DaemonContext, extra: Sequence[EventHandler] = (), *, subsystems: bool = True
         ) -> Wired:
    """The handlers (incidents, notifications, actions, then `extra`), their commands on
    `ctx.commands`, and the MQTT bus on `ctx.mqtt`. Incidents come first: the records an
    evaluation opens exist before the notifications and action runs of the same transaction
    count against them."""
    out = Wired()
    if ctx.settings.mqtt_url:
        # Imported only when used: a deployment without MQTT does not load the client.
        from watchdog.mqtt import MqttBus

        out.mqtt = ctx.mqtt = MqttBus(ctx)
    if subsystems:
        parts: list[tuple[str, Callable[[DaemonContext], EventHandler]]] = [
            ("watchdog.incidents", IncidentsHandler), ("watchdog.notify", NotifyHandler),
            ("watchdog.actions", ActionsHandler)]
        for name, make in parts:
            try:
                handler = make(ctx)
            except Exception as e:
                # One subsystem that cannot start must not stop evaluation (or the others);
                # it is loud in the log and on /api/v1/status.
                out.parts[name] = f"failed: {e}"
                log.exception("cannot create a handler", part=name)
                continue
            commands = getattr(handler, "commands", None)
            if commands is not None:
                ctx.commands.update(commands())
            out.handlers.append(handler)
            out.parts[name] = "loaded"
    out.handlers.extend(extra)
    return out
