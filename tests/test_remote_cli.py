"""`watchdog silence add|query|expire`, `watchdog ack` and `watchdog runs` against `watchdog run`
as a process, as an operator types them (amtool-style matchers, `--url` or `$WATCHDOG_URL`, the
token from `--token-file` or the environment)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BackfilledPrometheus, require_binary
from watchdog_process import READ_TOKEN, TOKEN, WatchdogProcess

from watchdog.series import Series

pytestmark = pytest.mark.prometheus

RULES = """
groups:
  - name: shop
    interval: 1s
    rules:
      - alert: CheckoutErrors
        expr: vector(1)
        labels: {severity: critical, service: checkout}
      - alert: CartSlow
        expr: vector(2)
        labels: {severity: warning, service: cart}
actions:
  restart-cart:
    steps:
      - command: {argv: ["true"], timeout: 10s}
"""


@pytest.fixture
def daemon(tmp_path: Path, backfilled_prometheus: BackfilledPrometheus
           ) -> Iterator[WatchdogProcess]:
    prom = backfilled_prometheus([Series({"__name__": "up", "job": "x"}, [(0.0, 1.0)])])
    w = WatchdogProcess(tmp_path, env={"WATCHDOG_PROMETHEUS_URL": prom.url,
                                       "WATCHDOG_API_READ_TOKEN": READ_TOKEN})
    (w.rules / "shop.yml").write_text(RULES)
    w.start()
    try:
        w.wait_up()
        deadline = time.monotonic() + 30
        while len([a for a in w.get_json("/api/v1/alerts")["data"]["alerts"]
                   if a["state"] == "firing"]) < 2:
            assert time.monotonic() < deadline, w.log()[-2000:]
            time.sleep(0.2)
        yield w
    finally:
        w.stop()


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
    p = subprocess.run([sys.executable, "-m", "watchdog", *args], capture_output=True,
                       text=True, timeout=60, env={**base, **(env or {})})
    return p.returncode, p.stdout, p.stderr


def test_silences_from_the_command_line(daemon: WatchdogProcess, tmp_path: Path) -> None:
    url = ["--url", daemon.url]
    rc, out, err = cli("silence", "add", "service=cart", "-c", "cart maintenance", *url)
    assert rc == 1 and "HTTP 401" in err and "--token-file" in err
    assert TOKEN not in err
    writer = {"WATCHDOG_API_TOKEN": TOKEN, "WATCHDOG_URL": daemon.url}
    rc, out, err = cli("silence", "add", "CartSlow", "service=~ca.*", "-c", "cart maintenance",
                       "-a", "alice", "-d", "2h", env=writer)
    assert rc == 0, err
    sid = out.strip()
    assert len(sid) == 36

    reader = {"WATCHDOG_API_READ_TOKEN": READ_TOKEN}
    rc, out, err = cli("silence", "query", "-q", *url, env=reader)
    assert (rc, out.split()) == (0, [sid]), err
    rc, out, err = cli("silence", "query", "-q", "alertname=CartSlow", *url, env=reader)
    assert out.split() == [sid]
    rc, out, err = cli("silence", "query", "-q", "service=cart", *url, env=reader)
    assert out.split() == []  # the silence's matcher is service=~"ca.*", not service="cart"
    rc, out, err = cli("silence", "query", *url, env=reader)
    head, row = out.splitlines()
    assert head.split() == ["ID", "MATCHERS", "ENDS", "(UTC)", "CREATED", "BY", "COMMENT"]
    assert row.split()[:3] == [sid, 'alertname="CartSlow"', 'service=~"ca.*"']
    assert row.split()[-3:] == ["alice", "cart", "maintenance"]
    # the same silence, seen by amtool: it is the watchdog's own
    token_file = tmp_path / "read.token"
    token_file.write_text(READ_TOKEN)
    cfg = tmp_path / "amtool.yml"
    cfg.write_text(f"authorization: {{type: Bearer, credentials_file: {token_file}}}\n")
    p = subprocess.run([require_binary("amtool"), f"--alertmanager.url={daemon.url}",
                        f"--http.config.file={cfg}", "--no-version-check", "alert", "query",
                        "-s", "-o", "json"], capture_output=True, text=True, timeout=60)
    assert [a["status"]["silencedBy"] for a in json.loads(p.stdout)] == [[sid]]

    rc, out, err = cli("silence", "expire", sid, "--token-file", str(token_file), *url)
    assert rc == 1 and "HTTP 403" in err  # the read token does not write
    rc, out, err = cli("silence", "expire", sid, env=writer)
    assert rc == 0, err
    rc, out, err = cli("silence", "query", "-q", *url, env=reader)
    assert out == ""
    rc, out, err = cli("silence", "query", "--expired", "-o", "json", *url, env=reader)
    [expired] = json.loads(out)
    assert (expired["id"], expired["status"]["state"]) == (sid, "expired")


def test_ack_and_runs(daemon: WatchdogProcess) -> None:
    env = {"WATCHDOG_API_TOKEN": TOKEN, "WATCHDOG_URL": daemon.url}
    rc, out, err = cli("ack", "CheckoutErrors", "-c", "looking", "-a", "bob", env=env)
    assert rc == 0, err
    assert out.splitlines() == ["acknowledged 1 alert(s):",
                                "  alertname=CheckoutErrors,service=checkout,severity=critical"]
    incidents = daemon.get_json("/api/v1/incidents?rule=CheckoutErrors")["data"]
    assert incidents[0]["ack"]["by"] == "bob"
    rc, out, err = cli("ack", "service=nowhere", env=env)
    assert (rc, out.strip()) == (0, "no firing alert matches")

    rc, out, err = cli("runs", env=env)
    assert (rc, out.strip()) == (0, "no action runs"), err
    rc, out, err = cli("action", "run", "restart-cart", "--label", "service=cart",
                       "--url", daemon.url, env=env)
    assert rc == 0, err
    deadline = time.monotonic() + 20
    while True:
        rc, out, err = cli("runs", "--action", "restart-cart", "-o", "json", env=env)
        [run] = json.loads(out)
        if run["status"] == "succeeded" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (run["action"], run["status"], run["labels"]["service"]) == (
        "restart-cart", "succeeded", "cart")
    rc, out, err = cli("runs", env=env)
    head, row = out.splitlines()
    assert head.split()[:4] == ["STARTED", "(UTC)", "ACTION", "STATUS"]
    assert row.split()[2:4] == ["restart-cart", "succeeded"] and run["id"] in row
    assert row.split()[-1] == "service=cart"


def test_clear_errors() -> None:
    rc, _out, err = cli("silence", "query", "--url", "http://127.0.0.1:9")
    assert rc == 1 and err.startswith("watchdog silence query: cannot reach http://127.0.0.1:9")
    rc, _out, err = cli("silence", "add", "service=~(", "-c", "x", "--url", "http://127.0.0.1:9",
                       env={"WATCHDOG_API_TOKEN": TOKEN})
    assert rc == 1 and "service=~(" in err and "missing closing )" in err
    rc, _out, err = cli("runs", "--limit", "0", "--url", "http://127.0.0.1:9")
    assert rc == 1 and "--limit must be at least 1" in err
