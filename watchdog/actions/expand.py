"""Turning an action's configured text into what a step sends: `${VAR}` from the environment (or a
secret file named by `VAR_FILE`), then the alert template (`$labels`, `$value`, ...).

Shell-side (it may read secret files). It must never put a secret where it can be shown: every
function that expands the environment has a twin that leaves `${VAR}` as written, and only that
twin's output may go into logs, step output, errors or notifications.

Order matters for safety: the environment is expanded in the *configured* text first, and the
template second, so a label value — data from the metrics, not configuration — is never itself
searched for `${...}` and cannot pull a secret into a request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from watchdog import envvars
from watchdog.gotmpl import TemplateData, TemplateError, compile_template


class ExpandError(ValueError):
    """A `${VAR}` that is not set, an unreadable secret file, or a template that fails. The
    message names the variable or file, never a value."""


@dataclass(frozen=True)
class Subject:
    """What a run acts for: the alert instance that triggered it, or a manual request."""

    action: str
    run_id: str
    trigger: Literal["alert", "manual"]
    labels: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)
    value: float | None = None
    rule: str | None = None
    group: str | None = None
    fingerprint: str | None = None
    incident_id: str | None = None
    active_at: float | None = None

    @property
    def alertname(self) -> str:
        return self.rule or self.labels.get("alertname", "")

    def template_data(self, external_url: str = "") -> TemplateData:
        # A manual run has no value; NaN is what Prometheus shows for "no number".
        value = math.nan if self.value is None else self.value
        return TemplateData(labels=dict(self.labels), value=value, external_url=external_url)


def expand_env(text: str, environ: Mapping[str, str]) -> str:
    """`${VAR}` from the environment or `VAR_FILE` (see `watchdog.envvars`)."""
    try:
        return envvars.expand_env(text, environ)
    except envvars.EnvVarError as e:
        raise ExpandError(str(e)) from None


shown_env = envvars.shown_env


def render(text: str, data: TemplateData) -> str:
    """The alert template, strictly: a failing template fails the step instead of sending
    Prometheus's `<error expanding template: ...>` text to a flag service."""
    if "{{" not in text:
        return text
    try:
        return compile_template(text).render(data)
    except TemplateError as e:
        raise ExpandError(f"template {text!r}: {e}") from None


def expand(text: str, data: TemplateData, environ: Mapping[str, str]) -> str:
    return render(expand_env(text, environ), data)


def shown(text: str, data: TemplateData) -> str:
    try:
        return render(shown_env(text), data)
    except ExpandError:
        return shown_env(text)


def expand_json(value: Any, data: TemplateData, environ: Mapping[str, str]) -> Any:
    """Every string inside a JSON document (values, not keys), expanded."""
    if isinstance(value, str):
        return expand(value, data, environ)
    if isinstance(value, list):
        return [expand_json(v, data, environ) for v in value]
    if isinstance(value, dict):
        return {k: expand_json(v, data, environ) for k, v in value.items()}
    return value
