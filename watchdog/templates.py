"""Prometheus alert templates: a small, safe re-implementation of Go's text/template.

Alert labels and annotations in a Prometheus rule file are Go text/template
strings with Prometheus's template functions (`humanize`, `printf`, ...).  This
module parses such a template once (`compile_template`) and renders it against
one alert's labels and value (`Template.render`, `expand`), producing the same
bytes Prometheus 2.42 produces, including Go's number formatting.

It is part of the functional core and must not do I/O, read the clock or run
code: templates see only the data in `TemplateData`.  `query` (which would need
Prometheus) is rejected at compile time, there is no eval and no attribute
access on Python objects, and template nesting depth is bounded.

Structure: a lexer (`_lex`) -> a recursive-descent parser to a tiny AST
(`_Parser`) -> an evaluator (`_Exec`) that mirrors Go's exec.go, plus Go's fmt
(`_sprintf`) and the Prometheus functions.  Where Go behaviour is odd, the code
follows Go and says so, because byte-identical output is the point.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
import struct
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias
from urllib.parse import unquote, urlsplit

from watchdog.labels import GoRegexp, RegexError, go_regexp

__all__ = ["Template", "TemplateData", "TemplateError", "compile_template", "expand"]


# --------------------------------------------------------------------------- public types


class TemplateError(ValueError):
    """A template failed to parse or to execute; the message says what and where.

    `str(err)` is `template: LINE:COL: ...` (COL is a 0-based byte offset, as in
    Go).  `prometheus_message(name)` renders the error the way Prometheus
    reports it for an alert called `name`.
    """

    def __init__(
        self, msg: str, line: int, col: int, *, executing: bool = False, context: str = ""
    ) -> None:
        self.msg = msg
        self.line = line
        self.col = col
        self.executing = executing
        self.context = context
        super().__init__(self._render("", 0))

    def _render(self, name: str, col_shift: int) -> str:
        prefix = f"{name}:" if name else ""
        if not self.executing:
            # Go's parse errors carry only a line number.
            if name:
                return f"template: {prefix}{self.line}: {self.msg}"
            return f"template: {self.line}:{self.col}: {self.msg}"
        col = self.col + (col_shift if self.line == 1 else 0)
        where = f'executing "{name}" at' if name else "executing at"
        return f"template: {prefix}{self.line}:{col}: {where} <{self.context}>: {self.msg}"

    def prometheus_message(self, name: str) -> str:
        """The error text Prometheus logs for template `name` (e.g. `__alert_HighLoad`)."""
        stage = "executing" if self.executing else "parsing"
        return f"error {stage} template {name}: {self._render(name, len(_PRELUDE_BYTES))}"


@dataclass(frozen=True)
class TemplateData:
    """What a Prometheus alert template sees: `.Labels`, `.Value`, ... and `$labels`, ..."""

    labels: Mapping[str, str]
    value: float
    external_labels: Mapping[str, str] = field(default_factory=dict)
    external_url: str = ""


# Prometheus prepends these definitions (rules/alerting.go); they shift columns on line 1.
_PRELUDE_BYTES = (
    b"{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}"
    b"{{$externalURL := .ExternalURL}}{{$value := .Value}}"
)
_STRUCT_TYPE = (
    "struct { Labels map[string]string; ExternalLabels map[string]string; "
    "ExternalURL string; Value float64 }"
)
_MAX_DEPTH = 100  # nesting of parentheses/blocks; keeps Python's recursion far from its limit


class _HTML(str):
    """Go's html/template.HTML, returned by safeHtml: prints as a string but is another type."""

    __slots__ = ()


Value: TypeAlias = (
    str | int | float | bool | Mapping[str, str] | tuple["Value", ...] | TemplateData | None
)


def _type_name(v: object) -> str:
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, _HTML):
        return "template.HTML"
    if isinstance(v, str):
        return "string"
    if isinstance(v, TemplateData):
        return _STRUCT_TYPE
    if isinstance(v, tuple):
        return "[]interface {}"
    return "map[string]string"


# --------------------------------------------------------------------------- lexer

_SPACE = " \t\r\n"
_KEYWORDS = {
    "if", "else", "end", "range", "with", "break", "continue", "define", "template", "block"
}


@dataclass(frozen=True)
class _Tok:
    kind: str  # text ldelim rdelim space ident field var string raw char number bool nil
    #            dot pipe lparen rparen declare assign op kw eof error
    val: str
    pos: int  # character offset into the template text


def _is_alnum(c: str) -> bool:
    return c == "_" or c.isalpha() or unicodedata.category(c) == "Nd"


def _go_rune(c: str) -> str:
    """Go's %#U: U+0040 '@'."""
    return f"U+{ord(c):04X} '{c}'" if c.isprintable() else f"U+{ord(c):04X}"


def _lex(s: str) -> list[_Tok]:
    """Tokens of the whole template; a lexing error becomes a final `error` token, as in Go."""
    toks: list[_Tok] = []
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
                toks.append(_Tok("text", s[i:], i))
            toks.append(_Tok("eof", "", n))
            return toks
        k = j + 2
        trim = k + 1 < n and s[k] == "-" and s[k + 1] in _SPACE
        text = s[i:j].rstrip(_SPACE) if trim else s[i:j]
        if text:
            toks.append(_Tok("text", text, i))
        if trim:
            k += 2
        if s.startswith("/*", k):
            end = s.find("*/", k + 2)
            if end < 0:
                toks.append(_Tok("error", "unclosed comment", k))
                return toks
            delim, trim_right, after = at_right_delim(end + 2)
            if not delim:
                toks.append(_Tok("error", "comment ends before closing delimiter", k))
                return toks
            i = skip_space(after) if trim_right else after
            continue
        toks.append(_Tok("ldelim", "{{", j))
        p, depth = k, 0
        while True:
            delim, trim_right, after = at_right_delim(p)
            if delim:
                if depth:
                    toks.append(_Tok("error", "unclosed left paren", p))
                    return toks
                toks.append(_Tok("rdelim", "}}", p))
                i = skip_space(after) if trim_right else after
                break
            if p >= n:
                toks.append(_Tok("error", "unclosed action", p))
                return toks
            c, start = s[p], p
            p += 1
            if c in _SPACE:
                p = skip_space(p)
                # The last space may belong to a " -}}" trim marker.
                if s.startswith("-}}", p):
                    p -= 1
                if p > start:
                    toks.append(_Tok("space", s[start:p], start))
            elif c == "=":
                toks.append(_Tok("assign", "=", start))
            elif c == ":":
                if p >= n or s[p] != "=":
                    toks.append(_Tok("error", "expected :=", start))
                    return toks
                p += 1
                toks.append(_Tok("declare", ":=", start))
            elif c == "|":
                toks.append(_Tok("pipe", "|", start))
            elif c in "\"'`":
                end = _scan_quoted(s, p, c)
                if end < 0:
                    what = _QUOTED_NAMES[c]
                    toks.append(_Tok("error", f"unterminated {what}", start))
                    return toks
                p = end
                kind = {'"': "string", "`": "raw", "'": "char"}[c]
                toks.append(_Tok(kind, s[start:p], start))
            elif c == "$" or (c == "." and not (p < n and s[p].isdigit() and s[p].isascii())):
                while p < n and _is_alnum(s[p]):
                    p += 1
                if not at_terminator(p):
                    toks.append(_Tok("error", f"bad character {_go_rune(s[p])}", p))
                    return toks
                word = s[start:p]
                kind = "var" if c == "$" else ("dot" if word == "." else "field")
                toks.append(_Tok(kind, word, start))
            elif c in "+-." or (c.isascii() and c.isdigit()):
                p = _scan_number(s, start)
                if p > 0 and p < n and s[p] in "+-":  # Go's complex literal 1+2i
                    p = _scan_number(s, p)
                    if p > 0 and s[p - 1] != "i":
                        p = -p
                if p < 0:
                    bad = _go_quote(s[start:-p])
                    toks.append(_Tok("error", f"bad number syntax: {bad}", start))
                    return toks
                toks.append(_Tok("number", s[start:p], start))
            elif _is_alnum(c):
                while p < n and _is_alnum(s[p]):
                    p += 1
                if not at_terminator(p):
                    toks.append(_Tok("error", f"bad character {_go_rune(s[p])}", p))
                    return toks
                word = s[start:p]
                if word in _KEYWORDS:
                    toks.append(_Tok("kw", word, start))
                elif word in ("true", "false"):
                    toks.append(_Tok("bool", word, start))
                elif word == "nil":
                    toks.append(_Tok("nil", word, start))
                else:
                    toks.append(_Tok("ident", word, start))
            elif c == "(":
                depth += 1
                toks.append(_Tok("lparen", c, start))
            elif c == ")":
                depth -= 1
                if depth < 0:
                    toks.append(_Tok("error", f"unexpected right paren {_go_rune(c)}", start))
                    return toks
                toks.append(_Tok("rparen", c, start))
            elif c.isascii() and c.isprintable():
                toks.append(_Tok("op", c, start))
            else:
                msg = f"unrecognized character in action: {_go_rune(c)}"
                toks.append(_Tok("error", msg, start))
                return toks


