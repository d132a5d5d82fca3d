"""The backtest behind the console's form (`POST /api/v1/backtest`): a rule — as stored, or as
edited — replayed over the last hours with `watchdog.replay`'s engine (the engine of `run`, over
Prometheus's range API), answered as the intervals it would have been pending and firing and the
actions that would have run.

What it holds: reading the request (bounded: text size, hours, rules, evaluations), turning a
single edited rule into a rule file beside the daemon's own actions (so `actions: [rollback]`
resolves and the interlocks of the real definitions apply), and folding replay's transitions
into intervals. It runs no action and sends nothing (replay only reports `would_run`), keeps no
state, and reads no clock: `now` is the caller's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from watchdog.engine import GroupRuntime, TickResult
from watchdog.evaluate import Context
from watchdog.replay import ReplayLine, replay
from watchdog.rulefile import load_yaml_with_lines
from watchdog.rulesdir import RuleSet, build
from watchdog.source import RangeSource
from watchdog.webinput import BadInput, parse_duration_value, parse_time, shown

MAX_YAML_CHARS: Final = 64 * 1024  # a rule or a small file; the body bound is webinput's
MAX_HOURS: Final = 7 * 24.0
MAX_RULES: Final = 50
# Evaluations per group: beyond this the step is made coarser (and the answer says so), so a
# week at a 15s interval costs what ~10,000 ticks cost, not 40,000.
MAX_STEPS: Final = 10_000
MAX_TRANSITIONS: Final = 5_000  # of the raw transitions returned beside the intervals
FILE: Final = "backtest.yml"
ACTIONS_FILE: Final = "backtest-actions.yml"


@dataclass(frozen=True)
class Request:
    text: str  # a single rule (a mapping with `alert:`) or a whole rule file
    group: str
    interval: float | None
    start: float
    end: float
    step: float | None


def _number(body: Mapping[str, Any], key: str, default: float) -> float:
    v = body.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise BadInput(f"{key} must be a number, got {shown(v)}")
    return float(v)


def parse_request(body: Any, now: float, source_of: Any) -> Request:
    """The JSON body: `{"yaml": TEXT}` or `{"rule": {"file", "group", "name"}}`, with `hours`
    (default 6, at most a week), optional `end` (default now), `step` (default each group's
    interval), and for a single rule its `group` and `interval`. `source_of(file, group, name)`
    returns the stored rule's YAML, or None when there is no such rule."""
    if not isinstance(body, Mapping):
        raise BadInput('expected a JSON object {"yaml": ..., "hours": N}')
    unknown = set(body) - {"yaml", "rule", "hours", "end", "step", "group", "interval"}
    if unknown:
        raise BadInput(f"unknown field {shown(sorted(unknown)[0])}; expected yaml or rule, "
                       "hours, end, step, group, interval")
    group = body.get("group", "backtest")
    if not isinstance(group, str) or not group.strip() or len(group) > 200:
        raise BadInput("group must be a non-empty string")
    if "yaml" in body:
        text = body["yaml"]
        if not isinstance(text, str) or not text.strip():
            raise BadInput("yaml must be a non-empty string: a rule or a rule file")
    elif isinstance(body.get("rule"), Mapping):
        ref = body["rule"]
        names = [ref.get(k) for k in ("file", "group", "name")]
        if not all(isinstance(n, str) for n in names):
            raise BadInput("rule must be {\"file\", \"group\", \"name\"} (strings)")
        text = source_of(*names)
        if text is None:
            raise BadInput(f"no rule {shown(names[2])} in group {shown(names[1])} of "
                           f"{shown(names[0])}", 404)
        group = str(names[1])
    else:
        raise BadInput('expected "yaml" (a rule or a rule file) or "rule" {file, group, name}')
    if len(text) > MAX_YAML_CHARS:
        raise BadInput(f"yaml too long: {len(text):,} characters (at most {MAX_YAML_CHARS:,})",
                       413)
    hours = _number(body, "hours", 6.0)
    if not 0 < hours <= MAX_HOURS:
        raise BadInput(f"hours must be more than 0 and at most {MAX_HOURS:g} (a week)")
    end = parse_time(body["end"], "end") if body.get("end") is not None else now
    step = (parse_duration_value(body["step"], "step") if body.get("step") not in (None, "")
            else None)
    interval = (parse_duration_value(body["interval"], "interval")
                if body.get("interval") not in (None, "") else None)
    return Request(text, group, interval, end - hours * 3600.0, end, step)


