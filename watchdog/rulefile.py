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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import promql_parser
import yaml

from watchdog.gotmpl import TemplateError, compile_template
from watchdog.model import RuleFileModel
from watchdog.schema import ValidationError
from watchdog.slo import generate as generate_slo_group
from watchdog.slo import group_name_of, query_problems, render

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
    # by path, the line of every key and item: `_Lines` for a file read whole, built from the
    # text only when something asks (the first problem to report, an SLO shown)
    lines: Mapping[Path_, int] = field(default_factory=dict)
    data: Any = None  # the document as loaded (references are checked on it, model or not)
    # Groups generated from `slos:` -> the line of the SLO they come from (shown as `source`)
    sources: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if not p.warning]

    @property
    def ok(self) -> bool:
        return self.model is not None and not self.errors

    def line_of(self, path: Path_) -> int:
        return line_for(self.lines, path)


class DuplicateKeyError(Exception):
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

    def count_expanded(self, n: int, node: yaml.Node) -> None:
        self.expanded += n
        if self.expanded > MAX_ALIAS_VALUES:
            raise _LimitExceeded(node.start_mark.line + 1, (
                f"more than {MAX_ALIAS_VALUES:,} values built by expanding YAML aliases (an "
                "alias bomb?)"))


_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"


@dataclass
class LoadedYaml:
    """Constructed data plus, by path, the line of every key and item and the source text of
    every plain scalar that YAML typed as something other than a string (`1`, `true`, `~`):
    Go-YAML reads such a scalar into a string field as its text, and so must we (`expr: 1`)."""

    lines: dict[Path_, int] = field(default_factory=dict)
    raw: dict[Path_, str] = field(default_factory=dict)
    record_lines: bool = True  # False: `lines` stays empty (see `_Lines`)


class _Lines(Mapping[Path_, int]):
    """A file's lines by path, read from its text on first use. A path and an int per node is
    ~1.6 MiB per 1,000 rules, built and mostly dropped again for every file loaded, which left
    the daemon's heap fragmented (bench/daemon.py --memory); a good file never needs them."""

    __slots__ = ("_lines", "_text")

    def __init__(self, text: str) -> None:
        self._text = text
        self._lines: dict[Path_, int] | None = None

    @property
    def built(self) -> bool:
        return self._lines is not None

    def _get(self) -> dict[Path_, int]:
        if self._lines is None:
            self._lines = _load_documents(self._text)[1].lines
        return self._lines

    def __getitem__(self, path: Path_) -> int:
        return self._get()[path]

    def __contains__(self, path: object) -> bool:
        return path in self._get()

    def __iter__(self) -> Iterator[Path_]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def _merged_pairs(node: yaml.MappingNode, scalars: _Constructor
                  ) -> list[tuple[yaml.Node, yaml.Node, bool]]:
    """The mapping's (key, value, explicit) pairs with `<<:` merge keys resolved as go-yaml v3
    resolves them: explicit keys win over merged ones wherever they are written (so
    `- <<: *base` followed by an overriding `expr:` is not a duplicate), merged keys fill in,
    and among several merged mappings the first one listed wins (YAML's merge-key rule).

    Every merged pair counts toward `MAX_ALIAS_VALUES`: merging is alias expansion, and
    `<<: [*a, *a, …]` nested a few levels would otherwise list billions of pairs, most of them
    overridden and so never built (the count in `_construct` would not see them)."""
    explicit: list[tuple[yaml.Node, yaml.Node, bool]] = []
    sources: list[yaml.Node] = []
    merge_line: int | None = None
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            if merge_line is not None:  # go-yaml: two `<<` keys are a duplicate like any other
                raise DuplicateKeyError("<<", key_node.start_mark.line + 1, merge_line)
            merge_line = key_node.start_mark.line + 1
            if isinstance(value_node, yaml.SequenceNode):
                sources.extend(value_node.value)
            else:
                sources.append(value_node)
        else:
            explicit.append((key_node, value_node, True))
    merged: list[tuple[yaml.Node, yaml.Node, bool]] = []
    for src in sources:
        if not isinstance(src, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(
                None, None, "a merge key (<<) needs a mapping or a list of mappings",
                src.start_mark)
        pairs = _merged_pairs(src, scalars)
        scalars.count_expanded(len(pairs), src)
        merged.extend((k, v, False) for k, v, _ in pairs)
    return explicit + merged


def _key_text(key_node: yaml.Node) -> str:
    """A mapping key as go-yaml reads it into a string-keyed map: the scalar's text."""
    if isinstance(key_node, yaml.ScalarNode):
        if _SURROGATE.search(key_node.value):
            raise yaml.constructor.ConstructorError(
                None, None, "found invalid Unicode character escape code", key_node.start_mark)
        return "" if key_node.tag == _NULL_TAG else str(key_node.value)
    raise yaml.constructor.ConstructorError(
        None, None, "a mapping key must be a plain value", key_node.start_mark)


def _construct(node: yaml.Node, path: Path_, out_: LoadedYaml, scalars: _Constructor) -> Any:
    if id(node) in scalars.seen:
        scalars.count_expanded(1, node)
    else:
        scalars.seen.add(id(node))
    if len(path) > MAX_YAML_DEPTH:
        raise _LimitExceeded(node.start_mark.line + 1,
                             f"nested more than {MAX_YAML_DEPTH} levels deep")
    if out_.record_lines:
        out_.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        for key_node, value_node, explicit in _merged_pairs(node, scalars):
            key = _key_text(key_node)
            if key in out:
                if not explicit:
                    continue  # an explicit key (or an earlier merged one) already set it
                raise DuplicateKeyError(str(key), key_node.start_mark.line + 1, first_line[key])
            first_line[key] = key_node.start_mark.line + 1
            child = (*path, key)
            if out_.record_lines:
                out_.lines[child] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, child, out_, scalars)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), out_, scalars) for i, item in enumerate(node.value)]
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
    if not isinstance(value, str) and isinstance(node, yaml.ScalarNode):
        out_.raw[path] = "" if node.tag == _NULL_TAG else node.value
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "invalid value"