_QUOTED_NAMES = {"'": "character constant", '"': "quoted string", "`": "raw quoted string"}


def _scan_quoted(s: str, p: int, quote: str) -> int:
    """End offset (after the closing quote) of a quoted token starting before p, or -1."""
    n = len(s)
    while p < n:
        c = s[p]
        p += 1
        if c == quote:
            return p
        if quote == "`":
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
    if p < n and _is_alnum(s[p]):
        return -(p + 1)
    return p


# --------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class _Node:
    pos: int


@dataclass(frozen=True)
class _Lit(_Node):
    value: Value
    text: str  # source text, which is what Go prints in error contexts
    overflow: bool = False  # an integer constant only representable as uint64


@dataclass(frozen=True)
class _Dot(_Node):
    pass


@dataclass(frozen=True)
class _Nil(_Node):
    pass


@dataclass(frozen=True)
class _Ident(_Node):
    name: str


@dataclass(frozen=True)
class _Field(_Node):
    names: tuple[str, ...]  # .A.B on dot


@dataclass(frozen=True)
class _Var(_Node):
    name: str
    fields: tuple[str, ...]  # $x.A.B


@dataclass(frozen=True)
class _Cmd(_Node):
    args: tuple[_Node, ...]


@dataclass(frozen=True)
class _Pipe(_Node):
    decl: tuple[str, ...]
    assign: bool
    cmds: tuple[_Cmd, ...]


@dataclass(frozen=True)
class _Chain(_Node):
    node: _Node
    fields: tuple[str, ...]  # (pipe).A.B


@dataclass(frozen=True)
class _Text(_Node):
    text: str


@dataclass(frozen=True)
class _Action(_Node):
    pipe: _Pipe


@dataclass(frozen=True)
class _Block(_Node):
    kind: str  # if, range, with
    pipe: _Pipe
    body: tuple[_Node, ...]
    else_: tuple[_Node, ...] | None


@dataclass(frozen=True)
class _Jump(_Node):
    kind: str  # break, continue


def _node_str(n: _Node) -> str:
    """Go's Node.String(), used in execution error messages."""
    if isinstance(n, _Lit):
        return n.text
    if isinstance(n, _Dot):
        return "."
    if isinstance(n, _Nil):
        return "nil"
    if isinstance(n, _Ident):
        return n.name
    if isinstance(n, _Field):
        return "".join("." + f for f in n.names)
    if isinstance(n, _Var):
        return ".".join((n.name, *n.fields))
    if isinstance(n, _Cmd):
        args = (f"({_node_str(a)})" if isinstance(a, _Pipe) else _node_str(a) for a in n.args)
        return " ".join(args)
    if isinstance(n, _Pipe):
        decl = ", ".join(n.decl) + (" = " if n.assign else " := ") if n.decl else ""
        return decl + " | ".join(_node_str(c) for c in n.cmds)
    if isinstance(n, _Chain):
        base = f"({_node_str(n.node)})" if isinstance(n.node, _Pipe) else _node_str(n.node)
        return base + "".join("." + f for f in n.fields)
    if isinstance(n, _Text):
        return n.text
    if isinstance(n, _Action):
        return "{{" + _node_str(n.pipe) + "}}"
    if isinstance(n, _Block):
        body = "".join(_node_str(x) for x in n.body)
        else_ = "" if n.else_ is None else "{{else}}" + "".join(_node_str(x) for x in n.else_)
        return f"{{{{{n.kind} {_node_str(n.pipe)}}}}}{body}{else_}{{{{end}}}}"
    assert isinstance(n, _Jump)
    return "{{" + n.kind + "}}"


# --------------------------------------------------------------------------- parser


