"""Daemon settings: environment (`WATCHDOG_*`), a `--config` YAML file and a secrets directory.

Precedence, highest first: init arguments, `--config` YAML, environment, secrets directory files
(`/run/secrets/watchdog` or WATCHDOG_SECRETS_DIR), defaults. Secret values are `SecretStr` so that
they never print in logs, errors or `/api` output. No other module reads the environment for
settings.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from watchdog.durations import MAX_DURATION, parse_duration


class _YamlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        if path is not None:
            doc = yaml.safe_load(path.read_text()) or {}
            if not isinstance(doc, dict):
                raise ValueError(f"{path}: settings file must be a mapping")
            # accept both `prometheus_url:` and `PROMETHEUS_URL:` / `WATCHDOG_PROMETHEUS_URL:`
            self._data = {str(k).lower().removeprefix("watchdog_"): v for k, v in doc.items()}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._data.items() if k in self.settings_cls.model_fields}

    def unknown(self) -> list[str]:
        return [k for k in self._data if k not in self.settings_cls.model_fields]


def url_has_credentials(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "@" in url
    return parts.username is not None or parts.password is not None


def prometheus_auth_conflict(url: str, field: str, bearer: bool = False) -> str | None:
    """Why Prometheus authentication set by `field` cannot work together with what is already
    set, or None. Both ways end in an `Authorization` header the HTTP client cannot send twice:
    every query would fail (aiohttp: "Cannot combine AUTHORIZATION header with AUTH argument or
    credentials encoded in URL") and /readyz would stay 503 with no clear reason. Prometheus's
    own scrape config refuses the same combinations."""
    if url_has_credentials(url):
        return ("cannot be combined with credentials in WATCHDOG_PROMETHEUS_URL "
                "(user:password@host); give them in one place: in the URL, or as basic auth "
                "(WATCHDOG_PROMETHEUS_BASIC_AUTH_USER / _PASSWORD_FILE), or a bearer token file")
    if bearer and field.startswith("prometheus_basic_auth"):
        return ("cannot be combined with WATCHDOG_PROMETHEUS_BEARER_TOKEN_FILE: configure "
                "either basic auth or a bearer token")
    return None


# WATCHDOG_* names that are not settings but are ours: the clients' (`watchdog incidents`,
# `silence`, ...) daemon URL, the test suite's PostgreSQL, and what a `command` action step
# finds in its environment (WATCHDOG_ALERT_NAME, WATCHDOG_LABEL_<name>, ...).
_NOT_SETTINGS = frozenset({"URL", "SECRETS_DIR", "TEST_POSTGRES_URL", "ACTION", "TRIGGER",
                           "RUN_ID"})
_NOT_SETTINGS_PREFIXES = ("ALERT_", "LABEL_")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def unknown_settings(names: Iterable[str], known: Iterable[str], where: str,
                     prefix: str = "WATCHDOG_") -> list[str]:
    """One line per name that no setting reads — a typo would otherwise be ignored silently,
    and the default used — with the closest setting's name when one is close."""
    known_upper = sorted({k.upper() for k in known})
    out = []
    for name in names:
        bare = name.upper().removeprefix(prefix)
        base = bare.split("__", 1)[0]  # EXTERNAL_LABELS__ENV sets one key of a dict setting
        if (base in known_upper or bare in _NOT_SETTINGS
                or bare.startswith(_NOT_SETTINGS_PREFIXES)):
            continue
        close = difflib.get_close_matches(base, known_upper, n=1, cutoff=0.75)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        out.append(f"{where}: {name} is not a setting{hint}; ignored")
    return out


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="WATCHDOG_", env_nested_delimiter="__", extra="ignore",
        secrets_dir=os.environ.get("WATCHDOG_SECRETS_DIR") or None,
    )

    prometheus_url: str = "http://localhost:9090"
    prometheus_timeout: float = 10.0
    prometheus_bearer_token_file: str | None = None
    prometheus_basic_auth_user: str | None = None
    prometheus_basic_auth_password_file: str | None = None
    prometheus_ca_file: str | None = None
    prometheus_insecure_skip_verify: bool = False
    rules_dir: Path = Path("./rules")
    rules_poll_interval: float = 5.0
    evaluation_interval: float = 30.0
    evaluation_concurrency: int = Field(16, ge=1)
    http_listen: str = "0.0.0.0:8080"
    data_dir: Path = Path("./data")
    state_url: str | None = None  # default: sqlite in data_dir
    mqtt_url: str | None = None
    mqtt_prefix: str = "watchdog"
    mqtt_commands: bool = False
    sentry_dsn: SecretStr | None = None
    dry_run: bool = False
    api_token: SecretStr | None = None
    # When set, GET /api/* needs it (or the API token); the probes, /metrics and the status
    # page stay open. For deployments that expose the port beyond the cluster.
    api_read_token: SecretStr | None = None
    external_url: str = ""
    external_labels: dict[str, str] = Field(default_factory=dict)
    log_format: Literal["json", "console"] = "console"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    datasource_down_after: int = Field(3, ge=1)  # failed evaluations before WatchdogDatasourceDown
    outage_tolerance: float = 3600.0  # Prometheus's rules.alert.for-outage-tolerance
    for_grace_period: float = 600.0  # Prometheus's rules.alert.for-grace-period
    resend_delay: float = 60.0
    kubeconfig: str | None = None
    shutdown_timeout: float = 5.0
    incident_retention: float = Field(90 * 86400.0, gt=0)  # resolved incidents kept this long
    # the most of one answer of Prometheus's query API forwarded through /api/v1/query & co.
    query_proxy_max_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # Many replicas on one PostgreSQL (README "Many replicas"): this one's name, and how long
    # a replica's leases outlive its last renewal.
    replica_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=200)
    lease_ttl: float = Field(15.0, ge=1.0, le=3600.0)

    @field_validator("prometheus_timeout", "evaluation_interval", "rules_poll_interval",
                     "outage_tolerance", "for_grace_period", "resend_delay", "shutdown_timeout",
                     "incident_retention", "lease_ttl", mode="before")
    @classmethod
    def _durations(cls, v: Any) -> Any:
        # "30s" as Prometheus spells it, or a bare number of seconds
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                return parse_duration(v.strip())
        if isinstance(v, int | float) and not isinstance(v, bool) and not (
                math.isfinite(v) and abs(v) <= MAX_DURATION):
            # "nan", "inf", 1e300: no scheduler or timeout can use them
            raise ValueError("out of range (a duration is at most 292y)")
        return v

    @field_validator("prometheus_bearer_token_file", "prometheus_basic_auth_user",
                     "prometheus_basic_auth_password_file")
    @classmethod
    def _one_prometheus_auth(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            problem = prometheus_auth_conflict(
                info.data.get("prometheus_url", ""), info.field_name or "",
                bearer=info.data.get("prometheus_bearer_token_file") is not None)
            if problem:
                raise ValueError(problem)
        return v

    @field_validator("external_labels", mode="before")
    @classmethod
    def _labels(cls, v: Any) -> Any:
        if isinstance(v, Mapping):
            for k, val in v.items():
                if not isinstance(k, str) or not _LABEL_NAME.match(k):
                    raise ValueError(f"{k!r} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)")
                if not isinstance(val, str):
                    raise ValueError(f"the value of {k!r} must be a string, got "
                                     f"{type(val).__name__}: quote it")
        return v

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @property
    def state_path(self) -> str:
        return self.state_url or f"sqlite:///{(self.data_dir / 'watchdog.db').as_posix()}"

    @classmethod
    def unknown(cls, config: Path | None = None,
                environ: Mapping[str, str] | None = None) -> list[str]:
        """Warnings for WATCHDOG_* variables and `--config` keys that no setting reads."""
        env = os.environ if environ is None else environ
        out = unknown_settings(sorted(k for k in env if k.upper().startswith("WATCHDOG_")),
                               cls.model_fields, "environment")
        if config is not None:
            keys = _YamlSource(cls, config).unknown()
            out += unknown_settings([k.upper() for k in keys], cls.model_fields, str(config),
                                    prefix="")
        return out

    @classmethod
    def load(cls, config: Path | None = None, **overrides: Any) -> Settings:
        cls._config_path = config  # read by settings_customise_sources
        try:
            return cls(**overrides)
        finally:
            cls._config_path = None

    _config_path: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _YamlSource(settings_cls, cls._config_path), env_settings,
                file_secret_settings)
