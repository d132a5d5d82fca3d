"""Durations as rule files and settings write them (`for: 1h30m`, `cooldown: 15m`, `for: 0`).

Pure functions: no I/O, no clock. The grammar is Prometheus's `model.ParseDuration`, written
once in `watchdog.gocompat` (units in descending order, each at most once, integers only, `0`
alone allowed, at most ~292 years); this module adds what YAML input needs on top of it: a bare
number 0, surrounding white space, and an error that shows how to write a duration. Whatever it
is given — a list, a mapping, null, a 5,000-digit number — it raises `ValueError` and nothing
else (no `AttributeError`, no `OverflowError`), quoting at most a short prefix, so a validator
can turn it into one message at its line.
`format_duration` is gocompat's (Prometheus's Duration.String), re-exported where callers import
it.
"""

from __future__ import annotations

from typing import Final

from watchdog.gocompat import format_duration
from watchdog.gocompat import parse_duration as go_parse_duration

__all__ = ["MAX_DURATION", "format_duration", "parse_duration"]

# Go's time.Duration (int64 nanoseconds) in seconds: 292 years and some days; Prometheus refuses
# any longer duration as "out of range".
MAX_DURATION: Final = (2**63 - 1) // 1_000_000 / 1000


def _shown(text: object) -> str:
    # A message quotes the input; a pasted megabyte must not become a megabyte of log.
    s = repr(text)
    return s if len(s) <= 64 else s[:60] + "…"


def parse_duration(text: object) -> float:
    """Seconds for a Prometheus duration string. Raises ValueError with the offending text."""
    if isinstance(text, bool):
        raise ValueError(f"not a valid duration: {text!r}")
    if isinstance(text, int | float):
        # YAML gives bare numbers for `for: 0`; Prometheus accepts only 0 without a unit.
        if text == 0:
            return 0.0
        raise ValueError(f"not a valid duration: {_shown(text)} (missing unit, e.g. 30s)")
    if not isinstance(text, str):
        what = "nothing" if text is None else f"a {type(text).__name__}"
        raise ValueError(f"not a valid duration: got {what} (expected e.g. 30s, 5m, 1h30m)")
    try:
        return go_parse_duration(text.strip())
    except ValueError as e:
        why = str(e) if "range" in str(e) else "expected e.g. 30s, 5m, 1h30m"
        raise ValueError(f"not a valid duration: {_shown(text)} ({why})") from None
