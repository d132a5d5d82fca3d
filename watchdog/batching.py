"""Fewer queries for the same answers: thresholds on one expression share a query
(`shared_queries`), and expressions that differ only in the value of one label matcher are asked
as one (`plan`) whose answer is split back (`split`).

`sum(rate(errors{service="checkout"}[5m])) > 0.05` and the same rule for `service="cart"` are
asked as `(sum by (service) (rate(errors{service=~"checkout|cart"}[5m]))) > 0.05` and the answer
is cut by `service`, which is dropped again where the rule's own query would not have had it.

Functional core: parses and prints PromQL with `promql_parser` (never by editing the text), no
I/O, no clock; `engine.run_queries` sends what this plans and falls back to single queries when
Prometheus refuses a batch. Exactness is the contract: a member's share of a batch is what its
own query returns — labels, values, and nothing where it returns nothing — so an expression joins
a batch only when that follows from its structure (`shapes` explains the argument); anything else
is sent alone. Analyses are cached by expression text: rules repeat every tick.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import promql_parser as pp

from watchdog.evaluate import Query, Sample, split_comparison
from watchdog.model import Comparison

MAX_VALUES = 100  # label values in one batched query
MAX_REGEX = 4096  # characters of the alternation: a query never becomes huge

_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_METRIC = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_HOLE, _LHS, _RHS = "__watchdog_hole__", "__watchdog_lhs__", "__watchdog_rhs__"

# Functions whose output is one series per input series, labels kept (at most `__name__`
# dropped): a batch's series of one label value are computed exactly as alone. Scalar arguments
# are allowed; anything that reads or writes labels by name is not here, nor what makes series
# from nothing (`vector`, `absent*`), reduces to a scalar (`scalar`), or orders (`sort*`).
_PER_SERIES = frozenset({
    "abs", "ceil", "floor", "exp", "ln", "log2", "log10", "sqrt", "sgn", "round", "clamp",
    "clamp_min", "clamp_max", "timestamp", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "cos", "cosh", "sin", "sinh", "tan", "tanh", "deg", "rad", "day_of_month", "day_of_week",
    "day_of_year", "days_in_month", "hour", "minute", "month", "year", "histogram_count",
    "histogram_sum", "histogram_avg", "histogram_fraction", "histogram_stddev",
    "histogram_stdvar", "rate", "irate", "increase", "delta", "idelta", "deriv",
    "predict_linear", "changes", "resets", "holt_winters", "double_exponential_smoothing",
    "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
    "quantile_over_time", "stddev_over_time", "stdvar_over_time", "last_over_time",
    "present_over_time", "mad_over_time",
    # groups the series by all labels but `le`: the batch's label is one of them
    "histogram_quantile",
})
_SCALAR_FUNCS = frozenset({"time", "pi"})
# Aggregations whose groups can be split by one more label; topk/bottomk return their input
# series. Not count_values (it writes a label), limitk/limit_ratio (sampled by label hash).
_AGGREGATIONS = frozenset({"sum", "avg", "min", "max", "count", "group", "stddev", "stdvar",
                           "quantile", "topk", "bottomk"})
# the binding's enums do not hash: a list to search
_MATCH_OPS = [(pp.MatchOp.Equal, "="), (pp.MatchOp.NotEqual, "!="), (pp.MatchOp.Re, "=~"),
              (pp.MatchOp.NotRe, "!~")]


# ---- one threshold query for several thresholds ----------------------------------------------


def loosest(comparisons: Sequence[Comparison]) -> tuple[str, str]:
    """The comparison, as operator and PromQL number, that every one of `comparisons` (all `>`/
    `>=` or all `<`/`<=`) implies: what they can share as one query, each filtering its own."""
    way = comparisons[0].op[0]
    edge = (min if way == ">" else max)(c.number for c in comparisons)
    op = way + "=" if any(c.number == edge and c.op == way + "=" for c in comparisons) else way
    return op, repr(edge) if math.isfinite(edge) else ("+Inf" if edge > 0 else "-Inf")


def shared_queries(queries: Sequence[Query]) -> dict[Query, tuple[Query, Comparison]]:
    """Thresholds written into the expression, `E > 0.05` and `E > 0.1` at the same instant
    (a warning and a critical rule, the same rule per severity): one query answers them all —
    `E` itself when it is asked anyway, else `(E) op loosest` when two or more point the same
    way — and each is that answer filtered by its own comparison (`split_comparison`)."""
    by_lhs: dict[tuple[str, float], list[tuple[Query, Comparison]]] = {}
    plain = set(queries)
    for q in queries:
        split = split_comparison(q.expr) if not q.window else None
        if split is not None:
            by_lhs.setdefault((split[0], q.at), []).append((q, split[1]))
    out: dict[Query, tuple[Query, Comparison]] = {}
    for (lhs, at), members in by_lhs.items():
        if Query(lhs, at) in plain:
            out.update((q, (Query(lhs, at), c)) for q, c in members)
            continue
        for way in (">", "<"):
            same = [(q, c) for q, c in members if c.op.startswith(way)]
            if len(same) < 2:
                continue
            op, number = loosest([c for _, c in same])
            shared = Query(f"({lhs}) {op} {number}", at)
            out.update((q, (shared, c)) for q, c in same)
    return out


# ---- which expressions can be batched, and how ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Shape:
    """One way an expression can join a batch: by `label`, whose matcher `label="value"` is on
    every selector. Expressions with equal `key`s differ in nothing else."""

    key: str
    label: str
    value: str
    keeps_label: bool  # the expression's own answer carries `label` (else the split drops it)


class _Unbatchable(Exception):
    pass


Kind = tuple[str, bool]  # ("vector" | "matrix" | "scalar" | "string", output carries the label)
_SCALAR: Kind = ("scalar", False)


# Bounded generously: a cache smaller than what one round of ticks asks for misses every time
# (least recently used, asked in a cycle). An entry holds small objects and an interned key.
@functools.lru_cache(maxsize=65536)
def shapes(expr: str) -> tuple[Shape, ...]:
    """Every label `expr` could be batched by; () when none.

    The argument for exactness. Every selector has the matcher `l="v"` (v not empty), so every
    series the expression reads has `l` = v. Rewritten with `l=~"v1|v2|…"` and `l` added to
    every aggregation's grouping and every `on(...)`, the batch reads the union of the members'
    series, and each operation keeps them apart by `l` where the member's query kept them
    together: aggregations and vector matching group within one value of `l`, functions work
    series by series. Restricted to `l` = v, each step computes what the member's query computes,
    with `l` = v added where the member's would not have had it — from the same series in the
    same order, so even float sums agree. What could break that is refused: an aggregation
    `without (l)`, `ignoring (l)`, `group_left (l)`, a function that reads or writes labels by
    name with `l` among them or makes series of its own, and matching two sides of which only
    one carries `l` (alone they would not have matched; batched they would)."""
    try:
        root = _strip(pp.parse(expr))
        candidates = _candidate_labels(root)
        out = []
        for label in sorted(candidates):
            found: set[str] = set()
            kind = _kind(root, label, found)
            if kind is None or kind[0] != "vector" or len(found) != 1:
                continue
            key = _print(root, label, "")
            if key is not None:  # interned: the members of one batch share their key
                out.append(Shape(sys.intern(key), label, found.pop(), kind[1]))
        return tuple(out)
    except Exception:  # the parser's own errors, an offset it cannot read: not batchable
        return ()


@functools.lru_cache(maxsize=8192)
def batched_expr(expr: str, label: str, values: tuple[str, ...]) -> str | None:
    """`expr` (one member of a batch) asking for every value of `label` in `values` at once;
    None if it cannot be printed exactly."""
    try:
        return _print(_strip(pp.parse(expr)), label, "|".join(quote_meta(v) for v in values))
    except Exception:
        return None


def quote_meta(value: str) -> str:
    """`value` as an RE2 regular expression matching exactly it (Go's `regexp.QuoteMeta`):
    Prometheus anchors label regexes, so `a.b` must not match `axb`."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", value)


