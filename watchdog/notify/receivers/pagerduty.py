"""PagerDuty Events API v2: one `trigger` per firing alert and one `resolve` per resolved alert,
with `dedup_key` = the incident id (series fingerprint @ activeAt), so re-sends (repeats, retries,
a restart) update the same PagerDuty alert instead of paging twice, and the next incident of the
same series is a new PagerDuty alert even if the last one's resolve was late or lost (a key per
series would merge it into the open one). Action notifications become change events, except a
page (`on_failure` / `on_not_helped` with `page: true`): a critical `trigger` keyed by the run.

`render(n, routing_key)` is pure; `PagerDutyNotifier` only posts. The routing key is a secret: it
is read at delivery, lives only in the request body, and never appears in an error or a log.
"""

from __future__ import annotations

from typing import Any

from watchdog.gocompat import rfc3339_millis
from watchdog.model import SEVERITY_RANK, PagerDutyConfig
from watchdog.notify import message as m
from watchdog.notify.message import AlertDoc, Notification
from watchdog.notify.receivers import DeliveryError, SendContext
from watchdog.notify.receivers.http import post_json
from watchdog.notify.secrets import Redactor, SecretError, expand_env, resolve, url_secrets

MAX_SUMMARY = 1024  # PagerDuty truncates longer summaries; we do it ourselves with an ellipsis
MAX_DEDUP = 255
CLIENT = "metrics-watchdog"


def pd_severity(a: AlertDoc) -> str:
    """Our severity label to PagerDuty's four; unknown names map to `error` like Alertmanager."""
    name = (a.severity or a.labels.get("severity") or "").lower()
    if name not in SEVERITY_RANK:
        return "error"
    rank = SEVERITY_RANK[name]
    if rank >= SEVERITY_RANK["major"]:
        return "critical"
    if rank >= SEVERITY_RANK["high"]:
        return "error"
    if rank >= SEVERITY_RANK["warning"]:
        return "warning"
    return "info"


def dedup_key(a: AlertDoc) -> str:
    return (a.incident_id or a.fingerprint)[:MAX_DEDUP]


def _source(labels: dict[str, str]) -> str:
    for k in ("instance", "service", "job", "deployment", "app"):
        if labels.get(k):
            return labels[k]
    return CLIENT


def _links(a: AlertDoc) -> list[dict[str, str]]:
    return [{"href": u, "text": t} for t, u in m.links(a)]


def resolves(a: AlertDoc, routing_key: str) -> list[dict[str, Any]]:
    keys = [dedup_key(a)]
    if a.series_dedup:  # triggered by v0.1.0 under the series' key; resolving nothing is a no-op
        keys.append(a.fingerprint[:MAX_DEDUP])
    return [{"routing_key": routing_key, "event_action": "resolve", "dedup_key": k}
            for k in dict.fromkeys(keys)]


def event(a: AlertDoc, n: Notification, routing_key: str) -> dict[str, Any]:
    labels = a.labels
    details: dict[str, Any] = {
        "value": m.value_line(a), "labels": labels, "annotations": a.annotations,
        "firing_since": rfc3339_millis(a.fired_at if a.fired_at is not None else a.starts_at),
        "rule": a.rule, "group": a.group,
    }
    if a.threshold:
        details["threshold"] = a.threshold
    if a.baseline is not None:
        details["baseline"] = a.baseline
    if a.actions:
        details["watchdog_actions"] = [m.action_line(x) for x in a.actions]
    if n.kind == "escalated" and n.level is not None:
        details["escalation_level"] = n.level
    if a.acked:
        details["acknowledged"] = True
    if n.paused:
        details["watchdog_paused"] = n.paused
    payload: dict[str, Any] = {
        "summary": m.truncate(f"[{a.alertname}] {m.summary(a)}", MAX_SUMMARY),
        "source": _source(labels),
        "severity": pd_severity(a),
        "timestamp": rfc3339_millis(a.fired_at if a.fired_at is not None else a.starts_at),
        "class": a.alertname,
        "custom_details": details,
    }
    for key, label in (("component", ("service", "app", "deployment")),
                       ("group", ("namespace", "cluster", "job"))):
        for name in label:
            if labels.get(name):
                payload[key] = labels[name]
                break
    out: dict[str, Any] = {
        "routing_key": routing_key, "event_action": "trigger", "dedup_key": dedup_key(a),
        "payload": payload, "client": CLIENT, "links": _links(a),
    }
    if n.external_url:
        out["client_url"] = n.external_url
    return out


