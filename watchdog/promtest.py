"""`watchdog test`: rule unit tests in promtool's format, run the way `promtool test rules`
(Prometheus 2.42, cmd/promtool/unittest.go) runs them, with our rule engine.

Shell. PromQL is evaluated by a real Prometheus (we do not reimplement PromQL), one fresh instance
per test group with the remote-write receiver on; the next group's instance starts while the
current group runs. As promtool does, for every evaluation time `ts` from 0 to the last
`eval_time`, step `evaluation_interval`: the input samples up to `ts` are written (remote write
carries Prometheus's staleness markers exactly), then every rule group is evaluated in order —
recording rules write their series, alerting rules go through the same `evaluate`/`state.step` as
`watchdog run` and write `ALERTS`/`ALERTS_FOR_STATE`, series that vanish get staleness markers —
so later rules, alert checks and `promql_expr_test` see what promtool's would. A rule evaluation
error stops the test group like promtool. Rules that can only read series that never exist in a
test group are not queried (their result is certainly empty), which keeps big rule folders fast.

Output and exit code follow promtool, byte for byte where the message is promtool's; after a
failed alert check we add a short +/- diff. The test file is read as promtool reads it (Go YAML,
strict: unknown fields are errors, scalars in string fields keep their text).
"""

from __future__ import annotations

import asyncio
import math
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from watchdog.durations import format_duration, parse_duration
from watchdog.engine import GroupRuntime, RuleRuntime
from watchdog.evaluate import Context, Query, Sample, evaluate, plan
from watchdog.gocompat import format_float, quote
from watchdog.labels import format_labels
from watchdog.model import AlertingRule, Group, RecordingRule
from watchdog.promserver import PrometheusServer, PrometheusStartError, find_binary
from watchdog.remotewrite import RemoteWriteError, push
from watchdog.rulefile import DuplicateKeyError, LoadedYaml, load_node
from watchdog.rulesdir import build, discover
from watchdog.series import STALE, STALE_NAN, expand_values, parse_series_selector
from watchdog.state import Alert, step


class TestFileError(Exception):
    """The test file itself is unusable (promtool prints these and exits 1)."""

    __test__ = False  # not a pytest test class, whatever its name


# ---- the test file, read as promtool reads it (yaml.v2 UnmarshalStrict into its structs) ---------

@dataclass
class InputSeries:
    series: str
    values: str


@dataclass
class ExpAlert:
    labels: dict[str, str]
    annotations: dict[str, str]


@dataclass
class AlertTest:
    eval_time: float
    alertname: str
    exp_alerts: list[ExpAlert]


@dataclass
class ExpSample:
    labels: str
    value: float


@dataclass
class ExprTest:
    expr: str
    eval_time: float
    exp_samples: list[ExpSample]


@dataclass
class TestGroup:
    interval: float
    input_series: list[InputSeries]
    alert_tests: list[AlertTest]
    expr_tests: list[ExprTest]
    external_labels: dict[str, str]
    external_url: str
    name: str


@dataclass
class TestFile:
    rule_files: list[str]
    evaluation_interval: float
    group_eval_order: list[str]
    tests: list[TestGroup]


class _Reader:
    """Typed access to loaded YAML with Go-YAML's rules: a scalar read into a string is its
    text, null is the zero value, an unknown field is an error naming promtool's type."""

    def __init__(self, loaded: LoadedYaml) -> None:
        self.loaded = loaded

    def _line(self, path: tuple[str | int, ...]) -> int:
        return self.loaded.lines.get(path, 1)

    def fields(self, v: Any, path: tuple[str | int, ...], go_type: str,
               allowed: Sequence[str]) -> dict[str, Any]:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise TestFileError(f"yaml: unmarshal errors:\n  line {self._line(path)}: cannot "
                                f"unmarshal {_yaml_kind(v)} into main.{go_type}")
        for k in v:
            if k not in allowed:
                raise TestFileError(f"yaml: unmarshal errors:\n  line {self._line((*path, k))}: "
                                    f"field {k} not found in type main.{go_type}")
        return v

    def items(self, v: Any, path: tuple[str | int, ...], what: str) -> list[Any]:
        if v is None:
            return []
        if not isinstance(v, list):
            raise TestFileError(f"yaml: unmarshal errors:\n  line {self._line(path)}: cannot "
                                f"unmarshal {_yaml_kind(v)} into {what}")
        return v

    def string(self, v: Any, path: tuple[str | int, ...]) -> str:
        if path in self.loaded.raw:
            return self.loaded.raw[path]
        if isinstance(v, list | dict):
            raise TestFileError(f"yaml: unmarshal errors:\n  line {self._line(path)}: cannot "
                                f"unmarshal {_yaml_kind(v)} into string")
        return "" if v is None else str(v)

    def duration(self, v: Any, path: tuple[str | int, ...]) -> float:
        text = self.string(v, path)
        if text == "":
            return 0.0
        try:
            return parse_duration(text)
        except ValueError:
            raise TestFileError(f"not a valid duration string: {quote(text)}") from None

    def number(self, v: Any, path: tuple[str | int, ...]) -> float:
        if v is None:
            return 0.0
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
        text = self.string(v, path)
        # Go YAML also resolves 1e3 and .5 as floats, where YAML 1.1 keeps them strings; a
        # quoted number stays a string, which Go refuses for a float64.
        if path in self.loaded.raw or _GO_FLOAT.fullmatch(text):
            try:
                return float(text.replace("_", ""))
            except ValueError:
                pass
        raise TestFileError(f"yaml: unmarshal errors:\n  line {self._line(path)}: cannot "
                            f"unmarshal !!str `{text}` into float64")

    def str_map(self, v: Any, path: tuple[str | int, ...]) -> dict[str, str]:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise TestFileError(f"yaml: unmarshal errors:\n  line {self._line(path)}: cannot "
                                f"unmarshal {_yaml_kind(v)} into map[string]string")
        return {str(k): self.string(x, (*path, k)) for k, x in v.items()}


