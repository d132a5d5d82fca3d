"""One rule file's text -> a validated model plus problems, each with the line it is about.

Pure: takes text and a display name, never opens files or reads the clock (the folder walk lives in
`watchdog.rulesdir`). Every problem is reported as `file:line: message`; a file with any error is
rejected whole by the caller. Checks here are the ones that need only this file: YAML syntax and
duplicate keys, the schema (unknown keys, bad durations, bad comparisons), PromQL syntax, template
syntax, group names unique within the file. Cross-file checks (duplicate action/receiver names,
references) are in `watchdog.rulesdir`, which sees the whole folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import promql_parser
import yaml
from pydantic import ValidationError

from watchdog.gotmpl import TemplateError, compile_template
from watchdog.model import RuleFileModel

Path_ = tuple[str | int, ...]

# ---- limits: far above any real rule file (measured on the corpus; see README, "Limits") -----
# The largest real rule file we know is 48 KB (kubernetes-mixin); Prometheus's own stress
# fixture rules_large.yml is 1.1 MB.
MAX_FILE_BYTES = 4 * 1024 * 1024
# Values (scalars, lists, mappings) written in the file, counted before any is built: each
# costs ~0.5 KB and ~60 µs to load, so 4 MiB of `[1,1,1,…]` would take 1.1 GB and 110 s
# (rules_large.yml: 90,000 values; the largest real file: under 5,000).
MAX_YAML_VALUES = 200_000
# Values built again by expanding YAML aliases (`*name`, `<<: *name`): the corpus has none;
# a `<<: *defaults` of 5 values in 1,000 rules needs 5,000.
MAX_ALIAS_VALUES = 100_000
# Nesting of mappings and lists (a real rule file: 7; a webhook's JSON body adds a few).
MAX_YAML_DEPTH = 64
# PromQL, checked before the parser sees it (the corpus's largest of 1,255 expressions:
# 1,486 characters, 38 operators and brackets, depth 13 by `promql_shape`).
MAX_EXPR_LENGTH = 64 * 1024
MAX_EXPR_NODES = 2_000
MAX_EXPR_DEPTH = 128

# Line breaks and other control characters: a problem is one line of output, whatever the
# message quotes (a YAML error's context, a value with a NUL in it).
_BREAKS = re.compile(r"\s*(?:\r\n|[\n\r\v\f\x85\u2028\u2029])\s*")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")


def one_line(text: str) -> str:
    """`text` on one line: line breaks become spaces, other control characters `\\xNN`."""
    text = _BREAKS.sub(" ", text.strip())
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str
    warning: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", one_line(self.message))

    def __str__(self) -> str:
        return (f"{one_line(self.file)}:{self.line}: {'warning: ' if self.warning else ''}"
                f"{self.message}")


@dataclass
class ParsedFile:
    name: str
    model: RuleFileModel | None
    problems: list[Problem] = field(default_factory=list)
    lines: dict[Path_, int] = field(default_factory=dict)
    data: Any = None  # the document as loaded (references are checked on it, model or not)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if not p.warning]

    @property
    def ok(self) -> bool:
        return self.model is not None and not self.errors

    def line_of(self, path: Path_) -> int:
        return line_for(self.lines, path)


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int, first: int) -> None:
        super().__init__(f"duplicate key {key!r} (first defined on line {first})")
        self.line = line


class _LimitExceeded(Exception):
    """A file past one of the loader's limits: refused before it can cost much."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


