"""promtool's unit-test series notation, parsed the way Prometheus parses it.

This module turns the two strings of a promtool ``input_series`` entry::

    - series: 'http_requests{job="api", code="500"}'
      values: '1+2x3 _ _x2 stale 5'

into labels and timestamped samples, so that the same test data can be replayed through our own
engine, backfilled into a real Prometheus (``watchdog.promserver``), or written back out for
``promtool test rules``. It is the functional core: it must not do I/O, read the clock, start
processes or touch an event loop. The import-linter contract in pyproject.toml enforces that.

The grammar follows Prometheus 2.42 (the Debian package the tests run against) exactly — the
lexer in ``promql/parser/lex.go`` (``lexValueSequence``, ``scanNumber``, ``lexEscape``) and the
``series_description`` rules of ``generated_parser.y`` — and ``tests/test_series.py`` checks the
tricky corners against ``promtool test rules`` itself. The corners that surprise people:

* ``a+bxn`` and ``axn`` give n+1 values, but ``_xn`` gives n missing points.
* ``a+bxn`` adds b n times (``v += b``), it does not compute ``a + i*b``: ``0.1+0.1x2`` ends in
  0.30000000000000004, as in promtool.
* Integer literals go through Go's ``strconv.ParseInt(s, 0, 64)``: ``010`` is octal 8, ``08``
  falls back to the float parser and is 8, an octal literal too big for int64 is read as decimal.
* ``Inf`` and ``NaN`` (any case) are numbers, but ``Infx3`` and ``stalex3`` lex as one identifier
  and are errors; ``Inf+0x3`` works. ``stale+0x2`` is stale, NaN, NaN: stale NaN plus 0 is an
  ordinary NaN.
* ``x`` must touch its neighbours: ``1 x 3`` is an error. ``1+2`` without ``xn`` is an error.
* A metric named ``on``, ``bool``, ``ignoring``, ``group_left``, ``group_right``, ``atan2``,
  ``inf`` or ``nan`` (any case) is rejected; ``sum``, ``by``, ``offset`` … are fine.
* ``foo {a="b"}`` (space before the brace) is an error; ``foo{a=""}`` is just ``foo``; in
  ``foo{__name__="bar"}`` the name before the brace wins; ``{}`` is an error.

Deliberate differences, each because Python strings are text: an escape that yields invalid
UTF-8 (``"\\xff"``) raises here, where Prometheus would store the raw byte.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass
from typing import Final, TypeAlias


class StaleMarker(enum.Enum):
    """Type of the ``STALE`` sentinel: promtool's ``stale`` value, a Prometheus staleness marker.

    An enum with one member (rather than ``object()``) so mypy can narrow ``value is STALE``.
    """

    STALE = "stale"

    def __repr__(self) -> str:
        return "STALE"


STALE: Final = StaleMarker.STALE

# Prometheus marks staleness with one particular NaN (model/value.StaleNaN). Series.samples are
# plain floats, so a stale point is stored with exactly these bits: that is what Prometheus stores,
# and it keeps "stale" distinct from an ordinary NaN sample. Any arithmetic on it quiets it into an
# ordinary NaN, which is also what Prometheus does (see ``stale+0x2`` above).
STALE_NAN_BITS: Final = 0x7FF0000000000002
STALE_NAN: Final[float] = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]


def is_stale_nan(value: float) -> bool:
    """True if ``value`` is Prometheus's staleness marker (not just any NaN)."""
    return bool(struct.pack("<d", value) == struct.pack("<Q", STALE_NAN_BITS))


SeriesValue: TypeAlias = float | StaleMarker | None
"""One expanded point: a number, ``None`` for ``_`` (no sample), or ``STALE``."""


@dataclass(frozen=True)
class Series:
    """One input series: its labels (with ``__name__``) and its samples.

    ``samples`` are ``(unix seconds, value)`` in time order; points written ``_`` are omitted and
    points written ``stale`` carry ``STALE_NAN``.
    """

    labels: dict[str, str]
    samples: list[tuple[float, float]]

    @property
    def name(self) -> str | None:
        return self.labels.get("__name__")


