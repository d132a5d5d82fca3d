"""Label sets: fingerprints, matchers and the Go regular expressions they use. Pure: no I/O,
no clock.

A fingerprint identifies an alert instance; it must be stable across processes and restarts (it
is persisted and used as PagerDuty's dedup key), so it is a hash of the sorted label pairs, never
Python's randomised `hash()`.

Every regular expression a user writes (`match_re` in routes and inhibit rules, regex silence
matchers, the template functions `match` and `reReplaceAll`) is Go's RE2 dialect, so it goes
through `go_regexp`: Google's RE2 (the `re2` module of google-re2), which matches in time linear
in the text, so no pattern can stall the event loop the way `(a+)+$` stalls Python's
backtracking `re`.  On top of RE2 it behaves like Go 1.19's regexp package (the Go that
Prometheus 2.42 and Alertmanager 0.25 are built with): what Go refuses is refused, with Go's
error text, and matches start only on rune boundaries.  Known differences, none of which a
real rule should meet: RE2's Unicode tables are newer than Go 1.19's (Unicode 13), so scripts and
letters added since (`\\p{Kawi}`) are known to RE2 only; Go refuses groups nested more than
1000 deep, RE2 does not; and RE2 refuses, as "expression too large", a pattern whose compiled
program exceeds RE2's 8 MiB budget (a big Unicode class repeated hundreds of times: `\\pL{1000}`),
which Go accepts.  The budget stays: it bounds the memory of each cached pattern.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from watchdog.gocompat import quote

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
    """`{a="b", c="d"}` in Prometheus's own spelling (labels.Labels.String: sorted, values in
    strconv.Quote)."""
    inner = ", ".join(f"{k}={quote(labels[k])}" for k in sorted(labels))
    return "{" + inner + "}"


def matches(labels: Labels, match: Mapping[str, str], match_re: Mapping[str, str] | None = None
            ) -> bool:
    """Alertmanager's `match` (equality) and `match_re` (anchored regex) on a label set: the
    `match_re` of routes and inhibit rules (see `match_re_regexp` for its anchoring)."""
    for k, v in match.items():
        if labels.get(k, "") != v:
            return False
    for k, pattern in (match_re or {}).items():
        if not alertmanager_match(_anchored(pattern), labels.get(k, "")):
            return False
    return True


@functools.lru_cache(maxsize=65536)
def alertmanager_match(pattern: str, value: str) -> bool:
    """Does Alertmanager's regex matcher `pattern` (a silence's, see `alertmanager_regexp`)
    match `value`?"""
    # cached: the same label values come back every evaluation, and a dict hit costs a tenth
    # of a call into RE2
    return alertmanager_regexp(pattern).match_string(value)


# ------------------------------------------------------------------------ Go regular expressions


class RegexError(ValueError):
    """A pattern Go's regexp package refuses; `str()` is Go's `error parsing regexp: ...`."""

    def __init__(self, code: str, expr: str) -> None:
        self.code = code
        self.expr = expr
        super().__init__(f"error parsing regexp: {code}: `{expr}`")


class GoRegexp:
    """A compiled Go regular expression (`regexp.Regexp`), matched by RE2 on UTF-8 bytes."""

    __slots__ = ("_groups", "_rx", "_with_groups", "names", "pattern")

    def __init__(self, pattern: str, rx: Any, names: tuple[str, ...],
                 groups: tuple[tuple[int, int], ...]) -> None:
        self.pattern = pattern
        self._rx = rx  # compiled without captures: see _re2
        # Go's SubexpNames(): "" for the whole match and for unnamed groups; names may repeat
        self.names = names
        self._groups = groups  # where each group's "(" or "(?P<name>" is in the pattern
        self._with_groups: dict[tuple[int, ...], Any] = {}

    def search(self, src: bytes, pos: int = 0, groups: Iterable[int] = ()
               ) -> dict[int, tuple[int, int]] | None:
        """The leftmost match starting at byte `pos` or later, as Go finds it, or None: the byte
        span of the match (key 0) and of each of `groups` ((-1, -1) if it took no part)."""
        wanted = tuple(sorted({g for g in groups if 0 < g < len(self.names)}))
        if not wanted:
            m = self._find(self._rx, src, pos)
            return None if m is None else {0: m.span()}
        m = self._find(self._compiled_with(wanted), src, pos)
        if m is None:
            return None
        return {0: m.span(), **{g: m.span(i) for i, g in enumerate(wanted, 1)}}

    def match_string(self, s: str) -> bool:
        """Go's `MatchString`: does the pattern match anywhere in `s`?"""
        return self._find(self._rx, s.encode("utf-8", "surrogatepass"), 0) is not None

    def _compiled_with(self, wanted: tuple[int, ...]) -> Any:
        """The pattern with only the `wanted` groups capturing (numbered 1, 2, ... in it).

        RE2 reports every group of a match, at a cost that grows with the number of groups
        times the size of the pattern (`(a)` 10,000 times takes seconds and gigabytes per
        match), so the groups nobody asked for become `(?:`; that changes no match."""
        if wanted not in self._with_groups:
            pattern = _keep_groups(self.pattern, self._groups, wanted)
            re2, capturing, _ = _re2()
            self._with_groups[wanted] = re2.compile(pattern.encode("utf-8"), capturing)
        return self._with_groups[wanted]

    @staticmethod
    def _find(rx: Any, src: bytes, pos: int) -> Any:
        n = len(src)
        while pos <= n:
            m = rx.search(src, pos)
            if m is None:
                return None
            start: int = m.start()
            if start == n or src[start] & 0xC0 != 0x80:
                return m
            # RE2's unanchored search steps byte by byte, so an empty match of an assertion
            # (`\B`) can land inside a multi-byte rune, where Go never looks: go on from the
            # next rune boundary.
            pos = start + 1
            while pos < n and src[pos] & 0xC0 == 0x80:
                pos += 1
        return None


