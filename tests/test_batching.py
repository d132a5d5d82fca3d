"""Rules that differ only in one label's value are asked as one query (`watchdog.batching`), and
each gets exactly its own share: what may join a batch and what must not, how the answer is
split, and what happens when the batch fails. The answers themselves are checked against a real
Prometheus in tests/test_batching_prometheus.py."""

from __future__ import annotations

import json
from typing import Any

import promql_parser
import pytest
import re2
from hypothesis import given
from hypothesis import strategies as st

from watchdog import batching, engine
from watchdog.batching import Batch, Member, batched_expr, plan, quote_meta, shapes, split
from watchdog.engine import GroupRuntime, QueryStats, Refused, run_queries, tick
from watchdog.evaluate import Context, Query
from watchdog.model import Comparison, Group
from watchdog.source import QueryError
from watchdog.testing import FakeSource, sample


def by(expr: str) -> dict[str, tuple[str, bool]]:
    """label -> (value, keeps_label) for each way `expr` can be batched."""
    return {s.label: (s.value, s.keeps_label) for s in shapes(expr)}


# ---- what may join a batch -------------------------------------------------------------------


def test_the_label_on_every_selector_is_the_batch_label() -> None:
    assert by('sum(rate(req{shard="s7",code="200"}[1m]))') == {
        "shard": ("s7", False), "code": ("200", False)}
    assert by('sum(rate(err{svc="a"}[5m])) / sum(rate(req{svc="a"}[5m]))') == {
        "svc": ("a", False)}
    assert by('rate(err{svc="a"}[5m]) / rate(req{svc="a"}[5m])') == {"svc": ("a", True)}
    assert by('sum by (svc, code) (rate(req{svc="a"}[5m]))') == {"svc": ("a", True)}
    assert by('sum without (code) (rate(req{svc="a"}[5m]))') == {"svc": ("a", True)}
    assert by('topk(2, rate(req{svc="a"}[5m]))') == {"svc": ("a", True)}
    assert by('histogram_quantile(0.9, sum by (le) (rate(b{svc="a"}[5m])))') == {
        "svc": ("a", False)}
    assert by('max_over_time(rate(req{svc="a"}[1m])[10m:1m] offset 5m) > 3') == {
        "svc": ("a", True)}
    assert by('sum by (c) (x{svc="a"}) / on (c) group_left sum by (c) (y{svc="a"})') == {
        "svc": ("a", False)}
    assert by('label_replace(x{svc="a"}, "z", "$1", "c", "(.*)") * 100') == {"svc": ("a", True)}
    assert by('(sum(x{svc="a"}))') == {"svc": ("a", False)}  # a shared threshold's `(E)`


@pytest.mark.parametrize("expr", [
    'sum(x{svc="a"}) / sum(y)',  # one selector without the matcher
    'sum(x{svc="a"}) / sum(y{svc="b"})',  # two values in one expression
    'x{svc=""}',  # matches series without the label
    'x{svc="a",svc="b"}',
    'x{svc=~"a"}', 'x{svc!="a"}',
    'sum without (svc) (x{svc="a"})',
    'x{svc="a"} / ignoring (svc) y{svc="a"}',
    'sum(x{svc="a"}) / y{svc="a"}',  # alone never matched (one side lacks svc); batched would
    'sum(x{svc="a"}) and y{svc="a"}',
    'sum(x{svc="a"}) or sum by (svc) (y{svc="a"})',  # the answer would mix both
    'x{svc="a"} / on (c) group_left (svc) y{svc="a"}',
    'label_replace(x{svc="a"}, "svc", "b", "", "")',
    'label_replace(x{svc="a"}, "z", "$1", "svc", "(.*)")',
    'label_join(x{svc="a"}, "z", "-", "svc", "c")',
    'label_join(x{svc="a"}, "svc", "-", "c")',
    'scalar(x{svc="a"}) > 1', 'absent(x{svc="a"})', 'absent_over_time(x{svc="a"}[5m])',
    'count_values("v", x{svc="a"})', 'sort(x{svc="a"})', 'sort_desc(x{svc="a"})',
    'x{svc="a"} + vector(1)', 'x{svc="a"} @ 100', 'x{svc="a"} offset -5m',
    'limitk(2, x{svc="a"})', 'quantile(scalar(y{svc="a"}), x{svc="a"})',
    'time()', '1 + 2', 'not promql (',
])
def test_bail_outs(expr: str) -> None:
    assert "svc" not in by(expr), expr


def test_histogram_quantile_is_not_batched_by_le() -> None:
    assert "le" not in by('histogram_quantile(0.9, rate(b{le="0.5",svc="a"}[5m]))')
    assert "le" in by('sum(rate(b{le="0.5",svc="a"}[5m]))')


