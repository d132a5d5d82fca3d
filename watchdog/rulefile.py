"""One rule file's text -> a validated model plus problems, each with the line it is about.

Pure: takes text and a display name, never opens files or reads the clock (the folder walk lives in
`watchdog.rulesdir`). Every problem is reported as `file:line: message`; a file with any error is
rejected whole by the caller. Checks here are the ones that need only this file: YAML syntax and
duplicate keys, the schema (unknown keys, bad durations, bad comparisons), PromQL syntax, template
syntax, group names unique within the file. Cross-file checks (duplicate action/receiver names,
references) are in `watchdog.rulesdir`, which sees the whole folder.
"""

from __future__ import annotations

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


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int, first: int) -> None:
        super().__init__(f"duplicate key {key!r} (first defined on line {first})")
        self.line = line


def _construct(node: yaml.Node, path: Path_, lines: dict[Path_, int],
               scalars: yaml.constructor.SafeConstructor) -> Any:
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
    return scalars.construct_object(node, deep=True)


def load_yaml_with_lines(text: str) -> tuple[Any, dict[Path_, int]]:
    """Safe-load YAML and remember the line of every key and item (by path)."""
    lines: dict[Path_, int] = {}
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is None:
        return None, lines
    scalars = yaml.constructor.SafeConstructor()
    return _construct(node, (), lines, scalars), lines


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


def parse_rule_file(text: str, name: str) -> ParsedFile:
    """Parse and validate one rule file. Never raises for bad input: problems are returned."""
    try:
        data, lines = load_yaml_with_lines(text)
    except _DuplicateKey as e:
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
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return ParsedFile(name, None, [Problem(
            name, 1, "a rule file must be a mapping with groups, actions, receivers, routes, "
                     "inhibit_rules")])
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
