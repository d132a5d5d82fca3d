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


@dataclass
class StepEnv:
    """What steps may use, handed over by the runner."""

    session: aiohttp.ClientSession
    environ: Mapping[str, str]
    external_url: str = ""
    mqtt: MqttPublisher | None = None
    kube: Callable[[], KubeClient] | None = None  # built on first use: most rule sets need none
    cwd: str | None = None


def truncate(text: str, limit: int = MAX_OUTPUT) -> str:
    """Head and tail: the start says what ran, the end says how it failed."""
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head
    return f"{text[:head]}\n… [{len(text) - limit} characters elided] …\n{text[-tail:]}"