# --------------------------------------------------------------------------------------------
# Characters, as Prometheus's lexer classifies them (ASCII only, on purpose: lex.go isDigit).

_SPACES: Final = " \t\r"  # lex.go isSpace, minus "\n": promtool feeds the parser one line at a time
_DIGITS: Final = "0123456789"
_OCTAL: Final = "01234567"
_HEX: Final = "0123456789abcdefABCDEF"


def _is_alpha(ch: str) -> bool:
    return ch == "_" or ("a" <= ch <= "z") or ("A" <= ch <= "Z")


def _is_digit(ch: str) -> bool:
    return len(ch) == 1 and ch in _DIGITS  # not str.isdigit(), which accepts "²"


def _is_alnum(ch: str) -> bool:
    return _is_alpha(ch) or _is_digit(ch)


# Words the PromQL lexer turns into keyword tokens that the ``metric_identifier`` rule of the
# 2.42 grammar does not list, so promtool refuses them as metric names (checked against promtool).
# The lexer lower-cases before the lookup, so ``ON`` and ``Inf`` are refused too.
_NOT_METRIC_NAMES: Final = frozenset(
    {"on", "ignoring", "group_left", "group_right", "bool", "atan2", "inf", "nan"}
)

# U+FFFD is what Go's utf8.DecodeRuneInString returns for a bad byte, and the lexer rejects it
# in strings even when the input really contains U+FFFD. Mirrored so we reject what promtool does.
_REPLACEMENT_CHAR: Final = "\ufffd"

_INT64_MAX: Final = 2**63 - 1
_UINT64_MAX: Final = 2**64 - 1


# --------------------------------------------------------------------------------------------
# Series selectors


class _SelectorError(ValueError):
    pass


def parse_series_selector(text: str) -> dict[str, str]:
    """Parse the ``series`` field of a promtool input series into a label dict.

    ``'http_requests{job="api", code="500"}'`` gives ``{"__name__": "http_requests", "job":
    "api", "code": "500"}``; ``'{__name__="x"}'`` gives ``{"__name__": "x"}``. Values may be
    double-quoted or single-quoted with Go escapes, or back-quoted raw strings. Only ``=`` is
    allowed: this describes a series, it does not match one. Labels with an empty value are
    dropped, as Prometheus drops them. Raises ValueError saying what is wrong and where.
    """
    try:
        return _SelectorParser(text).parse()
    except _SelectorError as err:
        raise ValueError(f"invalid series selector {text!r}: {err}") from None


