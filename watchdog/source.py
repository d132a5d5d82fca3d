"""Where samples come from: the `Source` seam and its Prometheus HTTP implementation.

Shell: does network I/O through one shared aiohttp session, with an explicit timeout, auth and TLS.
It must not interpret results beyond turning Prometheus's JSON into `Sample`s, and must never log
credentials (the bearer token is read from its file on each request so rotation needs no restart,
and it never appears in an error message).
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from watchdog.evaluate import Sample
from watchdog.logs import redact_url


class QueryError(Exception):
    """A query that did not produce a result; the message names the endpoint, never secrets.
    `status`: Prometheus's HTTP status when it answered with an error (400 a query it cannot
    parse, 422 one it cannot execute, e.g. too many samples; 503 a timeout), else None."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Source(Protocol):
    async def query(self, expr: str, at: float) -> list[Sample]: ...


@dataclass(frozen=True)
class RangeSeries:
    labels: Mapping[str, str]
    points: Sequence[tuple[float, float]]


class RangeSource(Source, Protocol):
    async def query_range(self, expr: str, start: float, end: float, step: float
                          ) -> list[RangeSeries]: ...


@dataclass(frozen=True)
class Forwarded:
    """Prometheus's answer to a forwarded API request, as it came: status, body, type."""

    status: int
    body: bytes
    content_type: str


class AnswerTooLarge(QueryError):
    """A forwarded answer longer than the caller's bound; it was not read to the end."""


@dataclass(frozen=True)
class PrometheusConfig:
    url: str = "http://localhost:9090"
    timeout: float = 10.0
    bearer_token_file: str | None = None
    basic_auth_user: str | None = None
    basic_auth_password_file: str | None = None
    ca_file: str | None = None
    insecure_skip_verify: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)


def _read_secret(path: str) -> str:
    return Path(path).read_text().strip()


def ssl_context(cfg: PrometheusConfig) -> ssl.SSLContext | bool:
    if cfg.insecure_skip_verify:
        return False
    if cfg.ca_file:
        return ssl.create_default_context(cafile=cfg.ca_file)
    return True


def _float(v: Any) -> float:
    # Prometheus encodes sample values as strings, including "NaN", "+Inf", "-Inf".
    return float(v)