def _strip(node: pp.Expr) -> pp.Expr:
    while isinstance(node, pp.ParenExpr):
        node = node.expr
    return node


def _selectors(root: pp.Expr) -> list[pp.VectorSelector]:
    found: list[pp.VectorSelector] = []

    def visit(node: pp.Expr) -> None:
        if isinstance(node, pp.VectorSelector):
            found.append(node)

    pp.walk(root, visit)
    return found


def _equalities(sel: pp.VectorSelector) -> dict[str, str]:
    """The labels of `sel` with exactly one `l="v"` (v not empty) matcher."""
    counts: dict[str, int] = {}
    values: dict[str, str] = {}
    for m in sel.matchers.matchers:
        counts[m.name] = counts.get(m.name, 0) + 1
        if m.op == pp.MatchOp.Equal and m.value:
            values[m.name] = m.value
    return {k: v for k, v in values.items() if counts[k] == 1}


def _candidate_labels(root: pp.Expr) -> set[str]:
    sels = _selectors(root)
    if not sels or any(s.matchers.or_matchers or s.at is not None for s in sels):
        return set()
    common = set.intersection(*(set(_equalities(s)) for s in sels))
    return {lb for lb in common if _LABEL.match(lb) and lb != "__name__"}


def _kind(node: pp.Expr, label: str, found: set[str]) -> Kind | None:
    """What `node` evaluates to and whether its series carry `label`; None when batching it by
    `label` is not provably exact (see `shapes`)."""
    if isinstance(node, pp.NumberLiteral):
        return _SCALAR
    if isinstance(node, pp.StringLiteral):
        return ("string", False)
    if isinstance(node, pp.ParenExpr | pp.UnaryExpr):
        return _kind(node.expr, label, found)
    if isinstance(node, pp.VectorSelector):
        if node.at is not None:
            return None
        found.add(_equalities(node)[label])
        return ("vector", True)
    if isinstance(node, pp.MatrixSelector):
        inner = _kind(node.vector_selector, label, found)
        return None if inner is None else ("matrix", True)
    if isinstance(node, pp.SubqueryExpr):
        inner = _kind(node.expr, label, found)
        if inner is None or inner[0] != "vector" or node.at is not None:
            return None
        return ("matrix", inner[1])
    if isinstance(node, pp.Call):
        return _call_kind(node, label, found)
    if isinstance(node, pp.AggregateExpr):
        return _aggregate_kind(node, label, found)
    if isinstance(node, pp.BinaryExpr):
        return _binary_kind(node, label, found)
    return None


