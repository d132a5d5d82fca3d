"""SLOs (CONTRACT §10): a rule file's `slos:` generates the workbook's multiwindow,
multi-burn-rate alerts. They agree with the same alerts written by hand — `promtool test rules`
passes on the hand-written rules and `watchdog test` passes the same suite on both — and
`watchdog check` reports a bad SLO at its line. `/api/v1/rules` shows the generated group with
its source; `/api/v1/slos` gives the error budget, checked on backfilled Prometheus history
against ratios computed here from the same samples.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import BackfilledPrometheus
from hypothesis import given, settings
from hypothesis import strategies as st
from test_daemon_support import get_json
from test_daemon_support import settings as daemon_settings

from watchdog.daemon import Daemon
from watchdog.rulefile import parse_rule_file
from watchdog.rulesdir import build
from watchdog.series import Series
from watchdog.slo import PAGE, TICKET, WINDOWS, burn_expr
from watchdog.testing import FixedClock

DATA = Path(__file__).parent / "data" / "slo"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "watchdog", *args], capture_output=True,
                          text=True, timeout=300)


# ---- agreement with hand-written rules -----------------------------------------------------


def test_the_two_suites_differ_only_in_their_rule_files() -> None:
    hand = yaml.safe_load((DATA / "handwritten_test.yml").read_text())
    generated = yaml.safe_load((DATA / "slos_test.yml").read_text())
    assert hand.pop("rule_files") == ["checkout-handwritten.yml"]
    assert generated.pop("rule_files") == ["slos.yml"]
    assert hand == generated
    # and the suite is not empty: pages and tickets, firing and quiet, per region
    tests = [t for tg in hand["tests"] for t in tg["alert_rule_test"]]
    assert len(tests) == 7 and any(t["exp_alerts"] == [] for t in tests)


@pytest.mark.prometheus
def test_generated_alerts_agree_with_handwritten_ones(promtool_binary: str,
                                                      prometheus_binary: str) -> None:
    oracle = subprocess.run([promtool_binary, "test", "rules",
                             str(DATA / "handwritten_test.yml")], capture_output=True, text=True)
    assert oracle.returncode == 0, oracle.stdout + oracle.stderr
    for suite in ("handwritten_test.yml", "slos_test.yml"):
        ours = run("test", str(DATA / suite))
        assert ours.returncode == 0, ours.stdout + ours.stderr
        assert ours.stdout.splitlines()[:2] == [f"Unit Testing:  {DATA / suite}", "  SUCCESS"]


@pytest.mark.prometheus
def test_a_different_slo_fails_the_same_suite(tmp_path: Path, prometheus_binary: str) -> None:
    """The suite can fail: with a 99.5% objective (5x the budget) the checkout alerts come
    later or not at all, and every check where they fire fails."""
    for name in ("slos.yml", "slos_test.yml"):
        (tmp_path / name).write_text((DATA / name).read_text())
    slos = tmp_path / "slos.yml"
    slos.write_text(slos.read_text().replace("objective: 99.9", "objective: 99.5"))
    ours = run("test", str(tmp_path / "slos_test.yml"))
    assert ours.returncode == 1, ours.stdout + ours.stderr
    out = ours.stdout + ours.stderr
    for failed in ("1h15m", "1h40m", "1m", "3h"):
        assert f"alertname: CheckoutAvailability, time: {failed}," in out, out
    assert "time: 58m" not in out  # quiet stays quiet
    assert "SearchAvailability" not in out  # the other SLO still agrees


def test_generated_rules_are_the_slos_alerts() -> None:
    pf = parse_rule_file((DATA / "slos.yml").read_text(), "slos.yml")
    assert pf.ok, pf.problems
    assert pf.model is not None
    groups = {g.name: g for g in pf.model.groups}
    assert list(groups) == ["slo:checkout-requests-availability", "slo:search-availability"]
    assert pf.sources == {"slo:checkout-requests-availability": 6,
                          "slo:search-availability": 29}
    page, ticket = groups["slo:checkout-requests-availability"].alerting_rules
    assert page.alert == ticket.alert == "CheckoutAvailability"
    assert page.labels["sloth_severity"] == "page" and page.labels["severity"] == "critical"
    assert ticket.labels["severity"] == "warning" and ticket.labels["route"] == "tickets"
    assert page.for_ == 0 and ticket.for_ == 0
    # Sloth's threshold: the budget as Sloth computes it, (100 - 99.9) / 100
    assert "> (14.4 * 0.0009999999999999432)" in page.expr
    def windows(expr: str) -> set[str]:
        return {w for w in WINDOWS if f"[{w}]" in expr}

    assert windows(page.expr) == {"5m", "1h", "30m", "6h"}
    assert windows(ticket.expr) == {"2h", "1d", "6h", "3d"}
    (search_page,) = groups["slo:search-availability"].alerting_rules  # ticket disabled
    assert "sum by (region)" in search_page.expr and "{{" not in search_page.expr


def test_both_sli_forms_and_the_default_name_generate_the_same() -> None:
    base = """slos:
  - service: api-gw
    name: latency
    objective: 99
    sli:
