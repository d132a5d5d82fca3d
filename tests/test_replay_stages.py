"""`watchdog replay` over a backfilled bad deploy shows the staged rollback in its would_run
lines, in order and at the minute each would have run: the warning tier's gradual rollback (its
first flag; its `wait` then cut short), the critical tier's full rollback step by step, "did it
help?" `verify_for` later (not helped: a page and the next action), and the recovery action when
the incident resolves. A real Prometheus holds the history (promtool backfill)."""

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
      - alert: CheckoutErrorRate
        expr: error_ratio{service="checkout"}
        severities: {warning: "> 0.02", critical: "> 0.10"}
        for: 2m
        actions:
          warning: [gradual-rollback]
          critical: [full-rollback]
        on_resolved: [leave-emergency-mode]
actions:
  gradual-rollback:
    steps:
      - webhook: {url: "http://flags.invalid/newest", method: PATCH}
      - wait: {for: 30m, until: resolved}
      - webhook: {url: "http://flags.invalid/next", method: PATCH}
  full-rollback:
    lock: "deploy/{{ $labels.service }}"
    verify_for: 10m
    on_not_helped: {page: true, action: emergency-rollback}
    steps:
      - webhook: {url: "http://flags.invalid/release", method: PATCH}
      - kubernetes: {rollout_undo: {namespace: prod, deployment: checkout}}
  emergency-rollback:
    lock: "deploy/{{ $labels.service }}"
    steps:
      - command: {argv: ["./emergency-rollback.sh"]}
  leave-emergency-mode:
    steps:
      - webhook: {url: "http://flags.invalid/emergency", method: DELETE}
"""


def test_replay_shows_the_staged_sequence_in_order(tmp_path: Path,
                                                   backfilled_prometheus: object) -> None:
    # a bad deploy at minute 10 (5% errors), worse at minute 20 (30%), fixed at minute 60
    values = [0.01] * 10 + [0.05] * 10 + [0.3] * 40 + [0.01] * 30
    prom = backfilled_prometheus([Series(  # type: ignore[operator]
        {"__name__": "error_ratio", "service": "checkout"},
        [(60.0 * i, v) for i, v in enumerate(values)])])
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yml").write_text(RULES)
    proc = subprocess.run([sys.executable, "-m", "watchdog", "replay", "--rules",
                           str(tmp_path / "rules"), "--prometheus-url", prom.url, "--start", "0",
                           "--end", str(60 * (len(values) - 1))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    states = [(d["ts"] / 60, d["state"]) for d in docs if "action" not in d]
    assert states == [(10, "pending"), (12, "firing"), (60, "resolved")]
    acted = [(d["ts"] / 60, d["state"], d["action"], d.get("step"), d.get("tier"),
              d.get("trigger")) for d in docs if "action" in d]
    assert acted == [
        (12, "would_run", "gradual-rollback", None, "warning", None),
        (12, "would_run", "gradual-rollback", "1/3 webhook", "warning", None),
        # critical at minute 20: the full rollback, also after the warning tier's ran; the
        # gradual one's 30-minute wait ends there, its next flag is never reached
        (20, "would_run", "full-rollback", None, "critical", None),
        (20, "would_run", "full-rollback", "1/2 webhook", "critical", None),
        (20, "would_run", "full-rollback", "2/2 kubernetes", "critical", None),
        # still firing 10 minutes later: not helped -> page, and the next action
        (30, "would_page", "full-rollback", None, None, None),
        (30, "would_run", "emergency-rollback", None, None, "escalation"),
        # resolved: the recovery action, once
        (60, "would_run", "leave-emergency-mode", None, None, "resolved"),
    ]
    labels = {"alertname": "CheckoutErrorRate", "service": "checkout", "severity": "critical"}
    assert all(d["labels"] == labels for d in docs if d.get("action") == "full-rollback")
    esc = next(d for d in docs if d.get("trigger") == "escalation")
    assert esc["after"] == "full-rollback not helped"