def test_the_batched_expression() -> None:
    e = 'sum by (c) (rate(x{svc="a",k="1"}[5m])) / on (c) sum(rate(y{svc="a"}[5m] offset 1h))'
    got = batched_expr(e, "svc", ("a", "b.c"))
    assert got is not None
    assert " ".join(got.split()) == (
        'sum by (c, svc) (rate(x{k="1",svc=~"a|b\\\\.c"}[5m])) / on (c, svc) '
        'sum by (svc) (rate(y{svc=~"a|b\\\\.c"}[5m] offset 1h))')
    # `on(...)` that already names the label, `by` that has it: unchanged
    got = batched_expr('sum by (svc) (x{svc="a"}) / on (svc) y{svc="a"}', "svc", ("a", "b"))
    assert got is not None
    assert " ".join(got.split()) == 'sum by (svc) (x{svc=~"a|b"}) / on (svc) y{svc=~"a|b"}'


@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=5, unique=True),
       st.text(max_size=12))
def test_values_are_matched_literally(values: list[str], other: str) -> None:
    """Any values, quotes, backslashes, regex syntax and newlines included: the regex in the
    printed query matches exactly them (RE2, anchored, as Prometheus matches)."""
    try:
        "".join(values).encode()
    except UnicodeEncodeError:
        return  # not text Prometheus could hold
    text = batched_expr(f"x{{svc={json.dumps(values[0], ensure_ascii=False)}}}", "svc",
                        tuple(values))
    assert text is not None
    (m,) = [m for m in promql_parser.parse(text).matchers.matchers if m.name == "svc"]
    regex = re2.compile(f"^(?:{m.value})$")
    for v in values:
        assert regex.match(v), v
    assert (regex.match(other) is not None) == (other in values)
    assert re2.compile(quote_meta(other)).fullmatch(other)


# ---- planning and splitting ------------------------------------------------------------------


def test_plan_batches_by_the_label_with_most_values_and_keeps_the_rest_alone() -> None:
    qs = [Query(f'sum(rate(req{{shard="s{i}",code="200"}}[1m])) > {i}', 5.0) for i in range(4)]
    qs += [Query('sum(rate(req{shard="s9",code="500"}[1m]))', 5.0),  # its own shape
           Query('sum(rate(req{shard="s1",code="200"}[1m]))', 10.0),  # another instant
           Query("up", 5.0)]
    alone, batches = plan(qs)
    assert sorted(q.expr for q in alone) == sorted(q.expr for q in qs[4:])
    (b,) = batches
    assert b.label == "shard" and not b.keeps_label
    assert [m.value for m in b.members] == ["s0", "s1", "s2", "s3"]
    # thresholds that all point one way: the loosest goes into the query, each keeps its own
    assert b.query.expr.endswith(") > 0.0")
    assert [m.comparison for m in b.members] == [Comparison(">", i) for i in range(4)]


def test_mixed_thresholds_ask_the_expression_itself() -> None:
    qs = [Query('x{s="a"} > 1', 0.0), Query('x{s="b"} < 1', 0.0), Query('x{s="c"}', 0.0)]
    _, (b,) = plan(qs)
    assert b.query.expr == 'x{s=~"a|b|c"}'


def test_batches_are_bounded() -> None:
    qs = [Query(f'x{{s="v{i:03d}"}}', 0.0) for i in range(250)]
    _, batches = plan(qs)
    assert [len(b.members) for b in batches] == [100, 100, 50]
    alone, batches = plan(qs, max_regex=40)  # 'v000|' is 5 characters
    assert not alone and {len(b.members) for b in batches} == {8, 2}
    # one value on its own: nothing to batch
    alone, batches = plan(qs[:3], max_values=1)
    assert len(alone) == 3 and not batches


def test_split_gives_each_member_its_series_and_drops_the_label_where_it_was_not() -> None:
    q1, q2, q3 = (Query(f'sum(x{{s="{v}"}}) > 1', 0.0) for v in "abc")
    b = Batch(Query("batched", 0.0), "s", False, (
        Member(q1, "a", Comparison(">", 1)), Member(q2, "b", Comparison(">", 1)),
        Member(q3, "c", None)))
    parts = split(b, [sample(5, s="a"), sample(0.5, s="b"), sample(2, s="c")])
    assert parts == [[sample(5)], [], [sample(2)]]
    kept = Batch(b.query, "s", True, b.members)
    assert split(kept, [sample(5, s="a", i="1")]) == [[sample(5, s="a", i="1")], [], []]
    # a series the batch cannot place: the members must be asked alone
    assert split(b, [sample(1, s="d")]) is None
    assert split(b, [sample(1)]) is None


# ---- through the engine ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_refusals(monkeypatch: pytest.MonkeyPatch) -> Refused:
    refused = Refused(ticks=2)
    monkeypatch.setattr(engine, "REFUSED", refused)
    return refused


def group(n: int, **extra: Any) -> Group:
    return Group.model_validate({"name": "g", "rules": [
        {"alert": f"R{i}", "expr": f'sum(rate(req{{shard="s{i}",code="200"}}[1m])) > {i}',
         **extra} for i in range(n)]})


