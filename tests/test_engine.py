"""`tick`: one evaluation of a group — queries shared, failures isolated, one state machine."""

from __future__ import annotations

from typing import Any

from watchdog.engine import GroupRuntime, rule_keys, tick
from watchdog.evaluate import Context
from watchdog.model import Group
from watchdog.source import QueryError
from watchdog.testing import FakeSource, sample


def group(rules: list[dict[str, Any]], **kw: Any) -> Group:
    return Group.model_validate({"name": "g", "rules": rules, **kw})


async def test_identical_queries_run_once_per_tick_and_are_shared() -> None:
    g = group([
        {"alert": "Warn", "expr": "err_ratio", "threshold": "> 0.1"},
        {"alert": "Crit", "expr": "err_ratio", "threshold": "> 0.5"},
        {"alert": "Ratio", "expr": "err_ratio", "threshold": "> 2", "baseline": {"offset": "1h"}},
    ])
    src = FakeSource({"err_ratio": [sample(0.7, svc="a")]})
    rt = GroupRuntime.new("f.yml", g)
    res = await tick(rt, 7200.0, src, Context())
    assert src.calls == {("err_ratio", 7200.0): 1, ("err_ratio", 3600.0): 1}
    assert res.queries == 2
    assert sorted(e.alert.rule for e in res.events if e.kind == "firing") == ["Crit", "Warn"]


async def test_a_failing_query_fails_only_its_rule_and_changes_nothing() -> None:
    g = group([{"alert": "A", "expr": "a"}, {"alert": "B", "expr": "b"}])
    src = FakeSource({"a": [sample(1)], "b": [sample(1)]})
    rt = GroupRuntime.new("f.yml", g)
    await tick(rt, 60.0, src, Context())
    src.answers["b"] = QueryError("http://prom/api/v1/query: HTTP 503: unavailable")
    src.answers["a"] = []
    res = await tick(rt, 120.0, src, Context())
    assert res.errors == {"B": "http://prom/api/v1/query: HTTP 503: unavailable"}
    assert res.failed_queries == 1
    states = {r.key: [a.state for a in r.alerts.values()] for r in rt.rules}
    assert states == {"A": ["inactive"], "B": ["firing"]}  # A resolved, B untouched
    assert rt.rules[1].last is not None and rt.rules[1].last.error is not None


def test_rule_keys_number_repeated_names() -> None:
    g = group([{"alert": "X", "expr": "a"}, {"alert": "X", "expr": "b"},
               {"alert": "Y", "expr": "c"}, {"record": "r", "expr": "d"}])
    assert [k for k, _ in rule_keys(g)] == ["X", "X#1", "Y"]


async def test_history_remembers_recent_evaluations() -> None:
    g = group([{"alert": "A", "expr": "a", "for": "5m"}])
    src = FakeSource({"a": [sample(1), sample(2, x="y")]})
    rt = GroupRuntime.new("f.yml", g)
    for i in range(25):
        await tick(rt, 60.0 * i, src, Context())
    hist = rt.rules[0].history
    assert len(hist) == 20 and hist[-1].at == 24 * 60.0
    assert hist[-1].samples == 2 and hist[-1].hits == 2 and hist[-1].error is None


async def test_history_keeps_errors_beside_the_right_evaluations() -> None:
    # The history is packed (memory); a failed evaluation's error and "no hits" must stay with
    # its own evaluation as the window rolls past it.
    g = group([{"alert": "A", "expr": "a"}])
    src = FakeSource({"a": [sample(1)]})
    rt = GroupRuntime.new("f.yml", g)
    failing = {3, 4, 21}
    for i in range(30):
        if i in failing:
            src.fail("a", f"outage {i}")
        else:
            src.answers["a"] = [sample(1)]
        await tick(rt, 60.0 * i, src, Context())
        hist = list(rt.rules[0].history)
        assert [h.at for h in hist] == [60.0 * j for j in range(max(0, i - 19), i + 1)]
        for h in hist:
            j = int(h.at // 60)
            assert (h.error is not None) == (j in failing), (i, j, h)
            assert h.error is None or h.error.endswith(f"outage {j}")
            assert h.hits == (None if j in failing else 1)
    assert [h.at for h in reversed(rt.rules[0].history)][:2] == [29 * 60.0, 28 * 60.0]


# ---- the packed ring of evaluations keeps exactly what a list of the last HISTORY would ----

from collections import deque  # noqa: E402

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from watchdog.engine import HISTORY, EvalHistory, EvalRecord  # noqa: E402

_record = st.builds(
    EvalRecord, at=st.floats(0, 2e9), duration=st.floats(0, 60),
    samples=st.integers(0, 2**32 - 1), hits=st.none() | st.integers(0, 2**31 - 1),
    error=st.none() | st.sampled_from(["boom", "timed out"]))


@given(st.lists(_record, max_size=3 * HISTORY + 5))
def test_eval_history_is_the_last_records_in_order(records: list[EvalRecord]) -> None:
    hist, want = EvalHistory(), deque(maxlen=HISTORY)
    for rec in records:
        hist.append(rec)
        want.append(rec)
        assert len(hist) == len(want)
        assert list(hist) == list(want)
        assert list(reversed(hist)) == list(reversed(want))
        assert hist[-1] == want[-1] and hist[0] == want[0]