_VALUE_EVENTS = (yaml.ScalarEvent, yaml.CollectionStartEvent, yaml.AliasEvent)

# libyaml (bundled with PyYAML's wheels) parses ~8x faster than the pure-Python parser,
# caps nesting at 1,000 levels on its own, and is what Go's YAML was ported from.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _count_values(text: str) -> None:
    """Values are counted first over ALL documents (parse events cost little and are dropped
    at once), nodes built after: a file with too many values is refused before it costs their
    memory, however they are split into documents."""
    count = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, _VALUE_EVENTS):
            count += 1
            if count > MAX_YAML_VALUES:
                mark = event.start_mark
                raise _LimitExceeded(mark.line + 1 if mark is not None else 1, (
                    f"more than {MAX_YAML_VALUES:,} values (the limit; split the file)"))


def _compose_all(text: str) -> list[yaml.Node]:
    """Every document's node, once the file is known to be within `MAX_YAML_VALUES`."""
    _count_values(text)
    return [n for n in yaml.compose_all(text, Loader=_LOADER) if n is not None]


def load_node(node: yaml.Node | None, scalars: _Constructor | None = None,
              record_lines: bool = True) -> tuple[Any, LoadedYaml]:
    """One composed document -> data and where everything is. Pass one `scalars` for all the
    documents of a file so that the alias limit holds for the file, not for each document."""
    loaded = LoadedYaml(record_lines=record_lines)
    if node is None:
        return None, loaded
    return _construct(node, (), loaded, scalars if scalars is not None else _Constructor()), loaded


def load_yaml_with_lines(text: str) -> tuple[Any, dict[Path_, int]]:
    """Safe-load YAML (one document) and remember the line of every key and item (by path).

    Raises `yaml.YAMLError` for invalid YAML and `_LimitExceeded` past `MAX_YAML_VALUES`,
    `MAX_ALIAS_VALUES` or `MAX_YAML_DEPTH`; the size limit is the caller's (`parse_rule_file`)."""
    _count_values(text)
    data, loaded = load_node(yaml.compose(text, Loader=_LOADER))
    return data, loaded.lines


