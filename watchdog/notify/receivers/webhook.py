"""Generic webhook: Alertmanager's webhook JSON, version "4", so anything that accepts
Alertmanager webhooks (its own `webhook_configs` receivers, Grafana OnCall, n8n, …) accepts ours.

`render(n)` is pure. Fields follow Alertmanager's `notify/webhook` `Message` exactly; our extras go
under keys Alertmanager doesn't use (`watchdog`), so strict parsers still accept the document.
Headers may hold secrets (`${VAR}` expanded at delivery) and are never logged.
"""

from __future__ import annotations

from typing import Any

from watchdog.gocompat import rfc3339_millis
from watchdog.model import WebhookConfig
from watchdog.notify.message import AlertDoc, Notification
from watchdog.notify.receivers import DeliveryError, SendContext
from watchdog.notify.receivers.http import post_json
from watchdog.notify.secrets import Redactor, SecretError, expand_env, url_secrets


def alert_json(a: AlertDoc) -> dict[str, Any]:
    return {
        "status": a.status, "labels": a.labels, "annotations": a.annotations,
        "startsAt": rfc3339_millis(a.starts_at), "endsAt": rfc3339_millis(a.ends_at),
        "generatorURL": a.generator_url, "fingerprint": a.fingerprint,
    }


def render(n: Notification) -> dict[str, Any]:
    body: dict[str, Any] = {
        "version": "4",
        "groupKey": n.group_key,
        "truncatedAlerts": 0,
        "status": n.status,
        "receiver": n.receiver,
        "groupLabels": n.group_labels,
        "commonLabels": n.common_labels,
        "commonAnnotations": n.common_annotations,
        "externalURL": n.external_url,
        "alerts": [alert_json(a) for a in n.alerts],
        "watchdog": {"kind": n.kind},
    }
    if n.level is not None:
        body["watchdog"]["level"] = n.level
    if n.previous_severity is not None:
        body["watchdog"]["previous_severity"] = n.previous_severity
    if n.action is not None:
        body["watchdog"]["action"] = n.action.model_dump()
        body["watchdog"]["action_labels"] = n.action_labels
    if n.digest is not None:
        body["watchdog"]["digest"] = n.digest.model_dump()
    if n.report is not None:
        body["watchdog"]["report"] = n.report.model_dump()
    if n.paused is not None:
        body["watchdog"]["paused"] = n.paused
    return body


class WebhookNotifier:
    integration = "webhook"

    def __init__(self, cfg: WebhookConfig) -> None:
        self.cfg = cfg

    async def send(self, n: Notification, ctx: SendContext) -> None:
        try:
            url = expand_env(self.cfg.url)
            headers = {k: expand_env(v) for k, v in self.cfg.headers.items()}
        except SecretError as e:
            raise DeliveryError(f"webhook: {e}", retryable=False) from None
        ctx.redact = Redactor([*url_secrets(url), *headers.values()])
        await post_json(ctx, url, render(n), what="webhook", headers=headers,
                        timeout=min(ctx.timeout, self.cfg.timeout))
