"""The alerts on the watchdog itself (deploy/base/prometheusrule.yaml, a PrometheusRule for the
Prometheus that scrapes it): valid for promtool and for `watchdog check`, and each alert fires
when it should and not otherwise (tests/data/selfmon/watchdog-alerts.test.yml, run by promtool
and by `watchdog test`); every metric they read is one the watchdog exports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
MANIFEST = ROOT / "deploy" / "base" / "prometheusrule.yaml"
UNIT_TESTS = Path(__file__).parent / "data" / "selfmon" / "watchdog-alerts.test.yml"
# Registered by the HA work (leases on PostgreSQL), agreed by name before it lands.
NOT_YET_REGISTERED = {"watchdog_lease_lost_total"}


def spec_as_rule_file(directory: Path) -> Path:
    doc = yaml.safe_load(MANIFEST.read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    out = directory / "watchdog-alerts.rules.yml"
    out.write_text(yaml.safe_dump({"groups": doc["spec"]["groups"]}, sort_keys=False))
    shutil.copy(UNIT_TESTS, directory / UNIT_TESTS.name)
    return out


def alert_names() -> list[str]:
    doc = yaml.safe_load(MANIFEST.read_text())
    return [r["alert"] for g in doc["spec"]["groups"] for r in g["rules"]]


def test_it_covers_what_an_operator_must_hear_about() -> None:
    assert alert_names() == [
        "WatchdogDown", "WatchdogDatasourceDown", "WatchdogRuleEvaluationFailures",
        "WatchdogMissedIterations", "WatchdogRuleFilesRejected", "WatchdogNotificationsFailing",
        "WatchdogNotificationBacklog", "WatchdogLeaseLost"]
    tested = set(re.findall(r"alertname: (\w+)", UNIT_TESTS.read_text()))
    assert tested == set(alert_names())


def test_watchdog_check_accepts_the_manifest() -> None:
    p = subprocess.run([sys.executable, "-m", "watchdog", "check", str(MANIFEST)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.prometheus
def test_promtool_checks_and_unit_tests_pass(tmp_path: Path, promtool_binary: str) -> None:
    rules = spec_as_rule_file(tmp_path)
    p = subprocess.run([promtool_binary, "check", "rules", str(rules)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "SUCCESS: 8 rules found" in p.stdout, p.stdout + p.stderr
    p = subprocess.run([promtool_binary, "test", "rules", UNIT_TESTS.name], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    # the same tests through the watchdog's own runner agree
    p = subprocess.run([sys.executable, "-m", "watchdog", "test", UNIT_TESTS.name],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr


def test_every_metric_it_reads_is_exported() -> None:
    used = set(re.findall(r"\bwatchdog_[a-z_]+", " ".join(
        r["expr"] for g in yaml.safe_load(MANIFEST.read_text())["spec"]["groups"]
        for r in g["rules"])))
    registered: set[str] = set()
    for f in (ROOT / "watchdog").rglob("*.py"):
        for name in re.findall(r"[\"'](watchdog_[a-z0-9_]+)[\"']", f.read_text()):
            registered |= {name, name + "_total"}
    assert used - registered <= NOT_YET_REGISTERED, used - registered
