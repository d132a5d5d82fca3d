"""`watchdog notify-preview`: a rule author sees the Slack message before an incident."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from fakes_chat import validate_slack

from watchdog.notify.preview import run, sample_labels

RULE = """
groups:
  - name: checkout
    rules:
      - alert: CheckoutErrorRate
        expr: sum by (service) (rate(http_requests_total{service="checkout", code=~"5.."}[5m]))
        threshold: "> 0.05"
        for: 5m
        labels: {severity: critical, team: "{{ $labels.service }}-team"}
        annotations:
          summary: "checkout error rate {{ $value | humanizePercentage }}"
          runbook_url: https://runbooks.example/checkout
        actions: [rollback-checkout]
      - alert: Latency
        expr: histogram_quantile(0.95, rate(latency_bucket{job="api"}[5m]))
        severities: {warning: "> 0.3", critical: "> 0.5"}
        annotations: {summary: "p95 {{ $value }}s on {{ $labels.job }}"}
"""


def preview(tmp_path: Path, **kw: object) -> str:
    f = tmp_path / "r.yml"
    f.write_text(RULE)
    out = io.StringIO()
    assert run(f, out=out, now=1_800_000_000.0, external_url="http://wd.example",
               **kw) == 0  # type: ignore[arg-type]
    return out.getvalue()


def test_sample_labels_come_from_equality_matchers() -> None:
    assert sample_labels('x{service="checkout", code=~"5..", env!="dev"}') == {
        "service": "checkout"}


def test_terminal_preview_shows_what_slack_would(tmp_path: Path) -> None:
    text = preview(tmp_path, color="never")
    assert "🔴 FIRING · CheckoutErrorRate" in text
    assert "checkout error rate 7.5%" in text  # just past the threshold, templated
    assert "0.075 (threshold > 0.05)" in text
    assert "checkout-team" in text  # label templates expanded
    assert "rollback-checkout started" in text
    assert "[ Graph ]" in text and "[ Runbook ]" in text
    assert "✅ RESOLVED · CheckoutErrorRate" in text and "23m" in text
    assert "p95 0.75s on api" in text  # the highest tier, with its own labels
    assert "\x1b[" not in text


def test_color_and_json_and_filters(tmp_path: Path) -> None:
    assert "\x1b[38;2;208;0;0m▌" in preview(tmp_path, color="always", rule="CheckoutErrorRate")
    lines = preview(tmp_path, fmt="json", rule="Latency", state="firing").splitlines()
    [body] = [json.loads(x) for x in lines]
    assert validate_slack(body) == []
    assert body["text"].startswith("🔴 FIRING · Latency")


def test_labels_and_value_override(tmp_path: Path) -> None:
    text = preview(tmp_path, color="never", rule="CheckoutErrorRate", state="firing",
                   labels=["service=payments"], value=0.5)
    assert "payments" in text and "50%" in text


def test_bad_file_and_unknown_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "bad.yml"
    f.write_text("groups:\n  - name: g\n    rules:\n      - alert: X\n        expr: ''\n")
    assert run(f) == 1
    assert "bad.yml:5:" in capsys.readouterr().err
    g = tmp_path / "r.yml"
    g.write_text(RULE)
    assert run(g, rule="Nope") == 1
    assert "no alerting rule named 'Nope'" in capsys.readouterr().err


TIERED = """
groups:
  - name: checkout
    rules:
      - alert: CheckoutErrorRate
        expr: error_ratio{service="checkout"}
        severities: {critical: "> 0.10", warning: "> 0.02"}
        annotations: {summary: "error rate {{ $value | humanizePercentage }}"}
        actions: {warning: [disable-newest-flag], critical: [full-rollback]}
        on_resolved: [leave-emergency-mode]
      - alert: TryingItOut
        expr: error_ratio{service="cart"}
        threshold: "> 0.5"
        dry_run: true
        actions: [rollback-cart]
"""


def preview_of(tmp_path: Path, text: str, **kw: object) -> str:
    f = tmp_path / "t.yml"
    f.write_text(text)
    out = io.StringIO()
    assert run(f, out=out, now=1_800_000_000.0, color="never", **kw) == 0  # type: ignore[arg-type]
    return out.getvalue()


def test_preview_shows_tier_actions_lowest_first_and_recovery_on_resolved(tmp_path: Path) -> None:
    text = preview_of(tmp_path, TIERED, rule="CheckoutErrorRate")
    firing, resolved = text.split("— resolved")
    # the sample is at the critical tier, reached through warning: both tiers' actions ran
    assert firing.index("disable-newest-flag started: warning tier") < firing.index(
        "full-rollback started: critical tier")
    assert "leave-emergency-mode" not in firing
    assert "leave-emergency-mode started: on_resolved" in resolved
    assert "full-rollback" not in resolved


def test_preview_of_a_dry_run_rule_says_would_run_not_started(tmp_path: Path) -> None:
    """It used to draw a dry-run rule's action as "started"."""
    text = preview_of(tmp_path, TIERED, rule="TryingItOut", state="firing")
    assert "rollback-cart would run: dry run" in text and "started" not in text
    everything = preview_of(tmp_path, TIERED, rule="CheckoutErrorRate", dry_run=True)
    assert "started" not in everything and "full-rollback would run" in everything


def test_preview_while_paused_says_so_in_every_message(tmp_path: Path) -> None:
    text = preview_of(tmp_path, TIERED, paused_for=7200.0, paused_reason="db migration",
                      paused_by="alice")
    notice = "actions paused until 2027-01-15 10:00 UTC by alice (db migration)"
    assert text.count(f"⏸ {notice}") == 4  # firing and resolved of both rules
    assert "started" not in text
    bodies = preview_of(tmp_path, TIERED, fmt="json", paused_for=7200.0,
                        paused_reason="db migration", paused_by="alice")
    assert f"full-rollback would run: critical tier; {notice}" in bodies
    for line in bodies.splitlines():
        assert validate_slack(json.loads(line)) == []
