"""Go text/template's executor, and the engine's entry points: `compile_template`, `expand`.

The last stage of `watchdog.gotmpl` (lex -> parse -> exec): walks the parsed nodes against one
alert's `TemplateData` the way Go's exec.go does, including which node an error is reported at,
Prometheus's `missingkey=zero` and Go 1.18's short-circuit `and`/`or`. It must not do I/O, read
the clock or run code: a template sees only its data and the functions in `funcs.FUNCS`, there
is no attribute access on Python objects, and parsing bounds the nesting depth.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from watchdog.gotmpl.fmt import NO_FLAGS, print_action, print_arg
from watchdog.gotmpl.funcs import FUNCS, UNSUPPORTED, CallError, truth
from watchdog.gotmpl.parse import (
    Action,
    Block,
    Chain,
    Cmd,
    Dot,
    Field,
    Ident,
    Jump,
    Lit,
    Nil,
    Node,
    Pipe,
    Text,
    Var,
    node_str,
    parse,
)
from watchdog.gotmpl.values import TemplateData, TemplateError, Value, line_col, type_name

__all__ = ["Exec", "Template", "compile_template", "expand"]


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


class Exec:
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
        self.node: Node | None = None

    def error(self, msg: str) -> TemplateError:
        node = self.node
        pos = node.pos if node is not None else 0
        line, col = line_col(self.text, pos)
        ctx = node_str(node) if node is not None else ""
        return TemplateError(msg, line, col, executing=True, context=ctx)

    def walk(self, nodes: tuple[Node, ...], dot: Value) -> None:
        for node in nodes:
            if isinstance(node, Text):
                self.out.append(node.text)
            elif isinstance(node, Action):
                val = self.eval_pipeline(dot, node.pipe)
                if not node.pipe.decl:
                    self.node = node
                    self.out.append(print_action(val))
            elif isinstance(node, Block):
                self.walk_block(node, dot)
            elif isinstance(node, Jump):
                raise _Break if node.kind == "break" else _Continue

    def walk_block(self, node: Block, dot: Value) -> None:
        mark = len(self.vars)
        try:
            if node.kind == "range":
                self.walk_range(node, dot)
                return
            val = self.eval_pipeline(dot, node.pipe)
            if truth(val):
                self.walk(node.body, val if node.kind == "with" else dot)
            elif node.else_ is not None:
                self.walk(node.else_, dot)
        finally:
            del self.vars[mark:]

    def walk_range(self, node: Block, dot: Value) -> None:
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
            raise self.error(f"range can't iterate over {print_arg(val, 'v', NO_FLAGS)}")
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

    def eval_pipeline(self, dot: Value, pipe: Pipe) -> Value:
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

    def eval_command(self, dot: Value, cmd: Cmd, final: Value | _Missing) -> Value:
        first = cmd.args[0]
        if isinstance(first, Field):
            return self.eval_field_node(dot, first, cmd.args, final)
        if isinstance(first, Chain):
            return self.eval_chain(dot, first, cmd.args, final)
        if isinstance(first, Ident):
            return self.eval_function(dot, first, cmd, cmd.args, final)
        if isinstance(first, Pipe):
            self.not_a_function(cmd.args, final)
            return self.eval_pipeline(dot, first)
        if isinstance(first, Var):
            return self.eval_variable(dot, first, cmd.args, final)
        self.node = first
        self.not_a_function(cmd.args, final)
        if isinstance(first, Dot):
            return dot
        if isinstance(first, Nil):
            raise self.error("nil is not a command")
        assert isinstance(first, Lit)
        return self.constant(first)

    def constant(self, lit: Lit) -> Value:
        if lit.overflow:
            self.node = lit
            raise self.error(f"{lit.text} overflows int")
        return lit.value

    def not_a_function(self, args: tuple[Node, ...], final: Value | _Missing) -> None:
        if len(args) > 1 or not isinstance(final, _Missing):
            raise self.error(f"can't give argument to non-function {node_str(args[0])}")

    def var_value(self, name: str) -> Value:
        for slot in reversed(self.vars):
            if slot.name == name:
                return slot.value
        raise self.error(f"undefined variable: {name}")

    def eval_variable(
        self, dot: Value, var: Var, args: tuple[Node, ...], final: Value | _Missing
    ) -> Value:
        self.node = var
        value = self.var_value(var.name)
        if not var.fields:
            self.not_a_function(args, final)
            return value
        return self.eval_field_chain(value, var.fields, args, final)

    def eval_field_node(
        self, dot: Value, node: Field, args: tuple[Node, ...], final: Value | _Missing
    ) -> Value:
        self.node = node
        return self.eval_field_chain(dot, node.names, args, final)

    def eval_chain(
        self, dot: Value, chain: Chain, args: tuple[Node, ...], final: Value | _Missing
    ) -> Value:
        self.node = chain
        value = self.eval_arg(dot, "any", chain.node)
        return self.eval_field_chain(value, chain.fields, args, final)

    def eval_field_chain(
        self,
        receiver: Value,
        names: tuple[str, ...],
        args: tuple[Node, ...],
        final: Value | _Missing,
    ) -> Value:
        for name in names[:-1]:
            receiver = self.eval_field(name, (), _MISSING, receiver)
        return self.eval_field(names[-1], args, final, receiver)

    def eval_field(
        self, name: str, args: tuple[Node, ...], final: Value | _Missing, receiver: Value
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
        raise self.error(f"can't evaluate field {name} in type {type_name(receiver)}")

    def eval_function(
        self,
        dot: Value,
        ident: Ident,
        cmd: Node,
        args: tuple[Node, ...],
        final: Value | _Missing,
    ) -> Value:
        self.node = ident
        name = ident.name
        fn = FUNCS[name]
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
        except CallError as exc:
            self.node = cmd
            raise self.error(f"error calling {name}: {exc}") from None

    def eval_and_or(
        self, dot: Value, name: str, args: tuple[Node, ...], final: Value | _Missing
    ) -> Value:
        value: Value = None
        for node in args:
            value = self.eval_arg(dot, "value", node)
            if truth(value) == (name == "or"):
                return value  # short-circuit, as in Go 1.18+
        if not isinstance(final, _Missing):
            value = self.validate(final, "value")
        return value

    def eval_arg(self, dot: Value, kind: str, node: Node) -> Value:
        self.node = node
        if isinstance(node, Dot):
            return self.validate(dot, kind)
        if isinstance(node, Nil):
            if kind == "any":
                return None
            raise self.error(f"cannot assign nil to {_KIND_NAMES[kind]}")
        if isinstance(node, Field):
            return self.validate(self.eval_field_node(dot, node, (node,), _MISSING), kind)
        if isinstance(node, Var):
            return self.validate(self.eval_variable(dot, node, (node,), _MISSING), kind)
        if isinstance(node, Pipe):
            return self.validate(self.eval_pipeline(dot, node), kind)
        if isinstance(node, Ident):
            return self.validate(self.eval_function(dot, node, node, (node,), _MISSING), kind)
        if isinstance(node, Chain):
            return self.validate(self.eval_chain(dot, node, (node,), _MISSING), kind)
        assert isinstance(node, Lit)
        if kind == "string":
            if type(node.value) is not str:
                raise self.error(f"expected string; found {node.text}")
            return node.value
        return self.constant(node)

    def validate(self, value: Value, kind: str) -> Value:
        if value is None and kind != "any":
            raise self.error(f"invalid value; expected {_KIND_NAMES[kind]}")
        if kind == "string" and type(value) is not str:
            raise self.error(f"wrong type for value; expected string; got {type_name(value)}")
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

    def __init__(self, text: str, nodes: tuple[Node, ...]) -> None:
        self.text = text
        self._nodes = nodes

    def render(self, data: TemplateData) -> str:
        """Execute against one alert; raises TemplateError like Go's Execute would fail."""
        ex = Exec(self.text, data)
        ex.walk(self._nodes, data)
        return "".join(ex.out)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


@functools.lru_cache(maxsize=4096)
def compile_template(text: str) -> Template:
    """Parse `text` once; raises TemplateError on syntax errors and unknown functions."""
    return Template(text, parse(text, FUNCS, UNSUPPORTED))


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
