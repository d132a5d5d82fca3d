"""One JSON request to a running watchdog's HTTP API, for the command-line clients
(`watchdog action run`, `pause`, `deploy`, `incidents`): standard-library HTTP and no event loop,
so a one-shot command imports neither aiohttp nor the daemon.

Must not: print or log the token (it travels only in the Authorization header), or touch the
store — the daemon owns it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

Answer = tuple[int, dict[str, Any]]


def request(method: str, url: str, body: Any = None, *, token: str | None = None,
            timeout: float = 30.0) -> Answer:
    """(HTTP status, JSON answer as a dict). An error answer that is not JSON becomes
    `{"error": <its first 300 bytes>}`; a `Retry-After` header is kept as `retryAfter`.
    Raises OSError when nobody answers."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            doc = json.loads(resp.read() or b"{}")
            return resp.status, doc if isinstance(doc, dict) else {"data": doc}
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = {"error": raw[:300].decode("utf-8", "replace") or e.reason}
        if not isinstance(doc, dict):
            doc = {"error": str(doc)}
        if e.headers is not None and "Retry-After" in e.headers:
            doc["retryAfter"] = e.headers["Retry-After"]
        return e.code, doc