class _Constructor(yaml.constructor.SafeConstructor):
    """PyYAML's safe scalar constructor plus the count of values built by expanding aliases:
    each alias becomes a copy (lines are per path), so a 500-byte "billion laughs" file would
    otherwise build billions of values, ~100 MB/s without bound."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[int] = set()  # nodes built once (by id): a second time is an alias
        self.expanded = 0


def _construct(node: yaml.Node, path: Path_, lines: dict[Path_, int],
               scalars: _Constructor) -> Any:
    if id(node) in scalars.seen:
        scalars.expanded += 1
        if scalars.expanded > MAX_ALIAS_VALUES:
            raise _LimitExceeded(node.start_mark.line + 1, (
                f"more than {MAX_ALIAS_VALUES:,} values built by expanding YAML aliases (an "
                "alias bomb?)"))
    else:
        scalars.seen.add(id(node))
    if len(path) > MAX_YAML_DEPTH:
        raise _LimitExceeded(node.start_mark.line + 1,
                             f"nested more than {MAX_YAML_DEPTH} levels deep")
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        scalars.flatten_mapping(node)  # resolves `<<:` merge keys the way safe_load does
        out: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = _construct(key_node, (*path, "<key>"), {}, scalars)
            if isinstance(key, list | dict):
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark)
            if key in out:
                raise _DuplicateKey(str(key), key_node.start_mark.line + 1, first_line[key])
            first_line[key] = key_node.start_mark.line + 1
            child = (*path, key if isinstance(key, str | int) else str(key))
            lines[child] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, child, lines, scalars)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), lines, scalars) for i, item in enumerate(node.value)]
    try:
        value = scalars.construct_object(node, deep=True)
    except (ValueError, OverflowError) as e:
        # `!!int` past Python's 4,300-digit limit, a `2021-13-45` timestamp: bad input, with a
        # line, never a traceback
        raise yaml.constructor.ConstructorError(
            None, None, f"cannot read {node.value[:40]!r}: {_first_line(str(e))}",
            node.start_mark) from None
    if isinstance(value, str) and _SURROGATE.search(value):
        # "\ud800" escapes make strings that are not Unicode text: Go's YAML refuses them and
        # neither SQLite nor a JSON encoder would take them later
        raise yaml.constructor.ConstructorError(
            None, None, "found invalid Unicode character escape code", node.start_mark)
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "invalid value"


_VALUE_EVENTS = (yaml.ScalarEvent, yaml.CollectionStartEvent, yaml.AliasEvent)


def _compose(text: str) -> yaml.Node | None:
    # libyaml (bundled with PyYAML's wheels) parses ~8x faster than the pure-Python parser,
    # caps nesting at 1,000 levels on its own, and is what Go's YAML was ported from.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    # Count first (parse events cost little and are dropped at once), build nodes after: a
    # file with too many values is refused before it costs their memory.
    count = 0
    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, _VALUE_EVENTS):
            count += 1
            if count > MAX_YAML_VALUES:
                mark = event.start_mark
                raise _LimitExceeded(mark.line + 1 if mark is not None else 1, (
                    f"more than {MAX_YAML_VALUES:,} values (the limit; split the file)"))
    return yaml.compose(text, Loader=loader)


def load_yaml_with_lines(text: str) -> tuple[Any, dict[Path_, int]]:
    """Safe-load YAML and remember the line of every key and item (by path).

    Raises `yaml.YAMLError` for invalid YAML and `_LimitExceeded` past `MAX_YAML_VALUES`,
    `MAX_ALIAS_VALUES` or `MAX_YAML_DEPTH`; the size limit is the caller's (`parse_rule_file`)."""
    lines: dict[Path_, int] = {}
    node = _compose(text)
    if node is None:
        return None, lines
    return _construct(node, (), lines, _Constructor()), lines


def line_for(lines: dict[Path_, int], path: Path_) -> int:
    """The line of the longest prefix of `path` that exists (pydantic locs may add union tags)."""
    best = 1
    resolved: list[str | int] = []
    for part in path:
        candidate = (*resolved, part)
        if candidate in lines:
            resolved.append(part)
            best = lines[candidate]
        # a part that is not in the document (a union tag, a model name) is skipped
    return best


def _clean_loc(loc: tuple[str | int, ...], lines: dict[Path_, int]) -> list[str | int]:
    out: list[str | int] = []
    for part in loc:
        if (*out, part) in lines or isinstance(part, int):
            out.append(part)
    return out


def _dotted(loc: list[str | int]) -> str:
    s = ""
    for part in loc:
        s += f"[{part}]" if isinstance(part, int) else (f".{part}" if s else str(part))
    return s


_MESSAGES = {
    "extra_forbidden": "unknown field",
    "missing": "field required",
}


def _pydantic_problems(name: str, err: ValidationError, lines: dict[Path_, int]
                       ) -> Iterator[Problem]:
    for e in err.errors():
        loc = _clean_loc(tuple(e["loc"]), lines)
        msg = _MESSAGES.get(e["type"], e["msg"])
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        where = _dotted(loc)
        yield Problem(name, line_for(lines, tuple(loc)), f"{where}: {msg}" if where else msg)


_WORD_OPS = frozenset({"and", "or", "unless", "atan2"})
_TWO_CHAR_OPS = frozenset({"==", "!=", ">=", "<="})


