"""`watchdog test` against `promtool test rules`: same verdicts on the same files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data" / "promtest"

pytestmark = [pytest.mark.prometheus]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "watchdog", *args], capture_output=True,
                          text=True, timeout=300)


def test_documentation_example_passes_in_both(promtool_binary: str, prometheus_binary: str
                                              ) -> None:
    oracle = subprocess.run([promtool_binary, "test", "rules", str(DATA / "test.yml")],
                            capture_output=True, text=True)
    assert oracle.returncode == 0, oracle.stdout + oracle.stderr
    ours = run("test", str(DATA / "test.yml"))
    assert ours.returncode == 0, ours.stdout + ours.stderr
    assert ours.stdout.splitlines()[:2] == [f"Unit Testing:  {DATA / 'test.yml'}", "  SUCCESS"]


def test_wrong_expectations_fail_in_both_with_a_diff(promtool_binary: str,
                                                     prometheus_binary: str) -> None:
    f = DATA / "failing_test.yml"
    oracle = subprocess.run([promtool_binary, "test", "rules", str(f)], capture_output=True,
                            text=True)
    ours = run("test", str(f))
    assert oracle.returncode == 1 and ours.returncode == 1, ours.stdout
    out = ours.stderr
    assert "FAILED:" in out
    # the annotation mismatch at 10m
    assert "alertname: InstanceDown, time: 10m" in out
    assert '- {alertname="InstanceDown", instance="localhost:9090", job="prometheus", ' \
           'severity="page"} {description="localhost:9090 of job prometheus has been down ' \
           'for more than 5 minutes.", summary="Instance localhost:9090 is down"}' in out
    assert '+ {alertname="InstanceDown", instance="localhost:9090", job="prometheus", ' \
           'severity="page"}' in out
    # the alert that fires at 9m although the test expects nothing
    assert "alertname: MyAlert, time: 9m" in out
    assert 'got:[\n            0:\n              Labels:{alertname="MyAlert", job="node", ' \
           'severity="page"}' in out
    # promtool reports the same two failures
    assert oracle.stderr.count("alertname:") == out.count("alertname:") == 2


def test_missing_rule_file_is_a_warning_like_promtool(tmp_path: Path, prometheus_binary: str,
                                                      promtool_binary: str) -> None:
    # promtool warns and runs the tests without those rules: an expected alert then fails
    f = tmp_path / "t.yml"
    f.write_text("rule_files: [nope.yml]\ntests:\n  - alert_rule_test:\n"
                 "      - {alertname: A, exp_alerts: [{}]}\n")
    oracle = subprocess.run([promtool_binary, "test", "rules", str(f)], capture_output=True,
                            text=True)
    ours = run("test", str(f))
    warning = f"  WARNING: no file match pattern {tmp_path / 'nope.yml'}"
    assert oracle.returncode == ours.returncode == 1
    assert warning in oracle.stderr and warning in ours.stderr
    assert "alertname: A, time: 0s" in ours.stderr


def test_label_values_are_quoted_as_promtool_quotes_them(tmp_path: Path, promtool_binary: str,
                                                         prometheus_binary: str) -> None:
    # Go's strconv.Quote: \a, \u00ad, \u2028, \u200b escaped; tabs escaped; emoji kept as is
    (tmp_path / "q.yml").write_text(
        "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: vector(1)\n    labels:\n"
        '      x: "a\\ab\\u00adc\\u2028d\\x7fe\\tf\\U0001F600g\\u200bh\\"i\\\\j"\n',
        encoding="utf-8")
    f = tmp_path / "t.yml"
    f.write_text("rule_files: [q.yml]\nevaluation_interval: 1m\ntests:\n- interval: 1m\n"
                 "  input_series: []\n  alert_rule_test:\n  - eval_time: 0m\n    alertname: A\n"
                 "    exp_alerts: []\n", encoding="utf-8")
    oracle = subprocess.run([promtool_binary, "test", "rules", str(f)], capture_output=True,
                            text=True)
    ours = run("test", str(f))
    assert oracle.returncode == ours.returncode == 1
    want = [line.strip() for line in oracle.stderr.splitlines() if "Labels:" in line]
    got = [line.strip() for line in ours.stderr.splitlines() if "Labels:" in line]
    assert want == ['Labels:{alertname="A", x="a\\ab\\u00adc\\u2028d\\x7fe\\tf\U0001F600g'
                    '\\u200bh\\"i\\\\j"}']
    assert got == want
