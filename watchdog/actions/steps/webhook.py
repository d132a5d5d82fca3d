"""The `webhook` step: one HTTP request to a feature-flag service, deploy system or anything with
an API. URL, headers, body and JSON are templated with the alert (`$labels`, `$value`) after
`${VAR}` / `VAR_FILE` secrets are filled in; a 2xx answer is success.

Shell: network I/O through the shared aiohttp session. It must never show a secret: the URL in
its output and errors is the configured one with `${VAR}` unexpanded, headers (where tokens
live) are never shown at all, and every value it expanded (and every header value) is redacted
from the reply it keeps, since an upstream may echo the request back.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from watchdog.actions.expand import ExpandError, Subject, expand, expand_json, shown
from watchdog.actions.steps import (
    StepEnv,
    StepResult,
    parse_retry_after,
    retryable_status,
    truncate,
)
from watchdog.durations import format_duration
from watchdog.envvars import Redactor, expanded_values
from watchdog.model import WebhookStep

# Kept of the response body: a flag service's error message fits; an HTML error page is cut.
MAX_BODY = 4096


async def run(step: WebhookStep, subject: Subject, env: StepEnv) -> StepResult:
    data = subject.template_data(env.external_url)
    display_url = shown(step.url, data)
    what = f"{step.method} {display_url}"
    try:
        url = expand(step.url, data, env.environ)
        headers = {k: expand(v, data, env.environ) for k, v in step.headers.items()}
        kwargs: dict[str, Any] = {}
        if step.json_ is not None:
            kwargs["data"] = json.dumps(expand_json(step.json_, data, env.environ))
            headers.setdefault("Content-Type", "application/json")
        elif step.body is not None:
            kwargs["data"] = expand(step.body, data, env.environ).encode()
    except ExpandError as e:
        return StepResult(False, f"{what}: {e}")
    redact = _redactor(step, env.environ, url, headers)
    try:
        async with env.session.request(
            step.method, url, headers=headers,
            timeout=aiohttp.ClientTimeout(total=step.timeout), **kwargs,
        ) as resp:
            body = await resp.content.read(MAX_BODY + 1)
            status = resp.status
            retry_after = resp.headers.get("Retry-After")
    except TimeoutError:
        return StepResult(False, f"{what}: timed out after {format_duration(step.timeout)}",
                          retryable=True)
    except (aiohttp.ClientError, ValueError) as e:
        # aiohttp's messages can quote the URL it was given, which may hold a secret.
        message = str(e).replace(url, display_url) if url else str(e)
        return StepResult(False, redact(f"{what}: {type(e).__name__}: {message}"),
                          retryable=isinstance(e, aiohttp.ClientError))
    text = redact(body[:MAX_BODY].decode("utf-8", "replace"))
    if len(body) > MAX_BODY:
        text += " …"
    detail = f"{what} -> HTTP {status}"
    return StepResult(200 <= status < 300, detail, truncate(f"{detail}\n{text}".rstrip()),
                      retryable=retryable_status(status),
                      retry_after=parse_retry_after(retry_after, env.now()))


# Headers whose values are credentials even when written literally in the rule file.
_CREDENTIAL_HEADER = re.compile(r"auth|token|key|secret|passw|cookie|signature|session", re.I)


def _redactor(step: WebhookStep, environ: Mapping[str, str], url: str,
              headers: Mapping[str, str]) -> Redactor:
    """Everything secret this request carried: each `${VAR}` value, wherever it was used; a
    password in the expanded URL; and the value of every credential-like header."""
    configured = [step.url, *step.headers.values(), step.body or "", *_strings(step.json_)]
    secrets = [v for text in configured for v in expanded_values(text, environ)]
    with contextlib.suppress(ValueError):
        if (password := urlsplit(url).password) is not None:
            secrets.append(password)
    secrets += [v for k, v in headers.items() if _CREDENTIAL_HEADER.search(k)]
    return Redactor(secrets)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []
