"""Deploy reports (CONTRACT §10): `GET /api/v1/deploys/{id}/report?days=7` compares the week
before a deploy with the week after — mean, p95, change, verdict against a target — and the
report is posted to chat once when the after-window is over (or on demand with POST).

Checked on 14 days of backfilled history in a real Prometheus, with every figure computed here
independently, in plain Python, from the same generated samples.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import BackfilledPrometheus
from fakes_chat import FakeChat
from hypothesis import given, settings
from hypothesis import strategies as st
from test_daemon_support import get_json, post_json, wait_for
from test_daemon_support import settings as daemon_settings

from watchdog.actions.deploys import DeployTracker
from watchdog.actions.handler import ActionsHandler
from watchdog.actions.store import ActionStore
from watchdog.actions.testing import RecordingSink, make_context
from watchdog.actions.timing import Waker
from watchdog.daemon import Daemon
from watchdog.deploy_report import item_doc, step_for, windows
from watchdog.model import Goal, ReportQuery
from watchdog.notify.message import ReportDoc, report_lines
from watchdog.rulefile import parse_rule_file
from watchdog.schema import ValidationError
from watchdog.series import Series
from watchdog.source import PrometheusConfig, PrometheusSource
from watchdog.storage import open_storage
from watchdog.storage.records import DeployRow
from watchdog.testing import FixedClock

# ---- targets and windows ---------------------------------------------------------------------


@pytest.mark.parametrize(("target", "change", "met"), [
    ("> 10% faster", -12.0, True), ("> 10% faster", -10.0, False), ("> 10% faster", 3.0, False),
    (">= 10% lower", -10.0, True), ("< 5% slower", 4.9, True), ("< 5% slower", 5.0, False),
    ("< 5% slower", -30.0, True), (">= 2% higher", 2.0, True), (">= 2% more", 1.9, False),
    ("< 2% lower", -1.0, True), ("< 2% lower", -2.5, False), ("<= 2% fewer", -2.0, True),
])
def test_targets_read_as_people_write_them(target: str, change: float, met: bool) -> None:
    assert Goal.parse(target).met(change) is met


def test_a_target_is_text_or_better_with_min_change() -> None:
    q = ReportQuery(name="latency", query="x", better="lower", min_change="10%")
    assert q.goal is not None and q.goal.met(-10.0) and not q.goal.met(-9.9)
    allowance = ReportQuery(name="ok", query="x", better="higher", min_change=-0.5)
    assert allowance.goal is not None and allowance.goal.met(-0.4)
    assert not allowance.goal.met(-0.6)
    assert ReportQuery(name="n", query="x").goal is None
    for bad in ({"target": "10% faster"}, {"target": "> 10% sideways"},
                {"target": "> 10% faster", "better": "lower"}, {"min_change": "5%"},
                {"better": "lower", "min_change": "five"}):
        with pytest.raises(ValueError):
            ReportQuery.model_validate({"name": "n", "query": "x", **bad})


def test_rule_file_reports_are_checked_at_their_line() -> None:
    pf = parse_rule_file("""reports:
  - name: latency
    query: rate(x[5m]
    target: "> 10% faster"
  - name: errors
    query: errors
    target: "> 10% wronger"
""", "r.yml")
    shown = [str(p) for p in pf.problems]
    assert any(p.startswith("r.yml:3: reports[0].query: invalid PromQL") for p in shown), shown
    assert any(p.startswith("r.yml:7: reports[1].target: ") and "not a target" in p
               for p in shown), shown


def test_windows_are_one_grid_around_the_deploy() -> None:
    assert step_for(7) == 60.0 and step_for(1) == 60.0 and step_for(30) == 240.0
    at = 1_000_000.0
    w = windows(at, 7, at + 8 * 86400)
    assert (w.before_start, w.before_end) == (at - 7 * 86400, at - 60)
    assert (w.after_start, w.after_end, w.complete) == (at, at + 7 * 86400 - 60, True)
    assert (w.before_end - w.before_start) / w.step + 1 == 10_080  # under 11,000 points
    running = windows(at, 7, at + 3600 + 30)
    assert running.after_end == at + 3600 and not running.complete
    assert windows(at, 7, at - 1).after_end is None


def test_a_row_without_data_or_base_has_no_verdict_but_says_so() -> None:
    goal = Goal.parse("> 10% faster")
    row = item_doc(name="n", query="q", origin="marker", labels={}, before=[], after=[1.0],
                   goal=goal, stat="mean")
    assert row["verdict"] == "no data" and row["before"] is None
    zero = item_doc(name="n", query="q", origin="marker", labels={}, before=[0.0, 0.0],
                    after=[1.0], goal=goal, stat="mean")
    assert zero["change"] == {"mean": None, "p95": None} and zero["verdict"] == "no data"
    nan = item_doc(name="n", query="q", origin="rule", labels={}, before=[math.nan, 2.0],
                   after=[1.0], goal=None, stat="mean", better="lower")
    assert nan["before"]["samples"] == 1 and nan["verdict"] is None and nan["better"] == "lower"


# ---- a week before and after, on backfilled history -----------------------------------------

AT = 1_700_000_040.0  # the deploy (on the minute)
STEP = 60.0
WEEK = 7 * 86400.0
MARGIN = 3600.0  # samples an hour beyond both windows, which the report must leave out


def _grid() -> list[float]:
    n = int((2 * WEEK + 2 * MARGIN) / STEP)
    return [AT - WEEK - MARGIN + i * STEP for i in range(n + 1)]


def _gauge(rng: random.Random, before: float, after: float, noise: float
           ) -> list[tuple[float, float]]:
    return [(t, (before if t < AT else after) * (1 + rng.gauss(0, noise))) for t in _grid()]


def _independent(points: list[tuple[float, float]]) -> dict[str, dict[str, float]]:
    """Mean and p95 of the samples in [AT − 7d, AT) and [AT, AT + 7d), in plain Python
    (statistics' inclusive quantiles interpolate as NumPy's default does)."""
    out = {}
    for side, lo, hi in (("before", AT - WEEK, AT), ("after", AT, AT + WEEK)):
        xs = [v for t, v in points if lo <= t < hi]
        out[side] = {"mean": sum(xs) / len(xs),
                     "p95": statistics.quantiles(xs, n=100, method="inclusive")[94],
                     "samples": len(xs)}
    return out


RULES = """
receivers:
  - name: chat
    slack: {{webhook_url: "{chat}/slack/T0/B0/x"}}
  - name: pager
    pagerduty: {{routing_key: "0123456789abcdef0123456789abcdef", url: "{chat}/v2/enqueue"}}
routes:
  - match: {{service: checkout}}
    receivers: [chat, pager]
    group_wait: 0s
reports:
  - service: checkout
    name: p95 latency
    query: checkout_latency_p95_seconds
    target: "> 10% faster"
  - service: checkout
    name: success ratio
    query: checkout_success_ratio
    better: higher
    min_change: -0.2%
  - service: checkout
    name: throughput
    query: sum by (region) (checkout_requests_per_second)
    target: ">= 5% higher"
    stat: p95
groups:
  - name: search
    rules:
      - alert: SearchLatencyVsDeploy
        expr: search_latency_seconds
        threshold: "> 1.5"
        baseline: {{deploy: true}}
"""


def _series(name: str, labels: dict[str, str], points: list[tuple[float, float]]) -> Series:
    return Series({"__name__": name, **labels}, points)


@pytest.mark.prometheus
async def test_a_week_before_and_after_on_backfilled_history(
        backfilled_prometheus: BackfilledPrometheus, tmp_path: Path, chat: FakeChat) -> None:
    rng = random.Random(14)
    latency = _gauge(rng, 0.250, 0.200, 0.05)  # 20% faster: met
    success = _gauge(rng, 0.995, 0.990, 0.001)  # 0.5% lower, 0.2% allowed: missed
    eu = _gauge(rng, 100.0, 112.0, 0.1)  # 12% more: met
    us = _gauge(rng, 80.0, 80.0, 0.1)  # same: missed
    s_eu = _gauge(rng, 0.8, 0.9, 0.05)  # the watched rule's series: no target
    s_other = _gauge(rng, 5.0, 5.0, 0.05)  # another service's series: not in search's report
    prom = backfilled_prometheus([
        _series("checkout_latency_p95_seconds", {"service": "checkout"}, latency),
        _series("checkout_success_ratio", {"service": "checkout"}, success),
        _series("checkout_requests_per_second", {"region": "eu", "pod": "a"}, eu),
        _series("checkout_requests_per_second", {"region": "us", "pod": "b"}, us),
        _series("search_latency_seconds", {"service": "search", "region": "eu"}, s_eu),
        _series("search_latency_seconds", {"service": "images", "region": "eu"}, s_other)])
    s = daemon_settings(tmp_path, prometheus_url=prom.url)
    (s.rules_dir / "r.yml").write_text(RULES.format(chat=chat.url))
    clock = FixedClock(AT)
    async with Daemon(s, clock=clock, schedule=False) as d:
        base = d.http_url
        status, marker = await post_json(f"{base}/api/v1/deploys",
                                         {"service": "checkout", "version": "v2"})
        assert status == 201 and marker["report_days"] == 7 and marker["report_at"] == AT + WEEK
        status, search = await post_json(f"{base}/api/v1/deploys",
                                         {"service": "search", "version": "s9", "report_days": 7})
        assert status == 201
        # Right after the deploy: the week before, and of the week after only its first sample.
        status, early = await get_json(f"{base}/api/v1/deploys/{marker['id']}/report?days=7")
        assert status == 200 and early["data"]["complete"] is False
        assert {x["after"]["samples"] for x in early["data"]["items"]} == {1}

        # A week later the report is due: the tracker looks again (a tick with news, or its
        # own timer, pokes it; a quiet test pokes it by hand) and posts it.
        clock.advance(WEEK + 90)
        _poke(d)
        # (the search deploy's labels match no route: its report is on the API only)
        await wait_for(lambda: _ticking(clock, len(_reports(chat)) == 1), what="the report")
        status, body = await get_json(f"{base}/api/v1/deploys/{marker['id']}/report")
        assert status == 200, body
        _, searched = await get_json(f"{base}/api/v1/deploys/{search['id']}/report")
        # Posted once: another look (as the timer, another tick or a restart would) posts
        # nothing more.
        clock.advance(600)
        assert await _actions(d).deploys.post_due_reports() is None
        _, outbox = await get_json(f"{base}/api/v1/notifications")
        assert [n["receiver"] for n in outbox["data"] if n["kind"] == "report"] == ["chat"]
        status, _ = await post_json(f"{base}/api/v1/deploys/{marker['id']}/report", {},
                                    token=None)
        assert status in (401, 403)
        status, again = await post_json(f"{base}/api/v1/deploys/{marker['id']}/report?days=7",
                                        {})
        assert status == 200 and again["data"]["items"] == body["data"]["items"]
        await wait_for(lambda: _ticking(clock, len(_reports(chat)) == 2),
                       what="the report asked for")
        status, bad = await get_json(f"{base}/api/v1/deploys/{marker['id']}/report?days=-1")
        assert status == 400 and "days" in bad["error"]
        status, _ = await get_json(f"{base}/api/v1/deploys/nope/report")
        assert status == 404

    doc = body["data"]
    assert doc["complete"] is True and doc["days"] == 7 and doc["step"] == 60.0
    assert doc["before"] == {"start": AT - WEEK, "end": AT}
    assert doc["after"] == {"start": AT, "end": AT + WEEK}
    assert doc["errors"] == [] and AT + WEEK + 90 <= doc["reported_at"] < AT + WEEK + 600
    rows = {(x["name"], x["labels"].get("region")): x for x in doc["items"]}
    assert set(rows) == {("p95 latency", None), ("success ratio", None), ("throughput", "eu"),
                         ("throughput", "us")}
    for key, points in ((("p95 latency", None), latency), (("success ratio", None), success),
                        (("throughput", "eu"), eu), (("throughput", "us"), us)):
        want = _independent(points)
        got = rows[key]
        for side in ("before", "after"):
            assert got[side]["samples"] == want[side]["samples"] == 10_080, key
            for stat in ("mean", "p95"):
                assert got[side][stat] == pytest.approx(want[side][stat], rel=1e-12), (key, side)
        for stat in ("mean", "p95"):
            change = (want["after"][stat] - want["before"][stat]) / want["before"][stat] * 100
            assert got["change"][stat] == pytest.approx(change, rel=1e-9), (key, stat)
    assert rows[("p95 latency", None)]["verdict"] == "met"
    assert -22 < rows[("p95 latency", None)]["change"]["mean"] < -18
    assert rows[("success ratio", None)]["verdict"] == "missed"
    assert rows[("success ratio", None)]["target"] == "higher, or at most 0.2% worse"
    assert rows[("throughput", "eu")]["verdict"] == "met"
    assert rows[("throughput", "eu")]["stat"] == "p95"
    assert rows[("throughput", "us")]["verdict"] == "missed"
    assert {x["origin"] for x in doc["items"]} == {"rules"}

    # The search deploy declared nothing: the watched rule's series of that service, no target.
    (row,) = searched["data"]["items"]
    assert row["origin"] == "rule" and row["name"] == "SearchLatencyVsDeploy"
    assert row["labels"] == {"service": "search", "region": "eu"}
    assert row["better"] == "lower" and row["verdict"] is None and row["target"] is None
    assert row["after"]["mean"] == pytest.approx(_independent(s_eu)["after"]["mean"], rel=1e-12)

    # In chat: one message per report, the same figures, never a page.
    checkout_msg = next(m for m in _reports(chat) if "checkout v2" in m["text"])
    text = _slack_text(checkout_msg)
    lat = _independent(latency)
    assert (f"✅ p95 latency {{service=checkout}}: mean {lat['before']['mean']:.4g} → "
            f"{lat['after']['mean']:.4g} (-20.0%), p95 {lat['before']['p95']:.4g} → "
            f"{lat['after']['p95']:.4g}" in text), text
    assert "Targets met: 2 of 4" in text
    assert "target &gt; 10% faster (mean): met" in text  # Slack's escaping of >
    assert not [e for e in chat.accepted["pagerduty"] if "REPORT" in json.dumps(e)]


def _ticking(clock: FixedClock, done: bool) -> bool:
    """Lets time pass while the test waits: Slack's rate limit (1 a second, on the injected
    clock) would hold the next message forever on a clock that stands still."""
    clock.advance(1)
    return done


def _actions(d: Daemon) -> ActionsHandler:
    (actions,) = [h for h in d.handlers if isinstance(h, ActionsHandler)]
    return actions


def _poke(d: Daemon) -> None:
    _actions(d).waker.poke()


def _reports(chat: FakeChat) -> list[dict[str, Any]]:
    return [m for m in chat.accepted["slack"] if "REPORT" in m.get("text", "")]


def _slack_text(message: dict[str, Any]) -> str:
    blocks = message["attachments"][0]["blocks"]
    return "\n".join(b["text"]["text"] for b in blocks if b.get("type") == "section")


# ---- once, in one transaction ------------------------------------------------------------------


async def test_a_report_that_could_not_be_notified_stays_due(tmp_path: Path) -> None:
    """The report's notification is written in the transaction that marks it posted: when the
    notification cannot be recorded, nothing is marked, and the next look posts it."""
    storage = await open_storage(f"sqlite:///{tmp_path / 's.db'}")
    clock = FixedClock(AT + WEEK + 1)
    sink = RecordingSink()
    try:
        async with storage.transaction() as tx:
            await tx.deploys.insert(DeployRow("d1", "checkout", "v2", {"service": "checkout"},
                                              AT, AT + 1800, "passed", "", report_days=7.0))
            await tx.deploys.insert(DeployRow("d2", "checkout", "v3", {"service": "checkout"},
                                              AT + 86400, AT + 88200, "open", "",
                                              report_days=7.0))
        async with aiohttp.ClientSession() as session:
            # A Prometheus that is not there: the report carries the errors, and still posts.
            source = PrometheusSource(session, PrometheusConfig(url="http://127.0.0.1:9",
                                                                timeout=2))
            ctx = make_context(storage, session, source, clock=clock, sinks=[sink])
            tracker = DeployTracker(ctx, ActionStore(storage), Waker(clock))
            tracker.set_reports([ReportQuery(name="latency", query="latency")])
            sink.fail_next = True
            assert await tracker.post_due_reports() == AT + 86400 + WEEK  # d2 is due later
            assert sink.events == []
            async with storage.transaction() as tx:
                assert [d.id for d in await tx.deploys.unreported()] == ["d1", "d2"]
            await tracker.post_due_reports()
            await tracker.post_due_reports()
    finally:
        await storage.close()
    (event,) = sink.events
    assert event.kind == "report" and event.run_id == "report-d1"
    report = ReportDoc.model_validate(event.extra["report"])
    assert report.id == "d1" and report.errors and report.errors[0]["name"] == "latency"
    assert any("latency" in line for line in report_lines(report))


# ---- the target parser, fuzzed ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_any_target_text_parses_or_says_why(text: str) -> None:
    try:
        goal = Goal.parse(text)
    except ValueError as e:
        assert "not a target" in str(e) and "\n" not in str(e)
    else:
        assert goal.better in ("lower", "higher")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([">", ">=", "<", "<="]), st.integers(0, 50),
       st.sampled_from(["faster", "slower", "lower", "higher", "more", "fewer"]),
       st.floats(-100, 100, allow_nan=False))
def test_a_target_means_what_it_says(op: str, pct: int, word: str, change: float) -> None:
    """Against a reference written from the words: ">" asks for a change of more than pct in
    the word's direction, "<" for less than pct of it."""
    toward = -change if word in ("faster", "lower", "fewer") else change
    want = {">": toward > pct, ">=": toward >= pct, "<": toward < pct, "<=": toward <= pct}[op]
    assert Goal.parse(f"{op} {pct}% {word}").met(change) is want


def test_a_min_change_too_large_for_a_number_is_refused_as_bad_input() -> None:
    """Found by the schema oracle's random bodies: an integer past a float's range made
    `float()` raise OverflowError out of validation (a 500 for POST /api/v1/deploys) instead of
    a problem naming the field."""
    with pytest.raises(ValidationError) as e:
        ReportQuery.model_validate({"name": "p95", "query": "q", "better": "lower",
                                    "min_change": 10**400})
    (err,) = e.value.errors()
    assert err["loc"] == ("min_change",) and "percentage" in err["msg"]
    assert len(err["msg"]) < 200  # the number itself is not echoed
