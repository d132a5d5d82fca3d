"""Alertmanager's API v2 on the watchdog (`watchdog.am_api`), tested with the real clients and
the real server: Debian's `amtool` 0.25 runs against a running daemon (alert query, silence
add/query/update/expire, config routes), the requests Grafana's Alertmanager data source sends
are replayed, and every answer is compared with what a real Alertmanager 0.25 (Debian's
prometheus-alertmanager), holding the same alerts, answers to the same request.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import require_binary
from fakes_chat import FakeChat, free_port
from test_daemon_support import TOKEN, settings, write

from watchdog.daemon import Daemon
from watchdog.testing import FakeSource, sample

# Two rules, two routes (an alert goes to every route that matches), an inhibit rule: a critical
# CheckoutErrors mutes the warning CheckoutSlow of the same service.
RULES = """
groups:
  - name: shop
    rules:
      - alert: CheckoutErrors
        expr: errors
        labels: {severity: critical}
        annotations: {summary: "errors at {{ $value }}"}
      - alert: CheckoutSlow
        expr: slow
        labels: {severity: warning}
receivers:
  - name: chat
    slack: {webhook_url: "CHAT/slack/T0/B0/x"}
  - name: pager
    slack: {webhook_url: "CHAT/slack/T0/B0/y"}
routes:
  - {receivers: [chat], group_by: [alertname]}
  - {match: {severity: critical}, receivers: [pager], group_wait: 10s}
inhibit_rules:
  - {source_match: {severity: critical}, target_match: {severity: warning}, equal: [service]}
"""

# The same routing, written for Alertmanager by hand (not generated: it checks our generator).
AM_CONFIG = """
route:
  receiver: unrouted
  routes:
    - {receiver: chat, group_by: [alertname], continue: true}
    - {receiver: pager, matchers: ['severity="critical"'], group_wait: 10s, continue: true}
receivers: [{name: unrouted}, {name: chat}, {name: pager}]
inhibit_rules:
  - {source_matchers: ['severity="critical"'], target_matchers: ['severity="warning"'],
     equal: [service]}
