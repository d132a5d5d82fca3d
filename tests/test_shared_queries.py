"""Thresholds on one expression share a query (`engine.shared_queries`): `E > 0.05` and
`E > 0.1` are answered by `(E) > 0.05` filtered here. The answers must be what Prometheus gives
each query on its own — labels (`__name__` included), values, order — which the second test
checks against a real Prometheus on data with gaps, NaN and infinities."""

from __future__ import annotations

import math
import random
from pathlib import Path

import aiohttp
import pytest

from watchdog.batching import shared_queries
from watchdog.engine import run_queries
from watchdog.evaluate import Query, split_comparison
from watchdog.promserver import PrometheusServer, backfill
from watchdog.series import Series
from watchdog.source import PrometheusConfig, PrometheusSource
from watchdog.testing import FakeSource, sample


def test_split_only_a_vector_compared_with_a_number() -> None:
    assert split_comparison('sum(rate(x{a="b"}[5m])) >= 1e9') == (
        'sum(rate(x{a="b"}[5m]))', split_comparison("y >= 1e9")[1])  # type: ignore[index]
    assert split_comparison("a + b > 0x10")[1].number == 16  # type: ignore[index]
    assert split_comparison("x > 1 > 2")[0] == "x > 1"  # type: ignore[index]
    for expr in ("x > bool 1", "1 < x", "x > 1 and y", "x == 1", "x > on() 1", "x > NaN",
                 "(x > 1)", "scalar(x) > 1", "x > 1 # note", "x > y"):
        assert split_comparison(expr) is None, expr


async def test_thresholds_of_one_expression_are_one_query() -> None:
    src = FakeSource({"(x) >= 1.0": [sample(5.0, __name__="x", i="a"),
                                    sample(2.0, __name__="x", i="b")],
                      "y": [sample(0.5, i="a"), sample(9.0, i="b")]})
    qs = [Query("x > 1", 0.0), Query("x > 3", 0.0), Query("x >= 1", 0.0),
          Query("y > 1", 0.0), Query("y < 1", 0.0), Query("y", 0.0), Query("x < 0", 0.0)]
    got = await run_queries(src, qs, 4)
    assert sorted(e for e, _ in src.calls) == ["(x) >= 1.0", "x < 0", "y"]
    assert [s.labels["i"] for s in got[Query("x > 3", 0.0)]] == ["a"]  # type: ignore[union-attr]
    assert [s.labels["i"] for s in got[Query("y > 1", 0.0)]] == ["b"]  # type: ignore[union-attr]
    assert [s.labels["i"] for s in got[Query("y < 1", 0.0)]] == ["a"]  # type: ignore[union-attr]
    assert shared_queries([Query("x > 1", 0.0), Query("x > 1", 5.0)]) == {}  # other instants


@pytest.mark.prometheus
async def test_shared_answers_are_what_each_query_gets_alone(tmp_path: Path) -> None:
    rng = random.Random(11)
    series = []
    for i in range(4):
        pts = []
        for k in range(120):
            if rng.random() < 0.1:
                continue
            v = rng.choice([rng.uniform(-5, 10), math.nan, math.inf, -math.inf, 3.0, 0.0])
            pts.append((k * 60.0, v))
        series.append(Series({"__name__": "m", "i": f"i{i}", "g": f"g{i % 2}"}, pts))
        series.append(Series({"__name__": "c", "i": f"i{i}"},
                             [(k * 60.0, float(k * (i + 1))) for k in range(120)]))
    backfill(series, tmp_path / "tsdb")
    exprs = ["m", "max by (g) (m)", "rate(c[5m]) * 60", "m + 1"]
    ops = [">", ">=", "<", "<="]
    numbers = ["3", "0", "-2.5", "1e1", "0x2", "+Inf", "-Inf"]
    with PrometheusServer(tmp_path / "tsdb") as prom:
        async with aiohttp.ClientSession() as session:
            src = PrometheusSource(session, PrometheusConfig(url=prom.url, timeout=30))
            for at in (600.0, 1800.0, 3000.0, 6000.0):
                qs = [Query(f"{e} {op} {n}", at) for e in exprs for op in ops for n in numbers]
                qs.append(Query("m", at))
                qs.append(Query("max by (g) (m)", at))
                shared = await run_queries(src, qs, 8)
                for q in qs:
                    alone = await src.query(q.expr, q.at)
                    got = shared[q]
                    assert not isinstance(got, BaseException), (q, got)
                    assert [(dict(s.labels), repr(s.value)) for s in got] == \
                        [(dict(s.labels), repr(s.value)) for s in alone], q
