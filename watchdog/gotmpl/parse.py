"""Go text/template's parser: tokens to a small immutable tree of nodes.

The second stage of `watchdog.gotmpl` (lex -> parse -> exec): recursive descent following Go's
text/template/parse (parse.go, node.go), with Go's error texts and positions. As in Go, the
caller hands in the functions that exist (`parse(text, funcs, unsupported)`), so the parser knows
no function itself. It must not do I/O or read the clock, and it never runs anything: it only
builds nodes. Nesting is bounded (`MAX_DEPTH`) so that no template can exhaust Python's stack.
"""

from __future__ import annotations

import re
from collections.abc import Container, Mapping
from dataclasses import dataclass

from watchdog.gocompat import parse_float, quote
from watchdog.gotmpl.lex import Tok, lex
from watchdog.gotmpl.values import TemplateError, Value, line_col

__all__ = [
    "Action", "Block", "Chain", "Cmd", "Dot", "Field", "Ident", "Jump", "Lit", "Nil", "Node",
    "Parser", "Pipe", "Text", "Var", "node_str", "parse",
]  # fmt: skip

MAX_DEPTH = 100  # nesting of parentheses/blocks; keeps Python's recursion far from its limit


def parse(text: str, funcs: Container[str], unsupported: Mapping[str, str]) -> tuple[Node, ...]:
    """The nodes of `text`; TemplateError as Go's Parse reports it. `funcs` are the names that
    exist; `unsupported` maps a name that would exist in Prometheus to why it cannot here."""
    return Parser(text, funcs, unsupported).parse()


# --------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class Node:
    pos: int


@dataclass(frozen=True)
class Lit(Node):
    value: Value
    text: str  # source text, which is what Go prints in error contexts
    overflow: bool = False  # an integer constant only representable as uint64


@dataclass(frozen=True)
class Dot(Node):
    pass


@dataclass(frozen=True)
class Nil(Node):
    pass


@dataclass(frozen=True)
class Ident(Node):
    name: str


@dataclass(frozen=True)
class Field(Node):
    names: tuple[str, ...]  # .A.B on dot


@dataclass(frozen=True)
class Var(Node):
    name: str
    fields: tuple[str, ...]  # $x.A.B


@dataclass(frozen=True)
class Cmd(Node):
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Pipe(Node):
    decl: tuple[str, ...]
    assign: bool
    cmds: tuple[Cmd, ...]


@dataclass(frozen=True)
class Chain(Node):
    node: Node
    fields: tuple[str, ...]  # (pipe).A.B


@dataclass(frozen=True)
class Text(Node):
    text: str


@dataclass(frozen=True)
class Action(Node):
    pipe: Pipe


@dataclass(frozen=True)
class Block(Node):
    kind: str  # if, range, with
    pipe: Pipe
    body: tuple[Node, ...]
    else_: tuple[Node, ...] | None


@dataclass(frozen=True)
class Jump(Node):
    kind: str  # break, continue


def node_str(n: Node) -> str:
    """Go's Node.String(), used in execution error messages."""
    if isinstance(n, Lit):
        return n.text
    if isinstance(n, Dot):
        return "."
    if isinstance(n, Nil):
        return "nil"
    if isinstance(n, Ident):
        return n.name
    if isinstance(n, Field):
        return "".join("." + f for f in n.names)
    if isinstance(n, Var):
        return ".".join((n.name, *n.fields))
    if isinstance(n, Cmd):
        args = (f"({node_str(a)})" if isinstance(a, Pipe) else node_str(a) for a in n.args)
        return " ".join(args)
    if isinstance(n, Pipe):
        decl = ", ".join(n.decl) + (" = " if n.assign else " := ") if n.decl else ""
        return decl + " | ".join(node_str(c) for c in n.cmds)
    if isinstance(n, Chain):
        base = f"({node_str(n.node)})" if isinstance(n.node, Pipe) else node_str(n.node)
        return base + "".join("." + f for f in n.fields)
    if isinstance(n, Text):
        return n.text
    if isinstance(n, Action):
        return "{{" + node_str(n.pipe) + "}}"
    if isinstance(n, Block):
        body = "".join(node_str(x) for x in n.body)
        else_ = "" if n.else_ is None else "{{else}}" + "".join(node_str(x) for x in n.else_)
        return f"{{{{{n.kind} {node_str(n.pipe)}}}}}{body}{else_}{{{{end}}}}"
    assert isinstance(n, Jump)
    return "{{" + n.kind + "}}"


