"""What one notification says, independent of where it goes: the document stored in the outbox.

A `Notification` is built by the pipeline from alert state, persisted as JSON *before* any delivery
is tried, and rendered by a receiver only at delivery time (so a reload that fixes a receiver's URL
applies to notifications already queued). Pure data and formatting helpers: no I/O, no clock, and
never a secret — webhook URLs and routing keys are looked up from the receiver config at delivery.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from watchdog.durations import format_duration
from watchdog.schema import BaseModel, ConfigDict, Field
from watchdog.state import Alert

Kind = Literal["firing", "resolved", "repeated", "escalated", "action", "digest", "report"]
Status = Literal["firing", "resolved"]


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ActionNote(_Doc):
    """Something an action did for an alert: shown in the alert's message, or notified alone."""

    action: str
    kind: str  # started | succeeded | failed | would_run | verified | not_helped
    at: float
    step: str | None = None
    detail: str = ""
    run_id: str | None = None
    page: bool = False  # automation gave up (on_failure / on_not_helped: page): a critical page


class AlertDoc(_Doc):
    fingerprint: str
    rule: str
    group: str
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    status: Status
    starts_at: float  # activeAt, as Prometheus sends it to Alertmanager
    fired_at: float | None = None
    ends_at: float | None = None  # resolvedAt; None while firing
    value: float | None = None
    severity: str | None = None
    threshold: str | None = None
    baseline: float | None = None
    compared: float | None = None
    generator_url: str = ""
    incident_id: str = ""
    acked: bool = False
    actions: tuple[ActionNote, ...] = ()
    # Announced by v0.1.0, which keyed PagerDuty by series: its resolve goes to that key too.
    series_dedup: bool = False

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", self.rule)

    @property
    def duration(self) -> float | None:
        """How long it lasted: from firing (or activation) to resolution."""
        if self.ends_at is None:
            return None
        return max(0.0, self.ends_at - (self.fired_at if self.fired_at is not None
                                        else self.starts_at))


class DigestItem(_Doc):
    """One incident in a digest."""

    id: str
    rule: str
    labels: dict[str, str] = Field(default_factory=dict)
    severity: str | None = None
    fired_at: float
    resolved_at: float | None = None  # None: still open at the digest's end
    acked_by: str | None = None
    actions: tuple[str, ...] = ()  # "name:status"

    @property
    def duration(self) -> float | None:
        return None if self.resolved_at is None else max(0.0, self.resolved_at - self.fired_at)


class DigestDoc(_Doc):
    """A day of a route's incidents: what `digest:` sends instead of one message per alert."""

    scope: str  # the route's matchers, e.g. `severity="info"`, or "all alerts"
    start: float
    end: float
    timezone: str
    count: int  # incidents that fired in [start, end) or were still open in it
    resolved: int
    open: int
    mttr: float | None  # mean firing -> resolved of the resolved ones
    longest: DigestItem | None
    actions: dict[str, int] = Field(default_factory=dict)  # action -> runs
    items: tuple[DigestItem, ...] = ()  # newest first, capped
    more: int = 0  # incidents beyond `items`

    @property
    def actions_run(self) -> int:
        return sum(self.actions.values())


class ReportFigures(_Doc):
    mean: float
    p95: float
    samples: int


class ReportItem(_Doc):
    """One row of a deploy report (`watchdog.deploy_report.item_doc`)."""

    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    before: ReportFigures | None = None
    after: ReportFigures | None = None
    change: dict[str, float | None] = Field(default_factory=dict)  # "mean", "p95": percent
    target: str | None = None
    stat: str = "mean"
    verdict: str | None = None  # met | missed | no data; None without a target


class ReportDoc(_Doc):
    """A deploy's N days before against N days after: what `GET /api/v1/deploys/{id}/report`
    answers, as a chat message."""

    id: str
    service: str
    version: str
    at: float
    days: float
    complete: bool = True
    items: tuple[ReportItem, ...] = ()
    errors: tuple[dict[str, str], ...] = ()
    truncated: bool = False


