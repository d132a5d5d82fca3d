"""Actions: what the watchdog does when a rule trips — persisted, interlocked step sequences
(webhook, wait, kubernetes, command, mqtt), manual triggers and deploy markers.

This package is the shell: it does network, process and database I/O. It must not evaluate rules
or decide firing (that is the core's), and this `__init__` must stay light — `watchdog check` and
the CLI import it — so everything heavy is imported inside `create_handler`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from watchdog.actions.handler import ActionsHandler
    from watchdog.handlers import DaemonContext

__all__ = ["create_handler"]


def create_handler(ctx: DaemonContext) -> ActionsHandler:
    """The daemon's entry point: an `EventHandler` that runs actions, registered with its HTTP
    routes and its "run_action" / "deploy" commands on `ctx`."""
    from watchdog.actions.handler import ActionsHandler

    return ActionsHandler(ctx)
