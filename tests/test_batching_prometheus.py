"""Differential test of batching against a real Prometheus: for expressions drawn from a small
PromQL grammar (rates, increases, aggregations with and without grouping, histogram quantiles,
ratios of two aggregations, `on(...)`, `group_left`, set operators, offsets, subqueries,
thresholds) and sets of label values, the share `engine.run_queries` gives each rule from one
batched query must be exactly what that rule's own query returns — labels, values, emptiness,
or the same error. The data has several values of the label (some with regex syntax, quotes and
backslashes), values asked for that no series has, and series without the label at all."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from conftest import BackfilledPrometheus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watchdog import engine
from watchdog.batching import shapes
from watchdog.engine import QueryStats, Refused, run_queries
from watchdog.evaluate import Query, Sample, split_comparison
from watchdog.series import Series
from watchdog.source import PrometheusConfig, PrometheusSource

pytestmark = pytest.mark.prometheus


@pytest.fixture(autouse=True)
def fresh_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "REFUSED", Refused())

SERVICES = ["a", "b", "c.d", "e|f", 'g"h', "x\\y", "ü", "b+"]
ASKED = [*SERVICES, "missing", "a.", ".*"]  # the last three: no series has them
STEP = 15.0
END = 2 * 3600.0


def data() -> list[Series]:
    rng = random.Random(16)
    out: list[Series] = []

    def counter(labels: dict[str, str], rate: float, gap: float = 0.0) -> None:
        total, pts = 0.0, []
        for k in range(int(END / STEP)):
            total += rng.uniform(0, 2 * rate) * STEP
            if rng.random() < 0.02:
                total = 0.0  # a restart: rate() must see the reset alike
            if rng.random() >= gap:
                pts.append((k * STEP, round(total, 3)))
        out.append(Series(labels, pts))

    for i, svc in enumerate(SERVICES):
        for inst in ("i1", "i2"):
            counter({"__name__": "req_total", "svc": svc, "code": "200", "instance": inst},
                    10 + i)
            if i % 3 != 1:  # some services never fail
                counter({"__name__": "req_total", "svc": svc, "code": "500", "instance": inst},
                        0.5 + i / 10, gap=0.1)
        if i % 4 != 3:
            for le in ("0.1", "0.5", "1", "+Inf"):
                counter({"__name__": "lat_bucket", "svc": svc, "le": le},
                         {"0.1": 2, "0.5": 5, "1": 8, "+Inf": 9}[le] + i)
        out.append(Series({"__name__": "temp", "svc": svc, "zone": f"z{i % 2}"},
                          [(k * STEP, rng.choice([rng.uniform(-5, 50), 0.0, 21.5]))
                           for k in range(int(END / STEP)) if rng.random() > 0.05]))
    # series without the label: a batch must not pick them up
    counter({"__name__": "req_total", "code": "200", "instance": "i1"}, 50)
    counter({"__name__": "lat_bucket", "le": "+Inf"}, 3)
    out.append(Series({"__name__": "temp", "zone": "z0"}, [(0.0, 1.0), (END, 2.0)]))
    return out


# ---- a small grammar: each draw is a function from the label value to an expression --------

Expr = Callable[[str], str]


def sel(metric: str, extra: str = "") -> Expr:
    return lambda v: f"{metric}{{svc={json.dumps(v, ensure_ascii=False)}{extra}}}"


@st.composite
def series_expr(draw: st.DrawFn) -> Expr:
    """A vector of per-series values."""
    kind = draw(st.sampled_from(["rate", "increase", "irate", "temp", "sub"]))
    extra = draw(st.sampled_from(["", ',code="200"', ',code="500"', ',instance=~"i.*"']))
    offset = draw(st.sampled_from(["", " offset 5m"]))
    rng = draw(st.sampled_from(["1m", "5m"]))
    if kind == "temp":
        s = sel("temp")
        return lambda v: f"{s(v)}{offset}"
    s = sel("req_total", extra)
    if kind == "sub":
        return lambda v: f"max_over_time(rate({s(v)}[1m])[10m:1m]{offset})"
    return lambda v: f"{kind}({s(v)}[{rng}]{offset})"


GROUPINGS = ["", " by (code)", " by (svc)", " by (instance, code)", " without (instance)",
             " by (zone)"]


@st.composite
def aggregation(draw: st.DrawFn) -> Expr:
    op = draw(st.sampled_from(["sum", "avg", "max", "min", "count", "stddev", "group",
                               "quantile", "topk", "bottomk"]))
    grouping = draw(st.sampled_from(GROUPINGS))
    inner = draw(series_expr())
    param = {"quantile": "0.9, ", "topk": "2, ", "bottomk": "1, "}.get(op, "")
    return lambda v: f"{op}{grouping} ({param}{inner(v)})"


@st.composite
def histogram(draw: st.DrawFn) -> Expr:
    q = draw(st.sampled_from(["0.5", "0.9", "0.99"]))
    grouping = draw(st.sampled_from(["le", "le, svc"]))
    s = sel("lat_bucket")
    return lambda v: f"histogram_quantile({q}, sum by ({grouping}) (rate({s(v)}[5m])))"


@st.composite
def binary(draw: st.DrawFn) -> Expr:
    """Two aggregations over the same value: ratios, `on(...)`, `group_left`, set operators."""
    lhs, rhs = draw(aggregation()), draw(aggregation())
    op = draw(st.sampled_from(["/", "-", ">", "and", "or", "unless"]))
    matching = draw(st.sampled_from(["", " on (code)", " on ()", " ignoring (instance)",
                                     " on (code) group_left", " on (svc)", " ignoring (svc)",
                                     " on (svc, code) group_left", " bool"]))
    if "bool" in matching and op != ">":
        matching = ""
    if op in ("and", "or", "unless") and "group_left" in matching:
        matching = ""
    return lambda v: f"{lhs(v)} {op}{matching} {rhs(v)}"


@st.composite
def expression(draw: st.DrawFn) -> Expr:
    base = draw(st.one_of(series_expr(), aggregation(), aggregation(), histogram(), binary(),
                          binary()))
    wrap = draw(st.sampled_from(["{}", "{} * 100", "-({})", "clamp_min({}, 1)",
                                 'label_replace({}, "copy", "$1", "code", "(.*)")']))
    return lambda v: wrap.format(base(v))


THRESHOLDS = st.sampled_from([None, "> 0", "> 1", ">= 5", "< 10", "> -Inf", "<= 0.5"])


def normal(answer: list[Sample] | BaseException) -> Any:
    if isinstance(answer, BaseException):
        return ("error", str(answer))
    return sorted((sorted(s.labels.items()), repr(s.value)) for s in answer)


def test_batched_answers_equal_each_query_alone(
        backfilled_prometheus: BackfilledPrometheus) -> None:
    prom = backfilled_prometheus(data())
    counts = {"examples": 0, "batched": 0}

    @settings(max_examples=300, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(expression(), st.lists(st.sampled_from(ASKED), min_size=2, max_size=6, unique=True),
           st.lists(THRESHOLDS, min_size=6, max_size=6),
           st.lists(THRESHOLDS, min_size=6, max_size=6),
           st.sampled_from([600.0, 1800.0, 3600.0 + 7.5, END]))
    def check(expr: Expr, values: list[str], thresholds: list[str | None],
              second: list[str | None], at: float) -> None:
        # a second threshold on some values: warning/critical pairs (`shared_queries`) too
        queries = [Query(expr(v) if t is None else f"{expr(v)} {t}", at)
                   for v, t in zip(values, thresholds, strict=False)]
        queries += [Query(f"{expr(v)} {t}", at)
                    for v, t in zip(values, second, strict=False) if t is not None]
        asyncio.run(compare(prom.url, queries, counts))

    check()
    # the grammar mostly draws batchable shapes: the comparison must not be vacuous
    assert counts["batched"] >= counts["examples"] // 2, counts


async def compare(url: str, queries: list[Query], counts: dict[str, int]) -> None:
    async with aiohttp.ClientSession() as session:
        src = PrometheusSource(session, PrometheusConfig(url=url, timeout=30))
        stats = QueryStats()
        got = await run_queries(src, queries, 4, stats)
        counts["examples"] += 1
        counts["batched"] += stats.batched > 0
        for q in queries:
            try:
                alone: list[Sample] | BaseException = await src.query(q.expr, q.at)
            except Exception as e:
                alone = e
            assert normal(got[q]) == normal(alone), (q.expr, stats)


async def test_a_batch_over_the_sample_limit_is_asked_member_by_member(
        backfilled_prometheus: BackfilledPrometheus) -> None:
    """Prometheus refuses a query that would load more samples than `--query.max-samples`
    (HTTP 422): the batch's members are then asked one by one, each getting its own answer."""
    # (the limit is on samples held at once: one member stays under 40, the eight do not)
    prom = backfilled_prometheus(data(), extra_args=["--query.max-samples=40"])
    queries = [Query(f"sum by (code) (rate({sel('req_total')(v)}[5m]))", 3600.0)
               for v in SERVICES]
    async with aiohttp.ClientSession() as session:
        src = PrometheusSource(session, PrometheusConfig(url=prom.url, timeout=30))
        stats = QueryStats()
        got = await run_queries(src, queries, 4, stats)
        assert stats.sent == 1 + len(queries) and stats.batched == 0
        for q in queries:
            alone = await src.query(q.expr, q.at)
            assert alone and normal(got[q]) == normal(alone)


def test_the_grammar_draws_batchable_shapes() -> None:
    """What the differential test relies on: its expressions are batchable (or refused for a
    reason the bail-out tests name) — checked on a few fixed draws."""
    for expr in ['sum by (code) (rate(req_total{svc="a",code="500"}[5m])) / on (code) '
                 'sum by (code) (rate(req_total{svc="a"}[5m]))',
                 'histogram_quantile(0.9, sum by (le) (rate(lat_bucket{svc="a"}[5m])))',
                 'max_over_time(rate(req_total{svc="a"}[1m])[10m:1m] offset 5m) * 100 > 1']:
        lhs = (split_comparison(expr) or (expr,))[0]
        assert any(s.label == "svc" for s in shapes(lhs)), expr