# --------------------------------------------------------------------------- parser


class Parser:
    """Recursive descent over the token list, following Go's text/template/parse."""

    def __init__(self, text: str, funcs: Container[str], unsupported: Mapping[str, str]) -> None:
        self.text = text
        self.funcs = funcs
        self.unsupported = unsupported
        self.toks = lex(text)
        self.i = 0
        self.vars = ["$", "$labels", "$externalLabels", "$externalURL", "$value"]
        self.range_depth = 0
        self.depth = 0

    # token helpers
    def error(self, msg: str, tok: Tok | None = None) -> TemplateError:
        pos = (tok or self.toks[min(self.i, len(self.toks) - 1)]).pos
        line, col = line_col(self.text, pos)
        return TemplateError(msg, line, col)

    def peek(self) -> Tok:
        return self.toks[min(self.i, len(self.toks) - 1)]  # the last token is eof or error

    def next(self) -> Tok:
        tok = self.peek()
        if tok.kind == "error":
            raise self.error(tok.val, tok)
        self.i += 1
        return tok

    def peek_non_space(self) -> Tok:
        while self.peek().kind == "space":
            self.i += 1
        return self.peek()

    def at_keyword(self, word: str) -> bool:
        tok = self.peek_non_space()
        return tok.kind == "kw" and tok.val == word

    def next_non_space(self) -> Tok:
        self.peek_non_space()
        return self.next()

    def unexpected(self, tok: Tok, context: str) -> TemplateError:
        return self.error(f"unexpected {_tok_str(tok)} in {context}", tok)

    def expect(self, kind: str, context: str) -> Tok:
        tok = self.next_non_space()
        if tok.kind != kind:
            raise self.unexpected(tok, context)
        return tok

    # grammar
    def parse(self) -> tuple[Node, ...]:
        nodes: list[Node] = []
        while self.peek().kind != "eof":
            node = self.text_or_action()
            if isinstance(node, Tok):
                raise self.error(f"unexpected {{{{{node.val}}}}}", node)
            nodes.append(node)
        return tuple(nodes)

    def text_or_action(self) -> Node | Tok:
        """A node, or the `end`/`else` keyword token that closes the current list."""
        tok = self.next_non_space()
        if tok.kind == "text":
            return Text(tok.pos, tok.val)
        if tok.kind == "ldelim":
            return self.action()
        raise self.unexpected(tok, "input")

    def action(self) -> Node | Tok:
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
                return Jump(tok.pos, tok.val)
            raise self.error(f"{{{{{tok.val}}}}} is not supported in alert templates", tok)
        self.i -= 1
        return Action(self.peek_non_space().pos, self.pipeline("command", "rdelim"))

    def item_list(self) -> tuple[tuple[Node, ...], Tok]:
        nodes: list[Node] = []
        while self.peek_non_space().kind != "eof":
            node = self.text_or_action()
            if isinstance(node, Tok):
                return tuple(nodes), node
            nodes.append(node)
        if self.peek().kind == "error":
            self.next()
        raise self.error("unexpected EOF")

    def control(self, kind: str) -> Block:
        self.enter()
        mark = len(self.vars)
        pipe = self.pipeline(kind, "rdelim")
        self.range_depth += kind == "range"
        body, end = self.item_list()
        self.range_depth -= kind == "range"
        else_: tuple[Node, ...] | None = None
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
        return Block(pipe.pos, kind, pipe, body, else_)

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error("max expression depth exceeded")

    def pipeline(self, context: str, end: str) -> Pipe:
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
                    raise self.error(f"undefined variable {quote(var.val)}", var)
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
        cmds: list[Cmd] = []
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
            if isinstance(cmd.args[0], Lit | Dot | Nil):
                raise self.error(f"non executable command in pipeline stage {stage}")
        return Pipe(pos, tuple(decl), assign, tuple(cmds))

    def command(self) -> Cmd:
        pos = self.peek_non_space().pos
        args: list[Node] = []
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
        return Cmd(pos, tuple(args))

    def operand(self) -> Node | None:
        node = self.term()
        if node is None or self.peek().kind != "field":
            return node
        pos = self.peek().pos  # Go positions a chain at its first trailing field
        fields: list[str] = []
        while self.peek().kind == "field":
            fields.append(self.next().val[1:])
        if isinstance(node, Field):
            return Field(pos, (*node.names, *fields))
        if isinstance(node, Var):
            return Var(pos, node.name, (*node.fields, *fields))
        if isinstance(node, Lit | Nil | Dot):
            raise self.error(f"unexpected . after term {quote(node_str(node))}")
        return Chain(pos, node, tuple(fields))

    def term(self) -> Node | None:
        tok = self.next_non_space()
        kind = tok.kind
        if kind == "ident":
            self.check_function(tok)
            return Ident(tok.pos, tok.val)
        if kind == "dot":
            return Dot(tok.pos)
        if kind == "nil":
            return Nil(tok.pos)
        if kind == "var":
            if tok.val not in self.vars:
                raise self.error(f"undefined variable {quote(tok.val)}", tok)
            return Var(tok.pos, tok.val, ())
        if kind == "field":
            return Field(tok.pos, (tok.val[1:],))
        if kind == "bool":
            return Lit(tok.pos, tok.val == "true", tok.val)
        if kind in ("number", "char"):
            return self.number(tok)
        if kind == "lparen":
            self.enter()
            pipe = self.pipeline("parenthesized pipeline", "rparen")
            self.depth -= 1
            return pipe
        if kind in ("string", "raw"):
            return Lit(tok.pos, _unquote(tok.val, self, tok), tok.val)
        self.i -= 1
        return None

    def number(self, tok: Tok) -> Lit:
        text = tok.val
        if tok.kind == "char":
            value = _unquote(text, self, tok)
            if len(value) != 1:
                raise self.error(f"malformed character constant: {text}", tok)
            return Lit(tok.pos, ord(value), text)
        if text.endswith("i"):
            raise self.error(f"complex numbers are not supported: {quote(text)}", tok)
        as_int = _parse_go_int(text)
        if as_int is not None:
            if as_int >= 2**64 or as_int < -(2**63):
                raise self.error(f"integer overflow: {quote(text)}", tok)
            return Lit(tok.pos, as_int, text, overflow=as_int >= 2**63)
        try:
            as_float = parse_float(text)
        except ValueError:
            raise self.error(f"illegal number syntax: {quote(text)}", tok) from None
        if not any(c in text for c in ".eEpP"):
            raise self.error(f"integer overflow: {quote(text)}", tok)
        return Lit(tok.pos, as_float, text)

    def check_function(self, tok: Tok) -> None:
        name = tok.val
        if name in self.funcs:
            return
        if name in self.unsupported:
            why = self.unsupported[name]
            raise self.error(f"function {quote(name)} is not supported: {why}", tok)
        raise self.error(f"function {quote(name)} not defined", tok)


