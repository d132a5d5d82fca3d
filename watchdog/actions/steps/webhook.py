"""The `webhook` step: one HTTP request to a feature-flag service, deploy system or anything with
an API. URL, headers, body and JSON are templated with the alert (`$labels`, `$value`) after
`${VAR}` / `VAR_FILE` secrets are filled in; a 2xx answer is success.

Shell: network I/O through the shared aiohttp session. It must never show a secret: the URL in
its output and errors is the configured one with `${VAR}` unexpanded, and headers (where tokens
live) are never shown at all.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from watchdog.actions.expand import ExpandError, Subject, expand, expand_json, shown
from watchdog.actions.steps import StepEnv, StepResult, truncate
from watchdog.durations import format_duration
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
    try:
        async with env.session.request(
            step.method, url, headers=headers,
            timeout=aiohttp.ClientTimeout(total=step.timeout), **kwargs,
        ) as resp:
            body = await resp.content.read(MAX_BODY + 1)
            status = resp.status
    except TimeoutError:
        return StepResult(False, f"{what}: timed out after {format_duration(step.timeout)}")
    except (aiohttp.ClientError, ValueError) as e:
        # aiohttp's messages can quote the URL it was given, which may hold a secret.
        message = str(e).replace(url, display_url) if url else str(e)
        return StepResult(False, f"{what}: {type(e).__name__}: {message}")
    text = body[:MAX_BODY].decode("utf-8", "replace")
    if len(body) > MAX_BODY:
        text += " …"
    detail = f"{what} -> HTTP {status}"
    return StepResult(200 <= status < 300, detail, truncate(f"{detail}\n{text}".rstrip()))
