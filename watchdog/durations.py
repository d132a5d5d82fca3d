"""Prometheus durations (`1h30m`, `15m`, `500ms`) parsed to and formatted from seconds.

Pure functions: no I/O, no clock. Parsing follows Prometheus's `model.ParseDuration`: units in
descending order, each at most once, integers only; `0` alone is allowed. `format_duration` is
`watchdog.gocompat`'s (Prometheus's Duration.String), re-exported where callers import it.
"""

from __future__ import annotations

import re
from typing import Final

from watchdog.gocompat import format_duration

__all__ = ["format_duration", "parse_duration"]

_UNITS: Final = (("y", 365 * 86400.0), ("w", 7 * 86400.0), ("d", 86400.0), ("h", 3600.0),
                 ("m", 60.0), ("s", 1.0), ("ms", 0.001))
_PATTERN: Final = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)


def parse_duration(text: str | int | float) -> float:
    """Seconds for a Prometheus duration string. Raises ValueError with the offending text."""
    if isinstance(text, bool):
        raise ValueError(f"not a valid duration: {text!r}")
    if isinstance(text, int | float):
        # YAML gives bare numbers for `for: 0`; Prometheus accepts only 0 without a unit.
        if text == 0:
            return 0.0
        raise ValueError(f"not a valid duration: {text!r} (missing unit, e.g. {text}s)")
    s = text.strip()
    if s == "0":
        return 0.0
    m = _PATTERN.match(s)
    if not s or m is None or not any(m.groups()):
        raise ValueError(f"not a valid duration: {text!r} (expected e.g. 30s, 5m, 1h30m)")
    total = 0.0
    for (_, factor), part in zip(_UNITS, m.groups(), strict=True):
        if part:
            total += int(part) * factor
    return total
