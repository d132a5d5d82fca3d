"""The console's own endpoints against a real Prometheus (backfilled six hours before T0): the
chart's `GET /api/v1/query_range` answers exactly what Prometheus answers; `GET
/api/v1/rules/detail` gives the rule as written and what to chart; `GET /api/v1/actions` lists
the actions; `POST /api/v1/backtest` is `watchdog replay`'s answer for the rule as stored, as
edited, or as a whole file, with problems by line in the text the user sent. Plus the pure
parts: the chart's split of `A > 0.1` (fuzzed) and the folding of transitions into intervals."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from test_daemon_support import TOKEN, get_json, post_json, settings, write

from watchdog.backtest import fold
from watchdog.console_api import split_comparison
from watchdog.daemon import Daemon
from watchdog.evaluate import Context
from watchdog.promserver import PrometheusServer
from watchdog.replay import ReplayLine, replay
from watchdog.rulesdir import load
from watchdog.series import Series
from watchdog.source import PrometheusConfig, PrometheusSource
from watchdog.testing import FixedClock

pytestmark = [pytest.mark.prometheus]

T0 = 1_800_000_000.0
READ = "console-read-token"
RULES = """
groups:
  - name: checkout
    interval: 1m
    rules:
      # the error ratio, as a plain Prometheus rule
      - alert: HighErrorRate
        expr: |
          error_ratio{service="checkout"}
            > 0.1
        for: 2m
        labels: {severity: critical}
        annotations: {summary: "{{ $value }}"}
        actions: [rollback]
      - alert: ErrorTiers
        expr: error_ratio
        severities: {warning: "> 0.05", critical: "> 0.2"}
actions:
  rollback:
    cooldown: 30m
    steps:
      - webhook: {url: "http://flags.invalid/checkout", method: PATCH, json: {enabled: false}}
      - wait: {for: 1m}
