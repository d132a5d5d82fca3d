"""`amtool` against `watchdog run` as a real process, configured the way an operator configures
it for a token-protected Alertmanager: `--http.config.file` with
`authorization: {type: Bearer, credentials_file: ...}`. With `API_READ_TOKEN` set, so every
request of amtool's is checked; the silence it adds survives a restart of the daemon, and
`/api/v2/alerts` marks what is silenced and inhibited. (tests/test_am_api.py covers the API
in depth against an in-process daemon and a real Alertmanager.)
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import BackfilledPrometheus, require_binary
from watchdog_process import READ_TOKEN, TOKEN, WatchdogProcess

from watchdog.series import Series

pytestmark = pytest.mark.prometheus

# `vector(1)` fires at once, whatever the data; the critical alert inhibits the warning one of
# the same service.
RULES = """
groups:
  - name: shop
    interval: 1s
    rules:
      - alert: CheckoutErrors
        expr: vector(1)
        labels: {severity: critical, service: checkout}
        annotations: {summary: "checkout errors"}
      - alert: CheckoutSlow
        expr: vector(2)
        labels: {severity: warning, service: checkout}
      - alert: CartSlow
        expr: vector(3)
        labels: {severity: warning, service: cart}
inhibit_rules:
  - {source_match: {severity: critical}, target_match: {severity: warning}, equal: [service]}
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
        while len(w.get_json("/api/v2/alerts?inhibited=true")) < 3:
            assert time.monotonic() < deadline, w.log()[-2000:]
            time.sleep(0.2)
        yield w
    finally:
        w.stop()


def http_config(tmp_path: Path, name: str, token: str) -> Path:
    secret = tmp_path / f"{name}.token"
    secret.write_text(token + "\n")
    cfg = tmp_path / f"{name}.yml"
    cfg.write_text(f"authorization:\n  type: Bearer\n  credentials_file: {secret}\n")
    return cfg


def amtool(w: WatchdogProcess, config: Path | None, *args: str) -> tuple[int, str, str]:
    cmd = [require_binary("amtool"), f"--alertmanager.url={w.url}", "--no-version-check"]
    if config is not None:
        cmd.append(f"--http.config.file={config}")
    p = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def names(out: str) -> list[tuple[str, str]]:
    return sorted((a["labels"]["alertname"], a["labels"]["service"]) for a in json.loads(out))


def test_amtool_queries_alerts_and_adds_queries_expires_silences(
        daemon: WatchdogProcess, tmp_path: Path) -> None:
    writer = http_config(tmp_path, "writer", TOKEN)
    reader = http_config(tmp_path, "reader", READ_TOKEN)

    rc, out, err = amtool(daemon, None, "alert", "query")
    assert rc != 0 and "401" in err  # API_READ_TOKEN: even reads need a token
    rc, out, err = amtool(daemon, reader, "alert", "query", "-o", "json")
    assert rc == 0, err
    # active only (amtool's default): CheckoutSlow is inhibited by CheckoutErrors
    assert names(out) == [("CartSlow", "cart"), ("CheckoutErrors", "checkout")]
    rc, out, err = amtool(daemon, reader, "alert", "query", "-i", "-o", "json")
    [inhibited] = json.loads(out)
    assert inhibited["labels"]["alertname"] == "CheckoutSlow"
    assert inhibited["status"]["state"] == "suppressed"
    assert len(inhibited["status"]["inhibitedBy"]) == 1

    add = ("silence", "add", "service=cart", "-a", "ops", "-c", "cart maintenance", "-d", "1h")
    rc, out, err = amtool(daemon, reader, *add)
    assert rc != 0 and "403" in err  # the read token does not write
    rc, out, err = amtool(daemon, writer, *add)
    assert rc == 0, err
    sid = out.strip()
    assert len(sid) == 36

    rc, out, err = amtool(daemon, reader, "silence", "query", "-q")
    assert (rc, out.split()) == (0, [sid]), err
    rc, out, err = amtool(daemon, reader, "silence", "query", "-q", "service=cart")
    assert out.split() == [sid]
    rc, out, err = amtool(daemon, reader, "alert", "query", "-o", "json")
    assert names(out) == [("CheckoutErrors", "checkout")]
    rc, out, err = amtool(daemon, reader, "alert", "query", "-s", "-o", "json")
    [silenced] = json.loads(out)
    assert silenced["labels"]["service"] == "cart"
    assert silenced["status"] == {"state": "suppressed", "silencedBy": [sid], "inhibitedBy": []}

    # the API itself: silenced and inhibited are marked, and filtered as Alertmanager does
    every = {(a["labels"]["alertname"], a["status"]["state"], bool(a["status"]["silencedBy"]),
              bool(a["status"]["inhibitedBy"]))
             for a in daemon.get_json("/api/v2/alerts")}
    assert every == {("CheckoutErrors", "active", False, False),
                     ("CheckoutSlow", "suppressed", False, True),
                     ("CartSlow", "suppressed", True, False)}
    shown: Any = daemon.get_json("/api/v2/alerts?silenced=false&inhibited=false")
    assert [a["labels"]["alertname"] for a in shown] == ["CheckoutErrors"]

    # the silence is the watchdog's own, in its state: a restart keeps it
    daemon.stop()
    daemon.start()
    daemon.wait_up()
    rc, out, err = amtool(daemon, reader, "silence", "query", "-o", "json")
    [kept] = json.loads(out)
    assert (kept["id"], kept["createdBy"], kept["comment"]) == (sid, "ops", "cart maintenance")

    rc, out, err = amtool(daemon, reader, "silence", "expire", sid)
    assert rc != 0 and "403" in err
    rc, out, err = amtool(daemon, writer, "silence", "expire", sid)
    assert rc == 0, err
    rc, out, err = amtool(daemon, reader, "silence", "query", "-q")
    assert (rc, out) == (0, "")
    rc, out, err = amtool(daemon, reader, "silence", "query", "--expired", "-q")
    assert out.split() == [sid]
