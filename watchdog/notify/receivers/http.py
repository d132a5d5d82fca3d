"""One JSON POST with Alertmanager's retry classification: 2xx ok; 408, 429 and 5xx retryable
(429's `Retry-After` honoured); other 4xx permanent; connection errors and timeouts retryable.

Must not retry or sleep (the outbox does), and must not put the URL or the request body in an
error: the URL of a Slack webhook *is* the secret. Errors carry the status and a short, redacted
excerpt of the response body, which is the receiver's own words (e.g. Slack's `invalid_blocks`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from watchdog.notify.receivers import DeliveryError, SendContext


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a `Retry-After` header: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def classify(status: int) -> bool | None:
    """None: success; True: retryable; False: permanent."""
    if 200 <= status < 300:
        return None
    return status in (408, 429) or status >= 500


async def post_json(ctx: SendContext, url: str, body: Any, *, what: str,
                    headers: Mapping[str, str] | None = None, timeout: float | None = None
                    ) -> tuple[int, str]:
    """POST `body` as JSON; returns (status, response text) on 2xx, raises DeliveryError."""
    await ctx.pace()
    limit = timeout if timeout is not None else ctx.timeout
    try:
        async with ctx.session.post(
            url, data=json.dumps(body, separators=(",", ":")),
            headers={"Content-Type": "application/json", **(headers or {})},
            timeout=aiohttp.ClientTimeout(total=limit),
        ) as resp:
            text = await resp.text(errors="replace")
            outcome = classify(resp.status)
            if outcome is None:
                return resp.status, text
            retry_after = None
            if resp.status == 429:
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), ctx.now)
            excerpt = ctx.redact(" ".join(text.split())[:200])
            raise DeliveryError(f"{what} answered HTTP {resp.status}" +
                                (f": {excerpt}" if excerpt else ""),
                                retryable=outcome, retry_after=retry_after, status=resp.status)
    except DeliveryError:
        raise
    except TimeoutError:
        raise DeliveryError(f"{what} did not answer within {limit:g}s",
                            retryable=True) from None
    except aiohttp.InvalidURL:
        raise DeliveryError(f"{what}: the configured URL is not valid",
                            retryable=False) from None
    except aiohttp.ClientConnectorError as e:
        reason = e.os_error.strerror or type(e.os_error).__name__
        raise DeliveryError(f"{what}: cannot connect ({reason})", retryable=True) from None
    except aiohttp.ClientError as e:
        # The exception text of other client errors may quote the URL: keep only its type.
        raise DeliveryError(f"{what}: {type(e).__name__}", retryable=True) from None