class _Parser:
    """Recursive descent over the token list, following Go's text/template/parse."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _lex(text)
        self.i = 0
        self.vars = ["$", "$labels", "$externalLabels", "$externalURL", "$value"]
        self.range_depth = 0
        self.depth = 0

    # token helpers
    def error(self, msg: str, tok: _Tok | None = None) -> TemplateError:
        pos = (tok or self.toks[min(self.i, len(self.toks) - 1)]).pos
        line, col = _line_col(self.text, pos)
        return TemplateError(msg, line, col)

    def peek(self) -> _Tok:
        return self.toks[min(self.i, len(self.toks) - 1)]  # the last token is eof or error

    def next(self) -> _Tok:
        tok = self.peek()
        if tok.kind == "error":
            raise self.error(tok.val, tok)
        self.i += 1
        return tok

    def peek_non_space(self) -> _Tok:
        while self.peek().kind == "space":
            self.i += 1
        return self.peek()

    def at_keyword(self, word: str) -> bool:
        tok = self.peek_non_space()
        return tok.kind == "kw" and tok.val == word

    def next_non_space(self) -> _Tok:
        self.peek_non_space()
        return self.next()

    def unexpected(self, tok: _Tok, context: str) -> TemplateError:
        return self.error(f"unexpected {_tok_str(tok)} in {context}", tok)

    def expect(self, kind: str, context: str) -> _Tok:
        tok = self.next_non_space()
        if tok.kind != kind:
            raise self.unexpected(tok, context)
        return tok

    # grammar
    def parse(self) -> tuple[_Node, ...]:
        nodes: list[_Node] = []
        while self.peek().kind != "eof":
            node = self.text_or_action()
            if isinstance(node, _Tok):
                raise self.error(f"unexpected {{{{{node.val}}}}}", node)
            nodes.append(node)
        return tuple(nodes)

    def text_or_action(self) -> _Node | _Tok:
        """A node, or the `end`/`else` keyword token that closes the current list."""
        tok = self.next_non_space()
        if tok.kind == "text":
            return _Text(tok.pos, tok.val)
        if tok.kind == "ldelim":
            return self.action()
        raise self.unexpected(tok, "input")

    def action(self) -> _Node | _Tok:
        tok = self.next_non_space()
        if tok.kind == "kw":
            if tok.val in ("if", "range", "with"):
                return self.control(tok.val)
            if tok.val in ("else", "end"):
                if tok.val == "else" and self.at_keyword("if"):
                    return tok  # "else if": the "if" stays pending for control()
                self.expect("rdelim", tok.val)
                return tok
            if tok.val in ("break", "continue"):
                self.expect("rdelim", "{{" + tok.val + "}}")
                if not self.range_depth:
                    raise self.error(f"{{{{{tok.val}}}}} outside {{{{range}}}}", tok)
                return _Jump(tok.pos, tok.val)
            raise self.error(f"{{{{{tok.val}}}}} is not supported in alert templates", tok)
        self.i -= 1
        return _Action(self.peek_non_space().pos, self.pipeline("command", "rdelim"))

    def item_list(self) -> tuple[tuple[_Node, ...], _Tok]:
        nodes: list[_Node] = []
        while self.peek_non_space().kind != "eof":
            node = self.text_or_action()
            if isinstance(node, _Tok):
                return tuple(nodes), node
            nodes.append(node)
        if self.peek().kind == "error":
            self.next()
        raise self.error("unexpected EOF")

    def control(self, kind: str) -> _Block:
        self.enter()
        mark = len(self.vars)
        pipe = self.pipeline(kind, "rdelim")
        self.range_depth += kind == "range"
        body, end = self.item_list()
        self.range_depth -= kind == "range"
        else_: tuple[_Node, ...] | None = None
        if end.val == "else":
            if self.at_keyword("if"):
                if kind != "if":
                    raise self.error(f"{{{{else if}}}} is not supported in {{{{{kind}}}}}")
                self.next()
                else_ = (self.control("if"),)  # one {{end}} closes the whole chain
            else:
                else_, end = self.item_list()
                if end.val != "end":
                    raise self.error(f"expected end; found {{{{{end.val}}}}}", end)
        del self.vars[mark:]
        self.depth -= 1
        return _Block(pipe.pos, kind, pipe, body, else_)

    def enter(self) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.error("max expression depth exceeded")

    def pipeline(self, context: str, end: str) -> _Pipe:
        pos = self.peek_non_space().pos
        decl: list[str] = []
        assign = False
        while self.peek_non_space().kind == "var":
            start = self.i
            var = self.next()
            after = self.peek_non_space()
            if after.kind in ("declare", "assign"):
                self.next()
                assign = after.kind == "assign"
                if assign and var.val not in self.vars:
                    raise self.error(f"undefined variable {_go_quote(var.val)}", var)
                decl.append(var.val)
                break
            if after.kind == "op" and after.val == ",":
                self.next()
                decl.append(var.val)
                if context != "range" or len(decl) > 1:
                    raise self.error(f"too many declarations in {context}", after)
                if self.peek_non_space().kind not in ("var", "rdelim", "rparen"):
                    raise self.error("range can only initialize variables", after)
                continue
            self.i = start
            break
        if decl and self.toks[self.i - 1].kind not in ("declare", "assign"):
            raise self.error(f"missing := after variables in {context}")
        self.vars.extend(v for v in decl if v not in self.vars or not assign)
        cmds: list[_Cmd] = []
        while True:
            tok = self.next_non_space()
            if tok.kind == end:
                break
            if tok.kind in ("bool", "char", "dot", "field", "ident", "number", "nil", "raw",
                            "string", "var", "lparen"):
                self.i -= 1
                cmds.append(self.command())
            else:
                raise self.unexpected(tok, context)
        if not cmds:
            raise self.error(f"missing value for {context}")
        for stage, cmd in enumerate(cmds[1:], start=2):
            if isinstance(cmd.args[0], _Lit | _Dot | _Nil):
                raise self.error(f"non executable command in pipeline stage {stage}")
        return _Pipe(pos, tuple(decl), assign, tuple(cmds))

    def command(self) -> _Cmd:
        pos = self.peek_non_space().pos
        args: list[_Node] = []
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                args.append(operand)
            tok = self.next()
            if tok.kind == "space":
                continue
            if tok.kind in ("rdelim", "rparen"):
                self.i -= 1
            elif tok.kind != "pipe":
                raise self.unexpected(tok, "operand")
            break
        if not args:
            raise self.error("empty command")
        return _Cmd(pos, tuple(args))

    def operand(self) -> _Node | None:
        node = self.term()
        if node is None or self.peek().kind != "field":
            return node
        pos = self.peek().pos  # Go positions a chain at its first trailing field
        fields: list[str] = []
        while self.peek().kind == "field":
            fields.append(self.next().val[1:])
        if isinstance(node, _Field):
            return _Field(pos, (*node.names, *fields))
        if isinstance(node, _Var):
            return _Var(pos, node.name, (*node.fields, *fields))
        if isinstance(node, _Lit | _Nil | _Dot):
            raise self.error(f"unexpected . after term {_go_quote(_node_str(node))}")
        return _Chain(pos, node, tuple(fields))

    def term(self) -> _Node | None:
        tok = self.next_non_space()
        kind = tok.kind
        if kind == "ident":
            _check_function(tok.val, self, tok)
            return _Ident(tok.pos, tok.val)
        if kind == "dot":
            return _Dot(tok.pos)
        if kind == "nil":
            return _Nil(tok.pos)
        if kind == "var":
            if tok.val not in self.vars:
                raise self.error(f"undefined variable {_go_quote(tok.val)}", tok)
            return _Var(tok.pos, tok.val, ())
        if kind == "field":
            return _Field(tok.pos, (tok.val[1:],))
        if kind == "bool":
            return _Lit(tok.pos, tok.val == "true", tok.val)
        if kind in ("number", "char"):
            return self.number(tok)
        if kind == "lparen":
            self.enter()
            pipe = self.pipeline("parenthesized pipeline", "rparen")
            self.depth -= 1
            return pipe
        if kind in ("string", "raw"):
            return _Lit(tok.pos, _unquote(tok.val, self, tok), tok.val)
        self.i -= 1
        return None

    def number(self, tok: _Tok) -> _Lit:
        text = tok.val
        if tok.kind == "char":
            value = _unquote(text, self, tok)
            if len(value) != 1:
                raise self.error(f"malformed character constant: {text}", tok)
            return _Lit(tok.pos, ord(value), text)
        if text.endswith("i"):
            raise self.error(f"complex numbers are not supported: {_go_quote(text)}", tok)
        as_int = _parse_go_int(text)
        if as_int is not None:
            if as_int >= 2**64 or as_int < -(2**63):
                raise self.error(f"integer overflow: {_go_quote(text)}", tok)
            return _Lit(tok.pos, as_int, text, overflow=as_int >= 2**63)
        as_float = _parse_go_float(text)
        if as_float is None:
            raise self.error(f"illegal number syntax: {_go_quote(text)}", tok)
        if not any(c in text for c in ".eEpP"):
            raise self.error(f"integer overflow: {_go_quote(text)}", tok)
        return _Lit(tok.pos, as_float, text)


def _tok_str(tok: _Tok) -> str:
    """Go's item.String() for parse error messages."""
    if tok.kind == "eof":
        return "EOF"
    if tok.kind in ("kw", "nil", "dot"):
        return f"<{tok.val}>"
    if len(tok.val) > 10:
        return _go_quote(tok.val[:10]) + "..."
    return _go_quote(tok.val)


