"""Receiver integrations behind one small interface: `Notifier.send(notification, ctx)`.

Each integration turns a stored `Notification` into its wire format and sends it; it raises
`DeliveryError` saying whether a retry can help (Alertmanager's `notify.Retrier` idea). They must
not retry, sleep or persist anything themselves — the outbox does that — and their errors must
never contain a secret (URL, routing key, password): build messages from status codes and error
types, then pass them through the receiver's `Redactor`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from watchdog.notify.message import Notification
from watchdog.notify.secrets import Redactor

if TYPE_CHECKING:
    import aiohttp

    from watchdog.handlers import MqttPublisher
    from watchdog.model import Receiver


class DeliveryError(Exception):
    """A failed delivery. `retryable` False means retrying the same request cannot succeed
    (a 4xx other than 408/429, a missing secret); `retry_after` is the receiver's own hint."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


@dataclass
class SendContext:
    """What a notifier may use for one delivery: the clock reading for this attempt, the shared
    HTTP session, the MQTT publisher, and `pace()` — awaited before each request so that the
    per-receiver rate limit holds even when one notification needs several requests."""

    now: float
    session: aiohttp.ClientSession
    timeout: float
    pace: Callable[[], Awaitable[None]]
    mqtt: MqttPublisher | None = None
    settings_resend: float = 60.0  # max(evaluation_interval, resend_delay), for Alertmanager
    redact: Redactor = field(default_factory=Redactor)


class Notifier(Protocol):
    integration: str  # "slack", "pagerduty", …: the metric label and rate-limit class

    async def send(self, n: Notification, ctx: SendContext) -> None: ...


# Requests per second and burst per integration. Slack documents ~1 message per second per
# incoming webhook; PagerDuty's Events API v2 allows 120 events per minute per routing key.
# Webhooks and Alertmanager get a generous cap only to protect the receiver from a storm.
RATE_LIMITS: dict[str, tuple[float, float]] = {
    "slack": (1.0, 1.0),
    "pagerduty": (2.0, 2.0),
    "webhook": (10.0, 10.0),
    "alertmanager": (10.0, 10.0),
    "email": (1.0, 2.0),
    "mqtt": (50.0, 50.0),
}


def build_notifier(receiver: Receiver) -> Notifier:
    """The integration for a receiver config (one kind each, validated by the model)."""
    from watchdog.notify.receivers.alertmanager import AlertmanagerNotifier
    from watchdog.notify.receivers.email import EmailNotifier
    from watchdog.notify.receivers.mqtt import MqttNotifier
    from watchdog.notify.receivers.pagerduty import PagerDutyNotifier
    from watchdog.notify.receivers.slack import SlackNotifier
    from watchdog.notify.receivers.webhook import WebhookNotifier

    if receiver.slack is not None:
        return SlackNotifier(receiver.slack)
    if receiver.pagerduty is not None:
        return PagerDutyNotifier(receiver.pagerduty)
    if receiver.webhook is not None:
        return WebhookNotifier(receiver.webhook)
    if receiver.alertmanager is not None:
        return AlertmanagerNotifier(receiver.alertmanager)
    if receiver.email is not None:
        return EmailNotifier(receiver.email)
    if receiver.mqtt is not None:
        return MqttNotifier(receiver.mqtt)
    raise ValueError(f"receiver {receiver.name!r} has no integration")


def integration_of(receiver: Receiver) -> str:
    for kind in ("slack", "pagerduty", "webhook", "alertmanager", "email", "mqtt"):
        if getattr(receiver, kind) is not None:
            return kind
    return "unknown"


__all__ = ["RATE_LIMITS", "DeliveryError", "Notifier", "Redactor", "SendContext",
           "build_notifier", "integration_of"]
