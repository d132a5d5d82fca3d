"""`GET /api/v1/slos`: each SLO of the rules folder with its error budget — the SLI over the SLO
period, the budget left, and the burn rate over each window the alerts read — computed by asking
Prometheus.

Shell: reads the loaded rule set and queries the `Source`; it changes nothing. Bounded: one
instant query per window and SLO (eight), at most `concurrency` in flight, each under the
source's timeout; at most `MAX_SLOS` SLOs and `MAX_SERIES` series per SLO in one answer. A
failed query is reported for its window, never as a 5xx.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from watchdog.durations import format_duration
from watchdog.evaluate import Sample
from watchdog.labels import fingerprint, without_name
from watchdog.model import Slo
from watchdog.rulesdir import RuleSet
from watchdog.slo import WINDOWS, alert_name, group_name, ratio
from watchdog.source import Source

MAX_SLOS = 200
MAX_SERIES = 100
PERIOD = "period"  # the key of the SLO period's query among the windows


@dataclass(frozen=True)
class Located:
    slo: Slo
    file: str
    line: int

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}"


def located(rules: RuleSet) -> list[Located]:
    """Every SLO of the accepted files, in file order, with where it is written."""
    out = []
    for name, pf in sorted(rules.files.items()):
        if pf.model is None:
            continue
        for i, slo in enumerate(pf.model.slos):
            out.append(Located(slo, name, pf.line_of(("slos", i))))
    return out


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def series_doc(slo: Slo, labels: Mapping[str, str], ratios: Mapping[str, float | None]
               ) -> dict[str, Any]:
    """One series of an SLO: the SLI and budget over the period, burn rates per window.
    `ratios` maps each window (and PERIOD) to its error ratio (None: no traffic, or not
    known)."""
    budget = slo.error_budget
    period = ratios.get(PERIOD)
    return {
        "labels": dict(labels),
        "error_ratio": period,
        "sli": None if period is None else (1.0 - period) * 100.0,
        "budget_remaining": None if period is None else 1.0 - period / budget,
        "burn_rates": {w: None if (r := ratios.get(w)) is None else r / budget
                       for w in WINDOWS},
    }


def slo_doc(loc: Located, results: Mapping[str, Sequence[Sample] | str]) -> dict[str, Any]:
    """The answer for one SLO from its queries' results (samples, or an error's text)."""
    slo = loc.slo
    per_series: dict[str, tuple[dict[str, str], dict[str, float | None]]] = {}
    errors = {}
    for window, result in results.items():
        if isinstance(result, str):
            errors[window] = result
            continue
        for s in result:
            labels = without_name(s.labels)
            entry = per_series.setdefault(fingerprint(labels), (labels, {}))
            entry[1][window] = _finite(s.value)
    # The period's series come first and define the list; a series seen only in a short
    # window (new since) is listed too, with no SLI yet.
    ordered = sorted(per_series.values(), key=lambda e: (PERIOD not in e[1], sorted(e[0].items())))
    docs = [series_doc(slo, labels, ratios) for labels, ratios in ordered[:MAX_SERIES]]
    one = docs[0] if len(docs) == 1 else None
    return {
        "service": slo.service, "name": slo.name, "description": slo.description,
        "objective": slo.objective, "time_window": format_duration(slo.time_window),
        "error_budget": slo.error_budget, "labels": dict(slo.labels),
        "source": loc.source, "group": group_name(slo), "alert": alert_name(slo),
        # the figures of the one series, when the SLI is one series (the common case)
        "sli": one["sli"] if one else None,
        "budget_remaining": one["budget_remaining"] if one else None,
        "burn_rates": one["burn_rates"] if one else None,
        "series": docs, "truncated": len(ordered) > MAX_SERIES, "errors": errors,
    }


async def budgets(rules: RuleSet, source: Source, at: float, *, concurrency: int = 16,
                  service: str | None = None, name: str | None = None) -> dict[str, Any]:
    """`GET /api/v1/slos`'s data at time `at`."""
    chosen = [loc for loc in located(rules)
              if (service is None or loc.slo.service == service)
              and (name is None or loc.slo.name == name)]
    shown = chosen[:MAX_SLOS]
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(expr: str) -> Sequence[Sample] | str:
        async with gate:
            try:
                return await source.query(expr, at)
            except Exception as e:  # one window's failure is that window's, not the answer's
                return str(e) or type(e).__name__

    async def per_slo(loc: Located) -> dict[str, Any]:
        windows = {w: ratio(loc.slo, w) for w in WINDOWS}
        windows[PERIOD] = ratio(loc.slo, format_duration(loc.slo.time_window))
        results = await asyncio.gather(*(one(q) for q in windows.values()))
        return slo_doc(loc, dict(zip(windows, results, strict=True)))

    docs = await asyncio.gather(*(per_slo(loc) for loc in shown))
    return {"time": at, "slos": list(docs), "truncated": len(chosen) > MAX_SLOS}