def _keep_groups(pattern: str, groups: tuple[tuple[int, int], ...], wanted: tuple[int, ...]
                 ) -> str:
    """`pattern` with every group but the `wanted` ones made non-capturing (`(?:`)."""
    parts, last = [], 0
    for g, (start, length) in enumerate(groups, 1):
        if g not in wanted:
            parts += [pattern[last:start], "(?:"]
            last = start + length
    parts.append(pattern[last:])
    return "".join(parts)


def alertmanager_regexp(pattern: str) -> GoRegexp:
    """A regex matcher (`isRegex` in a silence) as Alertmanager's `labels.NewMatcher` compiles
    it: `^(?:PATTERN)$`.

    That is not PATTERN with full-match semantics: Alertmanager accepts `a)|(b` and reads it as
    `^(?:a)|(b)$`, "starts with a or ends with b"; and its errors quote the anchored text."""
    return go_regexp(_anchored(pattern))


def match_re_regexp(pattern: str) -> GoRegexp:
    """A `match_re` value (routes, inhibit rules) as Alertmanager 0.25 matches it.

    Its config loader compiles `^(?:PATTERN)$`, and its errors quote that; the route or inhibit
    rule then gives the source of that compiled expression to `labels.NewMatcher`, which anchors
    it again.  So `a)|(b` matches just "a" and "b" here (amtool agrees), unlike in a silence."""
    alertmanager_regexp(pattern)  # for the loader's error
    return go_regexp(_anchored(_anchored(pattern)))


def _anchored(pattern: str) -> str:
    return f"^(?:{pattern})$"


@functools.cache
def _re2() -> tuple[Any, Any, Any]:
    """(the re2 module, options that capture, options that do not), imported on the first
    pattern: RE2 and the C++ runtime it loads are ~1.5-3 MiB resident, which a daemon whose
    routes, silences and templates use no regular expression never needs
    (bench/daemon.py --memory)."""
    import re2

    capturing = re2.Options()
    capturing.log_errors = False  # an error goes to the caller, not to stderr from C++
    # Matching that needs no group is done without captures: RE2 then finds a match with its
    # DFA alone, however many groups the pattern has (RE2 keeps named groups capturing, so
    # go_regexp rewrites those).
    plain = re2.Options()
    plain.log_errors = False
    plain.never_capture = True
    return re2, capturing, plain

# RE2's error codes (re2/regexp.cc) in Go's words (regexp/syntax ErrorCode)
_GO_ERROR_CODES = {
    "unexpected error": "regexp/syntax: internal error",
    "invalid escape sequence": "invalid escape sequence",
    "invalid character class": "invalid character class",
    "invalid character class range": "invalid character class range",
    "missing ]": "missing closing ]",
    "missing )": "missing closing )",
    "unexpected )": "unexpected )",
    "trailing \\": "trailing backslash at end of expression",
    "no argument for repetition operator": "missing argument to repetition operator",
    "invalid repetition size": "invalid repeat count",
    "bad repetition operator": "invalid nested repetition operator",
    "invalid perl operator": "invalid or unsupported Perl syntax",
    "invalid UTF-8": "invalid UTF-8",
    "invalid named capture group": "invalid named capture",
    "pattern too large - compile failed": "expression too large",
}