def _tok_str(tok: Tok) -> str:
    """Go's item.String() for parse error messages."""
    if tok.kind == "eof":
        return "EOF"
    if tok.kind in ("kw", "nil", "dot"):
        return f"<{tok.val}>"
    if len(tok.val) > 10:
        return quote(tok.val[:10]) + "..."
    return quote(tok.val)



_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


def _unquote(text: str, parser: Parser, tok: Tok) -> str:
    """Go's strconv.Unquote for "...", `...` and '...' literals."""
    quote, body = text[0], text[1:-1]
    if quote == "`":
        return body.replace("\r", "")  # Go drops carriage returns in raw strings
    out: list[str] = []
    # Go inserts \xNN and \NNN as raw bytes, so "\xc3\xa9" is "é": consecutive byte escapes
    # are gathered and decoded as UTF-8 (an invalid sequence becomes U+FFFD, as Go's JSON
    # encoder would write it in the API).
    pending = bytearray()

    def flush() -> None:
        if pending:
            out.append(pending.decode("utf-8", "replace"))
            pending.clear()

    i = 0
    while i < len(body):
        c = body[i]
        i += 1
        if c != "\\":
            flush()
            out.append(c)
            continue
        e = body[i]
        i += 1
        if e in _ESCAPES:
            flush()
            out.append(_ESCAPES[e])
        elif e == quote:
            flush()
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
            if e in "x01234567":
                if code > 0xFF:  # \777 is not a byte
                    raise parser.error("invalid syntax", tok)
                if code > 0x7F and quote == "'":
                    raise parser.error("byte escapes above \\x7f are not supported", tok)
                pending.append(code)
                continue
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise parser.error("invalid syntax", tok)
            flush()
            out.append(chr(code))
        else:
            raise parser.error("invalid syntax", tok)
    flush()
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
