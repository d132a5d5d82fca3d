"""The operator console in a real browser: Playwright driving Debian's Chromium against
`watchdog run` as a process, over a real Prometheus backfilled with six hours of history (three
earlier incidents and one going on now), at a desktop (1400×1000) and a phone (390×844) size.

Each test does what an operator does — filter the rules, open an alert and read its chart,
silence and un-silence, acknowledge, dry-run an action, backtest a rule, pause — and checks the
outcome both on the page and through the daemon's API. Every page must stay free of script
errors, CSP violations and JavaScript dialogs; one alert's labels are hostile markup
(`<img onerror>`, `</script>`) and must stay text. Screenshots of every view go to
tests/artifacts/console/ (gitignored), their paths printed.

Skipped, with the reason, only where /usr/bin/chromium is missing (outside CI; CI installs it
through scripts/setup). No browser is ever downloaded.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from watchdog_process import READ_TOKEN, TOKEN, WatchdogProcess

from watchdog.promserver import PrometheusServer, backfill
from watchdog.series import Series

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts" / "console"
SIZES = {"desktop": (1400, 1000), "phone": (390, 844)}

if not os.path.exists(CHROMIUM):
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing in CI: scripts/setup installs Debian's chromium")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; scripts/setup does)",
                allow_module_level=True)

from playwright.sync_api import (  # noqa: E402 — only with a browser to drive
    Browser,
    ConsoleMessage,
    Dialog,
    Page,
    expect,
    sync_playwright,
)

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

XSS_IMG = '<img src=x onerror="window.__xss=1;alert(1)">'
XSS_SCRIPT = "</script><script>window.__xss=2;alert(2)</script>"
STEP = 30.0  # seconds between backfilled samples
REPLICA = "console-replica-7"  # REPLICA_ID, shown on the Status view

RULES = """
groups:
  - name: checkout
    interval: 5s
    rules:
      - alert: ErrorRate
        expr: http_errors_ratio > 0.1
        for: 10s
        labels: {severity: critical}
        annotations:
          summary: "error rate {{ $value | humanizePercentage }} on {{ $labels.instance }}"
          runbook: "roll back the last deploy"
        actions: [flag-off]
      - alert: ErrorBudget
        expr: http_errors_ratio
        severities: {warning: "> 0.05", critical: "> 0.2"}
        for: 10s
  - name: queues
    interval: 5s
    rules:
      - alert: Blip
        expr: blip > 0
      - alert: QueueBacklog
        expr: queue_depth > 1000
        for: 1m
        annotations: {summary: "{{ $value }} messages waiting"}
actions:
  flag-off:
    cooldown: 1h
    steps:
      - webhook: {url: "FLAGS_URL/flags/checkout-v2", method: PATCH, json: {enabled: false}}