@functools.lru_cache(maxsize=512)
def go_regexp(pattern: str) -> GoRegexp:
    """Go's `regexp.Compile(pattern)`; raises RegexError with Go's message.

    Cached: routes, inhibit rules and silences match with the same few patterns on every
    evaluation (a refused pattern is not cached, and costs a linear-time parse or two per call)."""
    try:
        encoded = pattern.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate: Go sees invalid UTF-8 there
        raise RegexError("invalid UTF-8", pattern[e.start :]) from None
    names, groups, refused = _scan(pattern)
    re2, _, plain = _re2()
    try:
        rx = re2.compile(encoded, plain)
    except re2.error as e:
        error = _go_error(e, pattern)
        # Go reports the first error from the left; if the construct only Go refuses comes
        # first, RE2 reaches a marker put in its place before reaching its own error.
        if refused is not None and _refused_first(pattern, *refused[:2]):
            raise refused[2] from None
        raise error from None
    if refused is not None:
        raise refused[2]
    if any(names):  # RE2's never_capture leaves named groups capturing
        rx = re2.compile(_keep_groups(pattern, groups, ()).encode("utf-8"), plain)
    return GoRegexp(pattern, rx, names, groups)


_MARK = "\\\U0010fffd"  # an escape RE2 refuses, standing in for what Go refuses


def _refused_first(pattern: str, start: int, length: int) -> bool:
    marked = pattern[:start] + _MARK + pattern[start + length :]
    re2, _, plain = _re2()
    try:
        re2.compile(marked, plain)
    except re2.error as e:
        error = _go_error(e, marked)
        return error.expr == _MARK and _MARK not in pattern
    return True


def _go_error(e: Exception, pattern: str) -> RegexError:
    message = e.args[0] if e.args else b""
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    code, sep, arg = text.partition(": ")
    if code not in _GO_ERROR_CODES:
        return RegexError(text, pattern)
    if code == "trailing \\":
        return RegexError(_GO_ERROR_CODES[code], "")  # Go quotes nothing for this one
    return RegexError(_GO_ERROR_CODES[code], arg if sep else pattern)


def _scan(p: str) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...],
                           tuple[int, int, RegexError] | None]:
    """Go's SubexpNames, where each group opens (index and length of `(` or `(?P<name>`), and
    the first construct RE2 accepts but Go 1.19 refuses: a `(?<name>` group, a non-ASCII group
    name or the `\\C` (any byte) escape (its index, length and Go's error).  The names and
    groups are only right for a pattern RE2 accepts.

    RE2 exposes only the first group of each name, but Go's `${name}` uses the first group of
    that name that took part in the match, so the groups are listed here in order."""
    names = [""]
    groups: list[tuple[int, int]] = []
    i, n = 0, len(p)
    while i < n:
        c = p[i]
        if c == "\\":
            if p.startswith("\\Q", i):  # \Q...\E: literal text up to \E or the end
                end = p.find("\\E", i + 2)
                i = n if end < 0 else end + 2
                continue
            if p.startswith("\\C", i):
                return tuple(names), tuple(groups), (i, 2, RegexError(
                    "invalid escape sequence", "\\C"))
            i += 2
        elif c == "[":
            i = _class_end(p, i)
        elif p.startswith("(?P<", i) and (end := p.find(">", i)) >= 0:
            name = p[i + 4 : end]
            if name and not (name.isascii() and name.replace("_", "a").isalnum()):
                return tuple(names), tuple(groups), (i, 4, RegexError(
                    "invalid named capture", p[i : end + 1]))
            names.append(name)
            groups.append((i, end + 1 - i))
            i = end + 1
        elif p.startswith("(?<", i):
            return tuple(names), tuple(groups), (i, 3, RegexError(
                "invalid or unsupported Perl syntax", "(?<"))
        else:
            if c == "(" and not p.startswith("(?", i):
                names.append("")
                groups.append((i, 1))
            i += 1
    return tuple(names), tuple(groups), None


def _class_end(p: str, i: int) -> int:
    """The index after the character class that opens at p[i]."""
    i += 1
    if p.startswith("^", i):
        i += 1
    first = True  # a "]" right after "[" or "[^" is a literal
    while i < len(p) and (p[i] != "]" or first):
        first = False
        if p.startswith("[:", i) and (end := p.find(":]", i + 2)) >= 0:
            i = end + 2  # [:alpha:]
        elif p[i] == "\\":
            i += 2
        else:
            i += 1
    return i + 1
