"""The functions a Prometheus alert template can call: Go's builtins and Prometheus's own.

Go's text/template builtins (and/or/not, len, index, eq/ne/lt/le/gt/ge, print/printf/println)
and Prometheus's template functions (humanize*, title, toUpper/toLower, match, reReplaceAll,
stripPort/stripDomain, safeHtml, parseDuration, externalURL, pathPrefix), each with Go's
signature (`FUNCS`) so that execution checks arguments as Go's reflection does, and with the
error text Prometheus reports. Functions that need Prometheus (`query`, ...) are not here: they
are listed in `UNSUPPORTED` with the reason the parser gives.

It must not do I/O or read the clock; regular expressions are RE2 (`watchdog.labels.go_regexp`),
so no pattern a user writes can stall the process.
"""

from __future__ import annotations

import ipaddress
import math
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import unquote, urlsplit

from watchdog.gocompat import can_backquote, format_float, parse_duration, parse_float, quote
from watchdog.gotmpl.fmt import print_action, sprint, sprintf, sprintln
from watchdog.gotmpl.lex import is_alnum
from watchdog.gotmpl.values import HTML, TemplateData, Value, type_name
from watchdog.labels import GoRegexp, RegexError, go_regexp

__all__ = ["FUNCS", "UNSUPPORTED", "CallError", "Func", "truth"]


class CallError(Exception):
    """A template function failed; Go reports it as `error calling NAME: ...`."""


def _to_float(v: Value) -> float:
    """Prometheus's convertToFloat."""
    if isinstance(v, float):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if type(v) is str:
        try:
            return parse_float(v)
        except ValueError as e:
            raise CallError(str(e)) from None
    raise CallError(f"can't convert {type_name(v)} to float")


def _g4(v: float) -> str:
    return format_float(v, "g", 4)


def _humanize(arg: Value) -> str:
    v = _to_float(arg)
    if v == 0 or math.isnan(v) or math.isinf(v):
        return _g4(v)
    prefix = ""
    if abs(v) >= 1:
        for p in "kMGTPEZY":
            if abs(v) < 1000:
                break
            prefix, v = p, v / 1000
        return _g4(v) + prefix
    for p in "munpfazy":
        if abs(v) >= 1:
            break
        prefix, v = p, v * 1000
    return _g4(v) + prefix


def _humanize1024(arg: Value) -> str:
    v = _to_float(arg)
    if abs(v) <= 1 or math.isnan(v) or math.isinf(v):
        return _g4(v)
    prefix = ""
    for p in ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if abs(v) < 1024:
            break
        prefix, v = p, v / 1024
    return _g4(v) + prefix


def _go_int64(v: float) -> int:
    """Go's int64(v) on amd64: truncation, and MinInt64 for anything out of range."""
    return int(v) if -(2.0**63) <= v < 2.0**63 else -(2**63)


