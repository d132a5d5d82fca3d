"""Go text/template's lexer: a template's text as a list of tokens.

The first stage of `watchdog.gotmpl` (lex -> parse -> exec). It follows Go's text/template/parse
lex.go, including its error texts and where it stops: a lexing error is the last token, and the
parser reports it when it gets there, as Go does. It must not do I/O or read the clock, and it
knows nothing of the parser or of any function.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from watchdog.gocompat import quote

__all__ = ["Tok", "is_alnum", "lex"]

_SPACE = " \t\r\n"
_KEYWORDS = {
    "if", "else", "end", "range", "with", "break", "continue", "define", "template", "block"
}


@dataclass(frozen=True)
class Tok:
    kind: str  # text ldelim rdelim space ident field var string raw char number bool nil
    #            dot pipe lparen rparen declare assign op kw eof error
    val: str
    pos: int  # character offset into the template text


def is_alnum(c: str) -> bool:
    return c == "_" or c.isalpha() or unicodedata.category(c) == "Nd"


def _is_digit(c: str) -> bool:
    return c.isascii() and c.isdigit()


def _go_rune(c: str) -> str:
    """Go's %#U: U+0040 '@'."""
    return f"U+{ord(c):04X} '{c}'" if c.isprintable() else f"U+{ord(c):04X}"


def lex(s: str) -> list[Tok]:
    """Tokens of the whole template; a lexing error becomes a final `error` token, as in Go."""
    toks: list[Tok] = []
    n = len(s)
    i = 0

    def at_right_delim(p: int) -> tuple[bool, bool, int]:
        if p + 1 < n and s[p] in _SPACE and s[p + 1] == "-" and s.startswith("}}", p + 2):
            return True, True, p + 4
        if s.startswith("}}", p):
            return True, False, p + 2
        return False, False, p

    def skip_space(p: int) -> int:
        while p < n and s[p] in _SPACE:
            p += 1
        return p

    def at_terminator(p: int) -> bool:
        return p >= n or s[p] in _SPACE or s[p] in ".,|:()" or s[p] == "}"

    while True:
        j = s.find("{{", i)
        if j < 0:
            if i < n:
                toks.append(Tok("text", s[i:], i))
            toks.append(Tok("eof", "", n))
            return toks
        k = j + 2
        trim = k + 1 < n and s[k] == "-" and s[k + 1] in _SPACE
        text = s[i:j].rstrip(_SPACE) if trim else s[i:j]
        if text:
            toks.append(Tok("text", text, i))
        if trim:
            k += 2
        if s.startswith("/*", k):
            end = s.find("*/", k + 2)
            if end < 0:
                toks.append(Tok("error", "unclosed comment", k))
                return toks
            delim, trim_right, after = at_right_delim(end + 2)
            if not delim:
                toks.append(Tok("error", "comment ends before closing delimiter", k))
                return toks
            i = skip_space(after) if trim_right else after
            continue
        toks.append(Tok("ldelim", "{{", j))
        p, depth = k, 0
        while True:
            delim, trim_right, after = at_right_delim(p)
            if delim:
                if depth:
                    toks.append(Tok("error", "unclosed left paren", p))
                    return toks
                toks.append(Tok("rdelim", "}}", p))
                i = skip_space(after) if trim_right else after
                break
            if p >= n:
                toks.append(Tok("error", "unclosed action", p))
                return toks
            c, start = s[p], p
            p += 1
            if c in _SPACE:
                p = skip_space(p)
                # The last space may belong to a " -}}" trim marker.
                if s.startswith("-}}", p):
                    p -= 1
                if p > start:
                    toks.append(Tok("space", s[start:p], start))
            elif c == "=":
                toks.append(Tok("assign", "=", start))
            elif c == ":":
                if p >= n or s[p] != "=":
                    toks.append(Tok("error", "expected :=", start))
                    return toks
                p += 1
                toks.append(Tok("declare", ":=", start))
            elif c == "|":
                toks.append(Tok("pipe", "|", start))
            elif c in "\"'`":
                end = _scan_quoted(s, p, c)
                if end < 0:
                    what = _QUOTED_NAMES[c]
                    toks.append(Tok("error", f"unterminated {what}", start))
                    return toks
                p = end
                kind = {'"': "string", "`": "raw", "'": "char"}[c]
                toks.append(Tok(kind, s[start:p], start))
            elif c in "+-" or _is_digit(c) or (c == "." and p < n and _is_digit(s[p])):
                p = _scan_number(s, start)
                if p > 0 and p < n and s[p] in "+-":  # Go's complex literal 1+2i
                    p = _scan_number(s, p)
                    if p > 0 and s[p - 1] != "i":
                        p = -p
                if p < 0:
                    bad = quote(s[start:-p])
                    toks.append(Tok("error", f"bad number syntax: {bad}", start))
                    return toks
                toks.append(Tok("number", s[start:p], start))
            elif c in "$." or is_alnum(c):  # a variable, a field (or dot), a word
                while p < n and is_alnum(s[p]):
                    p += 1
                if not at_terminator(p):
                    toks.append(Tok("error", f"bad character {_go_rune(s[p])}", p))
                    return toks
                word = s[start:p]
                if c == "$":
                    toks.append(Tok("var", word, start))
                elif c == ".":
                    toks.append(Tok("dot" if word == "." else "field", word, start))
                elif word in _KEYWORDS:
                    toks.append(Tok("kw", word, start))
                elif word in ("true", "false"):
                    toks.append(Tok("bool", word, start))
                elif word == "nil":
                    toks.append(Tok("nil", word, start))
                else:
                    toks.append(Tok("ident", word, start))
            elif c == "(":
                depth += 1
                toks.append(Tok("lparen", c, start))
            elif c == ")":
                depth -= 1
                if depth < 0:
                    toks.append(Tok("error", f"unexpected right paren {_go_rune(c)}", start))
                    return toks
                toks.append(Tok("rparen", c, start))
            elif c.isascii() and c.isprintable():
                toks.append(Tok("op", c, start))
            else:
                msg = f"unrecognized character in action: {_go_rune(c)}"
                toks.append(Tok("error", msg, start))
                return toks