def change_event(n: Notification, routing_key: str) -> dict[str, Any]:
    assert n.action is not None
    details: dict[str, Any] = {"labels": n.action_labels, "kind": n.action.kind}
    if n.action.detail:
        details["detail"] = n.action.detail
    if n.action.run_id:
        details["run_id"] = n.action.run_id
    return {"routing_key": routing_key,
            "payload": {"summary": m.truncate(f"watchdog: {m.action_line(n.action)}",
                                              MAX_SUMMARY),
                        "timestamp": rfc3339_millis(n.action.at), "source": CLIENT,
                        "custom_details": details}}


def page_event(n: Notification, routing_key: str) -> dict[str, Any]:
    """Automation gave up (a step failed for good, or the run did not help): a `trigger` that
    pages, deduplicated per run and verdict so retries and restarts page once."""
    assert n.action is not None
    a = n.action
    labels = dict(n.action_labels)
    alertname = labels.get("alertname", "")
    details: dict[str, Any] = {"labels": labels, "kind": a.kind, "action": a.action}
    if a.detail:
        details["detail"] = a.detail
    if a.run_id:
        details["run_id"] = a.run_id
    if n.alerts:
        details["value"] = m.value_line(n.alerts[0])
    if n.paused:
        details["watchdog_paused"] = n.paused
    payload: dict[str, Any] = {
        "summary": m.truncate(f"[{alertname}] watchdog: {m.action_line(a)}" if alertname
                              else f"watchdog: {m.action_line(a)}", MAX_SUMMARY),
        "source": _source(labels), "severity": "critical",
        "timestamp": rfc3339_millis(a.at), "class": "watchdog-action", "custom_details": details,
    }
    key = f"watchdog-page:{a.run_id or a.action}:{a.kind}"[:MAX_DEDUP]
    out: dict[str, Any] = {"routing_key": routing_key, "event_action": "trigger",
                           "dedup_key": key, "payload": payload, "client": CLIENT}
    if n.external_url:
        out["client_url"] = n.external_url
    return out


def render(n: Notification, routing_key: str) -> list[dict[str, Any]]:
    """The events to post, in order: resolves first so a group that both resolves and fires
    never leaves a stale incident open if delivery stops half-way."""
    if n.kind == "action" and n.action is not None and n.action.page:
        return [page_event(n, routing_key)]
    if n.kind == "action":
        return [change_event(n, routing_key)] if n.action is not None else []
    if n.kind in ("digest", "report"):
        return []  # a summary is not a page (routes do not send PagerDuty digests or reports)
    docs = sorted(n.alerts, key=lambda a: (a.status == "firing", a.fingerprint))
    return [e for a in docs
            for e in (resolves(a, routing_key) if a.status == "resolved"
                      else [event(a, n, routing_key)])]


def change_url(url: str) -> str:
    """The change-events endpoint next to the configured events endpoint."""
    if url.rstrip("/").endswith("/v2/enqueue"):
        return url.rstrip("/")[: -len("enqueue")] + "change/enqueue"
    return url


class PagerDutyNotifier:
    integration = "pagerduty"

    def __init__(self, cfg: PagerDutyConfig) -> None:
        self.cfg = cfg

    async def send(self, n: Notification, ctx: SendContext) -> None:
        try:
            key = resolve(self.cfg.routing_key, self.cfg.routing_key_file,
                          "pagerduty routing_key")
            # `${VAR}` in every receiver field (CONTRACT §3): a self-hosted events proxy's URL
            # may carry credentials of its own, so they are redacted like the key.
            base = expand_env(self.cfg.url)
        except SecretError as e:
            raise DeliveryError(str(e), retryable=False) from None
        ctx.redact = Redactor([key, *url_secrets(base)])
        paging = n.action is not None and n.action.page
        url = change_url(base) if n.kind == "action" and not paging else base
        # One request per alert: retrying the whole notification re-sends the ones already
        # accepted, which PagerDuty deduplicates by dedup_key.
        for body in render(n, key):
            await post_json(ctx, url, body, what="PagerDuty")
