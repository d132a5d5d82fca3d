"""SLOs (a rule file's `slos:`, Sloth's spec) -> the multiwindow, multi-burn-rate alerting rules
of the Google SRE workbook (chapter 5, "Alerting on SLOs"), as an ordinary group.

Pure: text in, models out; no I/O, no clock. It must not evaluate anything: the rules it makes
run through the same engine as every other rule, in `run`, `replay` and `test`.

Why the expressions are inline rather than Sloth's recording rules: the watchdog evaluates only
alerting rules in `run` unless it can write recorded series back (REMOTE_WRITE_URL), and an SLO
must alert wherever it is loaded. So each window's error ratio is written out,
`(error_query) / (total_query)` with `{{.window}}` replaced, where Sloth reads
`slo:sli_error:ratio_rate<window>`. The alerts are the same; the cost is that every evaluation
reads each window's range again (the 3d one most), where recorded series would be read once
per interval. With REMOTE_WRITE_URL the same ratios could be recorded as Sloth records them.

The alerts, as Sloth generates them: one page rule (1h and 5m both above 14.4 × the budget, or
6h and 30m above 6 ×) and one ticket rule (1d and 2h above 3 ×, or 3d and 6h above 1 ×), both
named `alerting.name`, told apart by `sloth_severity: page | ticket`. The value of a firing alert
is the short window's error ratio, as in Sloth (`and` keeps its left side).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from watchdog.model import AlertingRule, Group, RecordingRule, Slo, SloAlertTier

# The placeholder Sloth renders into its queries (Go template syntax; only this one is known).
WINDOW = re.compile(r"\{\{\s*\.window\s*\}\}")
_TEMPLATE = re.compile(r"\{\{.*?\}\}", re.S)


@dataclass(frozen=True)
class BurnWindow:
    long: str
    short: str
    factor: float  # times the error budget: 14.4 spends 2% of a 30-day budget in one hour


# The workbook's table 5-8 for a 30-day SLO.
PAGE = (BurnWindow("1h", "5m", 14.4), BurnWindow("6h", "30m", 6.0))
TICKET = (BurnWindow("1d", "2h", 3.0), BurnWindow("3d", "6h", 1.0))
# Every window the alerts read, shortest first (the budget API reports a burn rate for each).
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")


def group_name(slo: Slo) -> str:
    """The generated group's name; `/api/v1/rules` shows it with the SLO's file:line."""
    return group_name_of(slo.service, slo.name)


def group_name_of(service: str, name: str) -> str:
    return f"slo:{service}-{name}"


def render(query: str, window: str) -> str:
    """A Sloth query for one window: `{{.window}}` (any spacing) becomes e.g. `5m`."""
    return WINDOW.sub(window, query)


def query_problems(query: str) -> list[str]:
    """What is wrong with an SLI query's template (PromQL is checked on the rendered text)."""
    out = []
    if not WINDOW.search(query):
        out.append("has no {{.window}} placeholder (e.g. rate(http_requests_total[{{.window}}])):"
                   " every burn-rate window would read the same range")
    others = [m.group() for m in _TEMPLATE.finditer(query) if not WINDOW.fullmatch(m.group())]
    if others:
        out.append(f"only {{{{.window}}}} is replaced; {others[0]!r} would be sent as it is")
    return out


def ratio(slo: Slo, window: str) -> str:
    """The error ratio over `window`: Sloth's `slo:sli_error:ratio_rate<window>`, inline."""
    q = slo.sli.queries
    return f"({render(q.error_query, window)}) / ({render(q.total_query, window)})"


def _number(x: float) -> str:
    # The shortest text that reads back as the same float (Go's %v gives the same digits).
    return repr(int(x)) if x.is_integer() else repr(x)


def burn_expr(slo: Slo, windows: Sequence[BurnWindow]) -> str:
    """`(short > f·budget and long > f·budget) or (…)` over the windows, Sloth's order."""
    budget = _number(slo.error_budget)
    pairs = []
    for w in windows:
        threshold = f"({_number(w.factor)} * {budget})"
        pairs.append(f"(\n  {ratio(slo, w.short)} > {threshold}\nand\n"
                     f"  {ratio(slo, w.long)} > {threshold}\n)")
    return "\nor\n".join(pairs)


def alert_name(slo: Slo) -> str:
    if slo.alerting.name:
        return slo.alerting.name
    words = re.split(r"[^A-Za-z0-9]+", f"{slo.service} {slo.name}")
    return "".join(w[:1].upper() + w[1:] for w in words if w) + "ErrorBudgetBurn"


_DEFAULT_SEVERITY = {"page": "critical", "ticket": "warning"}


def _rule(slo: Slo, severity: str, tier: SloAlertTier, windows: Sequence[BurnWindow]
          ) -> AlertingRule:
    a = slo.alerting
    # The series Sloth's recording rules carry become the rule's labels here (there is no
    # recorded series to carry them); the rule's own labels win, as in Sloth.
    labels = {"sloth_id": slo.slo_id, "sloth_service": slo.service, "sloth_slo": slo.name,
              **slo.labels, **a.labels, **tier.labels, "sloth_severity": severity}
    labels.setdefault("severity", _DEFAULT_SEVERITY[severity])
    # Sloth's default annotations, with the names written in: `$labels` holds the query's
    # labels, not the rule's (as in Prometheus), so `{{$labels.sloth_service}}` would be empty.
    who = f"{slo.service} {slo.name}"
    annotations = {
        "summary": f"{who} SLO error budget burn rate is over expected.",
        "title": f"({severity}) {who} SLO error budget burn rate is too fast.",
        **a.annotations, **tier.annotations,
    }
    return AlertingRule.model_validate({
        "alert": alert_name(slo), "expr": burn_expr(slo, windows), "labels": labels,
        "annotations": annotations})


def generate(slo: Slo) -> Group:
    """The SLO's alerting rules as one group named `slo:<service>-<name>`."""
    rules: list[AlertingRule | RecordingRule] = []
    if not slo.alerting.page_alert.disable:
        rules.append(_rule(slo, "page", slo.alerting.page_alert, PAGE))
    if not slo.alerting.ticket_alert.disable:
        rules.append(_rule(slo, "ticket", slo.alerting.ticket_alert, TICKET))
    # the interval is seconds already: copied in, not parsed again as a duration's text
    return Group(name=group_name(slo), rules=rules).model_copy(update={"interval": slo.interval})
