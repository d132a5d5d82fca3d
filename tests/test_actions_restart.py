"""SIGKILL during a `wait` step, then a restart: the sequence resumes at the deadline it had, and
no step runs twice. The first process is a real one, killed for real; the restarted handler runs
in the test on a fake clock so the 30-minute wait passes in milliseconds."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from storage_support import on_events_tx, sqlite_storage
from test_daemon_support import recording_paths, serve

from watchdog.actions.handler import ActionsHandler
from watchdog.actions.testing import RecordingSink, StaticAlerts, eventually, make_context
from watchdog.labels import fingerprint
from watchdog.rulesdir import build
from watchdog.state import Alert
from watchdog.testing import FakeSource, FixedClock

RULES = """
groups:
  - name: checkout
    rules:
      - alert: HighErrorRate
        expr: error_ratio
        threshold: "> 0.1"
        actions: [staged]
actions:
  staged:
    steps:
      - webhook: {url: "${HOOK}/stage1", method: PATCH, json: {enabled: false}}
      - wait: {for: 30m, until: resolved}
      - webhook: {url: "${HOOK}/stage2", method: PATCH, json: {enabled: false}}
"""

LABELS = {"alertname": "HighErrorRate", "service": "checkout"}

# The first daemon: the real handler, a real clock, one alert that starts firing; then it
# waits (30 minutes) until the test kills it.
FIRST = """
import asyncio, sys, time
import aiohttp
from watchdog.actions.handler import ActionsHandler
from watchdog.actions.testing import StaticAlerts, make_context
from watchdog.rulesdir import build
from watchdog.state import Alert, Event
from watchdog.storage import open_storage
from watchdog.testing import FakeSource

async def main(db_path, rules, labels, fp):
    alert = Alert(rule="HighErrorRate", group="checkout", fingerprint=fp, labels=labels,
                  annotations={}, state="firing", active_at=time.time(), value=0.3,
                  fired_at=time.time())
    view = StaticAlerts()
    view.set(alert)
    db = await open_storage(f"sqlite:///{db_path}")
    async with aiohttp.ClientSession() as session:
        h = ActionsHandler(make_context(db, session, FakeSource(), alerts=view))
        await h.on_rules(build({"r.yml": rules.encode()}))
        await h.start()
        async with db.transaction() as tx:
            await h.on_events(tx, [Event("firing", time.time(), alert)], time.time())
        print("triggered", flush=True)
        await asyncio.sleep(3600)

import json
args = json.loads(sys.argv[1])
asyncio.run(main(**args))
"""


@pytest.fixture
async def hook(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[list[str], str]]:
    calls: list[str] = []
    async with serve(recording_paths(calls)) as url:
        monkeypatch.setenv("HOOK", url)
        yield calls, url


def wait_row(db_path: Path) -> tuple[float, float] | None:
    """(started_at, deadline) of the running wait step, read as another process would."""
    if not db_path.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1) as c:
            row = c.execute("SELECT started_at, deadline FROM action_steps "
                            "WHERE kind = 'wait' AND status = 'running'").fetchone()
    except sqlite3.OperationalError:
        return None  # tables not created yet
    return (row[0], row[1]) if row else None


async def test_sigkill_during_wait_then_restart_resumes_at_the_deadline(
        tmp_path: Path, hook: tuple[list[str], str]) -> None:
    calls, url = hook
    db_path = tmp_path / "state.db"
    fp = fingerprint(LABELS)
    script = tmp_path / "first.py"
    script.write_text(FIRST)
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps({"db_path": str(db_path), "rules": RULES,
                                                  "labels": LABELS, "fp": fp})],
        env={**os.environ, "HOOK": url}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        row = None
        deadline = time.monotonic() + 60
        while row is None:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the first process never reached the wait"
            await asyncio.sleep(0.05)
            row = wait_row(db_path)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    started, wait_deadline = row
    assert wait_deadline == pytest.approx(started + 1800)
    assert calls == ["/stage1"]

    # Restart: same database, the same incident still firing, a clock we can move.
    with sqlite3.connect(db_path) as c:
        (active_at,) = c.execute("SELECT active_at FROM action_runs").fetchone()
    clock = FixedClock(started + 120)
    view = StaticAlerts()
    view.set(Alert(rule="HighErrorRate", group="checkout", fingerprint=fp, labels=LABELS,
                   annotations={}, state="firing", active_at=active_at, value=0.3,
                   fired_at=active_at))
    sink = RecordingSink()
    async with aiohttp.ClientSession() as session, sqlite_storage(db_path) as db:
        h = ActionsHandler(make_context(db, session, FakeSource(), alerts=view, clock=clock,
                                        sinks=[sink]))
        await h.start()  # the daemon's order: start, then the rule set (resuming waits for it)
        await h.on_rules(build({"r.yml": RULES.encode()}))
        [run] = await h.runs()
        assert run["status"] == "running" and run["steps"][1]["deadline"] == wait_deadline
        clock.now = wait_deadline - 1
        await on_events_tx(h, [], clock.now)
        await asyncio.sleep(0.05)
        assert calls == ["/stage1"]  # the wait kept its deadline
        clock.now = wait_deadline + 1
        await on_events_tx(h, [], clock.now)

        async def done() -> bool:
            return bool((await h.runs())[0]["status"] == "succeeded")
        await eventually(done)
        [run] = await h.runs()
        await h.stop()
    assert calls == ["/stage1", "/stage2"]  # stage 1 was not repeated
    assert [(s["index"], s["status"]) for s in run["steps"]] == \
        [(0, "succeeded"), (1, "succeeded"), (2, "succeeded")]
    assert run["steps"][1]["finishedAt"] == wait_deadline + 1