"""
    flat = parse_rule_file(base + "      error_query: sum(rate(slow[{{.window}}]))\n"
                                  "      total_query: sum(rate(all[{{.window}}]))\n", "a.yml")
    sloth = parse_rule_file(base + "      events:\n"
                                   "        error_query: sum(rate(slow[{{ .window }}]))\n"
                                   "        total_query: sum(rate(all[{{.window}}]))\n", "b.yml")
    assert flat.model is not None and sloth.model is not None
    assert flat.model.groups == sloth.model.groups
    page, _ = flat.model.groups[0].alerting_rules
    assert page.alert == "ApiGwLatencyErrorBudgetBurn"
    assert flat.model.groups[0].interval is None
    every_minute = parse_rule_file(base.replace("objective: 99\n", "objective: 99\n"
                                                "    interval: 1m\n")
                                   + "      error_query: sum(rate(slow[{{.window}}]))\n"
                                     "      total_query: sum(rate(all[{{.window}}]))\n", "c.yml")
    assert every_minute.model is not None and every_minute.model.groups[0].interval == 60.0


def test_burn_expressions_use_the_workbook_windows() -> None:
    assert [(w.long, w.short, w.factor) for w in PAGE] == [("1h", "5m", 14.4), ("6h", "30m", 6)]
    assert [(w.long, w.short, w.factor) for w in TICKET] == [("1d", "2h", 3), ("3d", "6h", 1)]
    assert set(WINDOWS) == {w for p in (*PAGE, *TICKET) for w in (p.long, p.short)}
    pf = parse_rule_file((DATA / "slos.yml").read_text(), "slos.yml")
    assert pf.model is not None
    expr = burn_expr(pf.model.slos[1], TICKET)
    assert expr.count(" and\n") == 0 and expr.count("\nand\n") == 2 and "\nor\n" in expr


# ---- watchdog check -------------------------------------------------------------------------


BAD = """groups:
  - name: slo:checkout-availability
    rules: []