_GO_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def _yaml_kind(v: Any) -> str:
    if isinstance(v, dict):
        return "!!map"
    if isinstance(v, list):
        return "!!seq"
    if isinstance(v, bool):
        return f"!!bool `{str(v).lower()}`"
    if isinstance(v, int):
        return f"!!int `{v}`"
    if isinstance(v, float):
        return f"!!float `{v}`"
    return f"!!str `{v}`"


def read_test_file(text: str) -> TestFile:
    try:
        data, loaded = load_node(_compose(text))
    except DuplicateKeyError as e:
        raise TestFileError(f"yaml: unmarshal errors:\n  line {e.line}: {e}") from None
    r = _Reader(loaded)
    top = r.fields(data, (), "unitTestFile",
                   ("rule_files", "evaluation_interval", "group_eval_order", "tests"))
    tests: list[TestGroup] = []
    for gi, g in enumerate(r.items(top.get("tests"), ("tests",), "[]main.testGroup")):
        gp: tuple[str | int, ...] = ("tests", gi)
        gd = r.fields(g, gp, "testGroup", ("interval", "input_series", "alert_rule_test",
                                           "promql_expr_test", "external_labels",
                                           "external_url", "name"))
        series = []
        for si, s in enumerate(r.items(gd.get("input_series"), (*gp, "input_series"),
                                       "[]main.series")):
            sp = (*gp, "input_series", si)
            sd = r.fields(s, sp, "series", ("series", "values"))
            series.append(InputSeries(r.string(sd.get("series"), (*sp, "series")),
                                      r.string(sd.get("values"), (*sp, "values"))))
        alerts = []
        for ai, a in enumerate(r.items(gd.get("alert_rule_test"), (*gp, "alert_rule_test"),
                                       "[]main.alertTestCase")):
            ap = (*gp, "alert_rule_test", ai)
            ad = r.fields(a, ap, "alertTestCase", ("eval_time", "alertname", "exp_alerts"))
            exp = []
            for ei, item in enumerate(r.items(ad.get("exp_alerts"), (*ap, "exp_alerts"),
                                           "[]main.alert")):
                ep = (*ap, "exp_alerts", ei)
                ed = r.fields(item, ep, "alert", ("exp_labels", "exp_annotations"))
                exp.append(ExpAlert(r.str_map(ed.get("exp_labels"), (*ep, "exp_labels")),
                                    r.str_map(ed.get("exp_annotations"),
                                              (*ep, "exp_annotations"))))
            alerts.append(AlertTest(r.duration(ad.get("eval_time"), (*ap, "eval_time")),
                                    r.string(ad.get("alertname"), (*ap, "alertname")), exp))
        exprs = []
        for xi, x in enumerate(r.items(gd.get("promql_expr_test"), (*gp, "promql_expr_test"),
                                       "[]main.promqlTestCase")):
            xp = (*gp, "promql_expr_test", xi)
            xd = r.fields(x, xp, "promqlTestCase", ("expr", "eval_time", "exp_samples"))
            samples = []
            for pi, p in enumerate(r.items(xd.get("exp_samples"), (*xp, "exp_samples"),
                                           "[]main.sample")):
                pp = (*xp, "exp_samples", pi)
                pd = r.fields(p, pp, "sample", ("labels", "value"))
                samples.append(ExpSample(r.string(pd.get("labels"), (*pp, "labels")),
                                         r.number(pd.get("value"), (*pp, "value"))))
            exprs.append(ExprTest(r.string(xd.get("expr"), (*xp, "expr")),
                                  r.duration(xd.get("eval_time"), (*xp, "eval_time")), samples))
        tests.append(TestGroup(
            interval=r.duration(gd.get("interval"), (*gp, "interval")),
            input_series=series, alert_tests=alerts, expr_tests=exprs,
            external_labels=r.str_map(gd.get("external_labels"), (*gp, "external_labels")),
            external_url=r.string(gd.get("external_url"), (*gp, "external_url")),
            name=r.string(gd.get("name"), (*gp, "name"))))
    return TestFile(
        rule_files=[r.string(f, ("rule_files", i)) for i, f in
                    enumerate(r.items(top.get("rule_files"), ("rule_files",), "[]string"))],
        evaluation_interval=r.duration(top.get("evaluation_interval"), ("evaluation_interval",)),
        group_eval_order=[r.string(n, ("group_eval_order", i)) for i, n in enumerate(
            r.items(top.get("group_eval_order"), ("group_eval_order",), "[]string"))],
        tests=tests)


