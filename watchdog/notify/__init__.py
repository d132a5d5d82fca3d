"""Notifications: who hears about an alert, when, and through what — routed, grouped, silenced,
inhibited, escalated, and delivered through a persisted outbox that survives restarts.

The daemon calls `create_handler(ctx)` and treats the result as an `EventHandler` (it also
registers itself as an action-event sink, HTTP routes and commands on `ctx`). Modules:
`pipeline` decides, `outbox` delivers, `receivers/*` speak each integration's wire format,
`silences` holds silences and acks, `api` is the HTTP/command surface, `preview` renders a rule's
Slack message in a terminal. Nothing here evaluates rules or reads Prometheus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from watchdog.handlers import DaemonContext
    from watchdog.notify.handler import NotifyHandler


def create_handler(ctx: DaemonContext) -> NotifyHandler:
    from watchdog.notify.handler import NotifyHandler

    return NotifyHandler(ctx)


__all__ = ["create_handler"]
