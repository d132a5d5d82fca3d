"""A deploy report's figures: the N days before a deploy against the N days after, per query and
series — mean, p95, change in percent, and the verdict against the query's target.

Pure: samples in, a JSON-ready document out; no I/O, no clock (the caller passes `now`). The
querying is `watchdog.actions.reports`'; what is shown in chat is `watchdog.notify`'s.

The windows are half-open and on one grid: the samples at `at − N days + k·step` before the
deploy (up to `at − step`) and at `at + k·step` after it (up to `at + N days − step`, or `now`
while the after-window is still running), as a Prometheus range query evaluates them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from watchdog.model import Goal
from watchdog.stats import mean, quantile

DAY = 86400.0
MAX_DAYS = 90.0
# Prometheus refuses a range query of more than 11,000 points per series; a minute is the
# finest step worth having for days of data (and the usual scrape interval's order).
MAX_POINTS = 11_000
MIN_STEP = 60.0

Verdict = Literal["met", "missed", "no data"]


def step_for(days: float) -> float:
    """The range queries' step: a whole number of minutes, at least one, so that each window
    stays within Prometheus's 11,000 points (7 days: 60s, 10,080 points)."""
    minutes = math.ceil(days * DAY / MAX_POINTS / MIN_STEP)
    return max(1, minutes) * MIN_STEP


@dataclass(frozen=True)
class Windows:
    before_start: float
    before_end: float  # the last sample's time (inclusive)
    after_start: float
    after_end: float | None  # None: the after-window has not begun
    step: float
    complete: bool  # the after-window is over

    def doc(self) -> dict[str, Any]:
        return {"before": {"start": self.before_start, "end": self.before_end + self.step},
                "after": {"start": self.after_start,
                          "end": self.after_start if self.after_end is None
                          else self.after_end + self.step},
                "step": self.step, "complete": self.complete}


def windows(at: float, days: float, now: float) -> Windows:
    step = step_for(days)
    span = days * DAY
    k = math.floor(span / step)  # samples per full window
    last_after = at + (k - 1) * step
    if now < at:
        after_end: float | None = None
    else:
        after_end = min(last_after, at + math.floor((now - at) / step) * step)
    return Windows(at - k * step, at - step, at, after_end, step, now >= at + span)


@dataclass(frozen=True)
class Summary:
    mean: float
    p95: float
    samples: int

    def doc(self) -> dict[str, Any]:
        return {"mean": self.mean, "p95": self.p95, "samples": self.samples}


def summarize(values: Sequence[float]) -> Summary | None:
    """Mean and p95 (linear interpolation, NumPy's default) of the finite values; None when
    there are none."""
    xs = [v for v in values if math.isfinite(v)]
    if not xs:
        return None
    return Summary(mean(xs), quantile(xs, 0.95), len(xs))


def change_pct(before: float, after: float) -> float | None:
    """(after − before) / |before| in percent; None when before is 0."""
    if before == 0:
        return None
    return (after - before) / abs(before) * 100.0


def verdict(goal: Goal, stat: Literal["mean", "p95"], before: Summary | None,
            after: Summary | None) -> Verdict:
    if before is None or after is None:
        return "no data"
    change = change_pct(getattr(before, stat), getattr(after, stat))
    if change is None:
        return "no data"
    return "met" if goal.met(change) else "missed"


def item_doc(*, name: str, query: str, origin: str, labels: Mapping[str, str],
             before: Sequence[float], after: Sequence[float], goal: Goal | None,
             stat: Literal["mean", "p95"], better: str | None = None) -> dict[str, Any]:
    """One row of the report: a query's series, before and after."""
    b, a = summarize(before), summarize(after)
    change = {k: (change_pct(getattr(b, k), getattr(a, k)) if a and b else None)
              for k in ("mean", "p95")}
    return {
        "name": name, "query": query, "origin": origin, "labels": dict(labels),
        "before": b.doc() if b else None, "after": a.doc() if a else None, "change": change,
        "target": goal.text if goal else None, "stat": stat,
        "better": goal.better if goal else better,
        "verdict": verdict(goal, stat, b, a) if goal else None,
    }


def better_of(op: str) -> Literal["lower", "higher"] | None:
    """Which way is better for a rule's expression, from the comparison that alerts on it:
    alerting on `> x` means lower is better."""
    if op.startswith(">"):
        return "lower"
    if op.startswith("<"):
        return "higher"
    return None