class _SelectorParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str) -> _SelectorError:
        return _SelectorError(f"{message} (at column {self.pos + 1})")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_spaces(self) -> None:
        while self.peek() and self.peek() in _SPACES:
            self.pos += 1

    def parse(self) -> dict[str, str]:
        if "\n" in self.text:
            # promtool splits its generated `load` command on newlines before parsing.
            self.pos = self.text.index("\n")
            raise self.fail("a newline cannot appear in a series selector (use \\n in a value)")
        self.skip_spaces()
        name: str | None = None
        ch = self.peek()
        if _is_alpha(ch) or ch == ":":
            name = self.metric_name()
            if self.peek() not in ("{", ""):
                # Prometheus switches to the value lexer after the name, so even a space before
                # the brace ends the selector.
                self.skip_spaces()
                if self.peek() == "{":
                    raise self.fail("no space is allowed between the metric name and '{'")
                if self.peek():
                    raise self.fail(f"unexpected {self.peek()!r} after the metric name")
        elif ch != "{":
            raise self.fail("expected a metric name or '{'" if ch else "empty series selector")
        labels: dict[str, str] = {}
        if self.peek() == "{":
            labels = self.label_set()
        self.skip_spaces()
        if self.peek():
            raise self.fail(f"unexpected {self.peek()!r} after the label set")
        if name is not None:
            labels.pop("__name__", None)  # the name before the brace wins, as in promtool
            labels = {"__name__": name, **labels}
        # An empty value means "no such label" everywhere in Prometheus; promtool loads
        # foo{a=""} as foo.
        labels = {k: v for k, v in labels.items() if v != ""}
        if not labels:
            raise _SelectorError("empty label set: a series needs a name or a label")
        return labels

    def metric_name(self) -> str:
        start = self.pos
        while _is_alnum(self.peek()) or self.peek() == ":":
            self.pos += 1
        word = self.text[start : self.pos]
        if word.lower() in _NOT_METRIC_NAMES:
            self.pos = start
            raise self.fail(f"{word!r} is a PromQL keyword that promtool refuses as a metric name")
        return word

    def label_set(self) -> dict[str, str]:
        self.pos += 1  # the "{"
        labels: dict[str, str] = {}
        while True:
            self.skip_spaces()
            ch = self.peek()
            if ch == "}":
                self.pos += 1
                return labels
            if not _is_alpha(ch):
                raise self.fail(
                    "unterminated label set" if not ch else f"expected a label name, got {ch!r}"
                )
            start = self.pos
            while _is_alnum(self.peek()):
                self.pos += 1
            label = self.text[start : self.pos]
            self.skip_spaces()
            if self.text.startswith(("!=", "=~", "!~"), self.pos):
                op = self.text[self.pos : self.pos + 2]
                raise self.fail(f"{op!r}: only '=' is allowed, a series selector names one series")
            if self.peek() != "=":
                raise self.fail(f"expected '=' after label name {label!r}")
            self.pos += 1
            self.skip_spaces()
            value = self.string()
            if label in labels:
                # promtool fails too ("label name ... is not unique"), just later.
                raise self.fail(f"label {label!r} appears twice")
            labels[label] = value
            self.skip_spaces()
            ch = self.peek()
            if ch == ",":
                self.pos += 1
                self.skip_spaces()
                if self.peek() == ",":
                    raise self.fail("empty label between commas")
            elif ch != "}":
                raise self.fail("expected ',' or '}'" if ch else "unterminated label set")

    def string(self) -> str:
        quote = self.peek()
        if quote not in ('"', "'", "`"):
            raise self.fail("expected a quoted string")
        start = self.pos
        self.pos += 1
        if quote == "`":
            end = self.text.find("`", self.pos)
            if end < 0:
                raise self.fail("unterminated raw string")
            raw = self.text[self.pos : end]
            if _REPLACEMENT_CHAR in raw:
                raise self.fail("invalid UTF-8 rune")
            self.pos = end + 1
            return raw
        # Escapes can produce single bytes (\xHH, \ooo), so collect bytes and decode at the end,
        # as Go's strconv.Unquote does.
        out = bytearray()
        while True:
            ch = self.peek()
            if not ch:
                self.pos = start
                raise self.fail("unterminated quoted string")
            self.pos += 1
            if ch == quote:
                break
            if ch == _REPLACEMENT_CHAR:
                raise self.fail("invalid UTF-8 rune")
            if ch == "\\":
                out += self.escape(quote)
            else:
                out += ch.encode()
        try:
            return out.decode("utf-8")
        except UnicodeDecodeError:
            self.pos = start
            raise self.fail("escape sequences in the string do not form valid UTF-8") from None

    _SIMPLE_ESCAPES: Final = {
        "a": b"\a", "b": b"\b", "f": b"\f", "n": b"\n",
        "r": b"\r", "t": b"\t", "v": b"\v", "\\": b"\\",
    }  # fmt: skip

    def escape(self, quote: str) -> bytes:
        ch = self.peek()
        self.pos += 1
        if ch in self._SIMPLE_ESCAPES:
            return self._SIMPLE_ESCAPES[ch]
        if ch == quote:  # only the string's own quote may be escaped: '\"' is an error
            return ch.encode()
        if not ch:
            raise self.fail("escape sequence not terminated")
        if ch in _OCTAL:
            digits, base = ch + self.take(2, _OCTAL), 8  # exactly three octal digits
        elif ch in "xuU":
            digits, base = self.take({"x": 2, "u": 4, "U": 8}[ch], _HEX), 16
        else:
            raise self.fail(f"unknown escape sequence \\{ch}")
        code = int(digits, base)
        if ch in _OCTAL or ch == "x":
            if code > 0xFF:
                raise self.fail("escape sequence is an invalid Unicode code point")
            return bytes([code])  # a raw byte, possibly half of a UTF-8 sequence
        if code > 0x10FFFF or 0xD800 <= code < 0xE000:
            raise self.fail("escape sequence is an invalid Unicode code point")
        return chr(code).encode()

    def take(self, count: int, alphabet: str) -> str:
        got = self.text[self.pos : self.pos + count]
        for i, digit in enumerate(got):
            if digit not in alphabet:
                self.pos += i
                raise self.fail(f"illegal character {digit!r} in escape sequence")
        if len(got) < count:
            raise self.fail("escape sequence not terminated")
        self.pos += count
        return got


