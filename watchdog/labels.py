"""Label sets: fingerprints and matchers. Pure: no I/O, no clock.

A fingerprint identifies an alert instance; it must be stable across processes and restarts (it
is persisted and used as PagerDuty's dedup key), so it is a hash of the sorted label pairs, never
Python's randomised `hash()`.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Mapping

Labels = Mapping[str, str]


def fingerprint(labels: Labels, exclude: Iterable[str] = ()) -> str:
    skip = set(exclude)
    return _fingerprint(tuple(sorted((k, v) for k, v in labels.items() if k not in skip)))


@functools.lru_cache(maxsize=65536)
def _fingerprint(pairs: tuple[tuple[str, str], ...]) -> str:
    # cached: the same label sets come back every evaluation
    h = hashlib.sha256()
    for k, v in pairs:
        h.update(k.encode())
        h.update(b"\xff")
        h.update(v.encode())
        h.update(b"\xff")
    return h.hexdigest()[:16]


def without_name(labels: Labels) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k != "__name__"}


def format_labels(labels: Labels) -> str:
    """`{a="b", c="d"}` in Prometheus's own spelling (sorted, Go-quoted)."""
    inner = ", ".join(f"{k}={go_quote(labels[k])}" for k in sorted(labels))
    return "{" + inner + "}"


def go_quote(s: str) -> str:
    """Go's strconv.Quote for the characters label values realistically hold."""
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def matches(labels: Labels, match: Mapping[str, str], match_re: Mapping[str, str] | None = None
            ) -> bool:
    """Alertmanager's `match` (equality) and `match_re` (fully anchored regex) on a label set."""
    for k, v in match.items():
        if labels.get(k, "") != v:
            return False
    for k, pattern in (match_re or {}).items():
        if re.fullmatch(pattern, labels.get(k, "")) is None:
            return False
    return True
