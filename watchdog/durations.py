"""Durations as rule files and settings write them (`for: 1h30m`, `cooldown: 15m`, `for: 0`).

Pure functions: no I/O, no clock. The grammar is Prometheus's `model.ParseDuration`, written
once in `watchdog.gocompat` (units in descending order, each at most once, integers only, `0`
alone allowed, at most ~292 years); this module adds what YAML input needs on top of it: a bare
number 0, surrounding white space, and an error that shows how to write a duration.
`format_duration` is gocompat's (Prometheus's Duration.String), re-exported where callers import
it.
"""

from __future__ import annotations

from watchdog.gocompat import format_duration
from watchdog.gocompat import parse_duration as go_parse_duration

__all__ = ["format_duration", "parse_duration"]


def parse_duration(text: str | int | float) -> float:
    """Seconds for a Prometheus duration string. Raises ValueError with the offending text."""
    if isinstance(text, bool):
        raise ValueError(f"not a valid duration: {text!r}")
    if isinstance(text, int | float):
        # YAML gives bare numbers for `for: 0`; Prometheus accepts only 0 without a unit.
        if text == 0:
            return 0.0
        raise ValueError(f"not a valid duration: {text!r} (missing unit, e.g. {text}s)")
    try:
        return go_parse_duration(text.strip())
    except ValueError as e:
        why = str(e) if "range" in str(e) else "expected e.g. 30s, 5m, 1h30m"
        raise ValueError(f"not a valid duration: {text!r} ({why})") from None