slos:
  - service: checkout
    name: availability
    objective: 100
    sli:
      error_query: sum(rate(errors[5m]))
      total_query: sum(rate(requests[{{.window}}])
  - service: "check out"
    name: latency
    objective: 99.9
    sli:
      events:
        error_query: sum(rate(slow[{{.window}}])) > {{.threshold}}
        total_query: sum(rate(all[{{.window}}]))
  - service: search
    name: ok
    objective: 0.999
    time_window: 4w
    sli:
      error_query: sum(rate(e[{{.window}}]))
      total_query: sum(rate(t[{{.window}}]))
"""


def test_check_reports_a_bad_slo_at_its_line() -> None:
    pf = parse_rule_file(BAD, "s.yml")
    shown = [str(p) for p in pf.problems]
    assert not pf.ok
    want = [
        "s.yml:5: slo checkout/availability: its group 'slo:checkout-availability' is already "
        "defined in this file (line 2)",
        "s.yml:7: slos[0].objective: objective must be a percentage above 0 and below 100 "
        "(e.g. 99.9), got 100",
        "s.yml:9: sli.error_query: has no {{.window}} placeholder (e.g. "
        "rate(http_requests_total[{{.window}}])): every burn-rate window would read the same "
        "range",
        "s.yml:11: slos[1].service: expected letters, digits, '_', '.' or '-' (starting with a "
        "letter or digit), got 'check out'",
        "s.yml:16: sli.events.error_query: only {{.window}} is replaced; '{{.threshold}}' "
        "would be sent as it is",
        "s.yml:20: warning: objective 0.999 is a percentage (0.999%); for 99.9% write 99.9",
    ]
    for line in want:
        assert line in shown, shown
    assert any(p.startswith("s.yml:10: sli.total_query: invalid PromQL (with {{.window}} = "
                            "5m): ") for p in shown), shown
    assert any(p.startswith("s.yml:16: sli.events.error_query: invalid PromQL") for p in shown)
    assert len(shown) == len(want) + 2, shown


def test_watchdog_check_names_the_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "slo.yml"
    f.write_text(BAD)
    out = run("check", str(f))
    assert out.returncode == 1
    assert f"{f}:7: slos[0].objective: objective must be a percentage" in out.stdout + out.stderr
    ok = run("check", str(DATA / "slos.yml"))
    assert ok.returncode == 0, ok.stdout + ok.stderr


slo_values = st.one_of(st.none(), st.booleans(), st.integers(-5, 200),
                       st.floats(allow_nan=True), st.text(max_size=30),
                       st.lists(st.integers(), max_size=2),
                       st.dictionaries(st.sampled_from(["a", "labels"]), st.text(max_size=5),
                                       max_size=2))
slo_keys = st.sampled_from(["service", "name", "objective", "time_window", "labels", "sli",
                            "alerting", "description", "bogus"])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(slo_keys, slo_values, max_size=6),
       st.dictionaries(st.sampled_from(["error_query", "total_query", "events"]),
                       st.one_of(st.text(max_size=40), st.sampled_from(
                           ["rate(x[{{.window}}])", "{{.window}}", "sum(", "{{ .window"])),
                       max_size=3))
def test_any_slo_document_gives_problems_never_an_exception(doc: dict[str, Any],
                                                            sli: dict[str, Any]) -> None:
    if "sli" in doc and doc["sli"] is None:
        doc["sli"] = sli
    text = yaml.safe_dump({"slos": [doc]})
    pf = parse_rule_file(text, "f.yml")
    assert pf.ok or pf.problems
    for p in pf.problems:
        assert "\n" not in str(p) and str(p).startswith("f.yml:")


# ---- the API on backfilled history ----------------------------------------------------------

END = 1_700_000_000.0  # "now" for the API: the end of the backfilled week
STEP = 60.0
DAYS = 7
N = int(DAYS * 86400 / STEP) + 1  # samples at every minute, both ends included

API_RULES = """
slos:
  - service: checkout
    name: availability
    objective: 99.9
    time_window: 7d
    sli:
      events:
        error_query: sum(rate(requests_total{job="checkout", code="500"}[{{.window}}]))
        total_query: sum(rate(requests_total{job="checkout"}[{{.window}}]))
  - service: search
    name: availability
    objective: 99
    time_window: 7d
    sli:
      error_query: sum by (region) (rate(requests_total{job="search", code="500"}[{{.window}}]))
      total_query: sum by (region) (rate(requests_total{job="search"}[{{.window}}]))
"""
SECONDS = {"5m": 300, "30m": 1800, "1h": 3600, "2h": 7200, "6h": 21600, "1d": 86400,
           "3d": 259200, "7d": 604800}


def _counters(rng: random.Random, ok_rate: float, error_rate: float, burn_from: int,
              burn: float) -> tuple[list[float], list[float]]:
    """Per-minute counters: requests succeed or fail at random around the given rates; from
    sample `burn_from` on, errors are `burn` times as frequent."""
    ok, bad = [0.0], [0.0]
    for i in range(1, N):
        e = error_rate * (burn if i >= burn_from else 1.0) * rng.uniform(0.5, 1.5)
        ok.append(ok[-1] + ok_rate * rng.uniform(0.9, 1.1))
        bad.append(bad[-1] + e)
    return ok, bad


def _series(labels: dict[str, str], values: list[float]) -> Series:
    return Series({"__name__": "requests_total", **labels},
                  [(END - STEP * (N - 1 - i), v) for i, v in enumerate(values)])


def _ratio(ok: list[float], bad: list[float], window: str) -> float:
    """The error ratio over the window ending at END, from the samples themselves: with samples
    on both edges of the range, Prometheus's rate() extrapolates nothing, and the ratio of two
    rates over one range is the ratio of the increases."""
    k = int(SECONDS[window] / STEP)
    errors = bad[-1] - bad[-1 - k]
    return errors / (errors + ok[-1] - ok[-1 - k])


@pytest.mark.prometheus
async def test_error_budget_on_backfilled_history(backfilled_prometheus: BackfilledPrometheus,
                                                  tmp_path: Path) -> None:
    rng = random.Random(14)
    # checkout: 0.05% errors all week, then 40x (20x the budget) in the last 90 minutes
    c_ok, c_bad = _counters(rng, 1000.0, 0.5, N - 90, 40.0)
    # search: eu fine, us burning for the last day
    eu_ok, eu_bad = _counters(rng, 500.0, 1.0, N, 1.0)
    us_ok, us_bad = _counters(rng, 300.0, 3.0, N - 1440, 8.0)
    prom = backfilled_prometheus([
        _series({"job": "checkout", "code": "200"}, c_ok),
        _series({"job": "checkout", "code": "500"}, c_bad),
        _series({"job": "search", "region": "eu", "code": "200"}, eu_ok),
        _series({"job": "search", "region": "eu", "code": "500"}, eu_bad),
        _series({"job": "search", "region": "us", "code": "200"}, us_ok),
        _series({"job": "search", "region": "us", "code": "500"}, us_bad)])
    s = daemon_settings(tmp_path, prometheus_url=prom.url)
    (s.rules_dir / "slos.yml").write_text(API_RULES)
    d = Daemon(s, clock=FixedClock(END), plugins=False, schedule=False)
    async with d:
        status, body = await get_json(f"{d.http_url}/api/v1/slos")
        assert status == 200, body
        status, only = await get_json(f"{d.http_url}/api/v1/slos?service=search&"
                                      f"time={END - 86400}")
        _, rules = await get_json(f"{d.http_url}/api/v1/rules?rule_group[]="
                                  "slo:checkout-availability")
        bad_status, bad = await get_json(f"{d.http_url}/api/v1/slos?time=yesterday")
    checkout, search = body["data"]["slos"]
    assert body["data"]["time"] == END and not checkout["errors"] and not search["errors"]
    f = str(s.rules_dir / "slos.yml")
    assert checkout["source"] == f"{f}:3" and search["source"] == f"{f}:11"
    assert checkout["group"] == "slo:checkout-availability"
    assert checkout["objective"] == 99.9 and checkout["time_window"] == "1w"
    budget = (100 - 99.9) / 100
    period = _ratio(c_ok, c_bad, "7d")
    (series,) = checkout["series"]
    assert series["labels"] == {}
    assert checkout["sli"] == pytest.approx((1 - period) * 100, rel=1e-9)
    assert checkout["budget_remaining"] == pytest.approx(1 - period / budget, rel=1e-9)
    for w in WINDOWS:
        assert checkout["burn_rates"][w] == pytest.approx(_ratio(c_ok, c_bad, w) / budget,
                                                          rel=1e-9), w
    # the burn the alerts would page on: 5m and 1h above 14.4x
    assert checkout["burn_rates"]["5m"] > 14.4 and checkout["burn_rates"]["1h"] > 14.4
    assert 0 < checkout["budget_remaining"] < 1

    # per region: one series each, and no single figure for the SLO
    assert search["sli"] is None and search["budget_remaining"] is None
    by_region = {x["labels"]["region"]: x for x in search["series"]}
    for region, ok, bad_ in (("eu", eu_ok, eu_bad), ("us", us_ok, us_bad)):
        got = by_region[region]
        assert got["error_ratio"] == pytest.approx(_ratio(ok, bad_, "7d"), rel=1e-9)
        assert got["budget_remaining"] == pytest.approx(1 - _ratio(ok, bad_, "7d") / 0.01,
                                                        rel=1e-9)
        assert got["burn_rates"]["1d"] == pytest.approx(_ratio(ok, bad_, "1d") / 0.01,
                                                        rel=1e-9)
    assert by_region["us"]["budget_remaining"] < 0 < by_region["eu"]["budget_remaining"]

    # filtered, and at another time: a day ago the us region had not started burning
    (past,) = only["data"]["slos"]
    assert status == 200 and past["service"] == "search"
    us_then = {x["labels"]["region"]: x for x in past["series"]}["us"]
    assert us_then["burn_rates"]["1d"] < 0.5 * by_region["us"]["burn_rates"]["1d"]

    # /api/v1/rules: the generated group, with where the SLO is written
    (group,) = rules["data"]["groups"]
    assert group["source"] == f"{f}:3" and group["file"] == f
    assert [(r["name"], r["labels"]["sloth_severity"], r["source"]) for r in group["rules"]] == [
        ("CheckoutAvailabilityErrorBudgetBurn", "page", f"{f}:3"),
        ("CheckoutAvailabilityErrorBudgetBurn", "ticket", f"{f}:3")]
    assert bad_status == 400 and "time must be RFC 3339" in bad["error"]


def test_slo_and_handwritten_files_load_in_one_folder() -> None:
    """Both files in one folder (as in tests/data/slo): the generated group's name does not
    clash with the hand-written ones, and each group keeps its file."""
    rs = build({str(DATA / n): (DATA / n).read_bytes()
                for n in ("slos.yml", "checkout-handwritten.yml")})
    assert not [p for p in rs.problems if not p.warning], rs.problems
    assert sorted(g.name for _, g in rs.groups()) == [
        "checkout-slo-by-hand", "search-slo-by-hand", "slo:checkout-requests-availability",
        "slo:search-availability"]
