"""The words of "did it help?": the verdict line an action's verification and escalation carry
("not helped: 27% → 36% after 10m"), and how a rule's values are shown in it.

Functional core: no I/O, no clock; every time is an argument.
"""

from __future__ import annotations

from typing import Literal

from watchdog.durations import format_duration
from watchdog.model import AlertingRule

Style = Literal["percent", "number"]


def value_style(rule: AlertingRule | None) -> Style:
    """How the rule's author shows its value: as a percentage when a label or annotation
    template says `humanizePercentage` (a ratio of 0.27 reads 27%), else as a number."""
    if rule is None:
        return "number"
    texts = [*rule.annotations.values(), *rule.labels.values()]
    return "percent" if any("humanizePercentage" in t for t in texts) else "number"


def show(v: float | None, style: Style = "number") -> str:
    if v is None:
        return "n/a"
    if style == "percent":
        return f"{v * 100:.3g}%"
    return f"{v:.4g}"


def verdict_line(helped: bool, before: float | None, after: float | None, took: float,
                 style: Style = "number") -> str:
    """`not helped: 27% → 36% after 10m`; a resolved alert whose series is gone has no value
    after, and reads `helped: 27% → resolved after 10m`."""
    now = show(after, style) if after is not None else ("still firing" if not helped
                                                        else "resolved")
    word = "helped" if helped else "not helped"
    return f"{word}: {show(before, style)} → {now} after {format_duration(round(took))}"