def format_series_selector(labels: dict[str, str]) -> str:
    """The inverse of parse_series_selector: a selector promtool (and PromQL) reads back.

    For writing promtool test files from Series. Raises ValueError for label names Prometheus
    would not accept.
    """
    name = labels.get("__name__")
    parts = []
    for key in sorted(labels):
        if not key or not _is_alpha(key[0]) or not all(_is_alnum(c) for c in key):
            raise ValueError(f"invalid label name {key!r}")
        if key != "__name__" or not _is_plain_metric_name(name):
            parts.append(f"{key}={quote_label_value(labels[key])}")
    head = name if _is_plain_metric_name(name) else ""
    return f"{head}{{{', '.join(parts)}}}"


def _is_plain_metric_name(name: str | None) -> bool:
    return bool(
        name
        and (_is_alpha(name[0]) or name[0] == ":")
        and all(_is_alnum(c) or c == ":" for c in name)
        and name.lower() not in _NOT_METRIC_NAMES
    )


def quote_label_value(value: str) -> str:
    """A double-quoted PromQL string literal for ``value`` (Go escapes, valid in every lexer)."""
    out = ['"']
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ch == "\x7f" or ch == _REPLACEMENT_CHAR:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Values


class _Tok(enum.Enum):
    SPACE = " "
    ADD = "+"
    SUB = "-"
    TIMES = "x"
    BLANK = "_"
    NUMBER = "number"
    STALE = "stale"


@dataclass(frozen=True)
class _Token:
    kind: _Tok
    text: str
    pos: int


def expand_values(notation: str, limit: int | None = None) -> list[SeriesValue]:
    """Expand promtool's ``values`` string into one entry per interval.

    With ``limit``, at most that many entries: promtool loads samples only up to the last
    evaluation time, so ``0x10000000`` need not become ten million points. The whole string is
    still checked.

    ``'1+2x3 _ _x2 stale -2-1x1'`` gives ``[1, 3, 5, 7, None, None, None, STALE, -2, -3]``.
    Items are separated by spaces; each is one of ``a``, ``axn`` (n+1 copies), ``a+bxn`` or
    ``a-bxn`` (n+1 values, adding b each step), ``_`` (one missing point), ``_xn`` (n missing
    points) or ``stale``. Numbers may be signed, decimal, with exponent, ``Inf`` or ``NaN``.
    Raises ValueError saying what is wrong and where.
    """
    if "\n" in notation:
        # promtool builds a line-based `load` command; a newline would end the series there.
        raise ValueError(f"invalid series values {notation!r}: a newline cannot appear here")
    tokens = _lex_values(notation)
    out: list[SeriesValue] = []
    item: list[_Token] = []
    for token in [*tokens, _Token(_Tok.SPACE, " ", len(notation))]:
        if token.kind is _Tok.SPACE:
            if item:
                room = None if limit is None else max(0, limit - len(out))
                out.extend(_expand_item(notation, item, room))
                item = []
        else:
            item.append(token)
    return out


