"""Daemon settings: init arguments, a `--config` YAML file, the environment (`WATCHDOG_*`) and a
secrets directory, validated into one `Settings` record.

Precedence, highest first: init arguments (`Settings.load(config, **overrides)`, `Settings(...)`),
the `--config` YAML file, the environment, files in the secrets directory (WATCHDOG_SECRETS_DIR;
none when unset), defaults. A dict setting given in several sources is merged key by key, the
higher source winning a key. This is what pydantic-settings did for us (its sources, its
case-insensitive names, `__` for one key of a dict setting, JSON for a dict given whole), kept
as it was so that deployments read the same; `tests/test_settings_sources.py` pins it.

Secret values are `SecretStr` so that they never print in logs, errors or `/api` output; no
message here carries a value read from the environment or a secret file. No other module reads
the environment for settings.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import re
import socket
import types
import typing
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml

from watchdog.durations import MAX_DURATION, parse_duration
from watchdog.schema import (
    BaseModel,
    ConfigDict,
    Field,
    FieldInfo,
    SecretStr,
    ValidationInfo,
    field_validator,
)

ENV_PREFIX = "WATCHDOG_"
# WATCHDOG_EXTERNAL_LABELS__ENV=prod sets the key `env` of the dict setting EXTERNAL_LABELS
NESTED_DELIMITER = "__"
SECRETS_DIR_VARIABLE = "WATCHDOG_SECRETS_DIR"


class SettingsError(ValueError):
    """A value that cannot be read at all, before validation: JSON that does not decode (a dict
    setting given whole), an unreadable secret file or secrets directory. The message names the
    variable and where it came from, never the value."""


def undecodable(field: str, where: str) -> str:
    name = f"{ENV_PREFIX}{field.upper()}"
    example = ('{"cluster": "eu-1", "env": "prod"}, or one label per variable: '
               f"{name}{NESTED_DELIMITER}CLUSTER=eu-1" if field == "external_labels" else "JSON")
    return f"invalid setting {name} ({where}): not valid JSON; expected e.g. {example}"


# ---- sources: each gives {field name: raw value} for the fields it sets ------------------------

def _strip(annotation: Any) -> Any:
    """`Annotated[T, ...]` -> T, `T | None` -> T."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _strip(rest[0])
    return annotation


_CONTAINERS = (dict, list, tuple, set, frozenset, Mapping, Sequence)


def _is_complex(annotation: Any) -> bool:
    """Whether a value of this type is JSON in the environment or a secret file (as
    pydantic-settings decided: containers and models, not strings, numbers or paths)."""
    tp = _strip(annotation)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return all(_is_complex(a) for a in typing.get_args(tp))
    if origin is not None:
        return origin in _CONTAINERS
    return tp in _CONTAINERS or (isinstance(tp, type) and issubclass(tp, BaseModel))


def _is_dict(annotation: Any) -> bool:
    tp = _strip(annotation)
    return tp is dict or typing.get_origin(tp) in (dict, Mapping)


def _value_type(annotation: Any) -> Any:
    """The values' type of a dict type; None when `annotation` is not a dict type."""
    tp = _strip(annotation)
    if typing.get_origin(tp) in (dict, Mapping):
        return typing.get_args(tp)[-1]
    return Any if tp is dict else None


_T = TypeVar("_T")


def deep_update(low: dict[str, _T], high: Mapping[str, _T]) -> dict[str, _T]:
    """`low` with `high`'s keys put in, dicts that both have merged key by key."""
    out = dict(low)
    for k, v in high.items():
        old = out.get(k)
        if isinstance(old, dict) and isinstance(v, dict):
            out[k] = deep_update(old, v)  # type: ignore[assignment]
        else:
            out[k] = v
    return out


