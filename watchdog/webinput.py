"""Reading what a client sends over HTTP (or MQTT): a JSON body, a bearer token, a time, a
duration. One reader for every handler, so that every endpoint refuses the same bad input the
same way: `BadInput`, with a 4xx status and a one-line message, instead of whatever a parser
happens to raise (a `RecursionError` for 50,000 nested brackets, a `ValueError` for a 5,000-digit
number, a `LookupError` for an unknown charset, a NaN that SQLite stores as NULL).

Every value is bounded here: bodies by size, JSON by depth and number length, times to the years
0001 to 9999 that RFC 3339 can write, durations to Prometheus's range. Handlers validate meaning
on top (which fields, which names). This module does no I/O of its own beyond reading the request
body it is handed, never logs, and never echoes more than a short prefix of what it refuses.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from watchdog.durations import MAX_DURATION, parse_duration

if TYPE_CHECKING:
    from aiohttp import web

# Silences, acks, deploy markers and manual triggers are a few hundred bytes; a generous bound
# that still keeps a flood of requests from costing memory.
MAX_BODY_BYTES: Final = 256 * 1024
# The deepest real request (matchers in a silence) is 3 levels.
MAX_JSON_DEPTH: Final = 32
# Longer numbers are refused (Python's own limit, 4,300 digits, raises; JSON has no use for
# more digits than a double or an int64 holds).
MAX_NUMBER_CHARS: Final = 40
# Unix seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: what RFC 3339 can write, so
# every stored time can be shown again.
MIN_TIME: Final = -62135596800.0
MAX_TIME: Final = 253402300799.0


class BadInput(ValueError):
    """Input refused: `status` is the HTTP status to answer (400, 413 or 415), the message is
    one line for the caller. A ValueError, so MQTT command handlers answer it as the caller's
    error."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def shown(value: object, limit: int = 40) -> str:
    """A value quoted in a message: repr (so control characters are escaped), cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- JSON --------------------------------------------------------------------------------------


_SPECIAL = re.compile(rb'[\[\]{}"\\]')


def _check_depth(raw: bytes) -> None:
    """Refuse JSON nested deeper than MAX_JSON_DEPTH before the decoder recurses into it."""
    depth = 0
    in_string = False
    skip = -1  # the position right after a backslash in a string: an escaped character
    for m in _SPECIAL.finditer(raw):
        pos = m.start()
        if pos == skip:
            continue
        c = raw[pos]
        if in_string:
            if c == 0x5C:  # backslash
                skip = pos + 1
            elif c == 0x22:  # quote
                in_string = False
            continue
        if c == 0x22:
            in_string = True
        elif c in b"[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise BadInput(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
        elif c in b"]}":
            depth -= 1


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise BadInput(f"number too long: {len(text)} digits (at most {MAX_NUMBER_CHARS})")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise BadInput(f"number too long: {len(text)} characters (at most {MAX_NUMBER_CHARS})")
    value = float(text)
    if not math.isfinite(value):
        raise BadInput(f"number out of range: {text}")
    return value


def _constant(name: str) -> Any:
    raise BadInput(f"{name} is not JSON (numbers must be finite)")


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_text(value: Any, depth: int = 0) -> None:
    """Refuse lone surrogates (`"\\ud800"` is valid JSON but not Unicode text: SQLite and every
    UTF-8 encoder would fail on it later, far from the request)."""
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise BadInput("JSON string with an invalid Unicode escape (a lone surrogate)")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(k, depth + 1)
            _check_text(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_text(v, depth + 1)


def parse_json(raw: bytes) -> Any:
    """A JSON document from bytes (UTF-8), bounded; raises BadInput, nothing else."""
    if len(raw) > MAX_BODY_BYTES:
        raise BadInput(f"body too large: more than {MAX_BODY_BYTES:,} bytes", 413)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"body is not UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start}",
                       ) from None
    _check_depth(raw)
    try:
        value = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except BadInput:
        raise
    except json.JSONDecodeError as e:
        raise BadInput(f"body must be JSON: {e.msg} at line {e.lineno} column {e.colno}"
                       ) from None
    except (ValueError, RecursionError) as e:  # belt and braces: never more than a 400
        raise BadInput(f"body must be JSON: {type(e).__name__}") from None
    _check_text(value)
    return value


def _charset_ok(charset: str) -> bool:
    try:
        name = codecs.lookup(charset).name
    except LookupError:
        return False
    return name in ("utf-8", "ascii")  # JSON is UTF-8 (RFC 8259); ASCII is a subset


async def read_json(request: web.Request, default: Any = ...) -> Any:
    """The request's JSON body. An empty body is `default` when one is given, else an error.
    The app's `client_max_size` caps what aiohttp buffers; this caps it again per body."""
    charset = request.charset
    if charset is not None and not _charset_ok(charset):
        raise BadInput(f"charset {shown(charset)} is not supported: send JSON as UTF-8", 415)
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise BadInput(f"body too large: {request.content_length:,} bytes (at most "
                       f"{MAX_BODY_BYTES:,})", 413)
    raw = await request.read() if request.can_read_body else b""
    if not raw.strip():
        if default is not ...:
            return default
        raise BadInput("request body must be JSON (it is empty)")
    return parse_json(raw)


# ---- headers -------------------------------------------------------------------------------


def bearer_token(request: web.Request) -> bytes | None:
    """The token of `Authorization: Bearer <token>`, as the bytes the client sent (a header may
    hold any byte; aiohttp hands them over as surrogate escapes), or None without one."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return None
    return given.strip().encode("utf-8", "surrogateescape")


# ---- times and durations -------------------------------------------------------------------


def parse_time(value: Any, what: str) -> float:
    """Unix seconds (a number or a numeric string) or RFC 3339, within MIN_TIME..MAX_TIME."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and len(value) <= 64:
        try:
            seconds = float(value)
        except ValueError:
            try:
                seconds = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except (ValueError, OverflowError):
                seconds = None
    if seconds is None:
        raise BadInput(f"{what} must be RFC 3339 or Unix seconds, got {shown(value)}")
    if not MIN_TIME <= seconds <= MAX_TIME:  # also NaN and ±Infinity
        raise BadInput(f"{what} is out of range: {shown(value)} (years 0001 to 9999)")
    return seconds


def parse_duration_value(value: Any, what: str) -> float:
    """A Prometheus duration (`30m`), positive and within Prometheus's range (292 years)."""
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        raise BadInput(f"{what}: {e}") from None
    if not 0 < seconds <= MAX_DURATION:
        raise BadInput(f"{what} must be positive")
    return seconds