# ---- the rule files ----------------------------------------------------------------------------


def _is_single_rule(text: str) -> bool:
    try:
        data, _ = load_yaml_with_lines(text)
    except Exception:  # invalid as a rule: parse_rule_file will say why, by line
        return False
    return isinstance(data, dict) and ("alert" in data or "record" in data)


@dataclass(frozen=True)
class Files:
    raw: dict[str, bytes]
    offset: int  # lines added above the user's text (0 for a whole file)


def files_for(req: Request, loaded: RuleSet) -> Files:
    """The rule file to replay and the daemon's actions beside it. A single rule is indented
    into a group textually, so a problem's line maps back to the user's text by an offset."""
    if _is_single_rule(req.text):
        head = ["groups:", f"  - name: {json.dumps(req.group)}"]
        if req.interval is not None:
            head.append(f"    interval: {req.interval:g}s")
        head += ["    rules:", "      -"]
        body = "\n".join(("        " + line) if line.strip() else "" for line in
                         req.text.splitlines())
        source, offset = "\n".join(head) + "\n" + body + "\n", len(head)
    else:
        source, offset = req.text, 0
    own = _defined_actions(source)
    actions: dict[str, Any] = {}
    for pf in loaded.files.values():
        defined = pf.data.get("actions") if isinstance(pf.data, dict) else None
        if isinstance(defined, dict):
            for name, spec in defined.items():
                if isinstance(name, str) and name not in own:
                    actions.setdefault(name, spec)
    raw = {FILE: source.encode("utf-8", "surrogatepass")}
    if actions:
        raw[ACTIONS_FILE] = yaml.safe_dump({"actions": actions}, sort_keys=False).encode()
    return Files(raw, offset)


def _defined_actions(text: str) -> set[str]:
    try:
        data, _ = load_yaml_with_lines(text)
    except Exception:  # parse_rule_file reports it
        return set()
    acts = data.get("actions") if isinstance(data, dict) else None
    return {k for k in acts if isinstance(k, str)} if isinstance(acts, dict) else set()


def load_rules(files: Files) -> RuleSet:
    """The rule set to replay, or BadInput (422) with every problem of the user's text, each as
    `line N: message` in the text as the user sent it."""
    rs = build(files.raw)
    st = rs.status.get(FILE)
    problems = [p for p in (st.problems if st is not None else ()) if not p.warning]
    if problems or st is None or not st.ok:
        lines = [f"line {max(1, p.line - files.offset)}: {p.message}" for p in problems]
        raise BadInput("the rule does not load: " + ("; ".join(lines) or "rejected"), 422)
    count = sum(len(g.alerting_rules) for name, g in rs.groups() if name == FILE)
    if count == 0:
        raise BadInput("nothing to backtest: the text has no alerting rule", 422)
    if count > MAX_RULES:
        raise BadInput(f"too many rules: {count} (at most {MAX_RULES} per backtest)", 422)
    return rs


def effective_step(rs: RuleSet, req: Request, default_interval: float) -> tuple[float | None,
                                                                                list[str]]:
    """The step to replay at: the request's, else each group's interval — unless that makes
    more than MAX_STEPS evaluations, then one coarser step for all (with a warning)."""
    span = req.end - req.start
    finest = req.step or min(g.interval_or(default_interval) for _, g in rs.groups())
    if span / finest <= MAX_STEPS:
        return req.step, []
    step = float(math.ceil(span / MAX_STEPS))
    return step, [f"{span / finest:,.0f} evaluations would be too many; replayed every "
                  f"{step:g}s instead (at most {MAX_STEPS:,} per group), so a `for` shorter "
                  "than that is approximated"]


# ---- the answer --------------------------------------------------------------------------------


@dataclass
class Interval:
    labels: dict[str, str]
    pending_at: float | None = None
    firing_at: float | None = None
    resolved_at: float | None = None
    max_value: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"labels": self.labels, "pendingAt": self.pending_at,
                "firingAt": self.firing_at, "resolvedAt": self.resolved_at,
                "maxValue": self.max_value}


@dataclass
class RuleResult:
    group: str
    name: str
    intervals: list[Interval] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"group": self.group, "name": self.name,
                "intervals": [i.to_json() for i in self.intervals],
                "actions": self.actions, "error": self.error}


def _series_key(rule: str, labels: Mapping[str, str]) -> str:
    # a tier change is the same alert (the fingerprint leaves `severity` out too)
    return rule + json.dumps(sorted((k, v) for k, v in labels.items() if k != "severity"))