"""


def ratio(t: float) -> float:
    """High from -4h to -3h40m and from -1h to -50m before T0; low otherwise."""
    return 0.3 if T0 - 4 * 3600 <= t < T0 - 3 * 3600 - 2400 or T0 - 3600 <= t < T0 - 3000 else 0.02


@pytest.fixture
def prom(backfilled_prometheus: Any) -> PrometheusServer:
    ts = [T0 - 6 * 3600 + 60 * i for i in range(6 * 60 + 1)]
    server: PrometheusServer = backfilled_prometheus([
        Series({"__name__": "error_ratio", "service": "checkout", "instance": "a"},
               [(t, ratio(t)) for t in ts]),
        Series({"__name__": "error_ratio", "service": "search", "instance": "b"},
               [(t, 0.01) for t in ts])])
    return server


@pytest.fixture
async def daemon(tmp_path: Path, prom: PrometheusServer) -> AsyncIterator[Daemon]:
    s = settings(tmp_path, prometheus_url=prom.url, api_read_token=READ)
    write(s.rules_dir / "r.yml", RULES)
    async with Daemon(s, clock=FixedClock(T0), schedule=False) as d:
        await d.evaluate_all()
        yield d


def auth(token: str = READ) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---- query_range -------------------------------------------------------------------------------


async def test_the_chart_query_answers_what_prometheus_answers(daemon: Daemon,
                                                               prom: PrometheusServer) -> None:
    """The console's chart request, exactly as its script sends it (GET, numeric start, end
    and step), through the query API (`watchdog.query_proxy`, tested on its own)."""
    q = f"query=error_ratio&start={T0 - 3 * 3600:.0f}&end={T0:.0f}&step=300"
    status, ours = await get_json(f"{daemon.http_url}/api/v1/query_range?{q}", auth())
    _, theirs = await get_json(f"{prom.url}/api/v1/query_range?{q}")
    assert status == 200
    key = lambda s: s["metric"]["instance"]  # noqa: E731
    assert sorted(ours["data"]["result"], key=key) == sorted(theirs["data"]["result"], key=key)
    assert ours["data"]["resultType"] == "matrix" and ours["status"] == "success"


async def test_the_console_reads_need_the_read_token(daemon: Daemon) -> None:
    for path in ("/api/v1/query_range?query=up&start=0&end=60&step=15", "/api/v1/actions",
                 "/api/v1/rules/detail?file=x&group=y&rule=z"):
        status, _ = await get_json(f"{daemon.http_url}{path}")
        assert status == 401, path
        status, _ = await get_json(f"{daemon.http_url}{path}", auth("wrong"))
        assert status == 403, path
    status, _ = await post_json(f"{daemon.http_url}/api/v1/backtest", {"yaml": "x"}, READ)
    assert status == 403  # a write: the read token is not enough


# ---- the rule and the actions ------------------------------------------------------------------


async def test_rule_detail_is_the_rule_as_written_and_what_to_chart(daemon: Daemon,
                                                                    prom: PrometheusServer) -> None:
    file = str(daemon.settings.rules_dir / "r.yml")
    url = f"{daemon.http_url}/api/v1/rules/detail?file={file}&group=checkout&rule="
    status, body = await get_json(url + "HighErrorRate", auth())
    assert status == 200, body
    d = body["data"]
    written = yaml.safe_load(RULES)["groups"][0]["rules"][0]
    assert yaml.safe_load(d["yaml"]) == written
    assert "expr: |" in d["yaml"]  # the multi-line expression stays a block
    assert d["chart"] == {"expr": 'error_ratio{service="checkout"}',
                          "lines": [{"name": "threshold", "op": ">", "value": 0.1}]}
    assert d["interval"] == 60 and d["actions"] == ["rollback"]
    assert d["graphURL"].startswith(f"{prom.url}/graph?g0.expr=error_ratio%7Bservice")
    _, body = await get_json(url + "ErrorTiers", auth())
    assert body["data"]["chart"] == {"expr": "error_ratio", "lines": [
        {"name": "critical", "op": ">", "value": 0.2},
        {"name": "warning", "op": ">", "value": 0.05}]}
    status, body = await get_json(url + "Nope", auth())
    assert status == 404 and "no rule 'Nope' in group 'checkout'" in body["error"]


async def test_actions_lists_each_with_its_steps_and_rules(daemon: Daemon) -> None:
    status, body = await get_json(f"{daemon.http_url}/api/v1/actions", auth())
    assert status == 200
    assert body["data"] == [{"name": "rollback", "steps": ["webhook", "wait"], "cooldown": 1800.0,
                             "maxRunsPerHour": None, "verifyFor": None,
                             "rules": ["HighErrorRate"]}]


# ---- backtest ----------------------------------------------------------------------------------


async def backtest(d: Daemon, body: Any, token: str = TOKEN) -> tuple[int, Any]:
    return await post_json(f"{d.http_url}/api/v1/backtest", body, token)


async def test_backtest_of_the_stored_rule_is_what_replay_says(daemon: Daemon,
                                                               prom: PrometheusServer) -> None:
    file = str(daemon.settings.rules_dir / "r.yml")
    status, body = await backtest(daemon, {"rule": {"file": file, "group": "checkout",
                                                    "name": "HighErrorRate"}, "hours": 6})
    assert status == 200, body
    data = body["data"]
    assert (data["start"], data["end"], data["step"]) == (T0 - 6 * 3600, T0, None)
    (rule,) = data["rules"]
    assert rule["name"] == "HighErrorRate" and rule["error"] is None
    # the two bad stretches: pending at the first high sample, firing two minutes later
    spans = [(i["pendingAt"], i["firingAt"], i["resolvedAt"], i["maxValue"])
             for i in rule["intervals"]]
    assert spans == [(T0 - 4 * 3600, T0 - 4 * 3600 + 120, T0 - 3 * 3600 - 2400, 0.3),
                     (T0 - 3600, T0 - 3600 + 120, T0 - 3000, 0.3)]
    assert [(a["action"], a["at"]) for a in rule["actions"]] == [
        ("rollback", T0 - 4 * 3600 + 120), ("rollback", T0 - 3600 + 120)]
    # the same engine as `watchdog replay` over the same rule: the same transitions
    async with aiohttp.ClientSession() as session:
        src = PrometheusSource(session, PrometheusConfig(url=prom.url))
        rs = load([daemon.settings.rules_dir])
        report = await replay(rs, src, T0 - 6 * 3600, T0, None, 10.0, Context())
    expected = [line.doc for line in report.lines if line.doc["rule"] == "HighErrorRate"]
    assert data["transitions"] == expected


async def test_backtest_of_an_edited_rule(daemon: Daemon) -> None:
    rule = ('alert: HighErrorRate\nexpr: error_ratio{service="checkout"} > 0.25\nfor: 30m\n'
            "actions: [rollback]\n")
    status, body = await backtest(daemon, {"yaml": rule, "hours": 6, "group": "checkout",
                                           "interval": "1m"})
    assert status == 200, body
    (r,) = body["data"]["rules"]
    # `for: 30m` outlasts both stretches (20 and 10 minutes): pending only, each ending when
    # its condition stopped holding (the state machine drops a pending alert without an event)
    assert [(i["pendingAt"], i["firingAt"], i["resolvedAt"]) for i in r["intervals"]] == [
        (T0 - 4 * 3600, None, T0 - 3 * 3600 - 2400), (T0 - 3600, None, T0 - 3000)]
    assert r["actions"] == []
    status, body = await backtest(daemon, {"yaml": rule.replace("0.25", "0.5"), "hours": 6})
    assert status == 200 and body["data"]["rules"][0]["intervals"] == []


async def test_backtest_of_a_whole_file_with_its_own_action(daemon: Daemon) -> None:
    text = """
