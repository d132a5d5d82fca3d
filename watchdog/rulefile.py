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
from watchdog.model import AlertingRule, RecordingRule, RuleFileModel

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str
    warning: bool = False

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {'warning: ' if self.warning else ''}{self.message}"


@dataclass
class ParsedFile:
    name: str
    model: RuleFileModel | None
    problems: list[Problem] = field(default_factory=list)
    lines: dict[Path_, int] = field(default_factory=dict)

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


_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"


@dataclass
class LoadedYaml:
    """Constructed data plus, by path, the line of every key and item and the source text of
    every plain scalar that YAML typed as something other than a string (`1`, `true`, `~`):
    Go-YAML reads such a scalar into a string field as its text, and so must we (`expr: 1`)."""

    lines: dict[Path_, int] = field(default_factory=dict)
    raw: dict[Path_, str] = field(default_factory=dict)


def _merged_pairs(node: yaml.MappingNode) -> list[tuple[yaml.Node, yaml.Node, bool]]:
    """The mapping's (key, value, explicit) pairs with `<<:` merge keys resolved as go-yaml v3
    resolves them: explicit keys win over merged ones wherever they are written (so
    `- <<: *base` followed by an overriding `expr:` is not a duplicate), merged keys fill in,
    and among several merged mappings the first one listed wins (YAML's merge-key rule)."""
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
        merged.extend((k, v, False) for k, v, _ in _merged_pairs(src))
    return explicit + merged


def _key_text(key_node: yaml.Node, scalars: yaml.constructor.SafeConstructor) -> Any:
    """A mapping key as go-yaml reads it into a string-keyed map: the scalar's text."""
    if isinstance(key_node, yaml.ScalarNode):
        return "" if key_node.tag == _NULL_TAG else key_node.value
    raise yaml.constructor.ConstructorError(
        None, None, "a mapping key must be a plain value", key_node.start_mark)


def _construct(node: yaml.Node, path: Path_, out_: LoadedYaml,
               scalars: yaml.constructor.SafeConstructor) -> Any:
    out_.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        for key_node, value_node, explicit in _merged_pairs(node):
            key = _key_text(key_node, scalars)
            if key in out:
                if not explicit:
                    continue  # an explicit key (or an earlier merged one) already set it
                raise DuplicateKeyError(str(key), key_node.start_mark.line + 1, first_line[key])
            first_line[key] = key_node.start_mark.line + 1
            child = (*path, key)
            out_.lines[child] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, child, out_, scalars)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), out_, scalars) for i, item in enumerate(node.value)]
    value = scalars.construct_object(node, deep=True)
    if not isinstance(value, str) and isinstance(node, yaml.ScalarNode):
        out_.raw[path] = "" if node.tag == _NULL_TAG else node.value
    return value


def load_node(node: yaml.Node | None) -> tuple[Any, LoadedYaml]:
    loaded = LoadedYaml()
    if node is None:
        return None, loaded
    return _construct(node, (), loaded, yaml.constructor.SafeConstructor()), loaded


def load_yaml_with_lines(text: str) -> tuple[Any, dict[Path_, int]]:
    """Safe-load YAML and remember the line of every key and item (by path)."""
    data, loaded = load_node(yaml.compose(text, Loader=yaml.SafeLoader))
    return data, loaded.lines


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


def check_promql(expr: str) -> str | None:
    """None when `expr` parses as PromQL, else the parser's message."""
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
    Operator PrometheusRule manifest's `spec`."""
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


def _load_documents(text: str) -> tuple[Any, LoadedYaml]:
    """Every document of the file (Prometheus reads only the first; a folder of Kubernetes
    manifests is often one file with several), PrometheusRule manifests unwrapped, combined
    into one rule file: lists concatenated, mappings merged. Paths in the result are those of
    the combined data, lines those of the file."""
    docs = [load_node(root) for n in yaml.compose_all(text, Loader=yaml.SafeLoader)
            if (root := _rules_root(n)) is not None]
    docs = [(d, ld) for d, ld in docs if d is not None]
    if len(docs) <= 1:
        return docs[0] if docs else (None, LoadedYaml())
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
    """Parse and validate one rule file. Never raises for bad input: problems are returned."""
    try:
        data, loaded = _load_documents(text)
    except (DuplicateKeyError, _NotRules) as e:
        return ParsedFile(name, None, [Problem(name, e.line, str(e))])
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 1
        msg = " ".join(x for x in (e.context, e.problem) if x) or "invalid YAML"
        return ParsedFile(name, None, [Problem(name, line, f"invalid YAML: {msg}")])
    except yaml.YAMLError as e:
        return ParsedFile(name, None, [Problem(name, 1, f"invalid YAML: {e}")])
    except RecursionError:
        return ParsedFile(name, None, [Problem(name, 1, "invalid YAML: nested too deeply")])
    lines = loaded.lines
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return ParsedFile(name, None, [Problem(
            name, 1, "a rule file must be a mapping with groups, actions, receivers, routes, "
                     "inhibit_rules")])
    _go_strings(data, loaded.raw)
    try:
        model = RuleFileModel.model_validate(data)
    except ValidationError as e:
        problems = list(_pydantic_problems(name, e, lines)) + list(_raw_promql(name, data, lines))
        return ParsedFile(name, None, sorted(problems, key=lambda p: p.line), lines)
    parsed = ParsedFile(name, model, [], lines)
    parsed.problems.extend(_semantic_problems(parsed, model))
    return parsed