class PendingGone:
    """A replay tick hook: a pending alert whose condition stopped holding is dropped by the
    state machine without an event (as in Prometheus); this notes when, as a `gone` line, so
    the interval it was pending has an end."""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, str, str], Mapping[str, str]] = {}
        self.lines: list[ReplayLine] = []

    def __call__(self, at: float, rt: GroupRuntime, result: TickResult) -> None:
        for ev in result.events:
            key = (rt.key, ev.alert.rule, ev.alert.fingerprint)
            if ev.kind == "pending":
                self.pending[key] = ev.alert.labels
            else:
                self.pending.pop(key, None)
        live = {(rt.key, r.rule.alert, fp) for r in rt.rules
                for fp, a in r.alerts.items() if a.state == "pending"}
        for key in [k for k in self.pending if k[0] == rt.key and k not in live]:
            labels = self.pending.pop(key)
            # order -1: before a new activation of the same series at the same instant
            self.lines.append(ReplayLine(at, -1, {"ts": at, "rule": key[1],
                                                  "group": rt.group.name,
                                                  "labels": dict(labels), "state": "gone"}))


def fold(lines: Sequence[ReplayLine], rs: RuleSet, errors: Mapping[str, str]
         ) -> list[RuleResult]:
    """Replay's transitions as intervals per rule and series: pending → firing → resolved (or
    pending → gone: it never fired, `resolvedAt` is when its condition stopped holding); an
    interval still open at the end has no `resolvedAt`. Pure."""
    results: dict[tuple[str, str], RuleResult] = {}
    for name, g in rs.groups():
        if name == FILE:
            for r in g.alerting_rules:
                results.setdefault((g.name, r.alert), RuleResult(g.name, r.alert))
    by_rule = {rule: res for (_, rule), res in results.items()}
    open_: dict[str, Interval] = {}
    for line in lines:
        d = line.doc
        res = results.get((d.get("group", ""), d["rule"])) or by_rule.get(d["rule"])
        if res is None:
            continue
        if "action" in d:
            # One entry per action run: replay's lines for each step of a staged action
            # ("step") and its pages ("would_page") belong to a run already listed.
            if d["state"] == "would_run" and "step" not in d:
                res.actions.append({"at": d["ts"], "action": d["action"], "labels": d["labels"]})
            continue
        key = _series_key(d["rule"], d["labels"])
        iv = open_.get(key)
        if iv is None and d["state"] in ("resolved", "gone"):
            continue  # began before the range's first evaluation could see it: nothing open
        if iv is None:
            iv = Interval(dict(d["labels"]))
            res.intervals.append(iv)
            open_[key] = iv
        iv.labels = dict(d["labels"])
        value = d.get("value")
        if isinstance(value, float | int):
            iv.max_value = value if iv.max_value is None else max(iv.max_value, value)
        if d["state"] == "pending":
            iv.pending_at = iv.pending_at if iv.pending_at is not None else d["ts"]
        elif d["state"] == "firing":
            iv.firing_at = iv.firing_at if iv.firing_at is not None else d["ts"]
        else:
            iv.resolved_at = d["ts"]
            del open_[key]
    for key, err in errors.items():
        group, _, rule = key.partition("/")
        res = results.get((group, rule.split("#")[0]))
        if res is not None and res.error is None:
            res.error = err
    return list(results.values())


async def run(req: Request, loaded: RuleSet, source: RangeSource, default_interval: float,
              ctx: Context) -> dict[str, Any]:
    """The whole backtest: files, replay, intervals. Raises BadInput for a rule that does not
    load; a failed query is an `error` on its rule (replay changes no state on one)."""
    files = files_for(req, loaded)
    rs = load_rules(files)
    step, warnings = effective_step(rs, req, default_interval)
    gone = PendingGone()
    report = await replay(rs, source, req.start, req.end, step, default_interval, ctx,
                          on_tick=gone)
    results = fold(sorted([*report.lines, *gone.lines], key=lambda x: (x.ts, x.order)), rs,
                   report.errors)
    transitions = [line.doc for line in report.lines]
    if len(transitions) > MAX_TRANSITIONS:
        warnings.append(f"{len(transitions):,} transitions; the first {MAX_TRANSITIONS:,} are "
                        "listed (the intervals hold them all)")
    return {"start": req.start, "end": req.end, "step": step, "rules":
            [r.to_json() for r in results], "transitions": transitions[:MAX_TRANSITIONS],
            "warnings": warnings}