def promql_shape(expr: str) -> tuple[int, int]:
    """(operators and brackets in all, an upper bound of the syntax tree's depth), read from
    the text without parsing it.

    Why: the PromQL parser's memory grows with the square of the tree's depth (a chain of 2,000
    `up+up+...` takes 650 MB) and with its size, so both are bounded before it sees the text.
    The depth bound: inside one pair of brackets, n binary or unary operators nest at most n
    deep, plus the deepest bracket inside. Label matchers (`{...}`), strings and comments add
    nothing."""
    nodes = 0
    stack = [[0, 0]]  # per open bracket: operators at this level, deepest child
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c in "\"'`":
            i = _skip_string(expr, i)
            continue
        if c == "#":
            end = expr.find("\n", i)
            i = n if end < 0 else end
            continue
        if c == "{":
            i = _skip_braces(expr, i)
            continue
        if c in "([":
            stack.append([0, 0])
            nodes += 1
        elif c in ")]":
            if len(stack) > 1:
                ops, child = stack.pop()
                stack[-1][1] = max(stack[-1][1], 1 + ops + child)
        elif c in "+-*/%^<>=!":
            stack[-1][0] += 1
            nodes += 1
            if expr[i:i + 2] in _TWO_CHAR_OPS:
                i += 1
        elif c.isalpha() or c == "_":
            j = i + 1
            while j < n and (expr[j].isalnum() or expr[j] in "_:"):
                j += 1
            if expr[i:j].lower() in _WORD_OPS:
                stack[-1][0] += 1
                nodes += 1
            i = j
            continue
        i += 1
    while len(stack) > 1:  # unclosed: the parser will say so; the bound must still hold
        ops, child = stack.pop()
        stack[-1][1] = max(stack[-1][1], 1 + ops + child)
    return nodes, stack[0][0] + stack[0][1]


def _skip_string(expr: str, i: int) -> int:
    quote, i = expr[i], i + 1
    while i < len(expr) and expr[i] != quote:
        i += 2 if expr[i] == "\\" and quote != "`" else 1
    return i + 1


def _skip_braces(expr: str, i: int) -> int:
    i += 1
    while i < len(expr) and expr[i] != "}":
        i = _skip_string(expr, i) if expr[i] in "\"'`" else i + 1
    return i + 1


def promql_limit_error(expr: str) -> str | None:
    """Why `expr` is refused before parsing, or None when it is within the limits."""
    if len(expr) > MAX_EXPR_LENGTH:
        return (f"expression too long: {len(expr):,} characters (the limit is "
                f"{MAX_EXPR_LENGTH:,})")
    nodes, depth = promql_shape(expr)
    if nodes > MAX_EXPR_NODES:
        return (f"expression too large: {nodes:,} operators and brackets (the limit is "
                f"{MAX_EXPR_NODES:,})")
    if depth > MAX_EXPR_DEPTH:
        return (f"expression nested too deeply: up to {depth:,} levels of operators and "
                f"brackets (the limit is {MAX_EXPR_DEPTH:,})")
    return None


def check_promql(expr: str) -> str | None:
    """None when `expr` parses as PromQL, else the parser's message (or the limit it breaks:
    the parser never sees an expression past the limits)."""
    if (refused := promql_limit_error(expr)) is not None:
        return refused
    try:
        promql_parser.parse(expr)
    except Exception as e:  # the Rust parser raises ValueError; be robust to others
        return str(e).strip() or type(e).__name__
    return None


def parse_rule_file(text: str, name: str) -> ParsedFile:
    """Parse and validate one rule file. Never raises for bad input: problems are returned,
    every one this file has (the schema's, PromQL, templates, names), not just the first kind."""
    if len(text) > MAX_FILE_BYTES:
        return ParsedFile(name, None, [Problem(name, 1, _too_large(len(text)))])
    try:
        data, lines = load_yaml_with_lines(text)
    except (_DuplicateKey, _LimitExceeded) as e:
        return ParsedFile(name, None, [Problem(name, e.line, str(e))])
    except yaml.reader.ReaderError as e:
        return ParsedFile(name, None, [_reader_problem(name, text, e)])
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 1
        msg = " ".join(x for x in (e.context, e.problem) if x) or "invalid YAML"
        return ParsedFile(name, None, [Problem(name, line, f"invalid YAML: {msg}")])
    except yaml.YAMLError as e:
        return ParsedFile(name, None, [Problem(name, 1, f"invalid YAML: {e}")])
    except RecursionError:
        return ParsedFile(name, None, [Problem(name, 1, "invalid YAML: nested too deeply")])
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return ParsedFile(name, None, [Problem(
            name, 1, "a rule file must be a mapping with groups, actions, receivers, routes, "
                     "inhibit_rules")])
    problems = list(_document_problems(name, data, lines))
    try:
        model = RuleFileModel.model_validate(data)
    except ValidationError as e:
        problems.extend(_pydantic_problems(name, e, lines))
        return ParsedFile(name, None, sorted(problems, key=lambda p: p.line), lines, data)
    return ParsedFile(name, model, problems, lines, data)


