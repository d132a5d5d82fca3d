"""PrometheusRule manifests as kube-prometheus ships them (tests/data/kube-prometheus, copied
unchanged; SOURCE.md names the commit) load as they are: `watchdog check` accepts them, finding
the rules promtool finds in their `spec`, and `watchdog run` evaluates them — kube-prometheus's
always-firing `Watchdog` alert fires.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import BackfilledPrometheus
from watchdog_process import READ_TOKEN, WatchdogProcess

from watchdog.model import AlertingRule
from watchdog.rulefile import parse_rule_file
from watchdog.series import Series

DATA = Path(__file__).parent / "data" / "kube-prometheus"
MANIFESTS = sorted(DATA.glob("*.yaml"))


def spec_rules(path: Path) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    assert doc["kind"] == "PrometheusRule"
    return [r for g in doc["spec"]["groups"] for r in g["rules"]]


def test_the_manifests_are_kube_prometheus_own() -> None:
    assert [p.name for p in MANIFESTS] == ["kubePrometheus-prometheusRule.yaml",
                                           "nodeExporter-prometheusRule.yaml"]
    assert "4d719f1dea8853540b3823ab1fbe6be74a9953b3" in (DATA / "SOURCE.md").read_text()


def test_watchdog_check_accepts_them_unchanged() -> None:
    p = subprocess.run([sys.executable, "-m", "watchdog", "check", str(DATA)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    for path in MANIFESTS:
        pf = parse_rule_file(path.read_text(), str(path))
        assert pf.ok and pf.model is not None, pf.errors
        alerts = [r.alert for g in pf.model.groups for r in g.rules
                  if isinstance(r, AlertingRule)]
        assert alerts == [r["alert"] for r in spec_rules(path) if "alert" in r]
        assert alerts


@pytest.mark.prometheus
def test_promtool_finds_the_same_rules(tmp_path: Path, promtool_binary: str) -> None:
    for path in MANIFESTS:
        plain = tmp_path / path.name
        plain.write_text(yaml.safe_dump({"groups": yaml.safe_load(path.read_text())["spec"]
                                         ["groups"]}))
        p = subprocess.run([promtool_binary, "check", "rules", str(plain)],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        assert f"SUCCESS: {len(spec_rules(path))} rules found" in p.stdout


@pytest.mark.prometheus
def test_watchdog_run_evaluates_them(tmp_path: Path,
                                     backfilled_prometheus: BackfilledPrometheus) -> None:
    prom = backfilled_prometheus([Series({"__name__": "up", "job": "x"}, [(0.0, 1.0)])])
    w = WatchdogProcess(tmp_path, env={"WATCHDOG_PROMETHEUS_URL": prom.url,
                                       "WATCHDOG_API_READ_TOKEN": READ_TOKEN,
                                       "WATCHDOG_EVALUATION_INTERVAL": "1s"})
    for path in MANIFESTS:
        shutil.copy(path, w.rules / path.name)
    w.start()
    try:
        w.wait_up()
        status = w.get_json("/api/v1/status")["data"]
        assert {f["path"].rsplit("/", 1)[-1]: (f["status"], f["errors"])
                for f in status["files"]} == {p.name: ("loaded", []) for p in MANIFESTS}
        groups = w.get_json("/api/v1/rules")["data"]["groups"]
        served = sorted(r["name"] for g in groups if g["file"] != "<built-in>"
                        for r in g["rules"])
        assert served == sorted(r["alert"] for p in MANIFESTS for r in spec_rules(p)
                                if "alert" in r)
        deadline = time.monotonic() + 30
        while True:
            alerts = w.get_json("/api/v1/alerts")["data"]["alerts"]
            firing = [a for a in alerts if a["labels"]["alertname"] == "Watchdog"
                      and a["state"] == "firing"]
            if firing:
                break
            assert time.monotonic() < deadline, (alerts, w.log()[-2000:])
            time.sleep(0.2)
        assert firing[0]["labels"] == {"alertname": "Watchdog", "severity": "none"}
        assert firing[0]["annotations"]["summary"].startswith("An alert that should always")
        w.alive()
    finally:
        w.stop()
