"""Secret receiver fields: `${VAR}` expanded from the environment, `*_file` read from disk, and
redaction of those values from any text that may reach a log, an error or the API.

Secrets are resolved at delivery time (so rotating a file needs no reload) and are never stored
in the outbox or returned by any function other than `resolve`/`read_file`. This module must not
log: callers decide what to say, after passing it through `Redactor`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from watchdog import envvars


class SecretError(Exception):
    """A secret could not be resolved; the message names the variable or file, never a value."""


def expand_env(text: str, env: Mapping[str, str] | None = None) -> str:
    """`${VAR}` from the environment or `VAR_FILE` (see `watchdog.envvars`)."""
    try:
        return envvars.expand_env(text, env)
    except envvars.EnvVarError as e:
        raise SecretError(str(e)) from None


def read_file(path: str, env: Mapping[str, str] | None = None) -> str:
    p = expand_env(path, env)
    try:
        return Path(p).read_text().strip()
    except OSError as e:
        raise SecretError(f"cannot read secret file {p}: {e.strerror}") from None


def resolve(value: str | None, file: str | None, what: str,
            env: Mapping[str, str] | None = None) -> str:
    """The inline value (with `${VAR}` expanded) or the content of the `*_file`."""
    if file is not None:
        out = read_file(file, env)
    elif value is not None:
        out = expand_env(value, env)
    else:
        raise SecretError(f"{what} is not configured")
    if not out:
        raise SecretError(f"{what} is empty")
    return out


# One implementation for receivers and actions (see watchdog.envvars).
url_secrets = envvars.url_secrets
Redactor = envvars.Redactor