def _too_large(size: int) -> str:
    return (f"file too large: {size:,} bytes (the limit is {MAX_FILE_BYTES:,}; split it into "
            "several files)")


def _reader_problem(name: str, text: str, e: yaml.reader.ReaderError) -> Problem:
    """A character YAML refuses (NUL, other control characters), at its line."""
    position = e.position if isinstance(e.position, int) else 0
    line = text.count("\n", 0, position) + 1
    what = (f"character U+{e.character:04X}" if isinstance(e.character, int)
            else f"character {e.character!r}")
    return Problem(name, line, f"invalid YAML: {what} is not allowed (control characters may "
                               "only be written as escapes in double-quoted strings)")


def _items(value: Any) -> list[tuple[int, Any]]:
    return list(enumerate(value)) if isinstance(value, list) else []


def _str_key(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _document_problems(name: str, data: dict[Any, Any], lines: dict[Path_, int]
                       ) -> Iterator[Problem]:
    """What the schema cannot see — PromQL, templates, group and receiver names unique in the
    file — read from the document itself, so it is reported in the same run as schema errors
    (a file fixed for one problem should not fail next time for another that was there)."""
    seen_groups: dict[str, int] = {}
    for gi, g in _items(data.get("groups")):
        if not isinstance(g, dict):
            continue
        gpath: Path_ = ("groups", gi)
        gname = _str_key(g.get("name"))
        if gname is not None:
            line = line_for(lines, (*gpath, "name"))
            if gname in seen_groups:
                yield Problem(name, line, f"group {gname!r} is repeated in the same file "
                                          f"(first on line {seen_groups[gname]})")
            else:
                seen_groups[gname] = line
        for ri, r in _items(g.get("rules")):
            if not isinstance(r, dict):
                continue
            rpath: Path_ = (*gpath, "rules", ri)
            if "record" in r and "alert" not in r:
                yield Problem(name, line_for(lines, (*rpath, "record")),
                              f"recording rule {r.get('record')!r} skipped: the watchdog "
                              "evaluates alerting rules only", warning=True)
                continue
            yield from _rule_problems(name, lines, rpath, r)
    seen_receivers: dict[str, int] = {}
    for i, recv in _items(data.get("receivers")):
        rname = _str_key(recv.get("name")) if isinstance(recv, dict) else None
        if rname is None:
            continue
        line = line_for(lines, ("receivers", i, "name"))
        if rname in seen_receivers:
            yield Problem(name, line, f"receiver {rname!r} is defined twice "
                                      f"(first on line {seen_receivers[rname]})")
        seen_receivers.setdefault(rname, line)


def _rule_problems(name: str, lines: dict[Path_, int], rpath: Path_, rule: dict[Any, Any]
                   ) -> Iterator[Problem]:
    alert = rule.get("alert")
    exprs: list[tuple[Path_, Any]] = [((*rpath, "expr"), rule.get("expr")),
                                      ((*rpath, "when"), rule.get("when"))]
    baseline = rule.get("baseline")
    if isinstance(baseline, dict):
        exprs.append(((*rpath, "baseline", "expr"), baseline.get("expr")))
    for path, expr in exprs:
        if not isinstance(expr, str) or not expr.strip():
            continue  # missing, empty or not text: the schema check says so
        err = check_promql(expr)
        if err is not None:
            yield Problem(name, line_for(lines, path),
                          f"{path[-1]}: invalid PromQL in rule {alert!r}: {err}")
    for kind in ("labels", "annotations"):
        templates = rule.get(kind)
        if not isinstance(templates, dict):
            continue
        for key, text in templates.items():
            if not isinstance(text, str):
                continue  # numbers are valid templates; anything else is the schema's
            try:
                compile_template(text)
            except TemplateError as e:
                kpath = key if isinstance(key, str | int) else str(key)
                yield Problem(name, line_for(lines, (*rpath, kind, kpath)),
                              f"{kind}.{key}: invalid template in rule {alert!r}: {e}")


