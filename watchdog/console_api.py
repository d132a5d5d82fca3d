"""The reads and the one write the console needs beyond the Prometheus-shaped API (its chart
asks Prometheus through `watchdog.query_proxy`'s `/api/v1/query_range`):

- `GET /api/v1/rules/detail?file=&group=&rule=` — one rule as written (YAML, for the backtest
  form), what to chart for it (the expression without its top-level comparison, and the
  threshold or tiers as lines) and the link to its expression in Prometheus's graph page.
- `GET /api/v1/actions` — the actions defined in the rules folder, for "run now".
- `POST /api/v1/backtest` — `watchdog.backtest` over the datasource; one at a time.

Shell: HTTP in, JSON out; the replay and the rule parsing are elsewhere, the chart split is a
pure function below. Reads sit behind API_READ_TOKEN and the write behind API_TOKEN like every
route (`watchdog.http_api`'s middleware); errors are raised as `BadInput`, which that
middleware answers in Prometheus's error shape. It must not echo the datasource's credentials:
only the redacted link base leaves this module, and query errors are redacted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, Final, Protocol

import promql_parser
import yaml
from aiohttp import web

from watchdog.am_api import generator_url, link_base
from watchdog.engine import GroupRuntime
from watchdog.evaluate import Context
from watchdog.logs import redact
from watchdog.rulefile import promql_limit_error
from watchdog.rulesdir import RuleSet
from watchdog.settings import Settings
from watchdog.webinput import BadInput, read_json, shown

BACKTEST_TIMEOUT: Final = 120.0
_COMPARISONS: Final = (">=", "<=", "==", "!=", ">", "<")
_FLIP: Final = {">": "<", "<": ">", ">=": "<=", "<=": ">=", "==": "==", "!=": "!="}


class Watched(Protocol):
    """What these endpoints read (`watchdog.daemon.Daemon` provides it)."""

    settings: Settings

    @property
    def rules(self) -> RuleSet: ...
    @property
    def runtimes(self) -> dict[str, GroupRuntime]: ...
    def interval(self, rt: GroupRuntime) -> float: ...


# ---- the chart of a rule (pure) ----------------------------------------------------------------


def _top_level_ops(expr: str) -> Iterator[tuple[int, str]]:
    """(position, operator) of each comparison outside brackets, strings and comments."""
    depth, i = 0, 0
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            quote, i = c, i + 1
            while i < len(expr) and expr[i] != quote:
                i += 2 if expr[i] == "\\" and quote != "`" else 1
        elif c == "#":
            while i < len(expr) and expr[i] != "\n":
                i += 1
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            for op in _COMPARISONS:
                if expr.startswith(op, i):
                    yield i, op
                    i += len(op) - 1
                    break
        i += 1


def split_comparison(expr: str) -> tuple[str, str, float] | None:
    """`A > 0.1` (or `0.1 < A`) → (A, ">", 0.1): what a plain Prometheus rule compares, so the
    chart can show A with its threshold instead of only the values that passed the filter.
    None for anything else (a `bool` comparison, two vectors, `and`, a parse error)."""
    if promql_limit_error(expr) is not None:
        return None
    try:
        root = promql_parser.parse(expr)
    except Exception:  # the Rust parser raises ValueError; any failure is "no"
        return None
    if not isinstance(root, promql_parser.BinaryExpr):
        return None
    op = str(root.op)
    modifier = root.modifier
    if op not in _COMPARISONS or (modifier is not None and modifier.return_bool):
        return None
    ops = [(pos, o) for pos, o in _top_level_ops(expr) if o == op]
    if not ops:
        return None
    if isinstance(root.rhs, promql_parser.NumberLiteral):
        pos, _ = ops[-1]
        side, number, shown_op = expr[:pos], float(root.rhs.val), op
    elif isinstance(root.lhs, promql_parser.NumberLiteral):
        pos, _ = ops[0]
        side, number, shown_op = expr[pos + len(op):], float(root.lhs.val), _FLIP[op]
    else:
        return None
    side = side.strip()
    try:
        promql_parser.parse(side)
    except Exception:  # the split went wrong: no chart split rather than a bad one
        return None
    return side, shown_op, number


def chart_of(rule: Any) -> dict[str, Any]:
    """What to draw for an alerting rule: the expression and the lines to draw against it."""
    lines: list[dict[str, Any]] = []
    expr = rule.expr
    if rule.threshold is not None:
        lines.append({"name": "threshold", "op": rule.threshold.op,
                      "value": rule.threshold.number})
    elif rule.severities is not None:
        lines += [{"name": name, "op": c.op, "value": c.number}
                  for name, c in rule.ranked_tiers()]
    else:
        split = split_comparison(rule.expr)
        if split is not None:
            expr, op, number = split
            lines.append({"name": "threshold", "op": op, "value": number})
    out: dict[str, Any] = {"expr": expr, "lines": lines}
    if rule.baseline is not None:  # the lines are against value/baseline, not the value
        out["baseline"] = rule.baseline.compare
    return out


# ---- a rule as written (pure) ------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None  # an expression over several lines stays readable
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _find_rule(data: Any, group: str, name: str, depth: int = 0) -> dict[str, Any] | None:
    """The rule's mapping in a loaded document, wherever its groups sit (`groups:`, or a
    manifest's `spec.groups`)."""
    if depth > 6:
        return None
    if isinstance(data, dict):
        rules = data.get("rules")
        if data.get("name") == group and isinstance(rules, list):
            for r in rules:
                if isinstance(r, dict) and r.get("alert") == name:
                    return r
        children: Any = data.values()
    elif isinstance(data, list):
        children = data
    else:
        return None
    for child in children:
        if isinstance(child, dict | list):
            found = _find_rule(child, group, name, depth + 1)
            if found is not None:
                return found
    return None


