"""Incidents: the history of every alert instance from activation to resolution (CONTRACT §8),
its HTTP view `GET /api/v1/incidents`, the `watchdog incidents` command, and the MTTR metrics.

The record is written by an `EventHandler` inside the evaluation's transaction, so an incident
commits with the state change that caused it. This package must not decide anything about
firing, notifications or actions; it only records what they did. This `__init__` stays light
(the CLI imports the package): everything heavy is imported inside `create_handler`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from watchdog.handlers import DaemonContext
    from watchdog.incidents.handler import IncidentsHandler

__all__ = ["create_handler"]


def create_handler(ctx: DaemonContext) -> IncidentsHandler:
    """The daemon's entry point: the `EventHandler` (and action-event sink) that keeps the
    incident records, with its HTTP route and metrics registered on `ctx`."""
    from watchdog.incidents.handler import IncidentsHandler

    return IncidentsHandler(ctx)
