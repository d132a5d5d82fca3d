"""Where settings come from, pinned as pydantic-settings read them before `watchdog.settings`
did it itself: the precedence of init arguments, `--config`, environment, secrets directory and
defaults; names in any case; `WATCHDOG_EXTERNAL_LABELS__KEY`; JSON for a dict; how an environment
text becomes a bool, an int, a path, an optional string; the secrets directory's file names,
white space, symlinks and missing directory; and the error lines an operator reads.

Every expected value here is what the pydantic-settings implementation gave (checked against it
case by case when it was replaced), except where a test says it changed and why.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from watchdog.daemon import StartupError, load_settings, run_daemon
from watchdog.schema import SecretStr, ValidationError
from watchdog.settings import Settings, SettingsError, gather


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No WATCHDOG_* variable from the machine running the tests."""
    for name in list(os.environ):
        if name.upper().startswith("WATCHDOG_"):
            monkeypatch.delenv(name)
    yield monkeypatch


# ---- precedence ------------------------------------------------------------------------------

def test_precedence_init_config_environment_secrets_default(
        env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "WATCHDOG_PROMETHEUS_URL").write_text("http://secret:9090\n")
    cfg = tmp_path / "watchdog.yml"
    cfg.write_text("prometheus_url: http://config:9090\n")
    env.setenv("WATCHDOG_SECRETS_DIR", str(secrets))
    env.setenv("WATCHDOG_PROMETHEUS_URL", "http://env:9090")

    assert Settings.load(cfg, prometheus_url="http://init:9090").prometheus_url == \
        "http://init:9090"
    assert Settings.load(cfg).prometheus_url == "http://config:9090"
    assert Settings.load(None).prometheus_url == "http://env:9090"
    env.delenv("WATCHDOG_PROMETHEUS_URL")
    assert Settings.load(None).prometheus_url == "http://secret:9090"
    env.delenv("WATCHDOG_SECRETS_DIR")
    assert Settings.load(None).prometheus_url == "http://localhost:9090"


def test_constructing_settings_reads_every_source_too(env: pytest.MonkeyPatch) -> None:
    env.setenv("WATCHDOG_PROMETHEUS_URL", "http://env:9090")
    s = Settings(dry_run=True)
    assert s.prometheus_url == "http://env:9090" and s.dry_run is True
    # ...an init argument of None too: tests turn off what the environment configures
    env.setenv("WATCHDOG_SENTRY_DSN", "http://key@sentry/1")
    assert Settings(sentry_dsn=None).sentry_dsn is None


def test_init_arguments_in_any_case_unknown_ones_ignored(env: pytest.MonkeyPatch) -> None:
    s = Settings.load(None, DRY_RUN="yes", no_such_setting=1)
    assert s.dry_run is True