def _quo(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q  # Go truncates toward zero


def _humanize_duration(arg: Value) -> str:
    v = _to_float(arg)
    if math.isnan(v) or math.isinf(v):
        return _g4(v)
    if v == 0:
        return _g4(v) + "s"
    if abs(v) >= 1:
        sign = "-" if v < 0 else ""
        v = abs(v)
        d = _go_int64(v)
        seconds = d - _quo(d, 60) * 60
        minutes = _quo(d, 60) - _quo(_quo(d, 60), 60) * 60
        hours = _quo(d, 3600) - _quo(_quo(d, 3600), 24) * 24
        days = _quo(d, 86400)
        if days != 0:
            return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
        if hours != 0:
            return f"{sign}{hours}h {minutes}m {seconds}s"
        if minutes != 0:
            return f"{sign}{minutes}m {seconds}s"
        return f"{sign}{_g4(v)}s"
    prefix = ""
    for p in "munpfazy":
        if abs(v) >= 1:
            break
        prefix, v = p, v * 1000
    return f"{_g4(v)}{prefix}s"


def _humanize_percentage(arg: Value) -> str:
    return _g4(_to_float(arg) * 100) + "%"


def _humanize_timestamp(arg: Value) -> str:
    v = _to_float(arg)
    if math.isnan(v) or math.isinf(v):
        return _g4(v)
    ns_float = v * 1e9
    if ns_float > 2.0**63 or ns_float < -(2.0**63):
        msg = f"{format_float(v, 'g', -1)} cannot be represented as a nanoseconds timestamp"
        raise CallError(msg + " since it overflows int64")
    ns = _go_int64(ns_float)
    ms = _quo(ns, 1_000_000)  # model.Time has millisecond resolution
    secs, msec = divmod(ms, 1000)
    days, rem = divmod(secs, 86400)
    year, month, day = _civil_from_days(days)
    y = f"{year:04d}" if year >= 0 else f"-{-year:04d}"
    frac = f".{msec:03d}".rstrip("0") if msec else ""
    clock = f"{rem // 3600:02d}:{rem // 60 % 60:02d}:{rem % 60:02d}"
    return f"{y}-{month:02d}-{day:02d} {clock}{frac} +0000 UTC"


def _civil_from_days(z: int) -> tuple[int, int, int]:
    """Proleptic Gregorian date of day z since 1970-01-01, for any year (H. Hinnant's algorithm)."""
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def _title(s: str) -> str:
    """Go's strings.Title: upper-case (title-case) the first letter of each word."""
    out: list[str] = []
    prev = " "
    for c in s:
        if _is_separator(prev):
            t = c.title()
            out.append(t if len(t) == 1 else c)  # Go uses simple, one-rune case mappings
        else:
            out.append(c)
        prev = c
    return "".join(out)


def _is_separator(c: str) -> bool:
    if c.isascii():
        return not (c.isalnum() or c == "_")
    if c.isalpha() or unicodedata.category(c) == "Nd":
        return False
    return c.isspace()


def _simple_case(s: str, upper: bool) -> str:
    out: list[str] = []
    for c in s:
        if c == "\u0130" and not upper:
            out.append("i")  # Go's simple mapping; Python's full one adds a combining dot
            continue
        m = c.upper() if upper else c.lower()
        out.append(m if len(m) == 1 else c)
    return "".join(out)


def _split_host_port(hp: str) -> tuple[str, str] | None:
    """Go's net.SplitHostPort; None where Go returns an error."""
    i = hp.rfind(":")
    if i < 0:
        return None
    j, k = 0, 0
    if hp.startswith("["):
        end = hp.find("]")
        if end < 0 or end + 1 != i:
            return None
        host, j, k = hp[1:end], 1, end + 1
    else:
        host = hp[:i]
        if ":" in host:
            return None
    if "[" in hp[j:] or "]" in hp[k:]:
        return None
    return host, hp[i + 1 :]


def _strip_port(hp: str) -> str:
    split = _split_host_port(hp)
    return hp if split is None else split[0]


def _is_ip(host: str) -> bool:
    if "%" in host:  # Go's net.ParseIP rejects IPv6 zones
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _strip_domain(hp: str) -> str:
    split = _split_host_port(hp)
    host, port = split if split is not None else (hp, "")
    if _is_ip(host):
        return hp
    host = host.split(".")[0]
    if not port:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _compile_regexp(pattern: str, must: bool = False) -> GoRegexp:
    """regexp.Compile, or regexp.MustCompile whose panic text Go reports when must is set."""
    try:
        return go_regexp(pattern)
    except RegexError as exc:
        msg = str(exc)
    if must:
        quoted = f"`{pattern}`" if can_backquote(pattern) else quote(pattern)
        msg = f"regexp: Compile({quoted}): {msg}"
    raise CallError(msg)




def _match(pattern: str, s: str) -> bool:
    return _compile_regexp(pattern).match_string(s)


# A parsed replacement template: literal bytes, or the groups a `$name` may stand for.
_Replacement: TypeAlias = list[bytes | tuple[int, ...]]


def _parse_replacement(template: str, names: tuple[str, ...]) -> _Replacement:
    """Go's Regexp.Expand template: $1, ${1}, $name, ${name}, $$.

    `$name` takes the longest run of letters, digits and `_` ("$1x" is group "1x"); a number
    (at most 9 digits, no leading zero) is a group index, anything else a group name; a group
    that does not exist expands to nothing, and a malformed `$` is literal text."""
    out: _Replacement = []
    i, n = 0, len(template)
    while i < n:
        j = template.find("$", i)
        if j < 0:
            out.append(template[i:].encode("utf-8", "surrogatepass"))
            break
        out.append(template[i:j].encode("utf-8", "surrogatepass"))
        i = j + 1
        if i < n and template[i] == "$":
            out.append(b"$")
            i += 1
            continue
        brace = i < n and template[i] == "{"
        k = i + brace
        end = k
        while end < n and is_alnum(template[end]):
            end += 1
        name = template[k:end]
        if not name or (brace and (end >= n or template[end] != "}")):
            out.append(b"$")
            continue
        i = end + brace
        if name.isascii() and name.isdigit() and len(name) <= 9 and not (
            name[0] == "0" and len(name) > 1
        ):
            out.append((int(name),) if int(name) < len(names) else ())
        else:
            # names can repeat: Go takes the first group of that name that took part
            out.append(tuple(g for g, group_name in enumerate(names) if group_name == name))
    return out


def _re_replace_all(pattern: str, repl: str, text: str) -> str:
    """Go's ReplaceAllString, on UTF-8 bytes as Go does it: an empty match right after a match
    is not replaced, and the search always moves on by at least one rune."""
    rx = _compile_regexp(pattern, must=True)
    replacement = _parse_replacement(repl, rx.names)
    wanted = {g for piece in replacement if isinstance(piece, tuple) for g in piece}
    src = text.encode("utf-8", "surrogatepass")
    out: list[bytes] = []
    last_end, pos = 0, 0
    while pos <= len(src):
        spans = rx.search(src, pos, wanted)
        if spans is None:
            break
        start, end = spans[0]
        out.append(src[last_end:start])
        if end > last_end or start == 0:
            for piece in replacement:
                if isinstance(piece, bytes):
                    out.append(piece)
                    continue
                for g in piece:
                    if spans[g][0] >= 0:
                        out.append(src[spans[g][0] : spans[g][1]])
                        break
        last_end = end
        width = _utf8_width(src, pos)
        if pos + width > end:
            pos += width
        elif pos + 1 > end:
            pos += 1  # at the end of the text, where the width is 0
        else:
            pos = end
    out.append(src[last_end:])
    return b"".join(out).decode("utf-8", "surrogatepass")


def _utf8_width(src: bytes, pos: int) -> int:
    """The length of the UTF-8 sequence at src[pos] (0 at the end), as utf8.DecodeRune sees it
    in valid text."""
    if pos >= len(src):
        return 0
    lead = src[pos]
    return 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


def _parse_duration(d: str) -> float:
    """Prometheus's model.ParseDuration, in seconds."""
    try:
        return parse_duration(d)
    except ValueError as e:
        raise CallError(str(e)) from None


# Go's builtins: eq/ne/lt/le/gt/ge, not, len, index (and/or are special-cased in the evaluator).


def _basic_kind(v: Value) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    return "invalid"


def _eq(a: Value, *others: Value) -> bool:
    if not others:
        raise CallError("missing argument for comparison")
    ka = _basic_kind(a)
    for b in others:
        kb = _basic_kind(b)
        if ka != kb:
            if a is not None and b is not None:
                raise CallError("incompatible types for comparison")
        elif ka == "invalid":
            if a is not None and b is not None:  # maps are not comparable
                raise CallError(f"non-comparable type {print_action(b)}: {type_name(b)}")
            if a is None and b is None:
                return True
        elif a == b:
            return True
    return False


def _lt(a: Value, b: Value) -> bool:
    ka, kb = _basic_kind(a), _basic_kind(b)
    if "invalid" in (ka, kb):
        raise CallError("invalid type for comparison")
    if ka != kb:
        raise CallError("incompatible types for comparison")
    if ka == "bool":
        raise CallError("invalid type for comparison")
    return a < b  # type: ignore[operator]


def truth(v: Value) -> bool:
    if v is None:
        return False
    if isinstance(v, TemplateData):
        return True
    if isinstance(v, bool | int | float):
        return v != 0
    return len(v) > 0


def _len(v: Value) -> int:
    if isinstance(v, str):
        return len(v.encode("utf-8", "surrogatepass"))  # Go counts bytes
    if isinstance(v, tuple | Mapping):
        return len(v)
    if v is None:
        raise CallError("len of nil pointer")
    raise CallError(f"len of type {type_name(v)}")


def _index(item: Value, *indexes: Value) -> Value:
    if item is None:
        raise CallError("index of untyped nil")
    for ix in indexes:
        if isinstance(item, Mapping):
            if type(ix) is not str:
                if ix is None:
                    raise CallError("value is nil; should be of type string")
                raise CallError(f"value has type {type_name(ix)}; should be string")
            item = item.get(ix, "")
        elif isinstance(item, tuple | str):
            if ix is None:
                raise CallError("cannot index slice/array with nil")
            if not isinstance(ix, int) or isinstance(ix, bool):
                raise CallError(f"cannot index slice/array with type {type_name(ix)}")
            seq: tuple[Value, ...] | bytes = (
                item if isinstance(item, tuple) else item.encode("utf-8", "surrogatepass")
            )
            if not 0 <= ix < len(seq):
                raise CallError(f"index out of range: {ix}")
            item = seq[ix]
        else:
            raise CallError(f"can't index item of type {type_name(item)}")
    return item


@dataclass(frozen=True)
class Func:
    params: tuple[str, ...]  # "any" (interface{}), "value" (reflect.Value) or "string"
    variadic: str | None  # kind of the trailing ...params, if any
    impl: Callable[..., Value]
    takes_data: bool = False  # impl gets the TemplateData first (externalURL, pathPrefix)


def _str_fn(fn: Callable[[str], Value]) -> Func:
    return Func(("string",), None, fn)


def _any_fn(fn: Callable[[Value], Value]) -> Func:
    return Func(("any",), None, fn)


FUNCS: dict[str, Func] = {
    # Go text/template builtins
    "and": Func(("value",), "value", lambda *a: a[-1]),  # evaluated lazily by _Exec
    "or": Func(("value",), "value", lambda *a: a[-1]),
    "not": Func(("value",), None, lambda a: not truth(a)),
    "len": Func(("value",), None, _len),
    "index": Func(("value",), "value", _index),
    "eq": Func(("value",), "value", _eq),
    "ne": Func(("value", "value"), None, lambda a, b: not _eq(a, b)),
    "lt": Func(("value", "value"), None, _lt),
    "le": Func(("value", "value"), None, lambda a, b: _lt(a, b) or _eq(a, b)),
    "gt": Func(("value", "value"), None, lambda a, b: not (_lt(a, b) or _eq(a, b))),
    "ge": Func(("value", "value"), None, lambda a, b: not _lt(a, b)),
    "print": Func((), "any", lambda *a: sprint(list(a))),
    "printf": Func(("string",), "any", lambda fmt, *a: sprintf(fmt, list(a))),
    "println": Func((), "any", sprintln),
    # Prometheus's template functions
    "humanize": _any_fn(_humanize),
    "humanize1024": _any_fn(_humanize1024),
    "humanizeDuration": _any_fn(_humanize_duration),
    "humanizePercentage": _any_fn(_humanize_percentage),
    "humanizeTimestamp": _any_fn(_humanize_timestamp),
    "title": _str_fn(_title),
    "toUpper": _str_fn(lambda s: _simple_case(s, upper=True)),
    "toLower": _str_fn(lambda s: _simple_case(s, upper=False)),
    "match": Func(("string", "string"), None, _match),
    "reReplaceAll": Func(("string", "string", "string"), None, _re_replace_all),
    "stripPort": _str_fn(_strip_port),
    "stripDomain": _str_fn(_strip_domain),
    "safeHtml": _str_fn(HTML),
    "parseDuration": _str_fn(_parse_duration),
    "externalURL": Func((), None, lambda data: data.external_url, takes_data=True),
    "pathPrefix": Func(
        (), None, lambda data: unquote(urlsplit(data.external_url).path), takes_data=True
    ),
}

UNSUPPORTED = {
    "query": "templates cannot query Prometheus",
    "first": "it only works on query results, and templates cannot query Prometheus",
    "label": "it only works on query results, and templates cannot query Prometheus",
    "value": "it only works on query results, and templates cannot query Prometheus",
    "strvalue": "it only works on query results, and templates cannot query Prometheus",
    "sortByLabel": "it only works on query results, and templates cannot query Prometheus",
    "tmpl": "it only exists in console templates",
}