def _call_kind(node: pp.Call, label: str, found: set[str]) -> Kind | None:
    name = node.func.name
    args = [_kind(a, label, found) for a in node.args]
    if any(a is None for a in args):
        return None
    if name in _SCALAR_FUNCS and not args:
        return _SCALAR
    series = [a for a in args if a is not None and a[0] in ("vector", "matrix")]
    if len(series) != 1:
        return None
    if name in ("label_replace", "label_join"):
        # label_replace(v, dst, replacement, src, regex); label_join(v, dst, sep, src...)
        named = [node.args[1].val, *(a.val for a in node.args[3:] if name == "label_join")]
        if name == "label_replace":
            named.append(node.args[3].val)
        return None if label in named else ("vector", series[0][1])
    if name not in _PER_SERIES or (name == "histogram_quantile" and label == "le"):
        return None
    if any(a is not None and a[0] == "string" for a in args):
        return None
    return ("vector", series[0][1])


def _aggregate_kind(node: pp.AggregateExpr, label: str, found: set[str]) -> Kind | None:
    inner = _kind(node.expr, label, found)
    if str(node.op) not in _AGGREGATIONS or inner is None or inner[0] != "vector":
        return None
    if node.param is not None and not isinstance(node.param, pp.NumberLiteral):
        return None
    mod = node.modifier
    if mod is not None and mod.type == pp.AggModifierType.Without and label in mod.labels:
        return None
    if str(node.op) in ("topk", "bottomk"):
        return ("vector", inner[1])  # the input series themselves
    if mod is None:
        return ("vector", False)
    if mod.type == pp.AggModifierType.By:
        return ("vector", label in mod.labels)
    return ("vector", inner[1])