def _values_error(notation: str, pos: int, message: str) -> ValueError:
    return ValueError(f"invalid series values {notation!r}: {message} (at column {pos + 1})")


def _lex_values(notation: str) -> list[_Token]:
    """Tokens as lex.go's lexValueSequence produces them (runs of spaces become one SPACE)."""
    tokens: list[_Token] = []
    pos = 0
    n = len(notation)
    singles = {"+": _Tok.ADD, "-": _Tok.SUB, "x": _Tok.TIMES, "_": _Tok.BLANK}
    while pos < n:
        ch = notation[pos]
        start = pos
        if ch in _SPACES:
            while pos < n and notation[pos] in _SPACES:
                pos += 1
            tokens.append(_Token(_Tok.SPACE, " ", start))
        elif ch in singles:  # before the identifier case: "x" and "_" are letters there
            tokens.append(_Token(singles[ch], ch, start))
            pos += 1
        elif _is_digit(ch) or (ch == "." and _is_digit(notation[pos + 1 : pos + 2])):
            pos = _scan_number(notation, pos)
            following = notation[pos : pos + 1]
            # lex.go scanNumber: a number must not run into a letter or digit, except the "x"
            # of a repetition. Hexadecimal is off in series descriptions, so "0x5" is 0 x 5.
            if following != "x" and _is_alnum(following):
                raise _values_error(notation, start, f"bad number syntax {notation[start:pos]!r}")
            tokens.append(_Token(_Tok.NUMBER, notation[start:pos], start))
        elif _is_alpha(ch):
            while pos < n and (_is_alnum(notation[pos]) or notation[pos] == ":"):
                pos += 1
            word = notation[start:pos]
            if word.lower() in ("inf", "nan"):
                tokens.append(_Token(_Tok.NUMBER, word, start))
            elif word == "stale":  # case-sensitive, unlike inf/nan
                tokens.append(_Token(_Tok.STALE, word, start))
            else:
                raise _values_error(
                    notation, start, f'unexpected {word!r}, expected a number or "stale"'
                )
        else:
            raise _values_error(notation, start, f"unexpected character {ch!r}")
    return tokens


def _scan_number(text: str, pos: int) -> int:
    """lex.go scanNumber without hexadecimal: digits, optional fraction, optional exponent."""
    n = len(text)
    while pos < n and text[pos] in _DIGITS:
        pos += 1
    if pos < n and text[pos] == ".":
        pos += 1
        while pos < n and text[pos] in _DIGITS:
            pos += 1
    if pos < n and text[pos] in "eE":
        pos += 1
        if pos < n and text[pos] in "+-":
            pos += 1
        while pos < n and text[pos] in _DIGITS:
            pos += 1
    return pos


def _number(notation: str, token: _Token) -> float:
    """The parser's number(): Go ParseInt(s, 0, 64), falling back to ParseFloat(s, 64)."""
    text = token.text
    if all(_is_digit(c) for c in text):
        # Base 0: a leading 0 means octal. A literal that fails (08, or out of int64 range)
        # falls through to ParseFloat, which reads it as decimal.
        try:
            value = int(text, 8) if len(text) > 1 and text[0] == "0" else int(text, 10)
        except ValueError:
            value = None
        if value is not None and value <= _INT64_MAX:
            return float(value)
    try:
        result = float(text)
    except ValueError:
        raise _values_error(notation, token.pos, f"cannot parse number {text!r}") from None
    if math.isinf(result) and text.lower() != "inf":
        # Go's ParseFloat reports overflow as an error; Python returns inf.
        raise _values_error(notation, token.pos, f"number {text!r} is out of range")
    return result