def _decode(text: str, field: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise SettingsError(undecodable(field, where)) from None


def _nested(env: Mapping[str, str], prefix: str, annotation: Any) -> dict[str, Any]:
    """The keys `WATCHDOG_<FIELD>__<KEY>[__<KEY>...]` set, as nested dicts (lower-case keys, as
    every name in `env`). A value is text, unless the type at its depth is a container or not
    known (deeper than the setting's type): then JSON if it decodes."""
    is_dict = _is_dict(annotation)
    out: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(prefix):
            continue
        *keys, last = name[len(prefix):].split(NESTED_DELIMITER)
        node: Any = out
        tp = annotation
        for key in keys:
            tp = _value_type(tp)
            if isinstance(node, dict):
                node = node.setdefault(key, {})
        tp = _value_type(tp)
        parsed: Any = value
        if value and is_dict and (tp is None or _is_complex(tp)):
            with contextlib.suppress(ValueError):  # not JSON: the text
                parsed = json.loads(value)
        if isinstance(node, dict):  # not below a key that already holds a value
            node[last] = parsed
    return out


def env_values(fields: Mapping[str, FieldInfo], environ: Mapping[str, str]) -> dict[str, Any]:
    """`WATCHDOG_<FIELD>` in any case. A dict or list setting is JSON; a dict setting's keys may
    also come one per variable (`WATCHDOG_<FIELD>__<KEY>`, lower-cased), and those win over the
    same keys in the JSON. Other values stay text for validation to convert ("5s", "true", "")."""
    env = {k.lower(): v for k, v in environ.items()}
    out: dict[str, Any] = {}
    for name, info in fields.items():
        var = f"{ENV_PREFIX}{name}".lower()
        raw = env.get(var)
        value: Any = raw
        if _is_complex(info.annotation):
            nested = _nested(env, var + NESTED_DELIMITER, info.annotation)
            if raw is None:
                value = nested or None
            else:
                value = _decode(raw, name, "env")
                if isinstance(value, dict):
                    value = deep_update(value, nested)
        if value is not None:  # JSON `null` too: as if not set
            out[name] = value
    return out


def secrets_values(fields: Mapping[str, FieldInfo], directory: Path | None) -> dict[str, Any]:
    """One file per setting, named as its variable in any case (`WATCHDOG_API_TOKEN`,
    `watchdog_api_token`), its text without surrounding white space (the newline an editor or
    `echo` leaves); JSON for a dict or list setting. A directory that does not exist is warned
    about and read as empty (a Secret not mounted yet); a file that resolves outside it (a
    symlink) or an entry that is no file is warned about and skipped."""
    if directory is None:
        return {}
    path = directory.expanduser()
    try:
        if not path.exists():
            warnings.warn(f'directory "{path}" does not exist', stacklevel=2)
            return {}
        if not path.is_dir():
            raise SettingsError(f"invalid setting {SECRETS_DIR_VARIABLE}: {path} is not a "
                                "directory")
        root = path.resolve()
        entries: dict[str, Path] = {}
        for found in sorted(path.iterdir()):
            entries.setdefault(found.name.lower(), found)
    except OSError as e:
        raise SettingsError(f"invalid setting {SECRETS_DIR_VARIABLE}: cannot read {path}: "
                            f"{e.strerror}") from None
    out: dict[str, Any] = {}
    for name, info in fields.items():
        entry = entries.get(f"{ENV_PREFIX}{name}".lower())
        if entry is None:
            continue
        var = f"{ENV_PREFIX}{name.upper()}"
        try:
            resolved = entry.resolve()
        except (OSError, RuntimeError) as e:  # a symlink loop
            warnings.warn(f'attempted to load secret file "{entry}" but it could not be '
                          f"resolved: {e}", stacklevel=2)
            continue
        if not entry.is_file():
            kind = "a directory" if entry.is_dir() else "no regular file"
            warnings.warn(f'attempted to load secret file "{entry}" but found {kind} instead.',
                          stacklevel=2)
            continue
        if root not in resolved.parents:
            warnings.warn(f'attempted to load secret file "{entry}" but it resolves outside of '
                          f'"{path}".', stacklevel=2)
            continue
        try:
            text = entry.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            raise SettingsError(f"invalid setting {var} (secrets dir): {entry} is not UTF-8 "
                                "text") from None
        except OSError as e:
            raise SettingsError(f"invalid setting {var} (secrets dir): cannot read {entry}: "
                                f"{e.strerror}") from None
        value = _decode(text, name, "secrets dir") if _is_complex(info.annotation) else text
        if value is not None:
            out[name] = value
    return out


def read_config(path: Path) -> dict[str, Any]:
    """Every key of a `--config` file, as a setting's name: `prometheus_url`, `PROMETHEUS_URL`
    and `WATCHDOG_PROMETHEUS_URL` are one. Values as YAML gives them (a mapping is a dict
    setting, not JSON)."""
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: settings file must be a mapping")
    return {str(k).lower().removeprefix("watchdog_"): v for k, v in doc.items()}


def gather(fields: Mapping[str, FieldInfo], config: Path | None, init: Mapping[str, Any],
           environ: Mapping[str, str]) -> dict[str, Any]:
    """Every field's raw value from the highest source that sets it (dicts merged across
    sources), and its default where none does: the input of `Settings` validation. Defaults
    are validated too (pydantic-settings' `validate_default`): the host name as REPLICA_ID."""
    from_init: dict[str, Any] = {}
    for key, value in init.items():  # names in any case, as pydantic-settings took them
        if key.lower() in fields:
            from_init.setdefault(key.lower(), value)
    from_config = {k: v for k, v in (read_config(config) if config else {}).items()
                   if k in fields}
    from_env = env_values(fields, environ)
    secrets_dir = environ.get(SECRETS_DIR_VARIABLE) or None
    from_secrets = secrets_values(fields, Path(secrets_dir) if secrets_dir else None)
    merged: dict[str, Any] = {}
    for layer in (from_secrets, from_env, from_config, from_init):  # lowest first
        merged = deep_update(merged, layer)
    for name, info in fields.items():
        if name not in merged:
            merged[name] = info.get_default()
    return merged


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
                     prefix: str = ENV_PREFIX, nested: Iterable[str] | None = None) -> list[str]:
    """One line per name that no setting reads — a typo would otherwise be ignored silently,
    and the default used — with the closest setting's name when one is close. `nested`: the
    settings whose keys `<NAME>__<KEY>` sets one by one (default: any of `known`)."""
    known_upper = sorted({k.upper() for k in known})
    nested_upper = set(known_upper) if nested is None else {k.upper() for k in nested}
    out = []
    for name in names:
        bare = name.upper().removeprefix(prefix)
        base, sub, _ = bare.partition(NESTED_DELIMITER)  # EXTERNAL_LABELS__ENV: one key
        if (bare in known_upper or (sub and base in nested_upper) or bare in _NOT_SETTINGS
                or bare.startswith(_NOT_SETTINGS_PREFIXES)):
            continue
        close = difflib.get_close_matches(base, known_upper, n=1, cutoff=0.75)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        out.append(f"{where}: {name} is not a setting{hint}; ignored")
    return out


