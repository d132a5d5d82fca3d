"""`${VAR}` in configuration: expanded from the environment, or from the file that `VAR_FILE`
names (the convention of Docker and Kubernetes secrets); `$${VAR}` stands for a literal `${VAR}`.

Shell-side (reads secret files). One implementation for receivers and actions, so the same text
means the same thing in both. It must never put a value into an error message: errors name the
variable or the file only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

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