def _line_col(text: str, pos: int) -> tuple[int, int]:
    before = text[:pos]
    line_start = before.rfind("\n") + 1
    return before.count("\n") + 1, len(before[line_start:].encode("utf-8", "surrogatepass"))


_UNSUPPORTED = {
    "query": "templates cannot query Prometheus",
    "first": "it only works on query results, and templates cannot query Prometheus",
    "label": "it only works on query results, and templates cannot query Prometheus",
    "value": "it only works on query results, and templates cannot query Prometheus",
    "strvalue": "it only works on query results, and templates cannot query Prometheus",
    "sortByLabel": "it only works on query results, and templates cannot query Prometheus",
    "tmpl": "it only exists in console templates",
}


def _check_function(name: str, parser: _Parser, tok: _Tok) -> None:
    if name in _FUNCS:
        return
    if name in _UNSUPPORTED:
        why = _UNSUPPORTED[name]
        raise parser.error(f"function {_go_quote(name)} is not supported: {why}", tok)
    raise parser.error(f"function {_go_quote(name)} not defined", tok)


_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


def _unquote(text: str, parser: _Parser, tok: _Tok) -> str:
    """Go's strconv.Unquote for "...", `...` and '...' literals."""
    quote, body = text[0], text[1:-1]
    if quote == "`":
        return body.replace("\r", "")  # Go drops carriage returns in raw strings
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        i += 1
        if c != "\\":
            out.append(c)
            continue
        e = body[i]
        i += 1
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
        elif e == quote:
            out.append(e)
        elif e in "xuU" or e in "01234567":
            size = {"x": 2, "u": 4, "U": 8}.get(e, 3)
            start = i if e in "xuU" else i - 1
            digits = body[start : start + size]
            base = 8 if e in "01234567" else 16
            hexdigits = "01234567" if base == 8 else "0123456789abcdefABCDEF"
            if len(digits) != size or any(d not in hexdigits for d in digits):
                raise parser.error("invalid syntax", tok)
            code = int(digits, base)
            i = start + size
            if e in "x01234567" and code > 0x7F:
                # Go would insert a raw byte; a Python str cannot hold invalid UTF-8.
                raise parser.error("byte escapes above \\x7f are not supported", tok)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise parser.error("invalid syntax", tok)
            out.append(chr(code))
        else:
            raise parser.error("invalid syntax", tok)
    return "".join(out)


_GO_INT = re.compile(
    r"[+-]?(?:0[xX](?:_?[0-9a-fA-F])+|0[oO](?:_?[0-7])+|0[bB](?:_?[01])+|0(?:_?[0-7])*|[1-9](?:_?[0-9])*)"
)


def _parse_go_int(text: str) -> int | None:
    """strconv.ParseInt(text, 0, ...) without the range check."""
    if not _GO_INT.fullmatch(text):
        return None
    body = text.lstrip("+-").replace("_", "")
    sign = -1 if text.startswith("-") else 1
    if len(body) > 1 and body[0] == "0" and body[1] not in "xXoObB":
        return sign * int(body, 8)  # Go's legacy octal 010
    return sign * int(body, 0)


_GO_DEC_FLOAT = re.compile(
    r"[+-]?(?:\d(?:_?\d)*(?:\.(?:\d(?:_?\d)*)?)?|\.\d(?:_?\d)*)(?:[eE][+-]?\d(?:_?\d)*)?"
)
_GO_HEX_FLOAT = re.compile(
    r"([+-]?)0[xX]_?((?:[0-9a-fA-F](?:_?[0-9a-fA-F])*)?)(?:\.((?:[0-9a-fA-F](?:_?[0-9a-fA-F])*)?))?"
    r"[pP]([+-]?\d(?:_?\d)*)"
)


def _parse_go_float(text: str) -> float | None:
    """strconv.ParseFloat(text, 64); None when Go would report an error."""
    low = text.lower()
    sign = -1.0 if low.startswith("-") else 1.0
    bare = low.lstrip("+-") if low[:1] in "+-" else low
    if low == "nan":
        return math.nan
    if bare in ("inf", "infinity") and len(low) - len(bare) <= 1:
        return sign * math.inf
    if _GO_DEC_FLOAT.fullmatch(text):
        value = float(text.replace("_", ""))
    else:
        m = _GO_HEX_FLOAT.fullmatch(text)
        if not m or not (m.group(2) or m.group(3)):
            return None
        mant = (m.group(2) or "0").replace("_", "") + "." + (m.group(3) or "").replace("_", "")
        value = float.fromhex(f"{m.group(1)}0x{mant}p{m.group(4).replace('_', '')}")
    return None if math.isinf(value) else value  # Go: "value out of range"


# --------------------------------------------------------------------------- Go fmt


@dataclass
class _Flags:
    plus: bool = False
    minus: bool = False
    sharp: bool = False
    space: bool = False
    zero: bool = False
    wid: int | None = None
    prec: int | None = None
    plus_v: bool = False
    sharp_v: bool = False


_NO_FLAGS = _Flags()


def _pad(s: str, f: _Flags, zero: bool | None = None) -> str:
    if f.wid is None or f.wid <= len(s):
        return s
    fill = "0" if (f.zero if zero is None else zero) else " "
    return s + " " * (f.wid - len(s)) if f.minus else fill * (f.wid - len(s)) + s


def _go_quote(s: str, ascii_only: bool = False) -> str:
    """strconv.Quote / QuoteToASCII."""
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
            out.append("\\ufffd")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return "".join(out) + '"'


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


def _strconv_float(x: float, verb: str, prec: int) -> str:
    """strconv.FormatFloat(x, verb, prec, 64); prec -1 means shortest."""
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
    # Shortest: only reached for %v/%g/%G/%e without a precision.
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


def _fmt_float(x: float, verb: str, f: _Flags) -> str:
    """fmt's (*fmt).fmtFloat: sign, padding and the '#' flag around strconv."""
    if verb == "v":
        verb = "g"
    default = -1 if verb in "gGxXb" else 6
    prec = f.prec if f.prec is not None else default
    num = _strconv_float(x, "f" if verb == "F" else verb, prec)
    num = num if num[0] in "+-" else "+" + num
    if f.space and num[0] == "+" and not f.plus:
        num = " " + num[1:]
    if num[1] in "IN":  # Inf and NaN are never zero padded
        if num[1] == "N" and not f.space and not f.plus:
            num = num[1:]
        return _pad(num, f, zero=False)
    if f.sharp and verb != "b":
        num = _sharp_float(num, verb, prec)
    if f.plus or num[0] != "+":
        if f.zero and f.wid is not None and f.wid > len(num):
            return num[0] + "0" * (f.wid - len(num)) + num[1:]
        return _pad(num, f)
    return _pad(num[1:], f)


def _sharp_float(num: str, verb: str, prec: int) -> str:
    """The '#' flag: always a decimal point, and %g keeps its trailing zeros."""
    digits = (6 if prec == -1 else prec) if verb in "vgGxX" else 0
    tail = ""
    body = num
    for i in range(1, len(num)):
        c = num[i]
        if c in "pP" or (c in "eE" and verb not in "xX"):
            body, tail = num[:i], num[i:]
            break
    seen_nonzero = False
    for c in body[1:]:
        if c == ".":
            continue
        seen_nonzero = seen_nonzero or c != "0"
        if seen_nonzero:
            digits -= 1
    if "." not in body:
        if body[1:] == "0":
            digits -= 1
        body += "."
    return body + "0" * max(digits, 0) + tail


