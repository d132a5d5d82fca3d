"""The README's first command keeps working: the demo story ends in a resolved alert after a
staged rollback, with the chat messages on screen."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