def _expand_item(notation: str, item: list[_Token], room: int | None = None
                 ) -> list[SeriesValue]:
    """One space-separated item, by the series_item rules of generated_parser.y; at most
    ``room`` entries of it when given."""
    pos = 0

    def at(i: int) -> _Token | None:
        return item[i] if i < len(item) else None

    def repetitions(i: int) -> int:
        times, count = at(i), at(i + 1)
        if times is None or times.kind is not _Tok.TIMES:
            raise _values_error(notation, item[i - 1].pos, "expected 'x' and a count")
        if count is None or count.kind is not _Tok.NUMBER:
            raise _values_error(notation, times.pos, "expected a count after 'x'")
        if len(item) > i + 2:
            raise _values_error(notation, item[i + 2].pos, "unexpected text after the count")
        # strconv.ParseUint(s, 10, 64): decimal digits only, so "x010" is ten.
        if not all(_is_digit(c) for c in count.text) or int(count.text) > _UINT64_MAX:
            raise _values_error(notation, count.pos, f"invalid repetition count {count.text!r}")
        return int(count.text)

    first = item[0]
    if first.kind is _Tok.BLANK:
        if len(item) == 1:
            return [None]
        return [None] * _capped(repetitions(1), room)  # n missing points, not n+1

    # series_value: "stale", a number, or a signed number.
    value: float | StaleMarker
    if first.kind is _Tok.STALE:
        value, pos = STALE, 1
    elif first.kind is _Tok.NUMBER:
        value, pos = _number(notation, first), 1
    elif first.kind in (_Tok.ADD, _Tok.SUB):
        value, pos = _signed(notation, item, 0), 2
    else:
        raise _values_error(notation, first.pos, f"unexpected {first.text!r}")

    following = at(pos)
    if following is None:
        return [value]
    if following.kind is _Tok.TIMES:
        return [value] * _capped(repetitions(pos) + 1, room)
    if following.kind not in (_Tok.ADD, _Tok.SUB):
        raise _values_error(notation, following.pos, f"unexpected {following.text!r}")
    step = _signed(notation, item, pos)
    count = repetitions(pos + 2)
    out: list[SeriesValue] = []
    current: float | StaleMarker = value
    for _ in range(_capped(count + 1, room)):
        out.append(current)
        # Repeated addition, as the Go code does, so rounding matches promtool's bit for bit.
        # Stale NaN plus anything is an ordinary NaN.
        current = math.nan if current is STALE else current + step
    return out


def _capped(n: int, room: int | None) -> int:
    return n if room is None else min(n, room)


def _signed(notation: str, item: list[_Token], i: int) -> float:
    sign, number = item[i], item[i + 1] if i + 1 < len(item) else None
    if number is None or number.kind is not _Tok.NUMBER:
        raise _values_error(notation, sign.pos, f"expected a number after {sign.text!r}")
    value = _number(notation, number)
    return -value if sign.kind is _Tok.SUB else value


# --------------------------------------------------------------------------------------------
# Input series


def expand_input_series(series: str, values: str, interval: float, start: float = 0.0) -> Series:
    """One promtool ``input_series`` entry as a Series: point i is at ``start + i*interval``.

    Times are whole milliseconds, like Prometheus's, so ``interval`` and ``start`` are rounded
    to the millisecond and each timestamp is computed in integer milliseconds (no drift from
    adding 0.1 s a thousand times). ``_`` points are omitted; ``stale`` points carry STALE_NAN.
    """
    labels = parse_series_selector(series)
    expanded = expand_values(values)
    if not math.isfinite(interval) or not math.isfinite(start):
        raise ValueError("interval and start must be finite numbers of seconds")
    step_ms = round(interval * 1000)
    start_ms = round(start * 1000)
    if step_ms <= 0:
        raise ValueError(f"interval must be at least 1ms, got {interval!r}s")
    samples: list[tuple[float, float]] = []
    for i, value in enumerate(expanded):
        if value is None:
            continue
        at = (start_ms + i * step_ms) / 1000
        samples.append((at, STALE_NAN if value is STALE else value))
    return Series(labels=labels, samples=samples)