def _fmt_int(n: int, verb: str, f: _Flags) -> str:
    """fmt's fmtInteger plus %c, %q and %U."""
    c = chr(n) if 0 <= n <= 0x10FFFF and not 0xD800 <= n <= 0xDFFF else "\ufffd"
    if verb == "c":
        return _pad(c, f)
    if verb == "q":
        quoted = "'" + _go_quote(c, f.plus)[1:-1].replace('\\"', '"').replace("'", "\\'") + "'"
        return _pad(quoted, f)
    if verb == "U":
        return _pad(f"U+{n:04X}" if n >= 0 else f"U+{n & (2**64 - 1):04X}", f)
    base = {"d": 10, "v": 10, "b": 2, "o": 8, "O": 8, "x": 16, "X": 16}[verb]
    neg = n < 0
    body = {2: f"{abs(n):b}", 8: f"{abs(n):o}", 10: str(abs(n)), 16: f"{abs(n):x}"}[base]
    if verb == "X":
        body = body.upper()
    prec = 0
    if f.prec is not None:
        prec = f.prec
        if prec == 0 and n == 0:
            return _pad("", f, zero=False)
    elif f.zero and f.wid is not None:
        prec = f.wid - (1 if neg or f.plus or f.space else 0)
    body = body.rjust(prec, "0")
    if f.sharp:
        if base == 2:
            body = "0b" + body
        elif base == 8 and not body.startswith("0"):
            body = "0" + body
        elif base == 16:
            body = ("0x" if verb == "x" else "0X") + body
    if verb == "O":
        body = "0o" + body
    sign = "-" if neg else "+" if f.plus else " " if f.space else ""
    return _pad(sign + body, f, zero=False)


def _fmt_str(s: str, verb: str, f: _Flags) -> str:
    if f.prec is not None and verb not in "xX":
        s = s[: f.prec]  # precision counts runes here, but bytes for %x
    if verb in ("v", "s") and not (verb == "v" and f.sharp_v):
        return _pad(s, f)
    if verb in ("q", "v"):
        if f.sharp and _can_backquote(s):
            return _pad("`" + s + "`", f)
        return _pad(_go_quote(s, f.plus), f)
    # %x / %X: hex of the UTF-8 bytes (precision counts bytes, so re-slice)
    data = s.encode("utf-8", "surrogatepass")[: f.prec]
    if not data:
        return _pad("", f)
    hexdigits = [format(b, "02x" if verb == "x" else "02X") for b in data]
    prefix = "0x" if verb == "x" else "0X"
    if f.space:
        parts = [prefix + h if f.sharp else h for h in hexdigits]
        return _pad(" ".join(parts), f)
    return _pad((prefix if f.sharp else "") + "".join(hexdigits), f)


def _print_arg(v: Value, verb: str, f: _Flags) -> str:
    """fmt's printArg/printValue for the values a template can hold."""
    if verb == "T":
        return _pad(_type_name(v), f)
    if v is None:
        return _pad("<nil>", f) if verb == "v" else _bad_verb(v, verb, f)
    if isinstance(v, bool):
        return _pad("true" if v else "false", f) if verb in "tv" else _bad_verb(v, verb, f)
    if isinstance(v, int):
        return _fmt_int(v, verb, f) if verb in "vdboOxXcqU" else _bad_verb(v, verb, f)
    if isinstance(v, float):
        return _fmt_float(v, verb, f) if verb in "vbgGxXfFeE" else _bad_verb(v, verb, f)
    if isinstance(v, str):
        return _fmt_str(v, verb, f) if verb in "vsxXq" else _bad_verb(v, verb, f)
    if isinstance(v, TemplateData):
        fields: list[tuple[str, Value]] = [
            ("Labels", v.labels),
            ("ExternalLabels", v.external_labels),
            ("ExternalURL", v.external_url),
            ("Value", v.value),
        ]
        if f.sharp_v:
            inner = ", ".join(f"{k}:{_print_arg(x, verb, f)}" for k, x in fields)
            return _STRUCT_TYPE + "{" + inner + "}"
        parts = ((k + ":" if f.plus_v else "") + _print_arg(x, verb, f) for k, x in fields)
        return "{" + " ".join(parts) + "}"
    if isinstance(v, tuple):
        if f.sharp_v:
            return "[]interface {}{" + ", ".join(_print_arg(x, verb, f) for x in v) + "}"
        return "[" + " ".join(_print_arg(x, verb, f) for x in v) + "]"
    items = [(_print_arg(k, verb, f), _print_arg(v[k], verb, f)) for k in sorted(v)]
    if f.sharp_v:
        return "map[string]string{" + ", ".join(f"{k}:{x}" for k, x in items) + "}"
    return "map[" + " ".join(f"{k}:{x}" for k, x in items) + "]"


def _bad_verb(v: Value, verb: str, f: _Flags) -> str:
    inner = "<nil>" if v is None else f"{_type_name(v)}={_print_arg(v, 'v', f)}"
    return f"%!{verb}({inner})"


def _parse_num(fmt: str, i: int) -> tuple[int | None, int]:
    """fmt's parsenum: an absurdly long number consumes the rest of the format."""
    num, start = 0, i
    while i < len(fmt) and fmt[i].isascii() and fmt[i].isdigit():
        if num > 1_000_000:
            return None, len(fmt)
        num = num * 10 + int(fmt[i])
        i += 1
    return (num if i > start else None), i