_QUOTED_NAMES = {"'": "character constant", '"': "quoted string", "`": "raw quoted string"}


def _scan_quoted(s: str, p: int, mark: str) -> int:
    """End offset (after the closing quote) of a quoted token starting before p, or -1."""
    n = len(s)
    while p < n:
        c = s[p]
        p += 1
        if c == mark:
            return p
        if mark == "`":
            continue
        if c == "\n":
            return -1
        if c == "\\":
            if p >= n or s[p] == "\n":
                return -1
            p += 1
    return -1


def _scan_number(s: str, p: int) -> int:
    """Go's lexer scanNumber: end offset of the number at p, or -(offset after bad char)."""
    n = len(s)

    def run(chars: str) -> None:
        nonlocal p
        while p < n and s[p] in chars:
            p += 1

    if p < n and s[p] in "+-":
        p += 1
    digits = "0123456789_"
    if p < n and s[p] == "0":
        p += 1
        if p < n and s[p] in "xX":
            p, digits = p + 1, "0123456789abcdefABCDEF_"
        elif p < n and s[p] in "oO":
            p, digits = p + 1, "01234567_"
        elif p < n and s[p] in "bB":
            p, digits = p + 1, "01_"
    run(digits)
    if p < n and s[p] == ".":
        p += 1
        run(digits)
    if len(digits) == 11 and p < n and s[p] in "eE":
        p += 1
        if p < n and s[p] in "+-":
            p += 1
        run("0123456789_")
    if len(digits) == 23 and p < n and s[p] in "pP":
        p += 1
        if p < n and s[p] in "+-":
            p += 1
        run("0123456789_")
    if p < n and s[p] == "i":
        p += 1
    if p < n and is_alnum(s[p]):
        return -(p + 1)
    return p

