"""What an operator sees for settings that cannot mean what they wrote: a `WATCHDOG_*` variable or
`--config` key that no setting reads is warned about in one line (with the closest setting's
name), and a bad `EXTERNAL_LABELS` names the variable and the expected form.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from watchdog_process import WatchdogProcess

from watchdog.daemon import StartupError, load_settings
from watchdog.settings import Settings, unknown_settings

KNOWN = Settings.model_fields


def test_a_typo_gets_the_closest_setting() -> None:
    assert unknown_settings(["WATCHDOG_EVALUATON_INTERVAL"], KNOWN, "environment") == [
        "environment: WATCHDOG_EVALUATON_INTERVAL is not a setting (did you mean "
        "WATCHDOG_EVALUATION_INTERVAL?); ignored"]
    assert unknown_settings(["WATCHDOG_PROMETHEUS_TIMOUT"], KNOWN, "environment")[0].endswith(
        "(did you mean WATCHDOG_PROMETHEUS_TIMEOUT?); ignored")
    assert unknown_settings(["WATCHDOG_COLOUR"], KNOWN, "environment") == [
        "environment: WATCHDOG_COLOUR is not a setting; ignored"]


def test_what_is_ours_but_no_setting_is_not_warned_about() -> None:
    ours = ["WATCHDOG_PROMETHEUS_URL", "watchdog_log_level", "WATCHDOG_EXTERNAL_LABELS__ENV",
            "WATCHDOG_SECRETS_DIR", "WATCHDOG_URL", "WATCHDOG_TEST_POSTGRES_URL",
            "WATCHDOG_ALERT_NAME", "WATCHDOG_LABEL_service", "WATCHDOG_RUN_ID"]
    assert unknown_settings(ours, KNOWN, "environment") == []


@given(st.sampled_from(sorted(KNOWN)))
def test_every_setting_is_known(name: str) -> None:
    assert unknown_settings([f"WATCHDOG_{name.upper()}"], KNOWN, "environment") == []


def test_environment_and_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "watchdog.yml"
    cfg.write_text("prometheus_url: http://p:9090\nWATCHDOG_DRY_RUN: true\nrule_dir: /rules\n")
    lines = Settings.unknown(cfg, environ={"WATCHDOG_DRYRUN": "1", "HOME": "/root"})
    assert lines == [
        "environment: WATCHDOG_DRYRUN is not a setting (did you mean WATCHDOG_DRY_RUN?); "
        "ignored",
        f"{cfg}: RULE_DIR is not a setting (did you mean RULES_DIR?); ignored"]


@pytest.mark.parametrize(("value", "expected"), [
    ("env=prod", "invalid setting WATCHDOG_EXTERNAL_LABELS (env): not valid JSON; expected "
                 'e.g. {"cluster": "eu-1", "env": "prod"}'),
    ('{"bad label": "x"}', "'bad label' is not a label name"),
    ('{"env": 1}', "the value of 'env' must be a string"),
    ('["env"]', "WATCHDOG_EXTERNAL_LABELS"),
])
def test_a_bad_external_labels_says_what_is_expected(
        monkeypatch: pytest.MonkeyPatch, value: str, expected: str) -> None:
    monkeypatch.setenv("WATCHDOG_EXTERNAL_LABELS", value)
    with pytest.raises(StartupError) as e:
        load_settings(None)
    assert expected in str(e.value)
    assert "--config None" not in str(e.value)  # the message named a file that was not given


def test_external_labels_from_json_or_one_variable_per_label(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_EXTERNAL_LABELS", '{"cluster": "eu-1"}')
    assert load_settings(None).external_labels == {"cluster": "eu-1"}
    monkeypatch.delenv("WATCHDOG_EXTERNAL_LABELS")
    monkeypatch.setenv("WATCHDOG_EXTERNAL_LABELS__env", "prod")
    assert load_settings(None).external_labels == {"env": "prod"}


def test_watchdog_run_warns_once_per_unknown_variable(tmp_path: Path) -> None:
    w = WatchdogProcess(tmp_path, env={"WATCHDOG_EVALUATON_INTERVAL": "5s"})
    w.start()
    try:
        w.wait_up()
        deadline = time.monotonic() + 10
        while "WATCHDOG_EVALUATON_INTERVAL" not in w.log():
            assert time.monotonic() < deadline, w.log()
            time.sleep(0.1)
        lines = [ln for ln in w.log().splitlines() if "WATCHDOG_EVALUATON_INTERVAL" in ln]
        assert len(lines) == 1 and "did you mean WATCHDOG_EVALUATION_INTERVAL?" in lines[0]
        assert '"level": "warning"' in lines[0]
    finally:
        w.stop()
