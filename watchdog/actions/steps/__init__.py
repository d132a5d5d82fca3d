"""The step kinds an action is made of, one module each, behind one signature:
`async run(step_config, subject, env) -> StepResult`.

Shell: each step does its own I/O. A step must not persist anything, emit notifications or
decide whether it may run — the runner does that around it — and must never raise for an
expected failure (a refused request, a non-zero exit): it returns `StepResult(ok=False, ...)`.
`wait` is not here as an executor: waiting is the runner's job, because only the runner can
persist its deadline and resume it (see `watchdog.actions.steps.wait` for the decision logic).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp

    from watchdog.actions.kube import KubeClient
    from watchdog.handlers import MqttPublisher

# What the store and the API keep of a step's output: enough to see why a script failed, small
# enough that a chatty script cannot bloat the database.
MAX_OUTPUT = 16 * 1024


@dataclass(frozen=True)
class StepResult:
    ok: bool
    detail: str  # one line for notifications and logs; never a secret
    output: str = ""  # what the step said (response body, command output), truncated
    # Whether trying again may succeed where this try failed: a connection error, a timeout,
    # HTTP 5xx or 429. The runner retries only steps configured with `retry:`.
    retryable: bool = False
    retry_after: float | None = None  # seconds the server asked for (HTTP Retry-After)


def retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


def parse_retry_after(value: str | None, now: float) -> float | None:
    """HTTP Retry-After: delay-seconds or an HTTP-date (RFC 9110 10.2.3); None when absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


@dataclass
class StepEnv:
    """What steps may use, handed over by the runner."""

    session: aiohttp.ClientSession
    environ: Mapping[str, str]
    external_url: str = ""
    mqtt: MqttPublisher | None = None
    kube: Callable[[], KubeClient] | None = None  # built on first use: most rule sets need none
    cwd: str | None = None
    clock: Callable[[], float] | None = None  # the daemon's (for an HTTP-date Retry-After)

    def now(self) -> float:
        import time

        return self.clock() if self.clock is not None else time.time()


def truncate(text: str, limit: int = MAX_OUTPUT) -> str:
    """Head and tail: the start says what ran, the end says how it failed."""
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head
    return f"{text[:head]}\n… [{len(text) - limit} characters elided] …\n{text[-tail:]}"
