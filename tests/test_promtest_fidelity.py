"""`watchdog test` prints what `promtool test rules` prints, on small files that exercise one
class of fidelity each (tests/data/fidelity): recording rules feeding alerts and expression
tests, ALERTS, YAML merge keys and Go-YAML scalars in rule and test files, staleness markers,
a test group without `interval`, rule evaluation errors, failure output (Go quoting, values
formatted like strconv.FormatFloat 'E', check times like model.Duration). Our +/- diff after a
failed alert check is the only difference allowed. Plus unit tests of the pieces: Go duration
spellings, the strict test-file reader.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from watchdog.promtest import (
    TestFileError,
    go_model_duration,
    go_time_duration,
    parse_metric,
    read_test_file,
)

DATA = Path(__file__).parent / "data" / "fidelity"
TEST_FILES = sorted(p for p in DATA.glob("*.yml") if "tests:" in p.read_text())


def _without_our_diff(text: str) -> str:
    out, in_diff = [], False
    for line in text.splitlines():
        if line == "        diff:":
            in_diff = True
            continue
        if in_diff and line.startswith("          "):
            continue
        in_diff = False
        out.append(line)
    return "\n".join(out)


@pytest.mark.prometheus
@pytest.mark.parametrize("name", [p.name for p in TEST_FILES])
def test_output_is_promtools(name: str, promtool_binary: str, prometheus_binary: str) -> None:
    oracle = subprocess.run([promtool_binary, "test", "rules", name], cwd=DATA,
                            capture_output=True, text=True, timeout=120)
    ours = subprocess.run([sys.executable, "-m", "watchdog", "test", name], cwd=DATA,
                          capture_output=True, text=True, timeout=300)
    assert ours.returncode == oracle.returncode, ours.stdout + ours.stderr
    assert ours.stdout == oracle.stdout
    assert _without_our_diff(ours.stderr) == _without_our_diff(oracle.stderr)


def test_fixtures_cover_passing_and_failing_files() -> None:
    # the comparison above must see both verdicts, or it could pass by printing nothing
    texts = [p.read_text() for p in TEST_FILES]
    assert any("Failing checks" in t for t in texts) and len(texts) >= 5


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (60, "1m"), (9 * 86400, "9d"), (14 * 86400, "2w"), (365 * 86400, "1y"),
    (106700 * 86400, "106700d"), (3 * 86400 + 1.5, "3d1s500ms"), (7 * 86400 + 60, "7d1m"),
])
def test_check_times_are_model_durations(seconds: float, text: str) -> None:
    assert go_model_duration(seconds) == text


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (0.5, "500ms"), (1, "1s"), (60, "1m0s"), (90.5, "1m30.5s"), (3600, "1h0m0s"),
    (90061, "25h1m1s"),
])
def test_rule_error_times_are_go_durations(seconds: float, text: str) -> None:
    assert go_time_duration(seconds) == text


def test_test_file_scalars_are_read_as_go_yaml_reads_them() -> None:
    tf = read_test_file("""
tests:
  - input_series:
      - series: up
        values: 0x720
      - series: down
        values:
    alert_rule_test:
      - eval_time: 0
        alertname: A
        exp_alerts:
          - exp_labels: {condition: true, n: 1.50, empty: }
    promql_expr_test:
      - expr: 1
        exp_samples: [{value: 1e3}, {labels: '{}', value: .5}]
""")
    g = tf.tests[0]
    assert [s.values for s in g.input_series] == ["0x720", ""]
    assert g.interval == 0.0 and tf.evaluation_interval == 0.0
    assert g.alert_tests[0].exp_alerts[0].labels == {"condition": "true", "n": "1.50",
                                                     "empty": ""}
    assert g.expr_tests[0].expr == "1"
    assert [s.value for s in g.expr_tests[0].exp_samples] == [1000.0, 0.5]


@pytest.mark.parametrize(("text", "message"), [
    ("tests:\n  - nme: x\n", "line 2: field nme not found in type main.testGroup"),
    ("rule_files: [a]\nextra: 1\n", "line 2: field extra not found in type main.unitTestFile"),
    ("tests:\n  - interval: 5\n", 'not a valid duration string: "5"'),
    ("tests: 3\n", "cannot unmarshal !!int `3` into []main.testGroup"),
    ("tests:\n  - promql_expr_test:\n      - exp_samples: [{value: 'x'}]\n",
     "cannot unmarshal !!str `x` into float64"),
])
def test_test_file_is_read_strictly(text: str, message: str) -> None:
    with pytest.raises(TestFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_test_file(text)


def test_expected_sample_labels_parse_like_parse_metric() -> None:
    assert parse_metric("") == {} and parse_metric("{}") == {}
    assert parse_metric('up{job="a"}') == {"__name__": "up", "job": "a"}
    with pytest.raises(ValueError):
        parse_metric("up{")