class Answering(FakeSource):
    """A stand-in Prometheus for `x{shard=~"..."}`-style batches: answers any query from
    `series` (shard -> value) by the shards its regex names, as `sum by (shard)` would."""

    def __init__(self, series: dict[str, float]) -> None:
        super().__init__()
        self.series = series

    async def query(self, expr: str, at: float) -> list[Any]:
        await super().query(expr, at)
        shards: list[str] = []

        def visit(node: Any) -> None:
            if isinstance(node, promql_parser.VectorSelector):
                for m in node.matchers.matchers:
                    if m.name == "shard":
                        shards.extend(m.value.split("|"))

        promql_parser.walk(promql_parser.parse(expr), visit)
        return [sample(self.series[s], shard=s) for s in shards if s in self.series]


async def test_a_group_of_such_rules_sends_one_query() -> None:
    src = Answering({f"s{i}": float(i) + 0.5 for i in range(0, 50, 2)})  # odd shards: no data
    rt = GroupRuntime.new("f.yml", group(50))
    res = await tick(rt, 60.0, src, Context())
    assert sum(src.calls.values()) == 1 and res.sent == 1 and res.batched == 50
    ((expr, _),) = src.calls
    expr = "".join(expr.split())  # printed by the parser, which breaks long lines
    assert expr.startswith("(sumby(shard)(rate(req{") and expr.endswith(")>0.0")
    firing = sorted(int(e.alert.rule[1:]) for e in res.events if e.kind == "firing")
    assert firing == list(range(0, 50, 2))  # i + 0.5 > i for the shards with data
    assert all(e.alert.labels.get("shard") is None for e in res.events)  # sum() had no shard


async def test_a_failed_batch_fails_every_member() -> None:
    src = FakeSource()
    qs = [Query(f'x{{s="{v}"}}', 0.0) for v in "ab"]
    _, (b,) = plan(qs)
    src.fail(b.query.expr, "http://prom/api/v1/query: timed out after 10s")
    stats = QueryStats()
    got = await run_queries(src, qs, 4, stats)
    assert all(isinstance(got[q], QueryError) for q in qs)
    assert stats.sent == 1  # not asked again one by one: Prometheus is not answering


@pytest.mark.parametrize("status", [400, 422])
async def test_a_refused_batch_is_asked_member_by_member(status: int) -> None:
    qs = [Query(f'x{{s="{v}"}}', 0.0) for v in "abc"]
    _, (b,) = plan(qs)
    src = FakeSource({b.query.expr: QueryError("query processing would load too many samples",
                                               status),
                      qs[0].expr: [sample(1, s="a")], qs[2].expr: QueryError("alone", 422)})
    stats = QueryStats()
    got = await run_queries(src, qs, 4, stats)
    assert got[qs[0]] == [sample(1, s="a")] and got[qs[1]] == []
    assert str(got[qs[2]]) == "alone"
    assert stats.sent == 4 and stats.batched == 0
    # not sent again for a while (here two ticks): the members go alone straight away
    for sent in (3, 3, 4):
        src.calls.clear()
        stats = QueryStats()
        again = await run_queries(src, qs, 4, stats)
        assert stats.sent == sent
        assert ((b.query.expr, 0.0) in src.calls) == (sent == 4)  # tried again after two
        assert {q: repr(a) for q, a in again.items()} == {q: repr(a) for q, a in got.items()}


def test_refusals_are_remembered_for_a_while_and_bounded() -> None:
    r = Refused(ticks=3, size=2)
    r.add("a")
    assert [r.skip("a") for _ in range(4)] == [True, True, True, False]
    r.add("a"), r.add("b"), r.add("c")  # the oldest goes
    assert (r.skip("a"), r.skip("b"), r.skip("c")) == (False, True, True)


async def test_an_answer_the_batch_cannot_place_is_asked_again_alone() -> None:
    qs = [Query(f'x{{s="{v}"}}', 0.0) for v in "ab"]
    _, (b,) = plan(qs)
    src = FakeSource({b.query.expr: [sample(1.0)], qs[0].expr: [sample(2, s="a")]})
    got = await run_queries(src, qs, 4)
    assert got == {qs[0]: [sample(2, s="a")], qs[1]: []}


async def test_planning_is_cached_across_ticks() -> None:
    src = Answering({"s0": 1.0})
    rt = GroupRuntime.new("f.yml", Group.model_validate({"name": "g", "rules": [
        {"alert": f"R{i}", "expr": f'sum(rate(req{{shard="s{i}"}}[1m]))', "threshold": "> 2",
         "baseline": {"offset": "1h", "compare": "ratio"}} for i in range(10)]}))
    first = await tick(rt, 60.0, src, Context())
    before = batching.tick_plan.cache_info()
    again = await tick(rt, 65.0, src, Context())
    after = batching.tick_plan.cache_info()
    assert after.hits == before.hits + 1 and after.misses == before.misses
    # the instants are the tick's own: now and an hour before, each batched
    assert first.sent == again.sent == 2
    assert sorted(at for _, at in src.calls) == [60.0 - 3600, 65.0 - 3600, 60.0, 65.0]