"""

SAMPLES = {
    "errors": [sample(0.3, service="checkout", env="prod"), sample(0.2, service="cart")],
    "slow": [sample(2.0, service="checkout", env="prod"),
             sample(3.0, service="search", env='we"ird\\env')],
}


def expected_alerts() -> list[dict[str, str]]:
    """The label sets the rules above produce from SAMPLES."""
    out = []
    for expr, name, severity in (("errors", "CheckoutErrors", "critical"),
                                 ("slow", "CheckoutSlow", "warning")):
        for s in SAMPLES[expr]:
            out.append({**s.labels, "alertname": name, "severity": severity})
    return out


@dataclass
class Running:
    url: str
    daemon: Daemon
    http_config: Path  # amtool's --http.config.file with the API token


@pytest.fixture
async def watchdog(tmp_path: Path, chat: FakeChat) -> AsyncIterator[Running]:
    s = settings(tmp_path, external_url="http://wd.example/")
    write(s.rules_dir / "shop.yml", RULES.replace("CHAT", chat.url))
    src = FakeSource(dict(SAMPLES))
    # The real clock: amtool stamps silences with it.
    async with Daemon(s, clock=time.time, source=src, schedule=False) as d:
        await d.evaluate_all()
        assert d.http_url is not None
        cfg = tmp_path / "amtool-http.yml"
        cfg.write_text(f"authorization: {{credentials: {TOKEN}}}\n")
        yield Running(d.http_url, d, cfg)


@pytest.fixture(scope="module")
def amtool_binary() -> str:
    return require_binary("amtool")


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager with AM_CONFIG, holding the alerts of `expected_alerts()`."""
    binary = require_binary("prometheus-alertmanager")
    port = free_port()
    cfg = tmp_path / "alertmanager.yml"
    cfg.write_text(AM_CONFIG)
    proc = subprocess.Popen(
        [binary, f"--config.file={cfg}", f"--storage.path={tmp_path / 'am-data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
         "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("alertmanager did not start: " + (
                        proc.stderr.read().decode() if proc.stderr else "")) from None
                time.sleep(0.05)
        body = json.dumps([{"labels": ls} for ls in expected_alerts()]).encode()
        req = urllib.request.Request(f"{url}/api/v2/alerts", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def amtool(binary: str, url: str, *args: str, config: Path | None = None
                 ) -> tuple[int, str, str]:
    cmd = [binary, f"--alertmanager.url={url}", "--no-version-check"]
    if config is not None:
        cmd.append(f"--http.config.file={config}")
    proc = await asyncio.create_subprocess_exec(
        *cmd, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def get(url: str, **params: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url, params=params) as r:
        text = await r.text()
        return r.status, (json.loads(text) if text else None)


def ordered(sets: Iterable[Mapping[str, str]]) -> list[dict[str, str]]:
    return sorted((dict(ls) for ls in sets), key=lambda ls: sorted(ls.items()))


def labelsets(alerts: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    return ordered(a["labels"] for a in alerts)


# ---- amtool against a running daemon -------------------------------------------------------------


async def test_amtool_alert_query(watchdog: Running, amtool_binary: str) -> None:
    rc, out, err = await amtool(amtool_binary, watchdog.url, "alert", "query", "-o", "json")
    assert rc == 0, err
    alerts = json.loads(out)
    # amtool's default query is active alerts only: the inhibited CheckoutSlow is not shown.
    assert labelsets(alerts) == ordered(ls for ls in expected_alerts()
                                        if ls["alertname"] != "CheckoutSlow"
                                        or ls["service"] != "checkout")
    rc, out, err = await amtool(amtool_binary, watchdog.url, "alert", "query", "-i",
                                "-o", "json")
    assert rc == 0, err
    [inhibited] = json.loads(out)
    assert inhibited["labels"]["service"] == "checkout"
    assert inhibited["status"]["state"] == "suppressed"
    assert len(inhibited["status"]["inhibitedBy"]) == 1

    rc, out, err = await amtool(amtool_binary, watchdog.url, "alert", "query", "CheckoutErrors",
                                'service=~"check.*"')
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["Alertname", "Starts", "At", "Summary", "State"]
    assert len(lines) == 2 and "CheckoutErrors" in lines[1] and "errors at 0.3" in lines[1]
    assert lines[1].split()[-1] == "active"


async def test_amtool_silence_add_query_update_expire(watchdog: Running,
                                                      amtool_binary: str) -> None:
    url, cfg = watchdog.url, watchdog.http_config
    add = ("silence", "add", "alertname=CheckoutErrors", "service=cart", "-a", "alice",
           "-c", "cart deploy", "-d", "2h")
    rc, _out, err = await amtool(amtool_binary, url, *add)
    assert rc != 0 and "401" in err  # writes need the API token
    rc, out, err = await amtool(amtool_binary, url, *add, config=cfg)
    assert rc == 0, err
    sid = out.strip()
    assert len(sid) == 36

    # The watchdog's own silence: the same store as /api/v1/silences, and it mutes the
    # notifications of the alert it matches.
    status, body = await get(f"{url}/api/v1/silences")
    assert status == 200
    assert [(s["id"], s["createdBy"], s["comment"]) for s in body["data"]] == [
        (sid, "alice", "cart deploy")]
    [notify] = [h for h in watchdog.daemon.handlers if hasattr(h, "pipeline")]
    muted = notify.pipeline.suppressed(time.time())  # type: ignore[attr-defined]
    [cart] = [a for a in watchdog.daemon.alerts() if a.labels.get("service") == "cart"]
    assert muted == {cart.fingerprint: f"silenced by {sid}",
                     next(a.fingerprint for a in watchdog.daemon.alerts()
                          if a.rule == "CheckoutSlow" and a.labels["service"] == "checkout"):
                     "inhibited"}

    rc, out, err = await amtool(amtool_binary, url, "alert", "query", "-s", "-o", "json")
    assert rc == 0, err
    [silenced] = json.loads(out)
    assert silenced["labels"]["service"] == "cart"
    assert silenced["status"] == {"state": "suppressed", "silencedBy": [sid], "inhibitedBy": []}
    rc, out, err = await amtool(amtool_binary, url, "alert", "query", "service=cart")
    assert rc == 0 and "CheckoutErrors" not in out  # active only, by default

    rc, out, err = await amtool(amtool_binary, url, "silence", "query")
    assert rc == 0, err
    head, row = out.strip().splitlines()
    assert head.split() == ["ID", "Matchers", "Ends", "At", "Created", "By", "Comment"]
    assert row.split()[:3] == [sid, 'alertname="CheckoutErrors"', 'service="cart"']
    assert row.split()[-3:] == ["alice", "cart", "deploy"]
    for query, found in ((("service=cart",), [sid]), (("CheckoutErrors",), [sid]),
                         (("service=~cart",), []), (("service=other",), [])):
        rc, out, err = await amtool(amtool_binary, url, "silence", "query", "-q", *query)
        assert rc == 0, err
        assert out.split() == found, query

    # update = a new silence replacing the old one (which expires), as Alertmanager does
    # (-o json: amtool 0.25's `update -q` prints a Go pointer instead of the id)
    rc, out, err = await amtool(amtool_binary, url, "silence", "update", sid, "-c", "longer",
                                "-d", "3h", "-o", "json", config=cfg)
    assert rc == 0, err
    new = json.loads(out)[0]["id"]
    assert new != sid and len(new) == 36
    rc, out, err = await amtool(amtool_binary, url, "silence", "query", "-o", "json")
    [current] = json.loads(out)
    assert current["id"] == new and current["comment"] == "longer"
    assert current["createdBy"] == "alice"
    assert current["matchers"] == [
        {"name": "alertname", "value": "CheckoutErrors", "isRegex": False, "isEqual": True},
        {"name": "service", "value": "cart", "isRegex": False, "isEqual": True}]

    rc, _out, err = await amtool(amtool_binary, url, "silence", "expire", new)
    assert rc != 0 and "401" in err
    rc, out, err = await amtool(amtool_binary, url, "silence", "expire", new, config=cfg)
    assert rc == 0, err
    rc, out, err = await amtool(amtool_binary, url, "silence", "query", "-q")
    assert (rc, out) == (0, "")
    rc, out, err = await amtool(amtool_binary, url, "silence", "query", "--expired", "-q")
    assert rc == 0 and sorted(out.split()) == sorted([sid, new])
    rc, out, err = await amtool(amtool_binary, url, "alert", "query", "service=cart", "-o",
                                "json")
    assert [a["status"]["state"] for a in json.loads(out)] == ["active"]

    rc, out, err = await amtool(amtool_binary, url, "silence", "expire",
                                "00000000-0000-4000-8000-000000000000", config=cfg)
    assert rc != 0 and "not found" in err


async def test_amtool_regex_and_negative_silences(watchdog: Running,
                                                  amtool_binary: str) -> None:
    url, cfg = watchdog.url, watchdog.http_config
    rc, out, err = await amtool(amtool_binary, url, "silence", "add", "-c", "x",
                                'service=~"check.*|sea.+"', "severity!=critical", config=cfg)
    assert rc == 0, err
    sid = out.strip()
    rc, out, err = await amtool(amtool_binary, url, "alert", "query", "-s", "-i", "-o", "json")
    assert labelsets(json.loads(out)) == ordered(
        ls for ls in expected_alerts() if ls["alertname"] == "CheckoutSlow")
    # -s alone: silenced, but neither active nor inhibited (the checkout one is inhibited too)
    rc, out, err = await amtool(amtool_binary, url, "alert", "query", "-s", "-o", "json")
    assert [a["labels"]["service"] for a in json.loads(out)] == ["search"]
    # Alertmanager's silence filter: matchers equal to one of the silence's own
    rc, out, err = await amtool(amtool_binary, url, "silence", "query", "-q",
                                'service=~"check.*|sea.+"')
    assert out.split() == [sid]
    rc, out, err = await amtool(amtool_binary, url, "silence", "add", "-c", "x",
                                'service=~".*"', config=cfg)
    assert rc != 0 and "match every alert" in err


async def test_amtool_reads_the_routing_as_alertmanager_config(
        watchdog: Running, amtool_binary: str, tmp_path: Path) -> None:
    url = watchdog.url
    rc, out, err = await amtool(amtool_binary, url, "config", "routes", "show")
    assert rc == 0, err
    assert out.split("\n")[:5] == [
        "Routing tree:", ".", "└── default-route  receiver: unrouted",
        "    ├── default-route  continue: true  receiver: chat",
        '    └── {severity="critical"}  continue: true  receiver: pager']
    rc, out, err = await amtool(amtool_binary, url, "config", "routes", "test",
                                "severity=critical", "service=x")
    assert (rc, out.strip()) == (0, "chat,pager")
    # config.original is a configuration Alertmanager itself accepts
    status, body = await get(f"{url}/api/v2/status")
    assert status == 200
    path = tmp_path / "generated.yml"
    path.write_text(body["config"]["original"])
    rc, out, err = await amtool(amtool_binary, url, "check-config", str(path))
    assert rc == 0, out + err
    assert " - 1 inhibit rules" in out and " - 3 receivers" in out
