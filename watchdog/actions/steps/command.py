"""The `command` step: run a program from an argv list — never through a shell — with a timeout,
the alert handed over in environment variables, output captured and truncated; exit 0 is success.

Shell: starts a process. What it must not do, and why:
- never template argv: alert labels are data from the metrics, and a label value such as
  `--help` or `; rm -rf /` must not become an option or a command. The alert reaches the program
  only through its environment (`WATCHDOG_ALERT_NAME`, `WATCHDOG_ALERT_LABELS` as JSON,
  `WATCHDOG_ALERT_VALUE`, `WATCHDOG_LABEL_<name>`, ...); `${VAR}` in argv (configuration, not
  data) is expanded, one argument stays one argument;
- never hand the daemon's own environment to the program: it holds the API token and other
  secrets. The program gets a minimal environment (PATH, HOME, LANG, TZ ...), the step's `env:`
  (where `${VAR}` passes what it needs on purpose) and the alert variables;
- never keep a secret it passed: every `${VAR}` value it expanded is redacted from the output;
- never leave a process behind: on timeout, and once the program has exited, its whole
  process group is killed (a background child would otherwise outlive the step unobserved).
A relative program path resolves against the daemon's working directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import time

from watchdog.actions.expand import ExpandError, Subject, expand_env, shown_env
from watchdog.actions.steps import MAX_OUTPUT, StepEnv, StepResult, truncate
from watchdog.durations import format_duration
from watchdog.envvars import Redactor, expanded_values
from watchdog.gocompat import rfc3339
from watchdog.model import CommandStep

# Inherited from the daemon because programs need them to work at all, and they hold no secret.
PASSED_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER",
                  "KUBECONFIG")

CHUNK = 64 * 1024


def alert_environment(subject: Subject, external_url: str = "") -> dict[str, str]:
    env = {
        "WATCHDOG_ACTION": subject.action,
        "WATCHDOG_RUN_ID": subject.run_id,
        "WATCHDOG_TRIGGER": subject.trigger,
        "WATCHDOG_ALERT_NAME": subject.alertname,
        "WATCHDOG_ALERT_LABELS": json.dumps(dict(subject.labels), sort_keys=True),
        "WATCHDOG_ALERT_ANNOTATIONS": json.dumps(dict(subject.annotations), sort_keys=True),
        "WATCHDOG_ALERT_VALUE": "" if subject.value is None or math.isnan(subject.value)
        else repr(subject.value),
        "WATCHDOG_ALERT_FINGERPRINT": subject.fingerprint or "",
        "WATCHDOG_ALERT_GROUP": subject.group or "",
        "WATCHDOG_ALERT_STARTS_AT": "" if subject.active_at is None else
        rfc3339(subject.active_at),
        "WATCHDOG_EXTERNAL_URL": external_url,
    }
    for name, value in subject.labels.items():
        # Label names are [a-zA-Z_][a-zA-Z0-9_]*, which are valid environment variable names.
        env[f"WATCHDOG_LABEL_{name}"] = value
    return env


def build_environment(step: CommandStep, subject: Subject, env: StepEnv) -> dict[str, str]:
    out = {k: env.environ[k] for k in PASSED_THROUGH if k in env.environ}
    out.update({k: expand_env(v, env.environ) for k, v in step.env.items()})
    out.update(alert_environment(subject, env.external_url))
    return out


async def _read_all(stream: asyncio.StreamReader) -> str:
    """Everything the program prints, keeping only the head and tail of a flood."""
    head = bytearray()
    tail = bytearray()
    dropped = 0
    half = MAX_OUTPUT
    while chunk := await stream.read(CHUNK):
        if len(head) < half:
            take = half - len(head)
            head += chunk[:take]
            chunk = chunk[take:]
        tail += chunk
        if len(tail) > half:
            dropped += len(tail) - half
            del tail[: len(tail) - half]
    text = head.decode("utf-8", "replace")
    if dropped:
        text += f"\n… [{dropped} bytes elided] …\n"
    return text + tail.decode("utf-8", "replace")


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def run(step: CommandStep, subject: Subject, env: StepEnv) -> StepResult:
    result = await _run(step, subject, env)
    # A program may print what it was given (`set -x`, a usage error quoting argv, `env`): the
    # `${VAR}` values handed to it never reach the stored output.
    redact = Redactor(v for text in (*step.argv, *step.env.values())
                      for v in expanded_values(text, env.environ))
    if not redact:
        return result
    return StepResult(result.ok, redact(result.detail), redact(result.output))


async def _run(step: CommandStep, subject: Subject, env: StepEnv) -> StepResult:
    shown_argv = [shown_env(a) for a in step.argv]
    what = " ".join(shown_argv)
    try:
        argv = [expand_env(a, env.environ) for a in step.argv]
        child_env = build_environment(step, subject, env)
    except ExpandError as e:
        return StepResult(False, f"{what}: {e}")
    started = time.perf_counter()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=child_env, cwd=env.cwd,
            # Its own process group, so a timeout kills the script and everything it started.
            start_new_session=True,
        )
    except OSError as e:
        return StepResult(False, f"{what}: cannot start: {e.strerror or e}")
    assert proc.stdout is not None
    reader = asyncio.ensure_future(_read_all(proc.stdout))
    try:
        code = await asyncio.wait_for(proc.wait(), timeout=step.timeout)
    except TimeoutError:
        _kill_group(proc)
        await proc.wait()
        output = await _drain(reader)
        return StepResult(False, f"{what}: timed out after {format_duration(step.timeout)}",
                          truncate(output))
    except asyncio.CancelledError:
        _kill_group(proc)
        reader.cancel()
        raise
    # The program is gone; a grandchild it left running may still hold the pipe open.
    _kill_group(proc)
    output = await _drain(reader)
    took = time.perf_counter() - started
    if code == 0:
        return StepResult(True, f"{what}: exit 0 after {took:.1f}s", truncate(output))
    how = f"killed by signal {-code}" if code < 0 else f"exit {code}"
    return StepResult(False, f"{what}: {how}", truncate(output))


async def _drain(reader: asyncio.Future[str], grace: float = 2.0) -> str:
    try:
        return await asyncio.wait_for(reader, timeout=grace)
    except TimeoutError:
        return "(output not collected: the pipe stayed open)"