class Notification(_Doc):
    kind: Kind
    receiver: str
    group_key: str
    created_at: float
    group_labels: dict[str, str] = Field(default_factory=dict)
    alerts: tuple[AlertDoc, ...] = ()
    external_url: str = ""
    level: int | None = None  # escalation level reached (2, 3, …); level 1 is the route itself
    escalated_after: float | None = None
    previous_severity: str | None = None  # for a tier change (warning → critical)
    action: ActionNote | None = None
    action_labels: dict[str, str] = Field(default_factory=dict)
    digest: DigestDoc | None = None
    report: ReportDoc | None = None
    # "actions paused until … by … (reason)" while maintenance mode holds when it is written
    paused: str | None = None

    @property
    def status(self) -> Status:
        return "firing" if any(a.status == "firing" for a in self.alerts) else "resolved"

    @property
    def firing(self) -> list[AlertDoc]:
        return [a for a in self.alerts if a.status == "firing"]

    @property
    def resolved(self) -> list[AlertDoc]:
        return [a for a in self.alerts if a.status == "resolved"]

    @property
    def incident_ids(self) -> list[str]:
        """The incidents this notification tells about, each once."""
        return list(dict.fromkeys(a.incident_id for a in self.alerts if a.incident_id))

    @property
    def common_labels(self) -> dict[str, str]:
        return common(a.labels for a in self.alerts)

    @property
    def common_annotations(self) -> dict[str, str]:
        return common(a.annotations for a in self.alerts)

    @property
    def title_name(self) -> str:
        """What the message is about, in a few words: the alert name(s) or the action."""
        if self.kind == "action" and self.action is not None:
            return self.action.action
        if self.kind == "digest":
            return "daily digest"
        if self.kind == "report" and self.report is not None:
            return f"deploy report {self.report.service} {self.report.version}"
        names = sorted({a.alertname for a in self.alerts})
        if not names:
            return self.group_labels.get("alertname", "alerts")
        return names[0] if len(names) == 1 else f"{names[0]} +{len(names) - 1}"