class PrometheusSource:
    """Instant and range queries against a Prometheus-compatible HTTP API."""

    def __init__(self, session: aiohttp.ClientSession, cfg: PrometheusConfig) -> None:
        self._session = session
        self._cfg = cfg
        self._base = cfg.url.rstrip("/")
        # what error messages may quote: `http://user:pw@host` would otherwise leak `pw`
        self._shown = redact_url(self._base)
        self._ssl = ssl_context(cfg)
        self._timeout = aiohttp.ClientTimeout(total=cfg.timeout)

    @property
    def url(self) -> str:
        return self._base

    def _headers(self) -> dict[str, str]:
        headers = dict(self._cfg.headers)
        try:
            if self._cfg.bearer_token_file:
                headers["Authorization"] = f"Bearer {_read_secret(self._cfg.bearer_token_file)}"
            if self._cfg.basic_auth_user:
                pw = (_read_secret(self._cfg.basic_auth_password_file)
                      if self._cfg.basic_auth_password_file else "")
                pair = f"{self._cfg.basic_auth_user}:{pw}".encode()
                headers["Authorization"] = f"Basic {base64.b64encode(pair).decode()}"
        except OSError as e:
            raise QueryError(f"cannot read Prometheus credentials file: {e.strerror}") from None
        return headers

    async def _call(self, path: str, params: dict[str, str]) -> Any:
        endpoint = f"{self._base}{path}"
        shown = f"{self._shown}{path}"
        headers = self._headers()
        try:
            # POST form: long expressions do not hit URL length limits.
            async with self._session.post(endpoint, data=params, headers=headers,
                                          timeout=self._timeout, ssl=self._ssl) as resp:
                body = await resp.read()
                status = resp.status
        except TimeoutError:
            raise QueryError(f"{shown}: timed out after {self._cfg.timeout:g}s") from None
        except aiohttp.ClientError as e:
            raise QueryError(f"{shown}: {type(e).__name__}: {redact_url(str(e))}") from None
        try:
            doc = _json(body)
        except ValueError:
            snippet = body[:120].decode("utf-8", "replace")
            raise QueryError(
                f"{shown}: HTTP {status}, not a Prometheus API response: {snippet!r}", status
            ) from None
        if not isinstance(doc, dict) or doc.get("status") != "success":
            err = doc.get("error") if isinstance(doc, dict) else None
            kind = doc.get("errorType") if isinstance(doc, dict) else None
            raise QueryError(f"{shown}: HTTP {status}: {kind or 'error'}: "
                             f"{err or 'unexpected response'}", status)
        return doc.get("data")

    async def query(self, expr: str, at: float) -> list[Sample]:
        data = await self._call("/api/v1/query", {"query": expr, "time": _ts(at)})
        try:
            return parse_instant(data)
        except (TypeError, ValueError, KeyError, IndexError) as e:
            raise QueryError(f"{self._shown}/api/v1/query: malformed result: {e}") from None

    async def query_range(self, expr: str, start: float, end: float, step: float
                          ) -> list[RangeSeries]:
        data = await self._call("/api/v1/query_range", {
            "query": expr, "start": _ts(start), "end": _ts(end), "step": f"{step:g}"})
        try:
            if data["resultType"] != "matrix":
                raise ValueError(f"expected a matrix, got {data['resultType']!r}")
            return [RangeSeries(dict(r["metric"]), [(float(t), _float(v)) for t, v in r["values"]])
                    for r in data["result"]]
        except (TypeError, ValueError, KeyError, IndexError) as e:
            raise QueryError(f"{self._shown}/api/v1/query_range: malformed result: {e}") from None

    async def forward(self, method: str, path: str, params: Sequence[tuple[str, str]],
                      max_bytes: int) -> Forwarded:
        """`path` of Prometheus's API with `params` (a GET's query string, a POST's form), as
        the caller asked, with our credentials; the answer is passed back untouched, whatever
        its status (Prometheus's 400/422/503 errors are the caller's to read), but never more
        than `max_bytes` of it is read."""
        endpoint = f"{self._base}{path}"
        shown = f"{self._shown}{path}"
        headers = self._headers()
        kwargs: dict[str, Any] = ({"params": list(params)} if method == "GET"
                                  else {"data": list(params)})
        try:
            async with self._session.request(method, endpoint, headers=headers,
                                             timeout=self._timeout, ssl=self._ssl,
                                             **kwargs) as resp:
                if (resp.content_length or 0) > max_bytes:
                    raise AnswerTooLarge(f"{shown}: the answer is {resp.content_length:,} bytes "
                                         f"(the limit is {max_bytes:,})")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(65536):
                    size += len(chunk)
                    if size > max_bytes:
                        raise AnswerTooLarge(f"{shown}: the answer is longer than "
                                             f"{max_bytes:,} bytes")
                    chunks.append(chunk)
                return Forwarded(resp.status, b"".join(chunks),
                                 resp.headers.get("Content-Type", "application/json"))
        except TimeoutError:
            raise QueryError(f"{shown}: timed out after {self._cfg.timeout:g}s") from None
        except aiohttp.ClientError as e:
            raise QueryError(f"{shown}: {type(e).__name__}: {redact_url(str(e))}") from None

    async def buildinfo(self) -> dict[str, Any]:
        """A cheap call that proves Prometheus answers (for /readyz)."""
        endpoint = f"{self._base}/api/v1/status/buildinfo"
        shown = f"{self._shown}/api/v1/status/buildinfo"
        headers = self._headers()
        try:
            async with self._session.get(endpoint, headers=headers,
                                         timeout=self._timeout, ssl=self._ssl) as resp:
                if resp.status != 200:
                    raise QueryError(f"{shown}: HTTP {resp.status}")
                doc = _json(await resp.read())
        except TimeoutError:
            raise QueryError(f"{shown}: timed out after {self._cfg.timeout:g}s") from None
        except aiohttp.ClientError as e:
            raise QueryError(f"{shown}: {type(e).__name__}: {redact_url(str(e))}") from None
        except ValueError:
            raise QueryError(f"{shown}: not a Prometheus API response") from None
        data = doc.get("data") if isinstance(doc, dict) else None
        return data if isinstance(data, dict) else {}


def _ts(t: float) -> str:
    return f"{t:.3f}"


def _json(body: bytes) -> Any:
    return json.loads(body)


def parse_instant(data: Any) -> list[Sample]:
    kind = data["resultType"]
    if kind == "vector":
        return [Sample(dict(r["metric"]), _float(r["value"][1])) for r in data["result"]]
    if kind == "scalar":
        # A scalar result is one sample with no labels, as Prometheus's rule engine treats it.
        return [Sample({}, _float(data["result"][1]))]
    raise ValueError(f"expected a vector or scalar, got {kind!r}")