class _Printf:
    """Go's fmt.Sprintf (doPrintf), for the value types templates have."""

    def __init__(self, fmt: str, args: list[Value]) -> None:
        self.fmt, self.args = fmt, args
        self.i = 0  # position in fmt
        self.argn = 0  # next argument
        self.reordered = False  # an explicit [n] index was used
        self.good = True  # the current verb's argument index is valid

    def arg_index(self) -> bool:
        """Parse an optional [n]; returns whether one was found."""
        fmt, i = self.fmt, self.i
        if i >= len(fmt) or fmt[i] != "[":
            return False
        self.reordered = True
        close = fmt.find("]", i + 1)
        if len(fmt) - i < 3 or close < 0:
            self.good, self.i = False, i + 1
            return False
        num, end = _parse_num(fmt, i + 1)
        self.i = close + 1
        if num is None or end != close:
            self.good = False
            return False
        if 0 < num <= len(self.args):
            self.argn = num - 1
        else:
            self.good = False
        return True

    def int_arg(self) -> int | None:
        """A '*' width or precision, taken from the arguments."""
        if self.argn >= len(self.args):
            return None
        a = self.args[self.argn]
        self.argn += 1
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) <= 1_000_000:
            return a
        return None

    def run(self) -> str:
        fmt, out = self.fmt, []
        n = len(fmt)
        while self.i < n:
            j = fmt.find("%", self.i)
            if j < 0:
                out.append(fmt[self.i :])
                break
            out.append(fmt[self.i : j])
            self.i = j + 1
            piece = self.verb()
            if piece is None:
                out.append("%!(NOVERB)")
                break
            out.append(piece)
        if not self.reordered and self.argn < len(self.args):
            extra = ", ".join(
                "<nil>" if a is None else f"{_type_name(a)}={_print_arg(a, 'v', _NO_FLAGS)}"
                for a in self.args[self.argn :]
            )
            out.append(f"%!(EXTRA {extra})")
        return "".join(out)

    def verb(self) -> str | None:
        """Format one %-directive starting at self.i (after the %); None if it has no verb."""
        fmt, n, f = self.fmt, len(self.fmt), _Flags()
        out: list[str] = []
        while self.i < n and fmt[self.i] in "#0+- ":
            c = fmt[self.i]
            if c == "#":
                f.sharp = True
            elif c == "0":
                f.zero = not f.minus  # only pad with zeros on the left
            elif c == "+":
                f.plus = True
            elif c == "-":
                f.minus, f.zero = True, False
            else:
                f.space = True
            self.i += 1
        self.good = True
        after_index = self.arg_index()
        if self.i < n and fmt[self.i] == "*":
            self.i += 1
            f.wid = self.int_arg()
            if f.wid is None:
                out.append("%!(BADWIDTH)")
            elif f.wid < 0:
                f.wid, f.minus, f.zero = -f.wid, True, False
            after_index = False
        else:
            f.wid, self.i = _parse_num(fmt, self.i)
            if after_index and f.wid is not None:
                self.good = False
        if self.i + 1 < n and fmt[self.i] == ".":
            self.i += 1
            if after_index:
                self.good = False
            after_index = self.arg_index()
            if self.i < n and fmt[self.i] == "*":
                self.i += 1
                f.prec = self.int_arg()
                if f.prec is not None and f.prec < 0:
                    f.prec = None
                if f.prec is None:
                    out.append("%!(BADPREC)")
                after_index = False
            else:
                f.prec, self.i = _parse_num(fmt, self.i)
                if f.prec is None:
                    f.prec = 0
        if not after_index:
            self.arg_index()
        if self.i >= n:
            return None if not out else "".join(out) + "%!(NOVERB)"
        verb = fmt[self.i]
        self.i += 1
        if verb == "%":
            out.append("%")  # %% takes no argument and ignores width and precision
        elif not self.good:
            out.append(f"%!{verb}(BADINDEX)")
        elif self.argn >= len(self.args):
            out.append(f"%!{verb}(MISSING)")
        else:
            if verb == "v":
                f.sharp_v, f.sharp = f.sharp, False
                f.plus_v, f.plus = f.plus, False
            out.append(_print_arg(self.args[self.argn], verb, f))
            self.argn += 1
        return "".join(out)


def _sprintf(fmt: str, args: list[Value]) -> str:
    return _Printf(fmt, args).run()


def _sprintln(*args: Value) -> str:
    """fmt.Sprintln: always a space between operands, and a newline."""
    return " ".join(_print_arg(a, "v", _NO_FLAGS) for a in args) + "\n"


def _print_action(v: Value) -> str:
    """What {{ pipeline }} writes: fmt.Fprint of the value, or <no value> for nothing."""
    return "<no value>" if v is None else _print_arg(v, "v", _NO_FLAGS)


def _sprint(args: list[Value]) -> str:
    """fmt.Sprint: a space between operands when neither is a string."""
    out: list[str] = []
    prev_string = False
    for k, a in enumerate(args):
        is_string = isinstance(a, str)
        if k > 0 and not is_string and not prev_string:
            out.append(" ")
        out.append(_print_arg(a, "v", _NO_FLAGS))
        prev_string = is_string
    return "".join(out)


# --------------------------------------------------------------------------- functions


class _CallError(Exception):
    """A template function failed; Go reports it as `error calling NAME: ...`."""


def _to_float(v: Value) -> float:
    """Prometheus's convertToFloat."""
    if isinstance(v, float):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if type(v) is str:
        parsed = _parse_go_float(v)
        if parsed is None:
            reason = "value out of range" if _looks_numeric(v) else "invalid syntax"
            raise _CallError(f"strconv.ParseFloat: parsing {_go_quote(v)}: {reason}")
        return parsed
    raise _CallError(f"can't convert {_type_name(v)} to float")


def _looks_numeric(s: str) -> bool:
    return bool(_GO_DEC_FLOAT.fullmatch(s) or _GO_HEX_FLOAT.fullmatch(s))


def _g4(v: float) -> str:
    return _strconv_float(v, "g", 4)


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
        msg = f"{_strconv_float(v, 'g', -1)} cannot be represented as a nanoseconds timestamp"
        raise _CallError(msg + " since it overflows int64")
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
        quoted = f"`{pattern}`" if _can_backquote(pattern) else _go_quote(pattern)
        msg = f"regexp: Compile({quoted}): {msg}"
    raise _CallError(msg)


def _can_backquote(s: str) -> bool:
    return "`" not in s and "\ufeff" not in s and all(c == "\t" or c.isprintable() for c in s)


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
        while end < n and _is_alnum(template[end]):
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
    if d == "0":
        return 0.0
    m = _DURATION.fullmatch(d) if d else None
    if m is None:
        raise _CallError(f"not a valid duration string: {_go_quote(d)}")
    total = sum(int(g) * _DURATION_UNITS[k] for k, g in m.groupdict().items() if g)
    if total >= 2**63:
        raise _CallError(f"duration out of range: {_go_quote(d)}")
    return total / 1000


_DURATION = re.compile(
    r"(?:(?P<y>\d+)y)?(?:(?P<w>\d+)w)?(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?"
    r"(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?(?:(?P<ms>\d+)ms)?",
    re.ASCII,
)
_DURATION_UNITS = {
    "y": 365 * 86_400_000, "w": 7 * 86_400_000, "d": 86_400_000, "h": 3_600_000,
    "m": 60_000, "s": 1000, "ms": 1,
}


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
        raise _CallError("missing argument for comparison")
    ka = _basic_kind(a)
    for b in others:
        kb = _basic_kind(b)
        if ka != kb:
            if a is not None and b is not None:
                raise _CallError("incompatible types for comparison")
        elif ka == "invalid":
            if a is not None and b is not None:  # maps are not comparable
                raise _CallError(f"non-comparable type {_print_action(b)}: {_type_name(b)}")
            if a is None and b is None:
                return True
        elif a == b:
            return True
    return False


def _lt(a: Value, b: Value) -> bool:
    ka, kb = _basic_kind(a), _basic_kind(b)
    if "invalid" in (ka, kb):
        raise _CallError("invalid type for comparison")
    if ka != kb:
        raise _CallError("incompatible types for comparison")
    if ka == "bool":
        raise _CallError("invalid type for comparison")
    return a < b  # type: ignore[operator]


def _truth(v: Value) -> bool:
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
        raise _CallError("len of nil pointer")
    raise _CallError(f"len of type {_type_name(v)}")


def _index(item: Value, *indexes: Value) -> Value:
    if item is None:
        raise _CallError("index of untyped nil")
    for ix in indexes:
        if isinstance(item, Mapping):
            if type(ix) is not str:
                if ix is None:
                    raise _CallError("value is nil; should be of type string")
                raise _CallError(f"value has type {_type_name(ix)}; should be string")
            item = item.get(ix, "")
        elif isinstance(item, tuple | str):
            if ix is None:
                raise _CallError("cannot index slice/array with nil")
            if not isinstance(ix, int) or isinstance(ix, bool):
                raise _CallError(f"cannot index slice/array with type {_type_name(ix)}")
            seq: tuple[Value, ...] | bytes = (
                item if isinstance(item, tuple) else item.encode("utf-8", "surrogatepass")
            )
            if not 0 <= ix < len(seq):
                raise _CallError(f"index out of range: {ix}")
            item = seq[ix]
        else:
            raise _CallError(f"can't index item of type {_type_name(item)}")
    return item