def common(maps: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """The pairs every map has with the same value (Alertmanager's commonLabels)."""
    it = iter(maps)
    first = next(it, None)
    if first is None:
        return {}
    out = dict(first)
    for m in it:
        out = {k: v for k, v in out.items() if m.get(k) == v}
    return out


def generator_url(base: str, expr: str | None) -> str:
    """Prometheus's generatorURL: the graph page for the rule's expression (`/graph?g0.expr=…`).
    Never with the credentials of a `user:password@` Prometheus URL: the link goes to every
    receiver and into the outbox, and a browser asks for a login anyway."""
    if not base or not expr:
        return ""
    base = _without_credentials(base).rstrip("/")
    return f"{base}/graph?g0.expr={quote(expr, safe='')}&g0.tab=1"


def _without_credentials(url: str) -> str:
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:
        return re.sub(r"//[^/@]*@", "//", url, count=1)
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def alert_doc(alert: Alert, *, generator: str = "", acked: bool = False,
              actions: Sequence[ActionNote] = (), series_dedup: bool = False) -> AlertDoc:
    firing = alert.state != "inactive"
    value = alert.value
    if value is not None and (math.isnan(value) or math.isinf(value)):
        value = None  # JSON has no NaN; "no value" reads the same to a person
    return AlertDoc(
        fingerprint=alert.fingerprint, rule=alert.rule, group=alert.group,
        labels=dict(alert.labels), annotations=dict(alert.annotations),
        status="firing" if firing else "resolved", starts_at=alert.active_at,
        fired_at=alert.fired_at, ends_at=None if firing else alert.resolved_at, value=value,
        severity=alert.severity or alert.labels.get("severity"), threshold=alert.threshold,
        baseline=alert.baseline, compared=alert.compared, generator_url=generator,
        incident_id=alert.incident_id, acked=acked, actions=tuple(actions),
        series_dedup=series_dedup)


# ---- formatting helpers shared by the renderers -----------------------------------------------

def clock_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def human_duration(seconds: float) -> str:
    """`1h30m`, `45s`: Prometheus spelling, rounded to the second (people don't read ms)."""
    return format_duration(float(round(seconds))) if seconds >= 1 else "0s"


def format_value(v: float | None) -> str:
    if v is None:
        return "n/a"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6 or a < 1e-3:
        return f"{v:.3g}"
    if a >= 100:
        return f"{v:,.0f}" if a >= 1e4 else f"{v:.1f}".rstrip("0").rstrip(".")
    return f"{v:.4g}"


def value_line(a: AlertDoc) -> str:
    """`0.17 (threshold > 0.1)` or `1.62× baseline 0.21 (threshold > 1.5)`."""
    if a.status == "resolved":
        return "resolved"
    parts = [format_value(a.value)]
    b, c, v = a.baseline, a.compared, a.value
    if b is not None:
        # The document does not carry `compare:`; the numbers tell ratio from delta.
        if c is not None and v is not None and math.isclose(v, b * c, rel_tol=1e-9):
            parts.append(f"= {format_value(c)}× baseline {format_value(b)}")
        elif c is not None and v is not None and math.isclose(v, b + c, rel_tol=1e-9):
            parts.append(f"= baseline {format_value(b)} {'+' if c >= 0 else '−'} "
                         f"{format_value(abs(c))}")
        else:
            parts.append(f"vs baseline {format_value(b)}")
    if a.threshold:
        parts.append(f"(threshold {a.threshold})")
    return " ".join(parts)


# Labels that say *what* is affected, first; identity noise (alertname, severity shown elsewhere)
# and Prometheus's scrape plumbing last, so a truncated list still shows what matters.
_KEY_LABELS = ("service", "app", "namespace", "deployment", "job", "env", "environment",
               "cluster", "region", "segment", "instance", "route", "endpoint", "pod")
_HIDDEN_LABELS = frozenset({"alertname", "severity", "__name__"})


def key_labels(labels: Mapping[str, str], limit: int = 8) -> list[tuple[str, str]]:
    shown = [(k, labels[k]) for k in _KEY_LABELS if k in labels]
    rest = sorted((k, v) for k, v in labels.items()
                  if k not in _KEY_LABELS and k not in _HIDDEN_LABELS)
    return (shown + rest)[:limit]


def summary(a: AlertDoc) -> str:
    return (a.annotations.get("summary") or a.annotations.get("message")
            or a.annotations.get("description") or a.alertname)


def links(a: AlertDoc) -> list[tuple[str, str]]:
    out = []
    if a.generator_url:
        out.append(("Graph", a.generator_url))
    for key, text in (("runbook_url", "Runbook"), ("dashboard_url", "Dashboard")):
        url = a.annotations.get(key, "")
        if url.startswith(("http://", "https://")):
            out.append((text, url))
    return out


ACTION_VERB = {
    "started": "started", "succeeded": "succeeded", "failed": "FAILED",
    "would_run": "would run", "verified": "verified: the alert cleared",
    "not_helped": "did not help: the alert is still firing",
}


def action_line(n: ActionNote) -> str:
    what = n.action if n.step is None else f"{n.action} / {n.step}"
    if n.kind in ("verified", "not_helped") and n.detail:
        # The detail is the verdict itself: "not helped: 27% → 36% after 10m (...)".
        return f"{what} {n.detail}"
    line = f"{what} {ACTION_VERB.get(n.kind, n.kind)}"
    if n.detail:
        line += f": {n.detail}"
    return line


def _local(ts: float, tz: str, fmt: str) -> str:
    from zoneinfo import ZoneInfo

    return datetime.fromtimestamp(ts, ZoneInfo(tz)).strftime(fmt)


def digest_period(d: DigestDoc) -> str:
    """`2027-01-15 09:00 – 2027-01-16 09:00 Europe/Berlin`."""
    return (f"{_local(d.start, d.timezone, '%Y-%m-%d %H:%M')} – "
            f"{_local(d.end, d.timezone, '%Y-%m-%d %H:%M')} {d.timezone}")


def digest_summary(d: DigestDoc) -> list[str]:
    """The digest's facts, one per line, plain text."""
    if not d.count:
        return [f"No incidents ({d.scope})."]
    word = "incident" if d.count == 1 else "incidents"
    lines = [f"{d.count} {word} ({d.scope}): {d.resolved} resolved, {d.open} still open"]
    if d.mttr is not None:
        lines.append(f"MTTR (firing → resolved): {human_duration(d.mttr)}")
    if d.longest is not None:
        x = d.longest
        took = (human_duration(x.duration) if x.duration is not None
                else f"{human_duration(d.end - x.fired_at)}, still open")
        lines.append(f"Longest: {x.rule} ({took})")
    if d.actions:
        runs = ", ".join(f"{name} ×{n}" if n > 1 else name for name, n in d.actions.items())
        lines.append(f"Actions run: {d.actions_run} ({runs})")
    return lines


def digest_item(x: DigestItem, tz: str) -> str:
    """`CheckoutErrorRate (critical) 08:15, 6m30s · acked by alice · rollback:succeeded`."""
    when = _local(x.fired_at, tz, "%m-%d %H:%M")
    took = human_duration(x.duration) if x.duration is not None else "still open"
    parts = [f"{x.rule}" + (f" ({x.severity})" if x.severity else "") + f" {when}, {took}"]
    if x.acked_by:
        parts.append(f"acked by {x.acked_by}")
    if x.actions:
        parts.append(", ".join(x.actions))
    labels = ", ".join(f"{k}={v}" for k, v in key_labels(x.labels, 4))
    if labels:
        parts.append(labels)
    return " · ".join(parts)


VERDICT_MARK = {"met": "✅", "missed": "❌", "no data": "❔"}
LISTED_REPORT_ITEMS = 20  # rows in one message; the API has them all


def _figure(x: float) -> str:
    return f"{x:.4g}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1f}%"


def report_title(r: ReportDoc) -> str:
    """`checkout v2.3.1: 7 days before and after the deploy of 2027-01-15 08:00 UTC`."""
    days = f"{r.days:g} day{'' if r.days == 1 else 's'}"
    when = _local(r.at, "UTC", "%Y-%m-%d %H:%M UTC")
    so_far = "" if r.complete else " (after-window still running: so far)"
    return f"{r.service} {r.version}: {days} before and after the deploy of {when}{so_far}"


def report_line(x: ReportItem) -> str:
    """`✅ p95 latency: mean 0.21 → 0.18 (-14.3%), p95 0.25 → 0.2 (-20.0%) · target > 10%
    faster: met`."""
    labels = ", ".join(f"{k}={v}" for k, v in key_labels(x.labels, 4))
    head = f"{VERDICT_MARK.get(x.verdict or '', '•')} {x.name}" + (f" {{{labels}}}" if labels
                                                                  else "")
    if x.before is None or x.after is None:
        figures = ("no data " + ("before" if x.before is None else "after")
                   + " the deploy")
    else:
        figures = ", ".join(
            f"{k} {_figure(getattr(x.before, k))} → {_figure(getattr(x.after, k))} "
            f"({_pct(x.change.get(k))})" for k in ("mean", "p95"))
    line = f"{head}: {figures}"
    if x.target is not None:
        line += f" · target {x.target} ({x.stat}): {x.verdict}"
    return line


def report_lines(r: ReportDoc) -> list[str]:
    """The report as plain text lines: the title, a verdict count, one line per row."""
    lines = [report_title(r)]
    judged = [x for x in r.items if x.verdict is not None]
    if judged:
        met = sum(1 for x in judged if x.verdict == "met")
        lines.append(f"Targets met: {met} of {len(judged)}")
    if not r.items:
        lines.append("Nothing to compare: no report queries, and no rule watches this deploy.")
    lines += [report_line(x) for x in r.items[:LISTED_REPORT_ITEMS]]
    if len(r.items) > LISTED_REPORT_ITEMS or r.truncated:
        lines.append(f"…more rows: GET /api/v1/deploys/{r.id}/report")
    lines += [f"⚠️ {e.get('name', '?')}: {e.get('error', '')}" for e in r.errors[:5]]
    return lines


def truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + "…"
