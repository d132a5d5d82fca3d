"""`${VAR}` in configuration: expanded from the environment, or from the file that `VAR_FILE`
names (the convention of Docker and Kubernetes secrets); `$${VAR}` stands for a literal `${VAR}`.

Shell-side (reads secret files). One implementation for receivers and actions, so the same text
means the same thing in both. It must never put a value into an error message: errors name the
variable or the file only. `Redactor` takes the expanded values back out of anything shown or
stored — an upstream that echoes our request (headers, URL) must not put a secret on display.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import quote, urlsplit

_VAR = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)\}")


class EnvVarError(ValueError):
    """An unset variable or an unreadable `VAR_FILE`; names the variable, never a value."""


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace every `${VAR}`. An unset variable is an error rather than an empty string: a
    rollback that calls `https:///api/flags`, or a page posted nowhere, helps nobody."""
    source = os.environ if environ is None else environ

    def one(m: re.Match[str]) -> str:
        escaped, name = m.group(1), m.group(2)
        if escaped:
            return "${" + name + "}"
        if name in source:
            return source[name]
        path = source.get(f"{name}_FILE")
        if path:
            try:
                # trailing newlines are how editors and `echo` end files, never part of a secret
                return Path(path).read_text().rstrip("\r\n")
            except OSError as e:
                raise EnvVarError(f"cannot read {name}_FILE for ${{{name}}}: "
                                  f"{e.strerror or type(e).__name__}") from None
        raise EnvVarError(f"${{{name}}} is not set (neither {name} nor {name}_FILE is in the "
                          "environment)")

    return _VAR.sub(one, text)


def shown_env(text: str) -> str:
    """The text as it may be shown: `${VAR}` left as written (only the escape is undone)."""
    return _VAR.sub(lambda m: "${" + m.group(2) + "}", text)


def expanded_values(text: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """The values the `${VAR}`s of `text` expand to (unset or unreadable ones are left out):
    what a redactor must remove from a reply that echoes the request."""
    out: list[str] = []
    for m in _VAR.finditer(text):
        if m.group(1):
            continue
        with contextlib.suppress(EnvVarError):
            out.append(expand_env("${" + m.group(2) + "}", environ))
    return out


def url_secrets(url: str) -> list[str]:
    """A URL and the parts of it that are secret on their own: a receiver echoing the request
    path (`/services/T0/B0/XXXX`) or query (`?token=`) in an error must not leak it either."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    out = [url, parts.path, parts.query]
    if parts.password:
        out.append(parts.password)
    return [p for p in out if p]


class Redactor:
    """Replaces known secret values — as written, URL-quoted and JSON-escaped (an upstream that
    echoes headers as JSON) — in text with `<secret>`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        for s in secrets:
            self.add(s)

    def add(self, secret: str) -> None:
        for form in {secret, quote(secret, safe=""), quote(secret), json.dumps(secret)[1:-1],
                     json.dumps(secret, ensure_ascii=False)[1:-1]}:
            # Very short values would blank out ordinary words; real secrets are long.
            if len(form) >= 6 and form not in self._secrets:
                self._secrets.append(form)
        self._secrets.sort(key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def __call__(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "<secret>")
        return text