def test_a_dict_setting_merges_key_by_key_across_sources(env: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    cfg = tmp_path / "watchdog.yml"
    cfg.write_text("external_labels: {cluster: from-config, region: eu}\n")
    env.setenv("WATCHDOG_EXTERNAL_LABELS__CLUSTER", "from-env")
    env.setenv("WATCHDOG_EXTERNAL_LABELS__ENV", "prod")
    s = Settings.load(cfg, external_labels={"region": "us"})
    assert s.external_labels == {"cluster": "from-config", "env": "prod", "region": "us"}


def test_config_keys_in_any_form(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "watchdog.yml"
    cfg.write_text("PROMETHEUS_URL: http://a:1\nWatchdog_Dry_Run: yes\n"
                   "watchdog_external_labels: {env: prod}\nmqtt_url:\n")
    env.setenv("WATCHDOG_MQTT_URL", "mqtt://broker")
    s = Settings.load(cfg)
    assert (s.prometheus_url, s.dry_run, s.external_labels) == ("http://a:1", True,
                                                                {"env": "prod"})
    assert s.mqtt_url is None  # an empty key in the file wins over the environment


def test_a_config_value_of_the_wrong_type(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # pydantic's wording (watchdog.schema's lacked "for <class 'pathlib.Path'>" before)
    cfg = tmp_path / "watchdog.yml"
    cfg.write_text("rules_dir: 5\n")
    env.chdir(tmp_path)
    with pytest.raises(StartupError) as e:
        load_settings(cfg)
    assert str(e.value) == ("invalid setting WATCHDOG_RULES_DIR: Input is not a valid path for "
                            "<class 'pathlib.Path'> (got 5)")


# ---- the environment -------------------------------------------------------------------------

@pytest.mark.parametrize(("variable", "text", "attr", "expected"), [
    ("watchdog_dry_run", "yes", "dry_run", True),  # names in any case
    ("WATCHDOG_DRY_RUN", "TRUE", "dry_run", True),
    ("WATCHDOG_DRY_RUN", "off", "dry_run", False),
    ("WATCHDOG_DRY_RUN", "0", "dry_run", False),
    ("WATCHDOG_EVALUATION_CONCURRENCY", " 8 ", "evaluation_concurrency", 8),
    ("WATCHDOG_EVALUATION_CONCURRENCY", "8.0", "evaluation_concurrency", 8),
    ("WATCHDOG_EVALUATION_CONCURRENCY", "1_000", "evaluation_concurrency", 1000),
    ("WATCHDOG_PROMETHEUS_TIMEOUT", "2.5", "prometheus_timeout", 2.5),
    ("WATCHDOG_PROMETHEUS_TIMEOUT", "1m", "prometheus_timeout", 60.0),
    ("WATCHDOG_RULES_DIR", "~/rules", "rules_dir", Path("~/rules")),  # not expanded
    ("WATCHDOG_RULES_DIR", "", "rules_dir", Path(".")),
    ("WATCHDOG_STATE_URL", "", "state_url", ""),  # empty is not unset...
    ("WATCHDOG_API_TOKEN", "", "api_token", SecretStr("")),
    ("WATCHDOG_LOG_LEVEL", "debug", "log_level", "DEBUG"),
    ("WATCHDOG_EXTERNAL_LABELS", "{}", "external_labels", {}),
    ("WATCHDOG_EXTERNAL_LABELS", "null", "external_labels", {}),  # JSON null: as if unset
    ("WATCHDOG_EXTERNAL_LABELS__Env", "", "external_labels", {"env": ""}),
])
def test_environment_texts(env: pytest.MonkeyPatch, variable: str, text: str, attr: str,
                           expected: Any) -> None:
    env.setenv(variable, text)
    assert getattr(Settings.load(None), attr) == expected


def test_an_empty_state_url_means_the_default_database(env: pytest.MonkeyPatch) -> None:
    env.setenv("WATCHDOG_STATE_URL", "")
    assert Settings.load(None).state_path == "sqlite:///data/watchdog.db"


@pytest.mark.parametrize(("variable", "text", "line"), [
    # refused as pydantic refused them (watchdog.schema took " true" and "1e3" before)
    ("WATCHDOG_DRY_RUN", " true", "invalid setting WATCHDOG_DRY_RUN: Input should be a valid "
     "boolean, unable to interpret input (got ' true')"),
    ("WATCHDOG_DRY_RUN", "", "invalid setting WATCHDOG_DRY_RUN: Input should be a valid "
     "boolean, unable to interpret input (got '')"),
    ("WATCHDOG_EVALUATION_CONCURRENCY", "1e3", "invalid setting WATCHDOG_EVALUATION_CONCURRENCY: "
     "Input should be a valid integer, unable to parse string as an integer (got '1e3')"),
    ("WATCHDOG_EVALUATION_CONCURRENCY", "٣", "invalid setting WATCHDOG_EVALUATION_CONCURRENCY: "
     "Input should be a valid integer, unable to parse string as an integer (got '٣')"),
    # the value as given, and the bound as pydantic printed it (watchdog.schema said "(got 0)"
    # and "3600.0" before)
    ("WATCHDOG_EVALUATION_CONCURRENCY", "0", "invalid setting WATCHDOG_EVALUATION_CONCURRENCY: "
     "Input should be greater than or equal to 1 (got '0')"),
    ("WATCHDOG_LEASE_TTL", "2h", "invalid setting WATCHDOG_LEASE_TTL: Input should be less than "
     "or equal to 3600 (got 7200.0)"),
    ("WATCHDOG_LOG_FORMAT", "JSON", "invalid setting WATCHDOG_LOG_FORMAT: Input should be "
     "'json' or 'console' (got 'JSON')"),
    ("WATCHDOG_PROMETHEUS_TIMEOUT", "", "invalid setting WATCHDOG_PROMETHEUS_TIMEOUT: "),
    ("WATCHDOG_EXTERNAL_LABELS__A__B", "x", "invalid setting WATCHDOG_EXTERNAL_LABELS: the value "
     "of 'a' must be a string, got dict: quote it"),
    ("WATCHDOG_EXTERNAL_LABELS", "", "invalid setting WATCHDOG_EXTERNAL_LABELS (env): not valid "
     'JSON; expected e.g. {"cluster": "eu-1", "env": "prod"}, or one label per variable: '
     "WATCHDOG_EXTERNAL_LABELS__CLUSTER=eu-1"),
])
def test_environment_texts_refused(env: pytest.MonkeyPatch, variable: str, text: str,
                                   line: str) -> None:
    env.setenv(variable, text)
    with pytest.raises(StartupError) as e:
        load_settings(None)
    assert str(e.value).startswith(line), str(e.value)


def test_every_invalid_setting_in_one_message(env: pytest.MonkeyPatch) -> None:
    env.setenv("WATCHDOG_EVALUATION_INTERVAL", "soon")
    env.setenv("WATCHDOG_LOG_FORMAT", "xml")
    env.setenv("WATCHDOG_API_TOKEN", "s3cret")
    env.setenv("WATCHDOG_DATASOURCE_DOWN_AFTER", "0")
    with pytest.raises(StartupError) as e:
        load_settings(None)
    lines = str(e.value).splitlines()
    assert [ln.split(":", 1)[0] for ln in lines] == [
        "invalid setting WATCHDOG_EVALUATION_INTERVAL", "invalid setting WATCHDOG_LOG_FORMAT",
        "invalid setting WATCHDOG_DATASOURCE_DOWN_AFTER"]
    assert "s3cret" not in str(e.value)


def test_nested_variables_win_over_the_json_they_complete(env: pytest.MonkeyPatch) -> None:
    env.setenv("WATCHDOG_EXTERNAL_LABELS", '{"env": "dev", "cluster": "eu-1"}')
    env.setenv("WATCHDOG_EXTERNAL_LABELS__ENV", "prod")
    assert Settings.load(None).external_labels == {"env": "prod", "cluster": "eu-1"}
    # a JSON that is no object cannot be completed: it is validated as given
    env.setenv("WATCHDOG_EXTERNAL_LABELS", '["env"]')
    with pytest.raises(ValidationError) as e:
        Settings.load(None)
    assert e.value.errors()[0]["type"] == "dict_type"


def test_gather_reads_the_environment_it_is_given(tmp_path: Path) -> None:
    got = gather(Settings.model_fields, None, {},
                 {"watchdog_Dry_Run": "on", "WATCHDOG_EXTERNAL_LABELS__Team": "db",
                  "OTHER": "x"})
    assert got["dry_run"] == "on" and got["external_labels"] == {"team": "db"}
    assert got["prometheus_url"] == "http://localhost:9090"  # defaults are validated too


# ---- the secrets directory -------------------------------------------------------------------

@pytest.fixture
def secrets(env: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    d = tmp_path / "secrets"
    d.mkdir()
    env.setenv("WATCHDOG_SECRETS_DIR", str(d))  # after import: read when loading
    return d


def token(s: Settings) -> str | None:
    return None if s.api_token is None else s.api_token.get_secret_value()


def test_secret_files_are_named_as_the_variable_in_any_case(secrets: Path) -> None:
    (secrets / "WATCHDOG_API_TOKEN").write_text("  tok-1\n\n")
    (secrets / "watchdog_api_read_token").write_text("tok-2\n")
    (secrets / "sentry_dsn").write_text("http://k@s/1\n")  # the field's bare name: not read
    (secrets / "Watchdog_External_Labels").write_text('{"env": "prod"}\n')
    s = Settings.load(None)
    assert token(s) == "tok-1"  # surrounding white space stripped
    assert s.api_read_token == SecretStr("tok-2")
    assert s.sentry_dsn is None
    assert s.external_labels == {"env": "prod"}


def test_the_environment_wins_over_a_secret_file(secrets: Path, env: pytest.MonkeyPatch) -> None:
    (secrets / "watchdog_api_token").write_text("from-file")
    (secrets / "watchdog_external_labels").write_text('{"a": "file", "b": "file"}')
    env.setenv("WATCHDOG_API_TOKEN", "from-env")
    env.setenv("WATCHDOG_EXTERNAL_LABELS__A", "env")
    s = Settings.load(None)
    assert token(s) == "from-env"
    assert s.external_labels == {"a": "env", "b": "file"}


def test_kubernetes_secret_volume_symlinks_are_followed(secrets: Path) -> None:
    (secrets / "..data").mkdir()
    (secrets / "..data" / "watchdog_api_token").write_text("k8s\n")
    (secrets / "watchdog_api_token").symlink_to("..data/watchdog_api_token")
    assert token(Settings.load(None)) == "k8s"


def test_what_is_not_a_secret_file_inside_is_warned_about_and_skipped(
        secrets: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("not-meant")
    (secrets / "watchdog_api_token").symlink_to(elsewhere)
    (secrets / "watchdog_sentry_dsn").mkdir()
    with pytest.warns(UserWarning) as caught:
        s = Settings.load(None)
    assert s.api_token is None and s.sentry_dsn is None
    assert sorted(str(w.message) for w in caught) == [
        f'attempted to load secret file "{secrets / "watchdog_api_token"}" but it resolves '
        f'outside of "{secrets}".',
        f'attempted to load secret file "{secrets / "watchdog_sentry_dsn"}" but found a '
        "directory instead."]


def test_a_missing_secrets_directory_is_warned_about(env: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    # a Secret volume not mounted (yet) must not stop the start
    env.setenv("WATCHDOG_SECRETS_DIR", str(tmp_path / "nowhere"))
    with pytest.warns(UserWarning, match="does not exist"):
        assert Settings.load(None).api_token is None


def test_a_secrets_directory_that_is_a_file_stops_the_start(
        env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # changed: pydantic-settings said "secrets_dir must reference a directory, not a file"
    (tmp_path / "rules").mkdir()
    env.setenv("WATCHDOG_RULES_DIR", str(tmp_path / "rules"))
    env.setenv("WATCHDOG_SECRETS_DIR", str(tmp_path / "rules" / "x"))
    (tmp_path / "rules" / "x").write_text("s3cret")
    assert run_daemon(None) == 2
    err = capsys.readouterr().err
    assert err == (f"watchdog: invalid setting WATCHDOG_SECRETS_DIR: {tmp_path / 'rules' / 'x'} "
                   "is not a directory\n")


def test_an_undecodable_secret_file_names_the_variable_never_the_value(secrets: Path) -> None:
    (secrets / "watchdog_external_labels").write_text("env=s3cret\n")
    with pytest.raises(StartupError) as e:
        load_settings(None)
    assert str(e.value) == (
        "invalid setting WATCHDOG_EXTERNAL_LABELS (secrets dir): not valid JSON; expected e.g. "
        '{"cluster": "eu-1", "env": "prod"}, or one label per variable: '
        "WATCHDOG_EXTERNAL_LABELS__CLUSTER=eu-1")


def test_an_unreadable_secret_file_names_the_variable(secrets: Path) -> None:
    # pydantic-settings called it "not valid JSON"; it is a file that is not text
    (secrets / "watchdog_api_token").write_bytes(b"\xff\xfe s3cret")
    with pytest.raises(SettingsError) as e:
        Settings.load(None)
    assert str(e.value) == (f"invalid setting WATCHDOG_API_TOKEN (secrets dir): "
                            f"{secrets / 'watchdog_api_token'} is not UTF-8 text")


# ---- names that no setting reads -------------------------------------------------------------

def test_a_nested_variable_counts_only_for_a_dict_setting(tmp_path: Path) -> None:
    cfg = tmp_path / "watchdog.yml"
    cfg.write_text("external_labels__env: prod\n")
    lines = Settings.unknown(cfg, environ={"WATCHDOG_EXTERNAL_LABELS__ENV": "prod",
                                           "WATCHDOG_DRY_RUN__X": "1"})
    # neither was read (a file nests a dict; DRY_RUN has no keys): both silently ignored before
    assert lines == [
        "environment: WATCHDOG_DRY_RUN__X is not a setting (did you mean WATCHDOG_DRY_RUN?); "
        "ignored",
        f"{cfg}: EXTERNAL_LABELS__ENV is not a setting (did you mean EXTERNAL_LABELS?); ignored"]
