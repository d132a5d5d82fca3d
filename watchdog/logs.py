"""Structured logging for the daemon: structlog, rendered as JSON lines or for a console.

Shell: configures process-wide logging once, at daemon start. Both structlog loggers and the
standard library's (aiohttp, sentry-sdk) go through one pipeline, so a JSON
deployment never gets a stray plain-text line. It must never let a secret through: values under
secret-looking keys are masked, and URLs lose their password before they are logged or shown
(`redact_url`). It must not decide *what* is logged; callers do.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import structlog

from watchdog.schema import SecretStr

# Key names whose values are credentials wherever they appear in an event, matched as a
# substring (`api_token`, `basic_auth_password`). Keys ending in `_file` are exempt: they hold
# the path of a secret file, which is safe to log and what an operator needs to see.
_SECRET_KEY = re.compile(r"(token|password|passwd|secret|authorization|dsn|api[_-]?key|"
                         r"routing[_-]?key|cookie)", re.IGNORECASE)
_MASK = "**********"
# user:password@ in any URL-looking substring of a message.
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]+):[^@/\s]+@")


def redact_url(url: str) -> str:
    """`https://user:secret@host/x` -> `https://user:***@host/x`; other URLs unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return _MASK
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", value)
    return value


def _redact_processor(_logger: Any, _name: str, event: MutableMapping[str, Any]
                      ) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if _SECRET_KEY.search(key) and not key.endswith("_file") and value is not None:
            event[key] = _MASK
        else:
            event[key] = redact(value)
    return event


class _MalformedRequests(logging.Filter):
    """aiohttp logs a full traceback at ERROR for every request that is not valid HTTP (a NUL
    or a 9 KB line in a header): the client's mistake, answered 400 already. One warning line
    instead, so nobody can fill the log with tracebacks by sending garbage."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and (exc.code or 400) < 500:
            first = " ".join(str(exc.message).split())[:200]
            record.msg = f"malformed HTTP request answered {exc.code or 400}: {first}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def configure(fmt: str = "console", level: str = "INFO", stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to `stream` (stderr) as JSON or console lines."""
    out = stream if stream is not None else sys.stderr
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_processor,
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # One access-log line per Prometheus scrape of /metrics and per probe is noise.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _MalformedRequests) for f in server.filters):
        server.addFilter(_MalformedRequests())
