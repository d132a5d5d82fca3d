"""Hand freed heap back to the operating system after the rules are (re)loaded.

Loading a rule folder builds a large transient structure (YAML nodes, validation, checks) and
then drops most of it; glibc keeps the freed pages, much of them in the arena of the worker
thread that built the rule set, so the daemon's resident memory stayed at the load's peak.
`malloc_trim(0)` returns what is free at the top of each arena and whole free pages inside
them: measured 1.2 MiB back at 1,000 rules, ~7 MiB at 10,000 (bench/daemon.py --memory).

Must not: be called on a hot path (it walks every arena; milliseconds), or fail anywhere:
on a libc without `malloc_trim` (musl, macOS) it does nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

_trim: Callable[[int], int] | None = None
_looked = False


def release() -> bool:
    """Give free heap back; False where the C library cannot."""
    global _trim, _looked
    if not _looked:
        _looked = True
        if sys.platform.startswith("linux"):
            try:
                import ctypes  # only here: ~0.3 MiB that a daemon never needs otherwise

                _trim = ctypes.CDLL(None).malloc_trim
            except (OSError, AttributeError):
                _trim = None
    if _trim is None:
        return False
    _trim(0)
    return True