def rule_yaml(rules: RuleSet, file: str, group: str, name: str) -> str | None:
    pf = rules.files.get(file)
    found = _find_rule(pf.data, group, name) if pf is not None else None
    if found is None:
        return None
    return yaml.dump(found, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


# ---- HTTP --------------------------------------------------------------------------------------


def _q(request: web.Request, name: str, required: bool = True) -> str:
    values = request.query.getall(name, [])
    if not values or not values[-1]:
        if required:
            raise BadInput(f"{request.path}: parameter {name!r} is required")
        return ""
    return values[-1]


class ConsoleApi:
    def __init__(self, d: Watched, source: Callable[[], Any], clock: Callable[[], float]
                 ) -> None:
        self.d = d
        self.source = source  # the datasource, looked up per call (it exists once started)
        self.clock = clock
        self._backtest = asyncio.Lock()

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/v1/rules/detail", self.rule_detail),
                web.get("/api/v1/actions", self.actions),
                web.post("/api/v1/backtest", self.backtest)]

    def _range_source(self) -> Any:
        src = self.source()
        if not hasattr(src, "query_range"):
            raise BadInput("the datasource has no range API", 503)
        return src

    def _runtime(self, file: str, group: str) -> GroupRuntime | None:
        for rt in self.d.runtimes.values():
            if rt.file == file and rt.group.name == group:
                return rt
        return None

    async def rule_detail(self, request: web.Request) -> web.Response:
        file, group, name = _q(request, "file"), _q(request, "group"), _q(request, "rule")
        rt = self._runtime(file, group)
        runtime = next((r for r in rt.rules if r.rule.alert == name), None) if rt else None
        if rt is None or runtime is None:
            raise BadInput(f"no rule {shown(name)} in group {shown(group)} of {shown(file)}",
                           404)
        rule = runtime.rule
        return web.json_response({"status": "success", "data": {
            "file": file, "group": group, "name": name, "interval": self.d.interval(rt),
            "yaml": rule_yaml(self.d.rules, file, group, name) or "",
            "chart": chart_of(rule), "actions": action_names(rule),
            "graphURL": generator_url(link_base(self.d.settings), rule.expr)}})

    async def actions(self, request: web.Request) -> web.Response:
        used: dict[str, list[str]] = {}
        for rt in self.d.runtimes.values():
            for r in rt.rules:
                for a in action_names(r.rule):
                    used.setdefault(a, []).append(r.rule.alert)
        data = [{"name": name, "steps": [_step_kind(s) for s in a.steps],
                 "cooldown": a.cooldown, "maxRunsPerHour": a.max_runs_per_hour,
                 "verifyFor": a.verify_for, "rules": sorted(set(used.get(name, [])))}
                for name, a in sorted(self.d.rules.actions.items())]
        return web.json_response({"status": "success", "data": data})

    async def backtest(self, request: web.Request) -> web.Response:
        # imported on the first backtest: replay's engine is ~0.5 MiB a daemon whose console
        # nobody backtests on never needs (bench/daemon.py --memory)
        from watchdog import backtest

        body = await read_json(request)
        rules = self.d.rules
        req = backtest.parse_request(
            body, self.clock(), lambda f, g, n: rule_yaml(rules, f, g, n))
        if self._backtest.locked():
            raise BadInput("a backtest is already running; try again when it is done", 429)
        async with self._backtest:
            s = self.d.settings
            ctx = Context(external_url=s.external_url, external_labels=s.external_labels)
            try:
                data = await asyncio.wait_for(
                    backtest.run(req, rules, self._range_source(), s.evaluation_interval, ctx),
                    BACKTEST_TIMEOUT)
            except TimeoutError:
                raise BadInput(f"the backtest took longer than {BACKTEST_TIMEOUT:g}s; try "
                               "fewer hours or a larger step", 503) from None
        for r in data["rules"]:
            if r["error"]:
                r["error"] = redact(r["error"])
        return web.json_response({"status": "success", "data": data})


def action_names(rule: Any) -> list[str]:
    """Every action a rule may run: a list, or lists by tier (CONTRACT §9), and `on_resolved`."""
    acts: Any = rule.actions
    names = [n for v in acts.values() for n in v] if isinstance(acts, dict) else list(acts)
    names += list(getattr(rule, "on_resolved", None) or [])
    return list(dict.fromkeys(names))


def _step_kind(step: Any) -> str:
    return str(getattr(step, "kind", "step"))