@dataclass(frozen=True)
class _Func:
    params: tuple[str, ...]  # "any" (interface{}), "value" (reflect.Value) or "string"
    variadic: str | None  # kind of the trailing ...params, if any
    impl: Callable[..., Value]
    takes_data: bool = False  # impl gets the TemplateData first (externalURL, pathPrefix)


def _str_fn(fn: Callable[[str], Value]) -> _Func:
    return _Func(("string",), None, fn)


def _any_fn(fn: Callable[[Value], Value]) -> _Func:
    return _Func(("any",), None, fn)


_FUNCS: dict[str, _Func] = {
    # Go text/template builtins
    "and": _Func(("value",), "value", lambda *a: a[-1]),  # evaluated lazily by _Exec
    "or": _Func(("value",), "value", lambda *a: a[-1]),
    "not": _Func(("value",), None, lambda a: not _truth(a)),
    "len": _Func(("value",), None, _len),
    "index": _Func(("value",), "value", _index),
    "eq": _Func(("value",), "value", _eq),
    "ne": _Func(("value", "value"), None, lambda a, b: not _eq(a, b)),
    "lt": _Func(("value", "value"), None, _lt),
    "le": _Func(("value", "value"), None, lambda a, b: _lt(a, b) or _eq(a, b)),
    "gt": _Func(("value", "value"), None, lambda a, b: not (_lt(a, b) or _eq(a, b))),
    "ge": _Func(("value", "value"), None, lambda a, b: not _lt(a, b)),
    "print": _Func((), "any", lambda *a: _sprint(list(a))),
    "printf": _Func(("string",), "any", lambda fmt, *a: _sprintf(fmt, list(a))),
    "println": _Func((), "any", _sprintln),
    # Prometheus's template functions
    "humanize": _any_fn(_humanize),
    "humanize1024": _any_fn(_humanize1024),
    "humanizeDuration": _any_fn(_humanize_duration),
    "humanizePercentage": _any_fn(_humanize_percentage),
    "humanizeTimestamp": _any_fn(_humanize_timestamp),
    "title": _str_fn(_title),
    "toUpper": _str_fn(lambda s: _simple_case(s, upper=True)),
    "toLower": _str_fn(lambda s: _simple_case(s, upper=False)),
    "match": _Func(("string", "string"), None, _match),
    "reReplaceAll": _Func(("string", "string", "string"), None, _re_replace_all),
    "stripPort": _str_fn(_strip_port),
    "stripDomain": _str_fn(_strip_domain),
    "safeHtml": _str_fn(_HTML),
    "parseDuration": _str_fn(_parse_duration),
    "externalURL": _Func((), None, lambda data: data.external_url, takes_data=True),
    "pathPrefix": _Func(
        (), None, lambda data: unquote(urlsplit(data.external_url).path), takes_data=True
    ),
}


# --------------------------------------------------------------------------- evaluator


class _Missing:
    """Go's missingVal: no value is piped into the command."""


_MISSING = _Missing()


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


@dataclass
class _Slot:
    name: str
    value: Value


