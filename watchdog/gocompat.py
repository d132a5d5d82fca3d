"""Go's spellings of strings, numbers, durations and times, written once for the whole code base.

The watchdog promises output byte-identical to Prometheus and Alertmanager (alert templates,
`/api/v1/alerts`, `watchdog test` next to `promtool test rules`), and both are Go programs. What
they print comes from a handful of Go functions; this module re-implements exactly those, and
every other module imports them from here instead of writing its own approximation:

- `quote`: strconv.Quote / QuoteToASCII;
- `format_float` / `parse_float`: strconv.FormatFloat / ParseFloat (64-bit);
- `parse_duration` / `format_duration`: Prometheus's model.ParseDuration and Duration.String;
- `rfc3339`: a time.Time as Go's JSON encoder writes it (RFC 3339 with the fraction's trailing
  zeros cut, Prometheus's API); `rfc3339_millis`: go-openapi's strfmt.DateTime (always three
  fraction digits, Alertmanager's API v2 and what it posts to webhooks).

Part of the functional core: pure functions of their arguments. It must not do I/O, read the
clock or import anything from the watchdog (everything imports it, so it sits at the bottom).
"""

from __future__ import annotations

import math
import re
import struct
from datetime import UTC, datetime
from typing import Final

__all__ = [
    "ZERO_TIME",
    "can_backquote",
    "format_duration",
    "format_float",
    "parse_duration",
    "parse_float",
    "quote",
    "rfc3339",
    "rfc3339_millis",
]

# --------------------------------------------------------------------------- strconv.Quote


def quote(s: str, ascii_only: bool = False) -> str:
    """strconv.Quote (or QuoteToASCII with `ascii_only`): Go's double-quoted string literal."""
    out = ['"']
    for c in s:
        o = ord(c)
        if c in '"\\':
            out.append("\\" + c)
        elif c.isprintable() and (o < 0x80 or not ascii_only):
            out.append(c)
        elif c in "\a\b\f\n\r\t\v":
            out.append("\\" + "abfnrtv"["\a\b\f\n\r\t\v".index(c)])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append("\\ufffd")  # a lone surrogate is invalid UTF-8 to Go: U+FFFD
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return "".join(out) + '"'


def can_backquote(s: str) -> bool:
    """strconv.CanBackquote: whether `s` can be written as a raw `...` literal unchanged."""
    return "`" not in s and "\ufeff" not in s and all(c == "\t" or c.isprintable() for c in s)


# --------------------------------------------------------------------------- strconv floats


def format_float(x: float, verb: str = "g", prec: int = -1) -> str:
    """strconv.FormatFloat(x, verb, prec, 64); prec -1 means the shortest that round-trips.

    Verbs: e E f g G b x X. Prometheus prints sample values with 'e' -1 in its API (`value` of
    an alert) and humanizes with 'g' 4; templates print a float64 with %v, which is 'g' -1.
    """
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    neg = math.copysign(1.0, x) < 0
    sign = "-" if neg else ""
    if verb == "b":
        bits = struct.unpack("<Q", struct.pack("<d", x))[0]
        mant, exp = bits & (2**52 - 1), (bits >> 52) & 0x7FF
        if exp == 0:
            exp += 1
        else:
            mant |= 2**52
        exp -= 1023 + 52
        return f"{sign}{mant}p{'+' if exp >= 0 else '-'}{abs(exp)}"
    if verb in "xX":
        return sign + _hex_float(abs(x), prec, verb)
    if prec >= 0:
        if verb in "gG" and prec == 0:
            prec = 1
        return format(x, f".{prec}{verb}")
    # Shortest: Python's repr finds the same digits as Go's Ryu; only the layout differs.
    digits, dp = _shortest_digits(x) if x != 0 else ("", 0)
    e = "E" if verb in "EG" else "e"
    if verb in "eE":
        return sign + _fmt_e(digits, dp, len(digits) - 1, e)
    if verb == "f":
        return sign + _fmt_f(digits, dp, max(len(digits) - dp, 0))
    exp = dp - 1
    if exp < -4 or exp >= 6:  # Go uses precision 6 for this decision when shortest
        return sign + _fmt_e(digits, dp, len(digits) - 1, e)
    return sign + _fmt_f(digits, dp, max(len(digits) - dp, 0))