"""


def error_ratio(t: float, now: float, base: float) -> float:
    """Three past incidents and one that is going on now (to the end of the backfill)."""
    for start, end in ((-4.5, -4.2), (-2.5, -2.3), (-1.0, -0.9)):
        if now + start * 3600 <= t < now + end * 3600:
            return 0.32 + base
    return 0.27 + base if t >= now - 600 else 0.02 + base


@dataclass
class Flags:
    """The service whose flag the rollback action turns off: records each call."""

    calls: list[str] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> str:
        flags = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PATCH(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                flags.calls.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"enabled": false}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@dataclass
class Env:
    wd: WatchdogProcess
    prom: PrometheusServer
    flags: Flags
    now: float

    def api(self, path: str) -> Any:
        return self.wd.get_json(path, token=READ_TOKEN)["data"]

    def post(self, path: str, body: Any) -> Any:
        r = self.wd.request("POST", path, json.dumps(body).encode(), token=TOKEN,
                            headers={"Content-Type": "application/json"})
        assert r.status < 300, r
        return r.json()


def until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, prometheus_binary: str,
        promtool_binary: str) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("console")
    now = time.time()
    ts = [now - 6 * 3600 + i * STEP for i in range(int(7 * 3600 / STEP))]  # to now + 1h
    instances = {"web-1": ("checkout", 0.0), "web-2": ("checkout", 0.01),
                 XSS_IMG: ("search", 0.02)}
    series = [Series({"__name__": "http_errors_ratio", "instance": inst, "service": svc,
                      "note": XSS_SCRIPT if svc == "search" else "ok"},
                     [(t, error_ratio(t, now, base)) for t in ts])
              for inst, (svc, base) in instances.items()]
    series.append(Series({"__name__": "queue_depth", "queue": "emails"},
                         [(t, 40.0 + (t // STEP) % 7) for t in ts]))
    # a blip that ends half a minute after the daemon starts: resolved incidents for MTTR
    series += [Series({"__name__": "blip", "instance": f"b-{n}"},
                      [(t, 1.0 if now - 120 <= t < now + 30 else 0.0) for t in ts])
               for n in range(2)]
    backfill(series, tmp / "tsdb", promtool=promtool_binary)
    prom = PrometheusServer(tmp / "tsdb", binary=prometheus_binary)
    prom.start()
    flags = Flags()
    flags_url = flags.start()
    wd = WatchdogProcess(tmp, env={"WATCHDOG_PROMETHEUS_URL": prom.url,
                                   "WATCHDOG_API_READ_TOKEN": READ_TOKEN,
                                   "WATCHDOG_REPLICA_ID": REPLICA})
    (wd.rules / "rules.yml").write_text(RULES.replace("FLAGS_URL", flags_url))
    wd.start()
    e = Env(wd, prom, flags, now)
    try:
        wd.wait_up()
        until(lambda: len([a for a in e.api("/api/v1/alerts")["alerts"]
                           if a["labels"]["alertname"] == "ErrorRate"
                           and a["state"] == "firing"]) == 3, 60, "three ErrorRate alerts")
        until(lambda: len(flags.calls) >= 3, 30, "the rollback webhook, once per alert")
        until(lambda: len(e.api("/api/v1/incidents?rule=Blip&state=resolved")) == 2, 60,
              "the two Blip incidents to resolve")
        e.post("/api/v1/deploys", {"service": "checkout", "version": "v2.3.1", "window": "2s"})
        e.post("/api/v1/deploys", {"service": "search", "version": "v9.0.0", "window": "1h"})
        yield e
    finally:
        wd.stop()
        prom.stop()
        flags.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


@dataclass
class Console:
    page: Page
    size: str
    base: str
    problems: list[str]
    shots: list[Path]

    def open(self, hash_: str) -> Page:
        self.page.goto(f"{self.base}/#{hash_}")
        return self.page

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}-{self.size}.png"
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        self.shots.append(path)
        return path

    def confirm(self, button: str) -> None:
        dialog = self.page.locator("dialog#modal")
        expect(dialog).to_be_visible()
        dialog.get_by_role("button", name=button).click()
        expect(dialog).to_be_hidden()

    def toast(self, pattern: str) -> None:
        expect(self.page.locator("#toast")).to_contain_text(re.compile(pattern))


@pytest.fixture(params=list(SIZES))
def console(request: pytest.FixtureRequest, browser: Browser, env: Env) -> Iterator[Console]:
    w, h = SIZES[request.param]
    context = browser.new_context(viewport={"width": w, "height": h})
    page = context.new_page()
    problems: list[str] = []

    def on_console(m: ConsoleMessage) -> None:
        # an API answer of 4xx is logged by the browser too; those the page shows itself
        if m.type in ("error", "warning") and not m.text.startswith("Failed to load resource"):
            problems.append(f"console {m.type}: {m.text}")

    def on_dialog(d: Dialog) -> None:
        problems.append(f"a JavaScript dialog opened: {d.message!r}")
        d.dismiss()

    page.on("console", on_console)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", on_dialog)
    c = Console(page, request.param, env.wd.url, problems, [])
    # reads need a token here (API_READ_TOKEN): the console asks for one by itself, once, and
    # keeps it for the tab
    c.open("rules")
    page.locator("#token-input").fill(TOKEN)
    c.confirm("Use")
    expect(page.locator("#conn")).to_have_text("token set")
    yield c
    assert page.evaluate("window.__xss === undefined"), "hostile markup ran"
    assert problems == []
    context.close()


# ---- the tests ---------------------------------------------------------------------------------


def test_load_and_filter_the_rules(console: Console) -> None:
    page = console.open("rules")
    rules = page.locator(".rule")
    expect(rules).to_have_count(5)  # with the built-in WatchdogDatasourceDown
    expect(page.locator("#overall")).to_have_text("ready")
    expect(page.locator('.rule[data-rule="ErrorRate"] .badge').first).to_have_text("firing")
    expect(page.locator('.rule[data-rule="QueueBacklog"] .badge').first).to_have_text("inactive")
    expect(page.locator('.rule[data-rule="ErrorRate"] .hist i.hit').first).to_be_visible()
    page.locator("#filter").fill("queue_depth")
    expect(rules).to_have_count(1)
    expect(rules.first).to_have_attribute("data-rule", "QueueBacklog")
    rules.first.locator(".rule-name").click()
    detail = rules.first.locator(".detail")
    expect(detail).to_contain_text("queue_depth > 1000")
    expect(detail.locator("table tbody tr").first).to_be_visible()  # the last evaluations
    console.shot("rules-filtered")
    page.locator("#filter").fill("")
    expect(rules).to_have_count(5)
    console.shot("rules")


def test_open_an_alert_and_its_chart(console: Console, env: Env) -> None:
    page = console.open("alerts")
    row = page.locator("tr", has_text="instance=web-1").filter(has_text="ErrorRate")
    row.get_by_role("link", name="open").click()
    expect(page).to_have_url(re.compile("#alert/"))
    expect(page.locator("main h2")).to_contain_text("Alert ErrorRate")
    expect(page.locator("main")).to_contain_text("roll back the last deploy")  # annotations
    chart = page.locator("svg.chart")
    expect(chart.locator("path.series.main")).to_have_count(1)
    expect(chart.locator("path.series")).to_have_count(3)  # the other two, in grey
    expect(chart.locator("text.limit-label")).to_have_text("threshold > 0.1")
    # the 6-hour view reaches back to the past incidents: the main line crosses the threshold
    page.get_by_role("button", name="6h").click()
    d = chart.locator("path.series.main").get_attribute("d") or ""
    assert d.count("L") > 300, d[:200]
    link = page.get_by_role("link", name="Open the expression in Prometheus")
    href = link.get_attribute("href") or ""
    assert href.startswith(f"{env.prom.url}/graph?g0.expr=http_errors_ratio%20%3E%200.1"), href
    console.shot("alert")


def test_tiers_are_drawn_for_a_tiered_rule(console: Console) -> None:
    page = console.open("alerts")
    page.locator("tr", has_text="ErrorBudget").filter(has_text="instance=web-1").get_by_role(
        "link", name="open").click()
    chart = page.locator("svg.chart")
    expect(chart.locator("text.limit-label")).to_have_text(["critical > 0.2", "warning > 0.05"])
    expect(chart.locator("path.series.main")).to_have_count(1)


def test_create_and_expire_a_silence(console: Console, env: Env) -> None:
    instance = "web-1" if console.size == "desktop" else "web-2"
    comment = f"deploy freeze ({console.size})"
    page = console.open("silences")
    page.locator("#silence-matchers").fill(f'alertname="ErrorRate"\ninstance="{instance}"')
    expect(page.locator(".preview-count")).to_have_text("matches 1 firing alert now")
    page.locator("#silence-matchers").fill('alertname=~"Error.*"')
    expect(page.locator(".preview-count")).to_have_text("matches 6 firing alerts now")
    page.locator("#silence-matchers").fill(f'alertname="ErrorRate"\ninstance="{instance}"')
    page.locator("#silence-by").fill("ops-ana")
    page.locator("#silence-comment").fill(comment)
    page.locator("#silence-submit").click()
    console.toast("silence .* created")
    row = page.locator("tr", has_text=comment)
    expect(row).to_contain_text("ops-ana")
    expect(row.locator(".badge")).to_have_text("silenced")
    page.locator("#silence-matchers").fill('alertname=~"Error.*"')  # the preview, shown
    expect(page.locator(".preview li")).to_have_count(6)
    console.shot("silences")
    page.locator("#silence-matchers").fill("")
    (mine,) = [s for s in env.api("/api/v1/silences") if s["comment"] == comment]
    assert mine["status"]["state"] == "active" and mine["createdBy"] == "ops-ana"
    # the alert now says so
    console.open("alerts")
    alert_row = page.locator("tr", has_text=f"instance={instance}").filter(has_text="ErrorRate")
    expect(alert_row.locator(".badge", has_text="silenced")).to_be_visible()
    page.goto(f"{console.base}/#silences")
    page.locator("tr", has_text=comment).get_by_role("button", name="Expire").click()
    console.confirm("Expire")
    console.toast("expired")
    (mine,) = [s for s in env.api("/api/v1/silences") if s["comment"] == comment]
    assert mine["status"]["state"] == "expired"
    expect(page.locator("tr", has_text=comment)).to_have_count(0)  # expired ones are hidden
    page.locator("#show-expired").check()
    expect(page.locator("tr", has_text=comment).locator(".badge")).to_have_text("expired")


def test_acknowledge(console: Console, env: Env) -> None:
    page = console.open("alerts")
    if console.size == "desktop":  # from the alert's own button
        row = page.locator("tr", has_text="instance=web-1").filter(has_text="ErrorRate")
        row.get_by_role("button", name="Ack…").click()
        page.locator("#ack-by").fill("ops-ben")
        page.locator("#ack-comment").fill("rolling back")
        console.confirm("Acknowledge")
        console.toast("acknowledged 1 alert")
        expect(row.locator(".badge", has_text="acked")).to_be_visible()
        wanted = "web-1"
    else:  # by matchers, from the acks view, with the preview
        console.open("acks")
        page.locator("#ack-matchers").fill('alertname="ErrorRate"\ninstance="web-2"')
        expect(page.locator(".preview-count")).to_have_text("matches 1 firing alert now")
        page.locator("#ack-by").fill("ops-ben")
        page.locator("#ack-submit").click()
        console.toast("acknowledged 1 alert")
        wanted = "web-2"
    console.open("acks")
    row = page.locator("tr", has_text=f"instance={wanted}").filter(has_text="ErrorRate")
    expect(row).to_contain_text("by ops-ben")
    console.shot("acks")
    (inc,) = [i for i in env.api("/api/v1/incidents?state=open&rule=ErrorRate")
              if i["labels"]["instance"] == wanted]
    assert inc["ack"]["by"] == "ops-ben"


def test_run_an_action_dry(console: Console, env: Env) -> None:
    calls = len(env.flags.calls)
    page = console.open("runs")
    expect(page.locator("#action-name")).to_have_value("flag-off")
    expect(page.locator("main")).to_contain_text("steps: webhook")
    page.locator("#action-labels").fill(f"service=checkout\ninstance=console-{console.size}")
    page.locator("#action-dry").click()
    expect(page.locator("dialog#modal")).to_contain_text("Dry run of flag-off?")
    console.confirm("Dry run")
    console.toast("dry run .*")
    row = page.locator("tr", has_text=f"instance=console-{console.size}")
    expect(row.locator(".badge").first).to_have_text("dry_run")
    expect(row).to_contain_text("webhook")  # its step
    console.shot("runs")
    runs = env.api("/api/v1/actions/runs?action=flag-off")
    (mine,) = [r for r in runs if r["labels"].get("instance") == f"console-{console.size}"]
    assert mine["dryRun"] is True and mine["trigger"] == "manual"
    assert len(env.flags.calls) == calls  # nothing was called
    # "Run now" asks first; cancelling runs nothing
    page.locator("#action-run").click()
    page.locator("dialog#modal").get_by_role("button", name="Cancel").click()
    assert len(env.api("/api/v1/actions/runs?action=flag-off")) == len(runs)


def test_backtest_a_rule(console: Console) -> None:
    page = console.open("backtest")
    page.locator("#bt-rule").select_option(label="checkout / ErrorRate")
    expect(page.locator("#bt-yaml")).to_have_value(re.compile(r"expr: http_errors_ratio > 0.1"))
    page.locator("#bt-hours").fill("6")
    page.locator("#bt-run").click()
    result = page.locator("#bt-result")
    expect(result.locator(".bt-summary")).to_contain_text("would have fired", timeout=60_000)
    # three series, each: three past incidents and the one going on
    expect(result.locator("svg.timeline rect.firing")).to_have_count(12)
    # the rollback per series at -4.5h, -2.5h and -1h; the one-hour cooldown (per action and
    # series) holds it back at -10m
    expect(result.locator("svg.timeline path.action")).to_have_count(9)
    expect(result.locator("table").first.locator("tbody tr")).to_have_count(12)
    console.shot("backtest")
    # as edited: a threshold above every value never fires
    yaml = page.locator("#bt-yaml").input_value().replace("> 0.1", "> 0.5")
    page.locator("#bt-yaml").fill(yaml)
    page.locator("#bt-run").click()
    expect(result.locator(".bt-summary")).to_contain_text("would not have fired",
                                                          timeout=60_000)
    expect(result.locator("svg.timeline")).to_have_count(0)
    # a broken edit says where
    page.locator("#bt-yaml").fill("alert: X\nexpr: rate(\n")
    page.locator("#bt-run").click()
    expect(result.locator(".err")).to_contain_text("line 2")


def test_pause_and_resume(console: Console) -> None:
    page = console.open("rules")
    switch = page.locator("#pause")
    expect(switch).to_be_enabled(timeout=3000)
    switch.click()
    page.locator("#pause-reason").fill("maintenance")
    console.confirm("Pause")
    expect(switch).to_contain_text("actions paused")
    console.shot("paused")
    switch.click()
    console.confirm("Resume")
    expect(switch).to_have_text("pause actions")


def test_hostile_label_values_stay_text(console: Console) -> None:
    page = console.open("alerts")
    row = page.locator("tr", has_text="ErrorRate").filter(has_text="service=search")
    expect(row).to_contain_text(f"instance={XSS_IMG}")
    expect(row).to_contain_text(f"note={XSS_SCRIPT}")
    console.shot("alerts")
    row.get_by_role("link", name="open").click()
    expect(page.locator("main")).to_contain_text(f"instance={XSS_IMG}")
    expect(page.locator("svg.chart path.series.main")).to_have_count(1)
    page.locator("svg.chart").hover()
    console.shot("alert-hostile")
    assert page.locator("img").count() == 0
    assert page.locator("script").count() == 1  # ours, from /static
    assert page.evaluate("window.__xss === undefined")


@pytest.mark.parametrize("view", ["incidents", "deploys", "status"])
def test_the_other_views(console: Console, env: Env, view: str) -> None:
    page = console.open(view)
    main = page.locator("main")
    if view == "incidents":
        expect(main.locator(".card b").nth(0)).to_have_text(re.compile(r"^\d+$"))
        expect(main.locator(".card", has_text="MTTR").locator("b")).to_have_text(
            re.compile(r"^\d+m\d\ds$|^\d+s$"))  # the two Blips, about half a minute each
        expect(main.locator("tr", has_text="Blip").locator(".badge")).to_have_text(
            ["resolved", "resolved"])
    elif view == "deploys":
        expect(main.locator("tr", has_text="v9.0.0").locator(".badge")).to_have_text("watching")
        checkout = main.locator("tr", has_text="v2.3.1").locator(".badge")
        expect(checkout).to_have_text(re.compile("passed|failed"), timeout=15_000)
    else:
        expect(main).to_contain_text("rules.yml")
        expect(main.locator(".badge", has_text="loaded")).to_be_visible()
        # the replicas table: this one process (SQLite: no roles), live, both groups, started
        replicas = main.locator("#replicas table.replicas tbody tr")
        expect(replicas).to_have_count(1)
        expect(replicas.locator(".replica-id")).to_have_text(REPLICA)
        expect(replicas.locator(".badge", has_text="live")).to_be_visible()
        expect(replicas.locator(".badge", has_text="this one")).to_be_visible()
        expect(replicas).to_contain_text("2 groups")
        expect(replicas).not_to_contain_text("never")  # last seen and started are known
        status = env.api("/api/v1/status")
        assert [r["id"] for r in status["replicas"]] == [REPLICA]
        # each group names its replica (the fold is open at both sizes with two groups)
        groups = main.locator("#replicas table.groups tbody tr")
        expect(groups).to_have_count(len(status["groups"]))
        for g in status["groups"]:
            assert g["replica"] == REPLICA
            expect(groups.filter(has_text=g["name"])).to_contain_text(REPLICA)
    console.shot(view)
