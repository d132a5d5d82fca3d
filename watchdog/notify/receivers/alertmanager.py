"""Alertmanager integration: `POST /api/v2/alerts` the way Prometheus's notifier does it, so teams
who already route through Alertmanager keep their routing, silences and inhibitions.

Firing alerts are sent with endsAt = now + 4 × max(evaluation interval, resend delay) and re-sent
(the pipeline re-enqueues every resend delay) so Alertmanager never times them out while they
fire; a resolved alert is sent with its resolution time as endsAt, and re-sent for 15 minutes like
Prometheus's resolved retention. Grouping and repeats are Alertmanager's job, not ours. `render` is
pure; credentials in the URL (`${VAR}`, basic auth) never appear in errors.
"""

from __future__ import annotations

from typing import Any

from watchdog.gocompat import rfc3339_millis
from watchdog.model import AlertmanagerConfig
from watchdog.notify.message import Notification
from watchdog.notify.receivers import DeliveryError, SendContext
from watchdog.notify.receivers.http import post_json
from watchdog.notify.secrets import Redactor, SecretError, expand_env, url_secrets

# Prometheus: `endsAt = now + 4 * max(evaluation_interval, resend_delay)` (rules/alerting.go),
# so an alert survives three lost re-sends before Alertmanager resolves it on its own.
RESEND_FACTOR = 4


def render(n: Notification, now: float, resend: float) -> list[dict[str, Any]]:
    out = []
    for a in n.alerts:
        ends = a.ends_at if a.status == "resolved" else now + RESEND_FACTOR * resend
        item: dict[str, Any] = {
            "labels": a.labels, "annotations": a.annotations,
            "startsAt": rfc3339_millis(a.starts_at), "endsAt": rfc3339_millis(ends),
        }
        if a.generator_url:
            item["generatorURL"] = a.generator_url
        out.append(item)
    return out


class AlertmanagerNotifier:
    integration = "alertmanager"

    def __init__(self, cfg: AlertmanagerConfig) -> None:
        self.cfg = cfg

    async def send(self, n: Notification, ctx: SendContext) -> None:
        try:
            base = expand_env(self.cfg.url).rstrip("/")
        except SecretError as e:
            raise DeliveryError(f"alertmanager: {e}", retryable=False) from None
        ctx.redact = Redactor(url_secrets(base))
        body = render(n, ctx.now, ctx.settings_resend)
        if body:
            await post_json(ctx, f"{base}/api/v2/alerts", body, what="Alertmanager",
                            timeout=min(ctx.timeout, self.cfg.timeout))