def _shortest_digits(x: float) -> tuple[str, int]:
    """Shortest round-tripping decimal digits of abs(x) > 0 and the decimal point position."""
    mant, _, exp = repr(abs(x)).partition("e")
    whole, _, frac = mant.partition(".")
    digits = whole + frac
    dp = len(whole) + (int(exp) if exp else 0)
    stripped = digits.lstrip("0")
    dp -= len(digits) - len(stripped)
    return stripped.rstrip("0"), dp


def _fmt_e(digits: str, dp: int, prec: int, e: str) -> str:
    first = digits[:1] or "0"
    frac = ("." + digits[1 : 1 + prec].ljust(prec, "0")) if prec > 0 else ""
    exp = dp - 1 if digits else 0
    return f"{first}{frac}{e}{'-' if exp < 0 else '+'}{abs(exp):02d}"


def _fmt_f(digits: str, dp: int, prec: int) -> str:
    whole = digits[:dp].ljust(dp, "0") if dp > 0 else "0"
    frac = "".join(digits[dp + i] if 0 <= dp + i < len(digits) else "0" for i in range(prec))
    return whole + ("." + frac if prec > 0 else "")


def _hex_float(x: float, prec: int, verb: str) -> str:
    """strconv's 'x' format of x >= 0: 0x1.8p+01."""
    mask = 2**64 - 1
    if x == 0:
        mant, exp = 0, 0
    else:
        m, e = math.frexp(x)
        mant, exp = int(m * 2**53) << 8, e - 1  # leading 1 at bit 60
    if 0 <= prec < 15:
        shift = prec * 4
        extra = (mant << shift) & (2**60 - 1)
        mant >>= 60 - shift
        if extra | (mant & 1) > 2**59:
            mant += 1
        mant <<= 60 - shift
        if mant & 2**61:
            mant >>= 1
            exp += 1
    digits = "0123456789abcdef" if verb == "x" else "0123456789ABCDEF"
    out = ["0", verb, str((mant >> 60) & 1)]
    mant = (mant << 4) & mask
    if (prec < 0 and mant) or prec > 0:
        out.append(".")
        count = 0
        while (prec < 0 and mant) or count < prec:
            out.append(digits[(mant >> 60) & 15])
            mant = (mant << 4) & mask
            count += 1
    out.append("p" if verb == "x" else "P")
    out.append("-" if exp < 0 else "+")
    out.append(f"{abs(exp):02d}")
    return "".join(out)


_GO_DEC_FLOAT: Final = re.compile(
    r"[+-]?(?:\d(?:_?\d)*(?:\.(?:\d(?:_?\d)*)?)?|\.\d(?:_?\d)*)(?:[eE][+-]?\d(?:_?\d)*)?"
)
_GO_HEX_FLOAT: Final = re.compile(
    r"([+-]?)0[xX]_?((?:[0-9a-fA-F](?:_?[0-9a-fA-F])*)?)(?:\.((?:[0-9a-fA-F](?:_?[0-9a-fA-F])*)?))?"
    r"[pP]([+-]?\d(?:_?\d)*)"
)


def parse_float(text: str) -> float:
    """strconv.ParseFloat(text, 64); ValueError with Go's message where Go reports an error
    (`strconv.ParseFloat: parsing "x": invalid syntax`, or `value out of range`)."""
    low = text.lower()
    sign = -1.0 if low.startswith("-") else 1.0
    bare = low.lstrip("+-") if low[:1] in "+-" else low
    if low == "nan":
        return math.nan
    if bare in ("inf", "infinity") and len(low) - len(bare) <= 1:
        return sign * math.inf
    value: float | None = None
    if _GO_DEC_FLOAT.fullmatch(text):
        value = float(text.replace("_", ""))
    else:
        m = _GO_HEX_FLOAT.fullmatch(text)
        if m and (m.group(2) or m.group(3)):
            mant = (m.group(2) or "0").replace("_", "") + "." + (m.group(3) or "").replace("_", "")
            value = float.fromhex(f"{m.group(1)}0x{mant}p{m.group(4).replace('_', '')}")
    if value is not None and not math.isinf(value):
        return value
    numeric = _GO_DEC_FLOAT.fullmatch(text) or _GO_HEX_FLOAT.fullmatch(text)
    reason = "value out of range" if numeric else "invalid syntax"
    raise ValueError(f"strconv.ParseFloat: parsing {quote(text)}: {reason}")