groups:
  - name: g
    interval: 5m
    rules:
      - alert: A
        expr: error_ratio > 0.2
        actions: [own, rollback]
actions:
  own:
    steps: [{webhook: {url: "http://x.invalid/"}}]
"""
    status, body = await backtest(daemon, {"yaml": text, "hours": 6})
    assert status == 200, body
    (r,) = body["data"]["rules"]
    assert [i["labels"]["instance"] for i in r["intervals"]] == ["a", "a"]
    # its own action and the daemon's, each where the rule fired
    assert sorted({a["action"] for a in r["actions"]}) == ["own", "rollback"]


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"yaml": "alert: X\nexpr: rate(\n"}, 422, "line 2: "),
    ({"yaml": "alert: X\nexpr: up\nfor: soon\n"}, 422, "line 3: "),
    ({"yaml": "alert: X\nexpr: up\nactions: [nope]\n"}, 422, "line 3: "),
    ({"yaml": "groups: [{name: g, rules: [{alert: X, expr: 'up{'}]}]"}, 422, "line 1: "),
    ({"yaml": "groups: []\n"}, 422, "no alerting rule"),
    ({"yaml": "alert: X\nexpr: up\n", "hours": 0}, 400, "hours must be more than 0"),
    ({"yaml": "alert: X\nexpr: up\n", "hours": 169}, 400, "at most 168"),
    ({"yaml": "alert: X\nexpr: up\n", "hours": "6"}, 400, "hours must be a number"),
    ({"yaml": "alert: X\nexpr: up\n", "step": "0s"}, 400, "step"),
    ({"yaml": ""}, 400, "yaml must be a non-empty string"),
    ({"yaml": "x" * 70_000}, 413, "yaml too long"),
    ({"rule": {"file": "r.yml", "group": "g", "name": "n"}}, 404, "no rule 'n'"),
    ({"rule": "HighErrorRate"}, 400, 'expected "yaml"'),
    ({"yaml": "alert: X\nexpr: up\n", "when": 1}, 400, "unknown field 'when'"),
    ([], 400, "expected a JSON object"),
])
async def test_backtest_refuses_in_one_line(daemon: Daemon, body: Any, status: int,
                                            message: str) -> None:
    got, answer = await backtest(daemon, body)
    assert got == status, answer
    assert message in answer["error"], answer
    assert "\n" not in answer["error"]


async def test_a_week_at_a_short_interval_is_replayed_coarser_and_says_so(daemon: Daemon) -> None:
    status, body = await backtest(daemon, {"yaml": "alert: X\nexpr: error_ratio > 0.2\n",
                                           "interval": "15s", "hours": 168})
    assert status == 200, body
    assert body["data"]["step"] == 61.0  # ceil(604800 / 10000)
    (warning,) = body["data"]["warnings"]
    assert "40,320 evaluations would be too many; replayed every 61s" in warning


async def test_backtest_needs_the_api_token(daemon: Daemon) -> None:
    status, body = await backtest(daemon, {"yaml": "alert: X\nexpr: up\n"}, token="")
    assert status == 401 and "API_TOKEN" in body["error"]


# ---- the pure parts ----------------------------------------------------------------------------


@pytest.mark.parametrize(("expr", "split"), [
    ("errors > 0.1", ("errors", ">", 0.1)),
    ("sum(rate(x[5m])) / sum(rate(y[5m])) >= 1e-3", ("sum(rate(x[5m])) / sum(rate(y[5m]))",
                                                      ">=", 0.001)),
    ("0.5 < up", ("up", ">", 0.5)),
    ('x{a=">"} != 3', ('x{a=">"}', "!=", 3.0)),
    ("x > 1 # a comment > 2", ("x", ">", 1.0)),
    ("(a > b) > 4", ("(a > b)", ">", 4.0)),
    ("x > bool 1", None),
    ("a > b", None),
    ("a > 1 and b", None),
    ("rate(x[5m])", None),
    ("x >", None),
])
def test_split_comparison(expr: str, split: tuple[str, str, float] | None) -> None:
    assert split_comparison(expr) == split


@given(st.text(max_size=80))
def test_split_comparison_never_raises(expr: str) -> None:
    got = split_comparison(expr)
    if got is not None:
        side, op, number = got
        assert op in (">", ">=", "<", "<=", "==", "!=") and not math.isnan(number)
        assert side.strip() and split_comparison(side) != got


@given(st.from_regex(r"[a-z_]{1,8}(\{[a-z]{1,4}=\"[^\"\\\n]{0,6}\"\})?", fullmatch=True),
       st.sampled_from([">", ">=", "<", "<=", "==", "!="]),
       st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_split_comparison_finds_the_side(side: str, op: str, number: float) -> None:
    if side in ("bool", "on", "and", "or", "unless", "by", "without", "offset", "ignoring",
                "group_left", "group_right", "atan2", "inf", "nan"):
        return
    assert split_comparison(f"{side} {op} {number!r}") == (side, op, number)


def test_fold_turns_transitions_into_intervals() -> None:
    from watchdog.rulesdir import build

    rs = build({"backtest.yml": b"groups: [{name: g, rules: [{alert: A, expr: up}]}]\n"})
    a = {"alertname": "A", "instance": "x"}
    docs = [
        {"ts": 10.0, "rule": "A", "group": "g", "labels": a, "state": "pending", "value": 1.0},
        {"ts": 20.0, "rule": "A", "group": "g", "labels": a, "state": "firing", "value": 3.0},
        {"ts": 20.0, "rule": "A", "labels": a, "action": "r", "state": "would_run"},
        {"ts": 30.0, "rule": "A", "group": "g", "labels": a, "state": "resolved", "value": None},
        {"ts": 40.0, "rule": "A", "group": "g", "labels": a, "state": "firing", "value": 2.0},
    ]
    (r,) = fold([ReplayLine(d["ts"], i, d) for i, d in enumerate(docs)], rs,
                {"g/A": "boom"})
    assert [i.to_json() for i in r.intervals] == [
        {"labels": a, "pendingAt": 10.0, "firingAt": 20.0, "resolvedAt": 30.0, "maxValue": 3.0},
        {"labels": a, "pendingAt": None, "firingAt": 40.0, "resolvedAt": None, "maxValue": 2.0}]
    assert r.actions == [{"at": 20.0, "action": "r", "labels": a}] and r.error == "boom"