class _Exec:
    """Walks the AST like Go's exec.go, including where errors are reported (`self.node`)."""

    def __init__(self, text: str, data: TemplateData) -> None:
        self.text = text
        self.data = data
        self.out: list[str] = []
        self.vars = [
            _Slot("$", data),
            _Slot("$labels", data.labels),
            _Slot("$externalLabels", data.external_labels),
            _Slot("$externalURL", data.external_url),
            _Slot("$value", data.value),
        ]
        self.node: _Node | None = None

    def error(self, msg: str) -> TemplateError:
        node = self.node
        pos = node.pos if node is not None else 0
        line, col = _line_col(self.text, pos)
        ctx = _node_str(node) if node is not None else ""
        return TemplateError(msg, line, col, executing=True, context=ctx)

    def walk(self, nodes: tuple[_Node, ...], dot: Value) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                self.out.append(node.text)
            elif isinstance(node, _Action):
                val = self.eval_pipeline(dot, node.pipe)
                if not node.pipe.decl:
                    self.node = node
                    self.out.append(_print_action(val))
            elif isinstance(node, _Block):
                self.walk_block(node, dot)
            elif isinstance(node, _Jump):
                raise _Break if node.kind == "break" else _Continue

    def walk_block(self, node: _Block, dot: Value) -> None:
        mark = len(self.vars)
        try:
            if node.kind == "range":
                self.walk_range(node, dot)
                return
            val = self.eval_pipeline(dot, node.pipe)
            if _truth(val):
                self.walk(node.body, val if node.kind == "with" else dot)
            elif node.else_ is not None:
                self.walk(node.else_, dot)
        finally:
            del self.vars[mark:]

    def walk_range(self, node: _Block, dot: Value) -> None:
        self.node = node
        val = self.eval_pipeline(dot, node.pipe)
        mark = len(self.vars)
        items: list[tuple[Value, Value]]
        if isinstance(val, Mapping):
            items = [(k, val[k]) for k in sorted(val)]
        elif isinstance(val, tuple):
            items = list(enumerate(val))
        elif val is None:
            items = []
        else:
            raise self.error(f"range can't iterate over {_print_arg(val, 'v', _NO_FLAGS)}")
        decl = node.pipe.decl
        for key, elem in items:
            if decl:
                self.assign(decl[-1], elem)  # the last variable is the element
            if len(decl) > 1:
                self.assign(decl[0], key)
            try:
                self.walk(node.body, elem)
            except _Break:
                break
            except _Continue:
                pass
            finally:
                del self.vars[mark:]
        if not items and node.else_ is not None:
            self.walk(node.else_, dot)

    def eval_pipeline(self, dot: Value, pipe: _Pipe) -> Value:
        self.node = pipe
        value: Value | _Missing = _MISSING
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd, value)
        assert not isinstance(value, _Missing)
        for name in pipe.decl:
            if pipe.assign:
                self.assign(name, value)
            else:
                self.vars.append(_Slot(name, value))
        return value

    def assign(self, name: str, value: Value) -> None:
        for slot in reversed(self.vars):
            if slot.name == name:
                slot.value = value
                return
        raise self.error(f"undefined variable: {name}")

    def eval_command(self, dot: Value, cmd: _Cmd, final: Value | _Missing) -> Value:
        first = cmd.args[0]
        if isinstance(first, _Field):
            return self.eval_field_node(dot, first, cmd.args, final)
        if isinstance(first, _Chain):
            return self.eval_chain(dot, first, cmd.args, final)
        if isinstance(first, _Ident):
            return self.eval_function(dot, first, cmd, cmd.args, final)
        if isinstance(first, _Pipe):
            self.not_a_function(cmd.args, final)
            return self.eval_pipeline(dot, first)
        if isinstance(first, _Var):
            return self.eval_variable(dot, first, cmd.args, final)
        self.node = first
        self.not_a_function(cmd.args, final)
        if isinstance(first, _Dot):
            return dot
        if isinstance(first, _Nil):
            raise self.error("nil is not a command")
        assert isinstance(first, _Lit)
        return self.constant(first)

    def constant(self, lit: _Lit) -> Value:
        if lit.overflow:
            self.node = lit
            raise self.error(f"{lit.text} overflows int")
        return lit.value

    def not_a_function(self, args: tuple[_Node, ...], final: Value | _Missing) -> None:
        if len(args) > 1 or not isinstance(final, _Missing):
            raise self.error(f"can't give argument to non-function {_node_str(args[0])}")

    def var_value(self, name: str) -> Value:
        for slot in reversed(self.vars):
            if slot.name == name:
                return slot.value
        raise self.error(f"undefined variable: {name}")

    def eval_variable(
        self, dot: Value, var: _Var, args: tuple[_Node, ...], final: Value | _Missing
    ) -> Value:
        self.node = var
        value = self.var_value(var.name)
        if not var.fields:
            self.not_a_function(args, final)
            return value
        return self.eval_field_chain(value, var.fields, args, final)

    def eval_field_node(
        self, dot: Value, node: _Field, args: tuple[_Node, ...], final: Value | _Missing
    ) -> Value:
        self.node = node
        return self.eval_field_chain(dot, node.names, args, final)

    def eval_chain(
        self, dot: Value, chain: _Chain, args: tuple[_Node, ...], final: Value | _Missing
    ) -> Value:
        self.node = chain
        value = self.eval_arg(dot, "any", chain.node)
        return self.eval_field_chain(value, chain.fields, args, final)

    def eval_field_chain(
        self,
        receiver: Value,
        names: tuple[str, ...],
        args: tuple[_Node, ...],
        final: Value | _Missing,
    ) -> Value:
        for name in names[:-1]:
            receiver = self.eval_field(name, (), _MISSING, receiver)
        return self.eval_field(names[-1], args, final, receiver)

    def eval_field(
        self, name: str, args: tuple[_Node, ...], final: Value | _Missing, receiver: Value
    ) -> Value:
        if receiver is None:
            return None
        has_args = len(args) > 1 or not isinstance(final, _Missing)
        if isinstance(receiver, TemplateData):
            value = _STRUCT_FIELDS.get(name)
            if value is not None:
                if has_args:
                    raise self.error(f"{name} has arguments but cannot be invoked as function")
                return value(receiver)
        elif isinstance(receiver, Mapping):
            if has_args:
                raise self.error(f"{name} is not a method but has arguments")
            return receiver.get(name, "")  # Prometheus runs with missingkey=zero
        raise self.error(f"can't evaluate field {name} in type {_type_name(receiver)}")

    def eval_function(
        self,
        dot: Value,
        ident: _Ident,
        cmd: _Node,
        args: tuple[_Node, ...],
        final: Value | _Missing,
    ) -> Value:
        self.node = ident
        name = ident.name
        fn = _FUNCS[name]
        call_args = args[1:]
        count = len(call_args) + (not isinstance(final, _Missing))
        fixed = len(fn.params)
        if count < fixed or (fn.variadic is None and count != fixed):
            want = f"at least {fixed}" if fn.variadic else str(fixed)
            raise self.error(f"wrong number of args for {name}: want {want} got {count}")
        if name in ("and", "or"):
            return self.eval_and_or(dot, name, call_args, final)
        values: list[Value] = []
        for k, node in enumerate(call_args):
            kind = fn.params[k] if k < fixed else fn.variadic
            assert kind is not None
            values.append(self.eval_arg(dot, kind, node))
        if not isinstance(final, _Missing):
            k = len(call_args)
            kind = fn.params[k] if k < fixed else fn.variadic
            assert kind is not None
            values.append(self.validate(final, kind))
        if fn.takes_data:
            values.insert(0, self.data)
        try:
            return fn.impl(*values)
        except _CallError as exc:
            self.node = cmd
            raise self.error(f"error calling {name}: {exc}") from None

    def eval_and_or(
        self, dot: Value, name: str, args: tuple[_Node, ...], final: Value | _Missing
    ) -> Value:
        value: Value = None
        for node in args:
            value = self.eval_arg(dot, "value", node)
            if _truth(value) == (name == "or"):
                return value  # short-circuit, as in Go 1.18+
        if not isinstance(final, _Missing):
            value = self.validate(final, "value")
        return value

    def eval_arg(self, dot: Value, kind: str, node: _Node) -> Value:
        self.node = node
        if isinstance(node, _Dot):
            return self.validate(dot, kind)
        if isinstance(node, _Nil):
            if kind == "any":
                return None
            raise self.error(f"cannot assign nil to {_KIND_NAMES[kind]}")
        if isinstance(node, _Field):
            return self.validate(self.eval_field_node(dot, node, (node,), _MISSING), kind)
        if isinstance(node, _Var):
            return self.validate(self.eval_variable(dot, node, (node,), _MISSING), kind)
        if isinstance(node, _Pipe):
            return self.validate(self.eval_pipeline(dot, node), kind)
        if isinstance(node, _Ident):
            return self.validate(self.eval_function(dot, node, node, (node,), _MISSING), kind)
        if isinstance(node, _Chain):
            return self.validate(self.eval_chain(dot, node, (node,), _MISSING), kind)
        assert isinstance(node, _Lit)
        if kind == "string":
            if type(node.value) is not str:
                raise self.error(f"expected string; found {node.text}")
            return node.value
        return self.constant(node)

    def validate(self, value: Value, kind: str) -> Value:
        if value is None and kind != "any":
            raise self.error(f"invalid value; expected {_KIND_NAMES[kind]}")
        if kind == "string" and type(value) is not str:
            raise self.error(f"wrong type for value; expected string; got {_type_name(value)}")
        return value


_KIND_NAMES = {"string": "string", "value": "reflect.Value", "any": "interface {}"}
_STRUCT_FIELDS: dict[str, Callable[[TemplateData], Value]] = {
    "Labels": lambda d: d.labels,
    "ExternalLabels": lambda d: d.external_labels,
    "ExternalURL": lambda d: d.external_url,
    "Value": lambda d: d.value,
}


# --------------------------------------------------------------------------- API


class Template:
    """A parsed template; immutable and safe to share."""

    __slots__ = ("_nodes", "text")

    def __init__(self, text: str, nodes: tuple[_Node, ...]) -> None:
        self.text = text
        self._nodes = nodes

    def render(self, data: TemplateData) -> str:
        """Execute against one alert; raises TemplateError like Go's Execute would fail."""
        ex = _Exec(self.text, data)
        ex.walk(self._nodes, data)
        return "".join(ex.out)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


@functools.lru_cache(maxsize=4096)
def compile_template(text: str) -> Template:
    """Parse `text` once; raises TemplateError on syntax errors and unknown functions."""
    return Template(text, _Parser(text).parse())


def expand(text: str, data: TemplateData, *, alert_name: str | None = None) -> str:
    """Expand an alert label/annotation template as Prometheus does (rules/alerting.go).

    On any error the result is `<error expanding template: MESSAGE>`.  With
    `alert_name`, MESSAGE is worded exactly as Prometheus words it (template
    `__alert_<name>`, columns counted after its prepended variable definitions).
    """
    if "{{" not in text:
        return text  # no action, nothing to render: most label values (`severity: page`)
    try:
        return compile_template(text).render(data)
    except TemplateError as err:
        msg = str(err) if alert_name is None else err.prometheus_message(f"__alert_{alert_name}")
        return f"<error expanding template: {msg}>"