class Settings(BaseModel):
    """What the daemon runs with. `Settings.load(config, **overrides)` or `Settings(**overrides)`
    read every source (see the module's docstring); `Settings.model_validate(data)` validates
    `data` alone (pydantic-settings' read the sources there too; nothing used that)."""

    # an unknown name is warned about (`Settings.unknown`), never refused
    model_config = ConfigDict(extra="ignore")

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
    # Per group. 16 let the groups of a big rule set queue up ~20 queries each at Prometheus at
    # once: at 3,500 rules every 5s queries took 0.54s on average and iterations were missed;
    # with 4, 0.15s and none (bench/README.md, --find-max). Prometheus itself runs a group's
    # rules one at a time.
    evaluation_concurrency: int = Field(4, ge=1)
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

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**gather(type(self).model_fields, None, overrides, os.environ))

    @classmethod
    def unknown(cls, config: Path | None = None,
                environ: Mapping[str, str] | None = None) -> list[str]:
        """Warnings for WATCHDOG_* variables and `--config` keys that no setting reads."""
        env = os.environ if environ is None else environ
        fields = cls.model_fields
        dicts = [name for name, info in fields.items() if _is_complex(info.annotation)]
        out = unknown_settings(sorted(k for k in env if k.upper().startswith(ENV_PREFIX)),
                               fields, "environment", nested=dicts)
        if config is not None:
            keys = [k for k in read_config(config) if k not in fields]
            # `KEY__SUB` is the environment's way to set one key of a dict; a file nests it
            out += unknown_settings([k.upper() for k in keys], fields, str(config), prefix="",
                                    nested=())
        return out

    @classmethod
    def load(cls, config: Path | None = None, **overrides: Any) -> Settings:
        """The settings from every source; raises `ValidationError` (every invalid setting),
        `SettingsError` (a value that cannot be read), or OSError/YAMLError/ValueError for the
        `--config` file."""
        return cls.model_validate(gather(cls.model_fields, config, overrides, os.environ))
