"""The one error the actions' commands raise: bad input or a refusal, with its HTTP status.

Shared by the handler (which raises it) and the HTTP and MQTT adapters (which answer it), so
neither adapter imports the handler. No behaviour beyond carrying the status.
"""

from __future__ import annotations

from collections.abc import Mapping


class CommandError(ValueError):
    """Bad input or a refusal, with the HTTP status that says which. A ValueError, so the MQTT
    command dispatcher answers it as the caller's error, with its message."""

    def __init__(self, message: str, status: int = 400,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})
