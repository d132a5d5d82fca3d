"""`watchdog replay` as a user runs it: JSONL exactly as in the contract, and the table format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from watchdog.series import Series

pytestmark = [pytest.mark.prometheus]

RULES = """
groups:
  - name: checkout
    interval: 1m
    rules:
      - alert: HighErrorRate
        expr: error_ratio{service="checkout"}
        threshold: "> 0.10"
        for: 2m
        labels: {severity: critical}
        actions: [rollback-checkout]
actions:
  rollback-checkout:
    steps:
      - webhook: {url: "http://flags.invalid/checkout", method: PATCH, json: {enabled: false}}
"""


def test_jsonl_transitions_and_would_run(tmp_path: Path, backfilled_prometheus: object) -> None:
    values = [0.01] * 5 + [0.17, 0.2, 0.3, 0.25] + [0.02] * 4  # minutes 0..12
    prom = backfilled_prometheus([Series(  # type: ignore[operator]
        {"__name__": "error_ratio", "service": "checkout", "instance": "a"},
        [(60.0 * i, v) for i, v in enumerate(values)])])
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yml").write_text(RULES)
    base = [sys.executable, "-m", "watchdog", "replay", "--rules", str(tmp_path / "rules"),
            "--prometheus-url", prom.url, "--start", "0", "--end", "1970-01-01T00:12:00Z"]
    proc = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    labels = {"alertname": "HighErrorRate", "instance": "a", "service": "checkout",
              "severity": "critical"}
    assert docs == [
        {"ts": 300.0, "rule": "HighErrorRate", "group": "checkout", "labels": labels,
         "state": "pending", "value": 0.17},
        {"ts": 420.0, "rule": "HighErrorRate", "group": "checkout", "labels": labels,
         "state": "firing", "value": 0.3},
        {"ts": 420.0, "rule": "HighErrorRate", "labels": labels, "action": "rollback-checkout",
         "state": "would_run"},
        {"ts": 540.0, "rule": "HighErrorRate", "group": "checkout", "labels": labels,
         "state": "resolved", "value": None},
    ]
    table = subprocess.run([*base, "--format", "table", "--step", "1m"], capture_output=True,
                           text=True, timeout=120)
    assert table.returncode == 0
    rows = table.stdout.splitlines()
    assert rows[0].split() == ["TIME", "STATE", "RULE", "VALUE", "LABELS"]
    assert rows[2].split()[:4] == ["1970-01-01T00:07:00Z", "firing", "HighErrorRate", "0.3"]
    assert "would_run" in rows[3] and "rollback-checkout" in rows[3]


def test_unreachable_prometheus_is_reported_with_the_endpoint(tmp_path: Path) -> None:
    (tmp_path / "r.yml").write_text(RULES)
    proc = subprocess.run([sys.executable, "-m", "watchdog", "replay", "--rules",
                           str(tmp_path), "--prometheus-url", "http://127.0.0.1:9",
                           "--start", "0", "--end", "600"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert "http://127.0.0.1:9/api/v1/query_range" in proc.stderr


def test_replay_applies_the_action_interlocks(tmp_path: Path,
                                              backfilled_prometheus: object) -> None:
    """A flapping alert fires three times within the cooldown: one would_run, as live."""
    values = [0.2, 0.2, 0.01, 0.2, 0.01, 0.2, 0.2, 0.01] + [0.01] * 30 + [0.2, 0.2]
    prom = backfilled_prometheus([Series(  # type: ignore[operator]
        {"__name__": "error_ratio", "service": "checkout", "instance": "a"},
        [(60.0 * i, v) for i, v in enumerate(values)])])
    rules = RULES.replace("for: 2m", "for: 0s").replace(
        "  rollback-checkout:\n", "  rollback-checkout:\n    cooldown: 30m\n")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yml").write_text(rules)
    end = str(60 * (len(values) - 1))
    proc = subprocess.run([sys.executable, "-m", "watchdog", "replay", "--rules",
                           str(tmp_path / "rules"), "--prometheus-url", prom.url,
                           "--start", "0", "--end", end], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    fired = [d["ts"] for d in docs if d["state"] == "firing"]
    ran = [d["ts"] for d in docs if d["state"] == "would_run"]
    assert fired == [0.0, 180.0, 300.0, 2280.0]
    assert ran == [0.0, 2280.0]  # within 30m of the first run: held back by the cooldown