def _raw_promql(name: str, data: dict[Any, Any], lines: dict[Path_, int]) -> Iterator[Problem]:
    """PromQL errors in a file that also fails the schema: report them in the same pass."""
    groups = data.get("groups")
    for gi, g in enumerate(groups if isinstance(groups, list) else []):
        rules = g.get("rules") if isinstance(g, dict) else None
        for ri, r in enumerate(rules if isinstance(rules, list) else []):
            expr = r.get("expr") if isinstance(r, dict) else None
            if isinstance(expr, str) and (err := check_promql(expr)) is not None:
                yield Problem(name, line_for(lines, ("groups", gi, "rules", ri, "expr")),
                              f"expr: invalid PromQL: {err}")


def _semantic_problems(pf: ParsedFile, model: RuleFileModel) -> Iterator[Problem]:
    name = pf.name
    seen_groups: dict[str, int] = {}
    for gi, group in enumerate(model.groups):
        gpath: Path_ = ("groups", gi)
        if group.name in seen_groups:
            yield Problem(name, pf.line_of((*gpath, "name")),
                          f"group {group.name!r} is repeated in the same file "
                          f"(first on line {seen_groups[group.name]})")
        else:
            seen_groups[group.name] = pf.line_of((*gpath, "name"))
        for ri, rule in enumerate(group.rules):
            rpath: Path_ = (*gpath, "rules", ri)
            if isinstance(rule, RecordingRule):
                yield from _recording_problems(pf, rpath, rule)
                yield Problem(name, pf.line_of((*rpath, "record")),
                              f"recording rule {rule.record!r} skipped: the watchdog evaluates "
                              "alerting rules only", warning=True)
                continue
            yield from _rule_problems(pf, rpath, rule)
    seen_receivers: dict[str, int] = {}
    for i, recv in enumerate(model.receivers):
        line = pf.line_of(("receivers", i, "name"))
        if recv.name in seen_receivers:
            yield Problem(name, line, f"receiver {recv.name!r} is defined twice "
                                      f"(first on line {seen_receivers[recv.name]})")
        seen_receivers.setdefault(recv.name, line)


_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _recording_problems(pf: ParsedFile, rpath: Path_, rule: RecordingRule) -> Iterator[Problem]:
    """What Prometheus refuses in a recording rule (`watchdog test` evaluates them, and a file
    Prometheus would not load must not pass `check`)."""
    if not _METRIC_NAME.match(rule.record):
        yield Problem(pf.name, pf.line_of((*rpath, "record")),
                      f"record: invalid recording rule name: {rule.record}")
    err = check_promql(rule.expr)
    if err is not None:
        yield Problem(pf.name, pf.line_of((*rpath, "expr")),
                      f"expr: invalid PromQL in recording rule {rule.record!r}: {err}")
    for key in rule.labels:
        if not _LABEL_NAME.match(key) or key == "__name__":
            yield Problem(pf.name, pf.line_of((*rpath, "labels", key)),
                          f"labels: invalid label name {key!r}")


def _rule_problems(pf: ParsedFile, rpath: Path_, rule: AlertingRule) -> Iterator[Problem]:
    name = pf.name
    exprs: list[tuple[Path_, str]] = [((*rpath, "expr"), rule.expr)]
    if rule.when is not None:
        exprs.append(((*rpath, "when"), rule.when))
    if rule.baseline is not None and rule.baseline.expr is not None:
        exprs.append(((*rpath, "baseline", "expr"), rule.baseline.expr))
    for path, expr in exprs:
        err = check_promql(expr)
        if err is not None:
            yield Problem(name, pf.line_of(path),
                          f"{_dotted(list(path[-1:]))}: invalid PromQL in rule "
                          f"{rule.alert!r}: {err}")
    for kind, templates in (("labels", rule.labels), ("annotations", rule.annotations)):
        for key, text in templates.items():
            try:
                compile_template(text)
            except TemplateError as e:
                yield Problem(name, pf.line_of((*rpath, kind, key)),
                              f"{kind}.{key}: invalid template in rule {rule.alert!r}: {e}")