def _compose(text: str) -> Any:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise TestFileError(f"yaml: {e}") from None


# ---- what promtool prints -------------------------------------------------------------------

def go_model_duration(seconds: float) -> str:
    """Prometheus's model.Duration.String(): years and weeks only when they divide exactly
    (`90d`, not `12w6d`)."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    out = ""
    for unit, mult, exact in (("y", 31_536_000_000, True), ("w", 604_800_000, True),
                              ("d", 86_400_000, False), ("h", 3_600_000, False),
                              ("m", 60_000, False), ("s", 1000, False), ("ms", 1, False)):
        if exact and ms % mult:
            continue
        if ms >= mult:
            out += f"{ms // mult}{unit}"
            ms %= mult
    return out


def go_time_duration(seconds: float) -> str:
    """Go's time.Duration.String() for a non-negative whole number of milliseconds."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".")
    return (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + f"{s}s"


@dataclass(frozen=True, order=True)
class LabelsAndAnnotations:
    labels: tuple[tuple[str, str], ...]
    annotations: tuple[tuple[str, str], ...]

    def render(self, indent: str) -> str:
        return (f"{indent}Labels:{format_labels(dict(self.labels))}\n"
                f"{indent}Annotations:{format_labels(dict(self.annotations))}")


def _la(labels: Mapping[str, str], annotations: Mapping[str, str]) -> LabelsAndAnnotations:
    return LabelsAndAnnotations(tuple(sorted(labels.items())), tuple(sorted(annotations.items())))


def _fmt_list(items: Sequence[LabelsAndAnnotations]) -> str:
    if not items:
        return "[]"
    body = ",\n".join(f"            {i}:\n{x.render('              ')}"
                      for i, x in enumerate(items))
    return "[\n" + body + "\n            ]"


def _one_line(x: LabelsAndAnnotations) -> str:
    return f"{format_labels(dict(x.labels))} {format_labels(dict(x.annotations))}"


def _alert_failure(group_name: str, name: str, at: float, exp: list[LabelsAndAnnotations],
                   got: list[LabelsAndAnnotations]) -> str:
    lines = [f"    name: {group_name},"] if group_name else []
    lines += [f"    alertname: {name}, time: {go_model_duration(at)}, ",
              f"        exp:{_fmt_list(exp)}, ",
              f"        got:{_fmt_list(got)}"]
    missing = [x for x in exp if x not in got]
    extra = [x for x in got if x not in exp]
    if missing or extra:
        lines.append("        diff:")
        lines += [f"          - {_one_line(x)}" for x in missing]
        lines += [f"          + {_one_line(x)}" for x in extra]
    return "\n".join(lines)


def _fmt_samples(s: Sequence[tuple[tuple[tuple[str, str], ...], float]]) -> str:
    if not s:
        return "nil"
    return ", ".join(f"{format_labels(dict(labels))} {format_float(v, 'E')}" for labels, v in s)


# ---- talking to the test Prometheus ---------------------------------------------------------

class _QueryFailed(Exception):
    """Prometheus refused or failed a query; the message is Prometheus's own."""


class _TestSource:
    """Instant queries against the test group's Prometheus, errors as Prometheus words them
    (promtool prints the engine's message, not a URL)."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def query(self, expr: str, at: float) -> list[Sample]:
        async with self.session.post(f"{self.url}/api/v1/query",
                                     data={"query": expr, "time": f"{at:.3f}"}) as resp:
            doc = await resp.json(content_type=None)
        if doc.get("status") != "success":
            raise _QueryFailed(str(doc.get("error", "query failed")))
        data = doc["data"]
        if data["resultType"] == "vector":
            return [Sample(r["metric"], _value(r["value"][1])) for r in data["result"]]
        if data["resultType"] == "scalar":
            return [Sample({}, _value(data["result"][1]))]
        raise _QueryFailed("rule result is not a vector or scalar")


    async def query_range(self, expr: str, steps: int, step_ms: int) -> list[list[Sample]]:
        """The expression's samples at each of `steps` steps from time 0, one range query per
        10,000 steps (Prometheus answers at most 11,000 points per series)."""
        out: list[list[Sample]] = [[] for _ in range(steps)]
        for first in range(0, steps, 10_000):
            last = min(steps, first + 10_000) - 1
            async with self.session.post(f"{self.url}/api/v1/query_range", data={
                    "query": expr, "start": f"{first * step_ms / 1000:.3f}",
                    "end": f"{last * step_ms / 1000:.3f}",
                    "step": f"{step_ms / 1000:.3f}"}) as resp:
                doc = await resp.json(content_type=None)
            if doc.get("status") != "success":
                raise _QueryFailed(str(doc.get("error", "query failed")))
            data = doc["data"]
            if data["resultType"] != "matrix":
                raise _QueryFailed("rule result is not a vector or scalar")
            for series in data["result"]:
                for t, v in series["values"]:
                    out[round(float(t) * 1000) // step_ms].append(
                        Sample(series["metric"], _value(v)))
        return out


def _value(text: str) -> float:
    return float(text)  # Prometheus writes the shortest text that reads back exactly


LabelKey = tuple[tuple[str, str], ...]


def _key(labels: Mapping[str, str]) -> LabelKey:
    return tuple(sorted((k, v) for k, v in labels.items() if v != ""))


class _Writer:
    """Remote write into the test Prometheus. A batch with a sample Prometheus refuses (a
    second value for a series at one timestamp) is retried series by series, dropping the
    refused ones, as Prometheus's rule manager drops them."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = f"{url}/api/v1/write"

    async def write(self, series: Mapping[LabelKey, list[tuple[int, float]]]) -> None:
        if not series:
            return
        batch = [(dict(k), v) for k, v in series.items()]
        try:
            await push(self.session, self.url, batch)
        except RemoteWriteError as e:
            if e.status != 400:
                raise
            for one in batch:
                try:
                    await push(self.session, self.url, [one])
                except RemoteWriteError as e1:
                    if e1.status != 400:
                        raise


# ---- which rules can read what --------------------------------------------------------------

_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`|#[^\n]*')
# A selector without a metric name ({job="x"}) can match anything.
_NAMELESS = re.compile(r"(?:^|[^a-zA-Z0-9_:\s])\s*\{")
# Functions that return samples without reading any series.
_CONJURERS = frozenset({
    "absent", "absent_over_time", "vector", "scalar", "time", "pi", "day_of_month",
    "day_of_week", "day_of_year", "days_in_month", "hour", "minute", "month", "year"})


# Reading ahead of the evaluation time: promtool has loaded input samples only up to it.
_FUTURE = re.compile(r"@|offset\s*-")


@dataclass(frozen=True)
class _Reads:
    names: frozenset[str]  # every identifier: a superset of the metric names it selects
    anything: bool  # reads a nameless selector, or makes samples from nothing
    nameless: bool  # reads a selector without a metric name: any series at all
    future: bool


def _reads(exprs: Sequence[str]) -> _Reads:
    names: set[str] = set()
    anything = nameless = future = False
    for e in exprs:
        bare = _STRINGS.sub(" ", e)
        idents = set(_IDENT.findall(bare))
        names |= idents
        nameless |= bool(_NAMELESS.search(bare)) or "__name__" in e
        future |= bool(_FUTURE.search(bare))
        anything |= bool(idents & _CONJURERS) or not idents - {
            "bool", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
            "and", "or", "unless", "Inf", "NaN", "inf", "nan"}
    return _Reads(frozenset(names), anything or nameless, nameless, future)


@dataclass
class _Slot:
    """One rule of the test group's evaluation order."""

    group: Group
    rule: AlertingRule | RecordingRule
    runtime: RuleRuntime | None  # alerting rules
    reads: _Reads
    produces: frozenset[str]
    skip: bool = False
    previous: set[LabelKey] = field(default_factory=set)  # series written last time
    # Precomputed (see _precompute): the series the rule wrote at each step, and for an
    # alerting rule its alerts after the steps that alert checks look at.
    outputs: list[dict[LabelKey, float]] | None = None
    snapshots: dict[int, dict[str, Alert]] = field(default_factory=dict)
    prewritten: bool = False

    @property
    def name(self) -> str:
        return self.rule.alert if isinstance(self.rule, AlertingRule) else self.rule.record


def _rule_exprs(rule: AlertingRule | RecordingRule) -> list[str]:
    if isinstance(rule, RecordingRule):
        return [rule.expr]
    out = [rule.expr]
    if rule.when:
        out.append(rule.when)
    if rule.baseline is not None and rule.baseline.expr:
        out.append(rule.baseline.expr)
    return out


def _slots(groups: Sequence[Group], input_names: set[str]) -> list[_Slot]:
    slots: list[_Slot] = []
    for g in groups:
        rt = GroupRuntime.new("", g)
        alerting = iter(rt.rules)
        for r in g.rules:
            if isinstance(r, AlertingRule):
                slots.append(_Slot(g, r, next(alerting), _reads(_rule_exprs(r)),
                                   frozenset({"ALERTS", "ALERTS_FOR_STATE"})))
            else:
                slots.append(_Slot(g, r, None, _reads(_rule_exprs(r)), frozenset({r.record})))
    # A rule that only reads names no input series has and no live rule writes returns
    # nothing, ever: skip it (to a fixed point, as a skipped rule writes nothing either).
    changed = True
    while changed:
        present = input_names | {n for s in slots if not s.skip for n in s.produces}
        changed = False
        for s in slots:
            plain = not isinstance(s.rule, AlertingRule) or (
                s.rule.no_data == "ok" and s.rule.baseline is None and s.rule.when is None)
            skip = plain and not s.reads.anything and not (s.reads.names & present)
            if skip != s.skip:
                s.skip, changed = skip, True
    return slots


def _waves(slots: Sequence[_Slot]) -> list[list[_Slot]]:
    """Consecutive rules that do not read what an earlier one of them writes: their queries
    can run together, and they see exactly what one-by-one evaluation would show them."""
    waves: list[list[_Slot]] = []
    written: set[str] = set()
    for s in slots:
        if s.skip:
            continue
        if not waves or (s.reads.nameless and written) or s.reads.names & written:
            waves.append([])
            written = set()
        waves[-1].append(s)
        written |= s.produces
    return waves


# ---- one test group -------------------------------------------------------------------------

class _Servers:
    """Fresh Prometheus instances for test groups, the next one starting while a group runs."""

    def __init__(self, workdir: Path, eval_interval: float, groups: int) -> None:
        self.workdir = workdir
        # The default step of a subquery without one (`[5m:]`) is the evaluation interval,
        # as promtool sets it.
        self.config = f"global:\n  evaluation_interval: {format_duration(eval_interval)}\n"
        self.left = groups
        self.n = 0
        self.next: asyncio.Task[PrometheusServer] | None = None

    def _start(self) -> asyncio.Task[PrometheusServer]:
        self.n += 1
        server = PrometheusServer(self.workdir / f"tsdb{self.n}", config=self.config, extra_args=[
            "--web.enable-remote-write-receiver",
            # One block range longer than any test (Go durations end at 292 years): the head
            # is never compacted mid-test, and samples far apart in time are all accepted.
            "--storage.tsdb.min-block-duration=200y", "--storage.tsdb.max-block-duration=200y",
            # promtool's test engine refuses a query that loads more samples at once
            "--query.max-samples=10000"])

        async def start() -> PrometheusServer:
            await asyncio.to_thread(server.start)
            return server
        return asyncio.create_task(start())

    async def take(self) -> PrometheusServer:
        task = self.next or self._start()
        self.left -= 1
        self.next = self._start() if self.left > 0 else None
        return await task

    async def fresh(self) -> PrometheusServer:
        """One more instance, outside the plan (a group that must start over)."""
        return await self._start()

    async def close(self) -> None:
        if self.next is not None:
            server = await self.next
            await asyncio.to_thread(server.stop)


def _input_samples(tg: TestGroup, until_ms: int) -> dict[LabelKey, list[tuple[int, float]]]:
    """promtool's `load` of the input series: a later entry for the same series replaces an
    earlier one; with interval 0 every point is at time 0 and the first one is kept."""
    step_ms = round(tg.interval * 1000)
    limit = until_ms // step_ms + 1 if step_ms > 0 else None
    out: dict[LabelKey, list[tuple[int, float]]] = {}
    for s in tg.input_series:
        try:
            labels = parse_series_selector(s.series)
            values = expand_values(s.values, limit)
        except ValueError as e:
            raise TestFileError(str(e)) from None
        points: list[tuple[int, float]] = []
        for i, v in enumerate(values):
            if v is None:
                continue
            t = i * step_ms
            if points and points[-1][0] == t:
                continue
            points.append((t, STALE_NAN if v is STALE else float(v)))
        out[_key(labels)] = points
    return out


async def _run_test_group(tg: TestGroup, rule_groups: Sequence[Group], eval_interval: float,
                          servers: _Servers, session: aiohttp.ClientSession) -> list[str]:
    for t in tg.alert_tests:
        if not t.alertname:
            where = f" (in TestGroup {tg.name})" if tg.name else ""
            return [f"an item under alert_rule_test misses required attribute alertname at "
                    f"eval_time {go_model_duration(t.eval_time)}{where}"]
    step_ms = round(eval_interval * 1000)
    maxt_ms = round(max([t.eval_time for t in tg.alert_tests] +
                        [t.eval_time for t in tg.expr_tests] + [0.0]) * 1000)
    last_ms = maxt_ms // step_ms * step_ms  # the last evaluation: promtool loads data up to it
    inputs = _input_samples(tg, last_ms)
    ctx = Context(external_url=tg.external_url, external_labels=tg.external_labels)
    by_time: dict[int, list[AlertTest]] = {}
    for t in tg.alert_tests:
        by_time.setdefault(round(t.eval_time * 1000), []).append(t)
    check_steps = {at // step_ms for at in by_time}

    server = await servers.take()
    try:
        src = _TestSource(session, server.url)
        writer = _Writer(session, server.url)
        slots = _slots(rule_groups, {dict(k).get("__name__", "") for k in inputs})
        pre = await _precompute(slots, inputs, last_ms, step_ms, check_steps, src, writer, ctx)
        if pre is None:  # something only step-by-step evaluation reports exactly: start over
            await asyncio.to_thread(server.stop)
            server = await servers.fresh()
            src = _TestSource(session, server.url)
            writer = _Writer(session, server.url)
            slots = _slots(rule_groups, {dict(k).get("__name__", "") for k in inputs})
        errors: list[str] = []
        live = [x for x in slots if not x.skip and not x.prewritten]
        waves = _waves(live)
        cursor = {k: len(v) if pre else 0 for k, v in inputs.items()}
        alert_times = sorted(by_time)
        curr = 0
        for k in range(last_ms // step_ms + 1) if live or not pre else ():
            ts = k * step_ms
            batch: dict[LabelKey, list[tuple[int, float]]] = {}
            for key, points in inputs.items():
                i = j = cursor[key]
                while j < len(points) and points[j][0] <= ts:
                    j += 1
                if j > i:
                    batch[key] = points[i:j]
                    cursor[key] = j
            await writer.write(batch)
            eval_errors: list[str] = []
            for wave in waves:
                eval_errors += await _evaluate_wave(wave, k, ts, src, writer, ctx)
            if eval_errors:
                return errors + eval_errors
            for x in slots:
                if x.outputs is not None and k in check_steps and x.runtime is not None:
                    x.runtime.alerts = x.snapshots[k]
            while curr < len(alert_times) and ts <= alert_times[curr] < ts + step_ms:
                for t in by_time[alert_times[curr]]:
                    errors += _check_alerts(t, tg.name, slots)
                curr += 1
        for at in alert_times[curr:]:  # everything was precomputed: no step-by-step loop
            for x in slots:
                if x.outputs is not None and x.runtime is not None:
                    x.runtime.alerts = x.snapshots[at // step_ms]
            for t in by_time[at]:
                errors += _check_alerts(t, tg.name, slots)
        for x_test in tg.expr_tests:
            errors += await _check_expr(x_test, src)
        return errors
    finally:
        await asyncio.to_thread(server.stop)


def _apply(s: _Slot, results: Mapping[Query, Sequence[Sample] | BaseException], at: float,
           ctx: Context, plan_: Any) -> tuple[dict[LabelKey, float], str | None]:
    """One rule's evaluation at `at` from its query results: the series it writes, or an error
    (an alerting rule's state advances here)."""
    current: dict[LabelKey, float] = {}
    if isinstance(s.rule, AlertingRule):
        assert s.runtime is not None
        outcome = evaluate(s.rule, s.group, plan_, results, ctx)
        res = step(s.runtime.alerts, outcome, at, rule=s.rule.alert, group=s.group.name,
                   hold=s.rule.for_, keep_firing_for=s.rule.keep_firing_for,
                   limit=s.group.limit)
        s.runtime.alerts = res.alerts
        err = res.error or outcome.error
        if err is not None:
            return {}, err
        for a in res.alerts.values():
            if a.state in ("pending", "firing"):
                current[_key({**a.labels, "__name__": "ALERTS", "alertstate": a.state})] = 1.0
                current[_key({**a.labels, "__name__": "ALERTS_FOR_STATE"})] = \
                    float(math.floor(a.active_at))
        return current, None
    got = results[Query(s.rule.expr, at)]
    if isinstance(got, BaseException):
        return {}, str(got)
    for sample in got:
        labels = {k: v for k, v in sample.labels.items() if k != "__name__"}
        for name, value in s.rule.labels.items():
            if value == "":
                labels.pop(name, None)
            else:
                labels[name] = value
        labels["__name__"] = s.rule.record
        key = _key(labels)
        if key in current:
            return {}, "vector contains metrics with the same labelset after applying rule labels"
        current[key] = sample.value
    if s.group.limit and len(current) > s.group.limit:
        return {}, f"exceeded limit of {s.group.limit} with {len(current)} series"
    return current, None


def _emit(s: _Slot, current: dict[LabelKey, float], ts_ms: int,
          out: dict[LabelKey, list[tuple[int, float]]]) -> None:
    """What the rule manager appends: the series, and staleness markers for vanished ones."""
    for k, v in current.items():
        out.setdefault(k, []).append((ts_ms, v))
    for k in s.previous - current.keys():
        out.setdefault(k, []).append((ts_ms, STALE_NAN))
    s.previous = set(current)


async def _evaluate_wave(wave: Sequence[_Slot], k: int, ts_ms: int, src: _TestSource,
                         writer: _Writer, ctx: Context) -> list[str]:
    at = ts_ms / 1000
    plans = {id(s): plan(s.rule, s.group, at) for s in wave
             if isinstance(s.rule, AlertingRule) and s.outputs is None}
    queries: list[Query] = []
    for s in wave:
        if s.outputs is None:
            queries += plans[id(s)].queries() if id(s) in plans else [Query(s.rule.expr, at)]
    unique = list(dict.fromkeys(queries))
    sem = asyncio.Semaphore(16)

    async def one(q: Query) -> list[Sample] | BaseException:
        async with sem:
            try:
                return await src.query(q.expr, q.at)
            except _QueryFailed as e:
                return e
    results = dict(zip(unique, await asyncio.gather(*(one(q) for q in unique)), strict=True))

    out: dict[LabelKey, list[tuple[int, float]]] = {}
    errors: list[str] = []
    for s in wave:
        if s.outputs is not None:  # precomputed, written here because an earlier rule reads it
            _emit(s, s.outputs[k], ts_ms, out)
            continue
        current, err = _apply(s, results, at, ctx, plans.get(id(s)))
        if err is not None:
            errors.append(f"    rule: {s.name}, time: {go_time_duration(at)}, err: {err}")
            continue
        _emit(s, current, ts_ms, out)
    await writer.write({key: v[:1] for key, v in out.items()})
    return errors


# Prometheus accepts a sample older than the newest one by less than half a block range (the
# test instances run with 200y blocks); a precomputed series is written after the inputs.
_HALF_BLOCK_MS = 100 * 365 * 86_400_000


async def _precompute(slots: Sequence[_Slot], inputs: Mapping[LabelKey, list[tuple[int, float]]],
                      last_ms: int, step_ms: int, check_steps: set[int], src: _TestSource,
                      writer: _Writer, ctx: Context) -> bool | None:
    """Evaluate with one range query per rule what does not need step-by-step feedback.

    A range query's value at each step is the instant query's at that time, so a rule that
    reads only input series (or series written in full beforehand) can be evaluated over the
    whole test at once. Its series can be written in full beforehand when no rule at or before
    it in the evaluation order reads them (those rules see them at the same step anyway).
    Level by level until nothing more qualifies; the rest is left to the step-by-step loop.
    Returns False, having written nothing, when step-by-step evaluation must do everything
    because a rule reads ahead of the evaluation time (promtool loads input samples step by
    step); None when a range query or a rule failed (the step where it fails matters), after
    writing: the caller starts over on a fresh Prometheus. True, having written all input
    series up to the last step and what could be precomputed, otherwise.
    """
    live = [s for s in slots if not s.skip]
    if any(s.reads.future for s in live) or step_ms <= 0 or last_ms >= _HALF_BLOCK_MS:
        return False
    await writer.write({k: [p for p in v if p[0] <= last_ms] for k, v in inputs.items()})
    producers: dict[str, list[int]] = {}
    for i, s in enumerate(live):
        for n in s.produces:
            producers.setdefault(n, []).append(i)

    def prewritable(i: int) -> bool:
        return not any(r.reads.nameless or r.reads.names & live[i].produces
                       for r in live[:i + 1])

    def simple(s: _Slot) -> bool:
        r = s.rule
        return s.group.query_offset == 0 and (not isinstance(r, AlertingRule) or (
            r.when is None and r.baseline is None and r.threshold is None
            and r.severities is None and r.no_data == "ok"))

    done: set[int] = set()
    steps = last_ms // step_ms + 1
    while True:
        level = [i for i, s in enumerate(live) if i not in done and simple(s)
                 and not s.reads.nameless
                 and all(j in done and prewritable(j)
                         for n in s.reads.names for j in producers.get(n, ()))]
        if not level:
            return True
        out: dict[LabelKey, list[tuple[int, float]]] = {}
        for i in level:
            s = live[i]
            try:
                per_step = await src.query_range(s.rule.expr, steps, step_ms)
            except _QueryFailed:
                # e.g. more samples at once than promtool's engine allows (10,000), which one
                # step at a time may not reach: the same answers, one instant query per step
                try:
                    per_step = await _each_step(src, s.rule.expr, steps, step_ms)
                except _QueryFailed:
                    return None
            s.outputs = []
            for k in range(steps):
                at = k * step_ms / 1000
                q = Query(s.rule.expr, at)
                current, err = _apply(s, {q: per_step[k]}, at, ctx, plan(s.rule, s.group, at)
                                      if isinstance(s.rule, AlertingRule) else None)
                if err is not None:
                    return None
                s.outputs.append(current)
                if s.runtime is not None and k in check_steps:
                    s.snapshots[k] = dict(s.runtime.alerts)
            if prewritable(i):
                s.prewritten = True
                for k in range(steps):
                    _emit(s, s.outputs[k], k * step_ms, out)
            s.previous = set()
            done.add(i)
        await writer.write(out)


async def _each_step(src: _TestSource, expr: str, steps: int, step_ms: int
                     ) -> list[list[Sample]]:
    sem = asyncio.Semaphore(16)

    async def one(k: int) -> list[Sample]:
        async with sem:
            return await src.query(expr, k * step_ms / 1000)
    return list(await asyncio.gather(*(one(k) for k in range(steps))))


def _check_alerts(t: AlertTest, group_name: str, slots: Sequence[_Slot]) -> list[str]:
    exp = sorted(_la({**e.labels, "alertname": t.alertname}, e.annotations)
                 for e in t.exp_alerts)
    got = sorted(_la(a.labels, a.annotations) for s in slots
                 if s.runtime is not None and s.name == t.alertname
                 for a in s.runtime.alerts.values() if a.state == "firing")
    if exp == got:
        return []
    return [_alert_failure(group_name, t.alertname, t.eval_time, exp, got)]


async def _check_expr(x: ExprTest, src: _TestSource) -> list[str]:
    head = f"    expr: {quote(x.expr)}, time: {go_model_duration(x.eval_time)}"
    try:
        got_samples = await src.query(x.expr, x.eval_time)
    except _QueryFailed as e:
        return [f"{head}, err: {e}"]
    exp: list[tuple[LabelKey, float]] = []
    for s in x.exp_samples:
        try:
            labels = parse_metric(s.labels)
        except ValueError as e:
            return [f"{head}, err: labels {quote(s.labels)}: {e}"]
        exp.append((_key(labels), s.value))
    got = [(_key(s.labels), s.value) for s in got_samples]
    exp.sort(key=lambda p: p[0])
    got.sort(key=lambda p: p[0])
    # reflect.DeepEqual: floats compare with ==, so NaN never equals NaN
    if len(exp) != len(got) or any(a != b for a, b in zip(exp, got, strict=True)):
        return [f"{head},\n        exp: {_fmt_samples(exp)}\n        got: {_fmt_samples(got)}"]
    return []


def parse_metric(text: str) -> dict[str, str]:
    """Prometheus's parser.ParseMetric: like a series selector, but an empty label set (`{}`
    or nothing at all) is allowed."""
    if text.strip() in ("", "{}"):
        return {}
    return parse_series_selector(text)


# ---- files ----------------------------------------------------------------------------------

def _resolve_rule_files(test_file: Path, patterns: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for pattern in patterns:
        base = Path(pattern) if Path(pattern).is_absolute() else test_file.parent / pattern
        matches = sorted(base.parent.glob(base.name)) if any(c in base.name for c in "*?[") \
            else [base]
        matches = [m for m in matches if m.exists()]
        if not matches:
            print(f"  WARNING: no file match pattern {base}", file=sys.stderr)
        out.extend(discover(matches))
    return out


def _ordered_groups(files: Sequence[Path], order: Sequence[str]
                    ) -> tuple[list[Group], list[str]]:
    raw = {str(p): p.read_bytes() for p in files}
    rs = build(raw)
    if rs.rejected:
        return [], [str(p) for st in rs.rejected for p in st.problems if not p.warning]
    groups = [g for _, g in rs.groups()]
    rank = {name: i for i, name in enumerate(order)}
    # promtool sorts by the position in group_eval_order, unlisted groups counting as 0
    groups.sort(key=lambda g: rank.get(g.name, 0))
    return groups, []


async def run_test_file(path: Path) -> tuple[bool, list[str]]:
    """(passed, errors) for one test file; errors formatted like promtool's."""
    try:
        tf = read_test_file(path.read_text(encoding="utf-8"))
        rule_files = _resolve_rule_files(path, tf.rule_files)
        eval_interval = tf.evaluation_interval or 60.0
        seen: set[str] = set()
        for name in tf.group_eval_order:
            if name in seen:
                raise TestFileError(f"group name repeated in evaluation order: {name}")
            seen.add(name)
        groups, load_errors = _ordered_groups(rule_files, tf.group_eval_order)
    except (OSError, UnicodeDecodeError, TestFileError) as e:
        return False, [str(e)]
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="watchdog-test-") as tmp:
        servers = _Servers(Path(tmp), eval_interval, 0 if load_errors else len(tf.tests))
        async with aiohttp.ClientSession() as session:
            try:
                for tg in tf.tests:
                    if load_errors:
                        errors += load_errors  # promtool loads the rules for every test group
                        continue
                    try:
                        errors += await _run_test_group(tg, groups, eval_interval, servers,
                                                        session)
                    except TestFileError as e:
                        errors.append(str(e))
                    except (aiohttp.ClientError, RemoteWriteError, PrometheusStartError,
                            OSError) as e:  # our machinery, not the test: say so, no traceback
                        errors.append(f"    watchdog test could not run this test group: "
                                      f"{type(e).__name__}: {e}")
            finally:
                await servers.close()
    return not errors, errors


def run_test_files(files: Sequence[Path]) -> int:
    if find_binary("prometheus") is None:
        print("watchdog test needs the prometheus binary (Debian/Ubuntu: apt-get install "
              "prometheus)")
        return 1
    ok = True
    expanded: list[Path] = []
    for f in files:
        # A folder stands for the test files in it (every .yml/.yaml below it, sorted), so
        # `watchdog test rules/tests/` runs a folder's whole suite.
        if f.is_dir():
            expanded.extend(sorted(p for p in f.rglob("*")
                                   if p.suffix in (".yml", ".yaml") and p.is_file()))
        else:
            expanded.append(f)
    for f in expanded:
        # promtool: the header and blank lines on stdout, the failures on stderr
        print(f"Unit Testing:  {f}", flush=True)
        passed, errors = asyncio.run(run_test_file(f))
        if passed:
            print("  SUCCESS")
        else:
            print("  FAILED:", file=sys.stderr, flush=True)
            for e in errors:
                print(e, file=sys.stderr, flush=True)
                print(flush=True)
        print(flush=True)
        ok &= passed
    return 0 if ok else 1
