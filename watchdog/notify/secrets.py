"""Secret receiver fields: `${VAR}` expanded from the environment, `*_file` read from disk, and
redaction of those values from any text that may reach a log, an error or the API.

Secrets are resolved at delivery time (so rotating a file needs no reload) and are never stored
in the outbox or returned by any function other than `resolve`/`read_file`. This module must not
log: callers decide what to say, after passing it through `Redactor`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


def url_secrets(url: str) -> list[str]:
    """A URL and the parts of it that are secret on their own: a receiver echoing the request
    path (`/services/T0/B0/XXXX`) or query (`?token=`) in an error must not leak it either."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    out = [url, parts.path, parts.query]
    if parts.password:
        out.append(parts.password)
    return [p for p in out if p]


class Redactor:
    """Replaces known secret values (and their URL-quoted forms) in text with `<secret>`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        for s in secrets:
            self.add(s)

    def add(self, secret: str) -> None:
        from urllib.parse import quote

        for form in {secret, quote(secret, safe=""), quote(secret)}:
            # Very short values would blank out ordinary words; real secrets are long.
            if len(form) >= 6 and form not in self._secrets:
                self._secrets.append(form)
        self._secrets.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "<secret>")
        return text