# --------------------------------------------------------------------------- durations

# Prometheus's units (model.Duration), largest first, in milliseconds.
_UNITS_MS: Final = (("y", 365 * 86_400_000), ("w", 7 * 86_400_000), ("d", 86_400_000),
                    ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1))
# Go's regexp `[0-9]`, so ASCII digits only (Python's \d would take "٣m").
_DURATION: Final = re.compile("".join(f"(?:([0-9]+){unit})?" for unit, _ in _UNITS_MS))
_INT64_MAX: Final = 2**63 - 1


def parse_duration(text: str) -> float:
    """Prometheus's model.ParseDuration (prometheus/common as Prometheus 2.42 ships it), in
    seconds: each unit at most once, largest first, integers only, `0` alone allowed. ValueError
    with Prometheus's message otherwise, also when the duration does not fit Go's
    time.Duration (int64 nanoseconds, about 292 years): Prometheus refuses `293y`."""
    if text == "0":
        return 0.0
    if not text:
        raise ValueError("empty duration string")
    m = _DURATION.fullmatch(text)
    if m is None:
        raise ValueError(f"not a valid duration string: {quote(text)}")
    ns = 0
    for (_, ms), digits in zip(_UNITS_MS, m.groups(), strict=True):
        if digits is None:
            continue
        if len(digits.lstrip("0")) > 19:
            # Go's Atoi saturates and the check below refuses it; int() of 5,000 digits would
            # raise Python's own conversion-limit error instead
            raise ValueError("duration out of range")
        n = int(digits)
        # Go checks each unit against the limit, then the int64 sum for wrapping negative.
        if n > _INT64_MAX // ms // 1_000_000:
            raise ValueError("duration out of range")
        ns += n * ms * 1_000_000
        if ns > _INT64_MAX:
            raise ValueError("duration out of range")
    return ns / 1e9  # Go: float64(time.Duration(v)) / float64(time.Second)


def format_duration(seconds: float) -> str:
    """The Prometheus spelling of a duration, e.g. 5400 -> `1h30m`, 0 -> `0s`."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    out = []
    if ms < 0:
        out.append("-")
        ms = -ms
    for unit, factor in _UNITS_MS:
        # Like model.Duration.String: years and weeks only when they divide what is left
        # exactly, "as it is often easier to read 90d than 12w6d" (8d, not 1w1d).
        if unit in ("y", "w") and ms % factor:
            continue
        if ms >= factor:
            out.append(f"{ms // factor}{unit}")
            ms %= factor
    return "".join(out)


# --------------------------------------------------------------------------- times

# Go's zero time.Time: how Prometheus's API says "never" and Alertmanager's webhook "no end yet";
# receivers that parse our webhook with Alertmanager's own types expect exactly this spelling.
ZERO_TIME: Final = "0001-01-01T00:00:00Z"


def rfc3339(t: float | None) -> str:
    """A Unix time as Go's JSON encoder writes a time.Time in UTC (RFC3339Nano: the fraction's
    trailing zeros are cut, no fraction at all on a whole second), at the microsecond
    resolution of a Python float; None is Go's zero time."""
    if t is None:
        return ZERO_TIME
    text = datetime.fromtimestamp(t, UTC).isoformat()[:-6]  # drop "+00:00"
    if "." in text:
        text = text.rstrip("0")
    return text + "Z"


def rfc3339_millis(t: float | None) -> str:
    """A Unix time as go-openapi's strfmt.DateTime writes it: always three fraction digits
    (truncated), as Alertmanager's API v2 does; None is Go's zero time."""
    if t is None:
        return ZERO_TIME
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