def _binary_kind(node: pp.BinaryExpr, label: str, found: set[str]) -> Kind | None:
    lhs, rhs = _kind(node.lhs, label, found), _kind(node.rhs, label, found)
    if lhs is None or rhs is None or "string" in (lhs[0], rhs[0]) or "matrix" in (lhs[0], rhs[0]):
        return None
    if lhs[0] == "scalar" and rhs[0] == "scalar":
        return _SCALAR
    if lhs[0] == "scalar" or rhs[0] == "scalar":
        return ("vector", (rhs if lhs[0] == "scalar" else lhs)[1])
    op = str(node.op)
    m = node.modifier
    matching = m.matching if m is not None else None
    if m is not None:
        fill = m.fill_values
        if fill is not None and (fill.lhs is not None or fill.rhs is not None):
            return None
        if m.group_labels and label in m.group_labels:
            return None
    on = matching is not None and matching.type == pp.LabelModifierType.Include
    if not on and matching is not None and label in matching.labels:
        return None  # ignoring (label)
    # Matched by a set of labels that has `label` (all but the ignored, or an `on` naming it):
    # both sides must carry it alike. An `on` without it gets it, whatever the sides carry.
    named = matching is not None and label in matching.labels
    if (not on or named) and lhs[1] != rhs[1]:
        return None
    if op == "or" and lhs[1] != rhs[1]:
        return None  # the answer mixes both sides' series: they must agree on the label
    if op in ("and", "or", "unless"):
        return ("vector", lhs[1])
    card = m.card if m is not None else pp.VectorMatchCardinality.OneToOne
    if card == pp.VectorMatchCardinality.ManyToOne:
        return ("vector", lhs[1])
    if card == pp.VectorMatchCardinality.OneToMany:
        return ("vector", rhs[1])
    if on:
        return ("vector", named and lhs[1])  # one-to-one on(...) keeps only those of the lhs
    return ("vector", lhs[1])


# ---- printing the batched expression ---------------------------------------------------------


def _print(root: pp.Expr, label: str, regex: str) -> str | None:
    """`root` with `label="v"` as `label=~regex` on every selector and `label` added to every
    grouping and `on(...)` that lacks it, printed by the parser; None if that fails."""

    def post(node: pp.Expr) -> pp.Expr | None:
        if isinstance(node, pp.VectorSelector):
            return _selector(node, label, regex)
        if isinstance(node, pp.AggregateExpr):
            mod = node.modifier
            if mod is None or (mod.type == pp.AggModifierType.By and label not in mod.labels):
                labels = [*(mod.labels if mod is not None else ()), label]
                head = "" if node.param is None else node.param.prettify() + ", "
                shell = pp.parse(f"{node.op} {pp.AggModifier(pp.AggModifierType.By, labels)} "
                                 f"({head}{_HOLE})")
                return _fill(shell, {_HOLE: node.expr})
        if isinstance(node, pp.BinaryExpr) and node.modifier is not None:
            m = node.modifier
            if (m.matching is not None and m.matching.type == pp.LabelModifierType.Include
                    and label not in m.matching.labels):
                matching = pp.BinModifier(m.card, m.return_bool, pp.LabelModifier(
                    pp.LabelModifierType.Include, [*m.matching.labels, label]), m.group_labels)
                shell = pp.parse(f"{_LHS} {node.op} {matching} {_RHS}")
                return _fill(shell, {_LHS: node.lhs, _RHS: node.rhs})
        return None

    try:
        text: str = pp.transform(root, post_visit=post).prettify()
        pp.parse(text)
    except Exception:
        return None
    return text


def _fill(shell: pp.Expr, holes: dict[str, pp.Expr]) -> pp.Expr:
    """`shell` with its placeholder selectors (bare names, no matchers: every selector of a
    batched expression has its label's matcher) replaced by the given subtrees."""

    def pre(node: pp.Expr) -> pp.Expr | None:
        if isinstance(node, pp.VectorSelector) and not node.matchers.matchers:
            return holes.get(node.name or "")
        return None

    filled: pp.Expr = pp.transform(shell, pre_visit=pre)
    return filled


