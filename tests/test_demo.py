"""The README's first command keeps working: the demo story ends in a resolved alert after a
staged rollback, with the chat messages on screen — and, on PostgreSQL, across a restart."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from watchdog.logs import redact_url

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.prometheus
@pytest.mark.slow
def test_demo_story_completes(prometheus_binary: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "demo.run", "--exit"], cwd=ROOT,
                          capture_output=True, text=True, timeout=400)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-2000:]
    assert "🔴 FIRING · CheckoutErrorRate" in out
    assert "staged-rollback" in out
    assert "✅ RESOLVED · CheckoutErrorRate" in out
    assert "recovered: alert fired, staged rollback ran (recommendations-v3 off, checkout-v2 off)" \
        in out
    assert "/api/v1/alerts" in out


@pytest.mark.prometheus
@pytest.mark.slow
async def test_demo_story_on_postgresql_survives_a_restart(prometheus_binary: str,
                                                           postgres_url: str) -> None:
    """The same story with STATE_URL=postgresql://…, and the watchdog restarted mid-rollback on
    the same database: the alert is still firing with the same incident and run, one firing
    message, each rollback step done once (the demo checks these from outside and says so)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "demo.run", "--exit", "--restart", cwd=ROOT,
        env={**os.environ, "WATCHDOG_STATE_URL": postgres_url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 400)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out, err = stdout.decode(), stderr.decode()
    assert proc.returncode == 0, out[-4000:] + err[-2000:]
    assert f"state: {redact_url(postgres_url)}" in out
    assert "restarting the watchdog on the same state" in out
    assert "alert still firing since" in out and "same incident" in out
    assert "after the restart: one firing message, each rollback step done once, " \
        "one run for the incident" in out
    assert out.count("🔴 FIRING · CheckoutErrorRate") == 1
    assert "✅ RESOLVED · CheckoutErrorRate" in out
    assert "recovered: alert fired, staged rollback ran (recommendations-v3 off, checkout-v2 off)" \
        in out