def line_for(lines: Mapping[Path_, int], path: Path_) -> int:
    """The line of the longest prefix of `path` that exists (validation locs may add union tags)."""
    best = 1
    resolved: list[str | int] = []
    for part in path:
        candidate = (*resolved, part)
        if candidate in lines:
            resolved.append(part)
            best = lines[candidate]
        # a part that is not in the document (a union tag, a model name) is skipped
    return best


def _clean_loc(loc: tuple[str | int, ...], lines: Mapping[Path_, int]) -> list[str | int]:
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


def _schema_problems(name: str, err: ValidationError, lines: Mapping[Path_, int]
                       ) -> Iterator[Problem]:
    for e in err.errors():
        loc = _clean_loc(tuple(e["loc"]), lines)
        msg: str = _MESSAGES.get(e["type"]) or e["msg"]
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


class _NotRules(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def _node_get(node: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key and isinstance(v, yaml.Node):
                return v
    return None


def _rules_root(node: yaml.Node) -> yaml.Node | None:
    """The node holding `groups` (and our other keys): the document itself, or a Prometheus
    Operator PrometheusRule manifest's `spec`; None for a document without rules (an empty
    PrometheusRule, a promtool test file)."""
    if _node_get(node, "rule_files") is not None and _node_get(node, "tests") is not None:
        # A promtool unit-test file kept beside the rules (`watchdog test` runs it): it holds
        # no rules, and the folder's loader passes it by instead of refusing its keys.
        return None
    kind = _node_get(node, "kind")
    api = _node_get(node, "apiVersion")
    if not isinstance(kind, yaml.ScalarNode) or not isinstance(api, yaml.ScalarNode):
        return node
    if kind.value == "PrometheusRule" and api.value.startswith("monitoring.coreos.com/"):
        spec = _node_get(node, "spec")
        if spec is None or (isinstance(spec, yaml.ScalarNode) and spec.tag == _NULL_TAG):
            return None
        if not isinstance(spec, yaml.MappingNode):
            raise _NotRules(spec.start_mark.line + 1, "spec: a PrometheusRule's spec must be a "
                                                      "mapping with groups")
        return spec
    raise _NotRules(kind.start_mark.line + 1,
                    f"a Kubernetes {kind.value!r} ({api.value}) is not a rule file: only "
                    "PrometheusRule manifests (monitoring.coreos.com/v1) are read")


def _load_documents(text: str, record_lines: bool = True) -> tuple[Any, LoadedYaml]:
    """Every document of the file (Prometheus reads only the first; a folder of Kubernetes
    manifests is often one file with several), PrometheusRule manifests unwrapped, combined
    into one rule file: lists concatenated, mappings merged. Paths in the result are those of
    the combined data, lines those of the file (none unless `record_lines`, for one document:
    several are combined by their lines)."""
    scalars = _Constructor()  # one alias count for the whole file
    docs = [load_node(root, scalars, record_lines) for n in _compose_all(text)
            if (root := _rules_root(n)) is not None]
    docs = [(d, ld) for d, ld in docs if d is not None]
    if len(docs) <= 1:
        return docs[0] if docs else (None, LoadedYaml())
    if not record_lines:
        return _load_documents(text)
    combined: dict[Any, Any] = {}
    out = LoadedYaml()
    for data, loaded in docs:
        if not isinstance(data, dict):
            raise _NotRules(loaded.lines.get((), 1), "a rule file must be a mapping with "
                            "groups, actions, receivers, routes, inhibit_rules")
        offsets: dict[Any, int] = {}
        for key, value in data.items():
            if value is None:
                continue
            have = combined.get(key)
            if have is None:
                combined[key] = value
                offsets[key] = 0
            elif isinstance(have, list) and isinstance(value, list):
                offsets[key] = len(have)
                have.extend(value)
            elif isinstance(have, dict) and isinstance(value, dict):
                for k, v in value.items():
                    if k in have:
                        raise DuplicateKeyError(f"{key}.{k}", loaded.lines.get((key, k), 1),
                                                out.lines.get((key, k), 1))
                    have[k] = v
            else:
                raise DuplicateKeyError(str(key), loaded.lines.get((key,), 1),
                                        out.lines.get((key,), 1))

        def shifted(path: Path_, offsets: dict[Any, int] = offsets) -> Path_:
            if (len(path) >= 2 and isinstance(path[1], int)
                    and isinstance(combined.get(path[0]), list)):
                return (path[0], path[1] + offsets.get(path[0], 0), *path[2:])
            return path

        for path, line in loaded.lines.items():
            out.lines.setdefault(shifted(path), line)
        for path, raw in loaded.raw.items():
            out.raw.setdefault(shifted(path), raw)
    return combined, out


def _go_strings(data: dict[Any, Any], raw: dict[Path_, str]) -> None:
    """Read the string fields of groups and rules as Go-YAML reads a scalar into a Go string:
    its text (`expr: 1` is the PromQL `1`, `severity: true` the label value "true", an empty
    `job:` the empty string), where YAML typing would give a number, a bool or null."""

    def text(container: dict[Any, Any], path: Path_, key: str) -> None:
        if key in container and (*path, key) in raw:
            container[key] = raw[(*path, key)]

    def string_map(container: dict[Any, Any], path: Path_, key: str) -> None:
        m = container.get(key)
        if key in container and m is None:
            del container[key]  # `labels:` with nothing under it: no labels
        elif isinstance(m, dict):
            for k in m:
                text(m, (*path, key), k)

    groups = data.get("groups")
    for gi, g in enumerate(groups if isinstance(groups, list) else []):
        if not isinstance(g, dict):
            continue
        gpath: Path_ = ("groups", gi)
        text(g, gpath, "name")
        string_map(g, gpath, "labels")
        rules = g.get("rules")
        for ri, r in enumerate(rules if isinstance(rules, list) else []):
            if isinstance(r, dict):
                rpath: Path_ = (*gpath, "rules", ri)
                for key in ("alert", "record", "expr"):
                    text(r, rpath, key)
                string_map(r, rpath, "labels")
                string_map(r, rpath, "annotations")


def parse_rule_file(text: str, name: str) -> ParsedFile:
    """Parse and validate one rule file. Never raises for bad input: problems are returned,
    every one this file has (the schema's, PromQL, templates, names), not just the first kind."""
    if len(text) > MAX_FILE_BYTES:
        return ParsedFile(name, None, [Problem(name, 1, _too_large(len(text)))])
    try:
        data, loaded = _load_documents(text, record_lines=False)
    except (DuplicateKeyError, _NotRules, _LimitExceeded) as e:
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
    lines: Mapping[Path_, int] = loaded.lines if loaded.lines else _Lines(text)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return ParsedFile(name, None, [Problem(
            name, 1, "a rule file must be a mapping with groups, actions, receivers, routes, "
                     "inhibit_rules")])
    _go_strings(data, loaded.raw)  # before any check: the checks see what Prometheus reads
    problems = list(_document_problems(name, data, lines))
    try:
        model = RuleFileModel.model_validate(data)
    except ValidationError as e:
        problems.extend(_schema_problems(name, e, lines))
        return ParsedFile(name, None, sorted(problems, key=lambda p: p.line), lines, data)
    sources: dict[str, int] = {}
    if model.slos and not any(not p.warning for p in problems):
        generated = []
        for i, slo in enumerate(model.slos):
            group = generate_slo_group(slo)
            line = line_for(lines, ("slos", i))
            for rule in group.alerting_rules:
                if (err := promql_limit_error(rule.expr)) is not None:
                    problems.append(Problem(name, line, f"slo {slo.slo_id!r}: the generated "
                                            f"alert {rule.alert!r}: {err}"))
            generated.append(group)
            sources[group.name] = line
        model = model.model_copy(update={"groups": [*model.groups, *generated]})
    return ParsedFile(name, model, problems, lines, data, sources)


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


def _document_problems(name: str, data: dict[Any, Any], lines: Mapping[Path_, int]
                       ) -> Iterator[Problem]:
    """What the schema cannot see — PromQL, templates, group and receiver names unique in the
    file — read from the document itself, so it is reported in the same run as schema errors
    (a file fixed for one problem should not fail next time for another that was there)."""
    # where each name is first seen, by path: lines are looked up only for a problem (`_Lines`)
    seen_groups: dict[str, Path_] = {}
    for gi, g in _items(data.get("groups")):
        if not isinstance(g, dict):
            continue
        gpath: Path_ = ("groups", gi)
        gname = _str_key(g.get("name"))
        if gname is not None:
            if gname in seen_groups:
                yield Problem(name, line_for(lines, (*gpath, "name")),
                              f"group {gname!r} is repeated in the same file "
                              f"(first on line {line_for(lines, seen_groups[gname])})")
            else:
                seen_groups[gname] = (*gpath, "name")
        for ri, r in _items(g.get("rules")):
            if not isinstance(r, dict):
                continue
            rpath: Path_ = (*gpath, "rules", ri)
            if "record" in r and "alert" not in r:
                yield from _recording_problems(name, lines, rpath, r)
                yield Problem(name, line_for(lines, (*rpath, "record")),
                              f"recording rule {r.get('record')!r} skipped: the watchdog "
                              "evaluates alerting rules only", warning=True)
                continue
            yield from _rule_problems(name, lines, rpath, r)
    yield from _slo_problems(name, data, lines, seen_groups)
    for i, rep in _items(data.get("reports")):
        query = rep.get("query") if isinstance(rep, dict) else None
        if isinstance(query, str) and query.strip() and (err := check_promql(query)):
            yield Problem(name, line_for(lines, ("reports", i, "query")),
                          f"reports[{i}].query: invalid PromQL: {err}")
    actions = data.get("actions")
    for aname, spec in actions.items() if isinstance(actions, dict) else ():
        lock = spec.get("lock") if isinstance(spec, dict) else None
        if isinstance(lock, str):
            try:
                compile_template(lock)
            except TemplateError as e:
                apath = aname if isinstance(aname, str | int) else str(aname)
                yield Problem(name, line_for(lines, ("actions", apath, "lock")),
                              f"lock: invalid template in action {aname!r}: {e}")
    seen_receivers: dict[str, Path_] = {}
    for i, recv in _items(data.get("receivers")):
        rname = _str_key(recv.get("name")) if isinstance(recv, dict) else None
        if rname is None:
            continue
        if rname in seen_receivers:
            yield Problem(name, line_for(lines, ("receivers", i, "name")),
                          f"receiver {rname!r} is defined twice "
                          f"(first on line {line_for(lines, seen_receivers[rname])})")
        seen_receivers.setdefault(rname, ("receivers", i, "name"))


def _slo_problems(name: str, data: dict[Any, Any], lines: Mapping[Path_, int],
                  groups: dict[str, Path_]) -> Iterator[Problem]:
    """An SLO's queries (the `{{.window}}` placeholder, PromQL once rendered) and its generated
    group's name, which must not clash with a group of the file or another SLO's; the rest
    (objective, names, labels) is the schema's."""
    seen = dict(groups)
    for i, slo in _items(data.get("slos")):
        if not isinstance(slo, dict):
            continue
        spath: Path_ = ("slos", i)
        service, slo_name = slo.get("service"), slo.get("name")
        objective = slo.get("objective")
        if (isinstance(objective, int | float) and not isinstance(objective, bool)
                and 0 < objective < 1):
            yield Problem(name, line_for(lines, (*spath, "objective")),
                          f"objective {objective} is a percentage ({objective}%); for "
                          f"{objective * 100:g}% write {objective * 100:g}", warning=True)
        if isinstance(service, str) and isinstance(slo_name, str):
            gname = group_name_of(service, slo_name)
            if gname in seen:
                yield Problem(name, line_for(lines, spath),
                              f"slo {service}/{slo_name}: its group {gname!r} is already "
                              f"defined in this file (line {line_for(lines, seen[gname])})")
            else:
                seen[gname] = spath
        sli = slo.get("sli")
        if not isinstance(sli, dict):
            continue
        events = sli.get("events")
        base: Path_ = (*spath, "sli", "events") if isinstance(events, dict) else (*spath, "sli")
        holder = events if isinstance(events, dict) else sli
        for key in ("error_query", "total_query"):
            query = holder.get(key)
            if not isinstance(query, str) or not query.strip():
                continue  # the schema says it is missing or not text
            where = ".".join(str(p) for p in base[2:])
            for why in query_problems(query):
                yield Problem(name, line_for(lines, (*base, key)), f"{where}.{key}: {why}")
            if (err := check_promql(render(query, "5m"))) is not None:
                yield Problem(name, line_for(lines, (*base, key)),
                              f"{where}.{key}: invalid PromQL (with {{{{.window}}}} = 5m): {err}")


_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _recording_problems(name: str, lines: Mapping[Path_, int], rpath: Path_,
                        rule: dict[Any, Any]) -> Iterator[Problem]:
    """What Prometheus refuses in a recording rule (`watchdog test` evaluates them, and a file
    Prometheus would not load must not pass `check`). Read from the document like the other
    checks here; a field that is not text is the schema's to report."""
    record = rule.get("record")
    if isinstance(record, str) and not _METRIC_NAME.match(record):
        yield Problem(name, line_for(lines, (*rpath, "record")),
                      f"record: invalid recording rule name: {record}")
    expr = rule.get("expr")
    if isinstance(expr, str) and (err := check_promql(expr)) is not None:
        yield Problem(name, line_for(lines, (*rpath, "expr")),
                      f"expr: invalid PromQL in recording rule {record!r}: {err}")
    labels = rule.get("labels")
    for key in labels if isinstance(labels, dict) else ():
        if not isinstance(key, str) or not _LABEL_NAME.match(key) or key == "__name__":
            kpath = key if isinstance(key, str | int) else str(key)
            yield Problem(name, line_for(lines, (*rpath, "labels", kpath)),
                          f"labels: invalid label name {key!r}")


def _rule_problems(name: str, lines: Mapping[Path_, int], rpath: Path_, rule: dict[Any, Any]
                   ) -> Iterator[Problem]:
    alert = rule.get("alert")
    exprs: list[tuple[Path_, Any]] = [((*rpath, "expr"), rule.get("expr")),
                                      ((*rpath, "when"), rule.get("when"))]
    baseline = rule.get("baseline")
    if isinstance(baseline, dict):
        exprs.append(((*rpath, "baseline", "expr"), baseline.get("expr")))
    judge = rule.get("judge")
    if isinstance(judge, dict):
        exprs += [((*rpath, "judge", k), judge.get(k)) for k in ("canary", "control")]
    for path, expr in exprs:
        if not isinstance(expr, str) or not expr.strip():
            continue  # missing, empty or not text: the schema check says so
        err = check_promql(expr)
        if err is not None:
            yield Problem(name, line_for(lines, path),
                          f"{'judge.' if path[-2] == 'judge' else ''}{path[-1]}: invalid "
                          f"PromQL in rule {alert!r}: {err}")
    acts = rule.get("actions")
    if isinstance(acts, list) and acts and isinstance(rule.get("severities"), dict):
        tiers = list(rule["severities"])
        yield Problem(name, line_for(lines, (*rpath, "actions")),
                      f"rule {alert!r} has severities but a plain list of actions: they run "
                      f"once, when it starts firing (at its lowest firing tier), never when it "
                      f"gets worse; to act per tier write actions: {{{tiers[0]}: [...], ...}}",
                      warning=True)
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