def _selector(node: pp.VectorSelector, label: str, regex: str) -> pp.Expr:
    """The selector with `label="v"` as `label=~regex`, built from its parts and checked by
    parsing it back (the binding cannot edit a node in place)."""
    expected = []
    for m in node.matchers.matchers:
        if m.name == label and m.op == pp.MatchOp.Equal:
            expected.append((pp.MatchOp.Re, m.name, regex))
        else:
            expected.append((m.op, m.name, m.value))
    name = node.name
    if name is not None and not _METRIC.match(name):
        raise _Unbatchable(name)
    offset = node.offset
    # json.dumps writes a string PromQL reads back as the same string (checked below)
    text = (name or "") + "{" + ",".join(
        f"{n}{_op(op)}{json.dumps(v, ensure_ascii=False)}" for op, n, v in expected) + "}"
    if offset:
        text += f" offset {pp.display_duration(offset)}"
    back = pp.parse(text)
    if (not isinstance(back, pp.VectorSelector) or back.name != name or back.offset != offset
            or [(m.op, m.name, m.value) for m in back.matchers.matchers] != expected):
        raise _Unbatchable(text)
    return back


def _op(op: pp.MatchOp) -> str:
    return next(text for o, text in _MATCH_OPS if o == op)


# ---- planning a tick's queries, splitting the answers ----------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    """One query answered from a batch: its share is the series with `label` = `value`,
    filtered by `comparison` (its own threshold, when the batch asked a looser one)."""

    query: Query
    value: str
    comparison: Comparison | None


@dataclass(frozen=True, slots=True)
class Batch:
    query: Query  # what is sent
    label: str
    keeps_label: bool
    members: tuple[Member, ...]


@dataclass(frozen=True, slots=True)
class _Candidate:
    query: Query
    lhs: str
    comparison: Comparison | None
    shapes: tuple[Shape, ...]


def plan(queries: Sequence[Query], max_values: int = MAX_VALUES, max_regex: int = MAX_REGEX
         ) -> tuple[list[Query], list[Batch]]:
    """The distinct `queries` of one tick as the ones sent alone and the batches (at least two
    label values each) that answer the rest. A query `E op N` joins by `E`: a batch whose
    members all compare the same way asks `(batched E) op loosest`, else the batched `E`."""
    alone: list[Query] = []
    candidates: list[_Candidate] = []
    for q in queries:
        split = split_comparison(q.expr) if not q.window else None
        lhs, cmp = split if split is not None else (q.expr, None)
        found = shapes(lhs) if not q.window else ()
        if found:
            candidates.append(_Candidate(q, lhs, cmp, found))
        else:
            alone.append(q)
    # Each query joins one batch; the shape with the most label values goes first (an
    # expression with `service="a",code="500"` could go by either label).
    values: dict[tuple[str, float], set[str]] = {}
    for c in candidates:
        for s in c.shapes:
            values.setdefault((s.key, c.query.at), set()).add(s.value)
    order = sorted(values, key=lambda k: -len(values[k]))
    rank = {k: i for i, k in enumerate(order)}
    groups: dict[tuple[str, float], list[tuple[_Candidate, Shape]]] = {}
    for c in candidates:
        best = min(c.shapes, key=lambda s: rank[(s.key, c.query.at)])
        groups.setdefault((best.key, c.query.at), []).append((c, best))
    batches: list[Batch] = []
    for (_, at), members in groups.items():
        for chunk in _chunks(members, max_values, max_regex):
            batch = _batch(chunk, at)
            if batch is None:
                alone.extend(c.query for c, _ in chunk)
            else:
                batches.append(batch)
    return alone, batches


def _chunks(members: list[tuple[_Candidate, Shape]], max_values: int, max_regex: int
            ) -> Iterable[list[tuple[_Candidate, Shape]]]:
    """Members in runs of at most `max_values` label values and `max_regex` characters of
    alternation; members with the same value stay together."""
    by_value: dict[str, list[tuple[_Candidate, Shape]]] = {}
    for c, s in members:
        by_value.setdefault(s.value, []).append((c, s))
    chunk: list[tuple[_Candidate, Shape]] = []
    count = size = 0
    for value, same in by_value.items():
        width = len(quote_meta(value)) + 1
        if chunk and (count >= max_values or size + width > max_regex):
            yield chunk
            chunk, count, size = [], 0, 0
        chunk.extend(same)
        count, size = count + 1, size + width
    if chunk:
        yield chunk


def _batch(chunk: list[tuple[_Candidate, Shape]], at: float) -> Batch | None:
    values = tuple(dict.fromkeys(s.value for _, s in chunk))
    if len(values) < 2:
        return None  # one value: nothing to gain (the thresholds are `shared_queries`' work)
    first, shape = chunk[0]
    text = batched_expr(first.lhs, shape.label, values)
    if text is None:
        return None
    comparisons = [c.comparison for c, _ in chunk]
    ways = {c.op[0] if c is not None else None for c in comparisons}
    if len(ways) == 1 and None not in ways:
        op, number = loosest([c for c in comparisons if c is not None])
        text = f"({text}) {op} {number}"
    members = tuple(Member(c.query, s.value, c.comparison) for c, s in chunk)
    return Batch(Query(text, at), shape.label, shape.keeps_label, members)


def split(batch: Batch, answer: Sequence[Sample]) -> list[list[Sample]] | None:
    """Each member's share of the batch's answer (in the order of `batch.members`), exactly
    what its own query returns; None if the answer holds a series the batch cannot place (no
    label, another value): then the members must be asked alone."""
    label = batch.label
    by_value: dict[str, list[Sample]] = {m.value: [] for m in batch.members}
    for s in answer:
        rows = by_value.get(s.labels.get(label, ""))
        if rows is None:
            return None
        rows.append(s)
    out: list[list[Sample]] = []
    drop: Callable[[Sample], Sample] = _without(label)
    for m in batch.members:
        rows = by_value[m.value]
        if m.comparison is not None:
            rows = [s for s in rows if m.comparison.holds(s.value)]
        out.append(rows if batch.keeps_label else [drop(s) for s in rows])
    return out


# a query with its instant as a position among the tick's: expr, at, window, step
Slot = tuple[str, int, float, float]


@dataclass(frozen=True, slots=True)
class TickPlan:
    """How to answer one tick's queries, by position. `units` are the queries that would be
    sent without batching (thresholds already shared); query i of the tick is `via[i]`: its
    unit and the comparison that filters the unit's answer to its own (None: all of it).
    `alone` units are sent as they are; each batch answers the units `batch_units[k]`, in the
    order of its members."""

    units: tuple[Slot, ...]
    via: tuple[tuple[int, Comparison | None], ...]
    alone: tuple[int, ...]
    batches: tuple[Batch, ...]  # their queries' `at` is a position in the tick's instants
    batch_units: tuple[tuple[int, ...], ...]


@functools.lru_cache(maxsize=8192)
def tick_plan(slots: tuple[Slot, ...]) -> TickPlan:
    """`shared_queries`, then `plan`, for a tick whose distinct queries are `slots` (each
    instant given as its position among the tick's instants). A group's ticks repeat the same
    slots, so its later ticks find their plan here; `engine.run_queries` puts the instants
    back."""
    queries = [Query(e, float(a), w, st) for e, a, w, st in slots]
    shared = shared_queries(queries)
    units = list(dict.fromkeys(shared[q][0] if q in shared else q for q in queries))
    index = {u: i for i, u in enumerate(units)}
    alone, batches = plan(units)
    via = tuple((index[shared[q][0]], shared[q][1]) if q in shared else (index[q], None)
                for q in queries)
    return TickPlan(tuple((u.expr, int(u.at), u.window, u.step) for u in units), via,
                    tuple(index[q] for q in alone), tuple(batches),
                    tuple(tuple(index[m.query] for m in b.members) for b in batches))


def _without(label: str) -> Callable[[Sample], Sample]:
    def drop(s: Sample) -> Sample:
        return Sample({k: v for k, v in s.labels.items() if k != label}, s.value)
    return drop
