"""Delivery under failure: 429 with Retry-After, 5xx until it works, a receiver that hangs past the
timeout, permanent 4xx, rate limits, secrets kept out of errors and logs, and restarts (a clean
one and a SIGKILL) with undelivered notifications. Backoff runs on FakeTime: no real waiting
except the one deliberately short HTTP timeout."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import structlog
from fakes_chat import HANG, FakeChat, FakeTime, Harness, Reply, make_alert, running_harness, status
from storage_support import sqlite_storage, storage_at

KEY = "R0UT1NGKEY0123456789abcdefABCDEF"
SECRET = "XoXbSuperSecretToken42"

RULES = f"""
receivers:
  - name: chat
    slack: {{webhook_url: "CHAT/slack/T000/B000/{SECRET}"}}
  - name: pd
    pagerduty: {{routing_key: "{KEY}", url: "CHAT/v2/enqueue"}}
routes:
  - receivers: [chat]
    group_by: [alertname]
    group_wait: 0s
    group_interval: 1m
  - match: {{severity: critical}}
    receivers: [pd]
    group_by: ["..."]
    group_wait: 0s
    group_interval: 1m
"""


@pytest.fixture
async def h(tmp_path: Path, chat: FakeChat) -> AsyncIterator[Harness]:
    async with running_harness(tmp_path, chat, RULES, timeout=0.3) as harness:
        yield harness


async def test_429_retry_after_is_honoured(h: Harness, chat: FakeChat) -> None:
    chat.then("slack", status(429, "rate_limited", Retry_After="7"))
    t0 = h.clock()
    await h.fire(make_alert(at=t0, severity="warning"))
    await h.drain()
    assert chat.requests["slack"] == 2 and len(chat.accepted["slack"]) == 1
    assert chat.times["slack"][0] - t0 >= 7.0
    assert 7.0 in h.clock.slept
    assert h.metric("watchdog_notification_attempt_errors_total", receiver="chat",
                    integration="slack", retryable="true") == 1


async def test_500_five_times_then_200_with_growing_backoff(h: Harness, chat: FakeChat) -> None:
    chat.then("pagerduty", *[status(500, "oops")] * 5)
    t0 = h.clock()
    with structlog.testing.capture_logs() as logs:
        await h.fire(make_alert(at=h.clock()))
        await h.drain()
    assert chat.requests["pagerduty"] == 6 and len(chat.accepted["pagerduty"]) == 1
    assert chat.pages == 1
    waits = [e["retry_in"] for e in logs if e.get("receiver") == "pd" and "retry_in" in e]
    assert len(waits) == 5
    # equal jitter: attempt n waits between 2^(n-1)/2 and 2^(n-1) seconds
    for n, w in enumerate(waits, start=1):
        assert 2 ** (n - 1) / 2 - 0.05 <= w <= 2 ** (n - 1) + 0.05
    assert chat.times["pagerduty"][0] - t0 >= sum(waits) - 0.5  # waited, on the fake clock
    assert h.metric("watchdog_notifications_delivered_total", receiver="pd",
                    integration="pagerduty") == 1
    [row] = await h.handler.outbox.recent(receiver="pd")
    assert row["status"] == "delivered" and row["attempts"] == 6


async def test_a_receiver_hanging_past_its_timeout_is_retried(h: Harness, chat: FakeChat
                                                              ) -> None:
    chat.then("slack", HANG)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await h.fire(make_alert(at=h.clock(), severity="warning"))
    await h.drain()
    assert loop.time() - started < 3.0  # the 0.3s timeout, not the hang
    assert chat.requests["slack"] == 2 and len(chat.accepted["slack"]) == 1
    [row] = await h.handler.outbox.recent(receiver="chat")
    assert row["status"] == "delivered"
    assert row["last_error"] is None or "0.3s" in row["last_error"]


async def test_permanent_4xx_fails_once_visibly_without_leaking_the_url(
        h: Harness, chat: FakeChat) -> None:
    chat.then("slack", status(404, f"no_service for /slack/T000/B000/{SECRET}"))
    with structlog.testing.capture_logs() as logs:
        await h.fire(make_alert(at=h.clock(), severity="warning"))
        await h.drain()
    assert chat.requests["slack"] == 1  # not retried
    [row] = await h.handler.outbox.recent(status="failed")
    assert "HTTP 404" in row["last_error"]
    assert SECRET not in row["last_error"] and "/slack/" not in row["last_error"]
    assert SECRET not in repr(logs)
    assert any(e["event"] == "notification failed permanently" for e in logs)
    assert h.metric("watchdog_notifications_failed_total", receiver="chat",
                    integration="slack") == 1


async def test_408_is_retried_like_429(h: Harness, chat: FakeChat) -> None:
    chat.then("slack", status(408), status(400, "invalid_payload"))
    await h.fire(make_alert(at=h.clock(), severity="warning"))
    await h.drain()
    assert chat.requests["slack"] == 2
    [row] = await h.handler.outbox.recent(receiver="chat")
    assert row["status"] == "failed" and row["attempts"] == 2


async def test_routing_key_never_in_errors(h: Harness, chat: FakeChat) -> None:
    chat.then("pagerduty", status(400, f"bad key {KEY}"))
    with structlog.testing.capture_logs() as logs:
        await h.fire(make_alert(at=h.clock()))
        await h.drain()
    [row] = await h.handler.outbox.recent(receiver="pd")
    assert row["status"] == "failed" and KEY not in row["last_error"]
    assert KEY not in repr(logs)


async def test_slack_is_paced_to_one_message_a_second(h: Harness, chat: FakeChat) -> None:
    await h.fire(*[make_alert(f"Rule{i}", at=h.clock(), severity="warning") for i in range(5)])
    await h.drain()
    times = chat.times["slack"]
    assert len(times) == 5
    assert all(b - a >= 0.99 for a, b in itertools.pairwise(times))


async def test_pagerduty_is_paced_to_120_a_minute(h: Harness, chat: FakeChat) -> None:
    alerts = [make_alert("Page", at=h.clock(), instance=f"i{i}") for i in range(10)]
    await h.fire(*alerts)
    await h.drain()
    times = chat.times["pagerduty"]
    assert len(times) == 10
    assert times[-1] - times[0] >= (10 - 2) / 2.0 - 0.01  # 2/s after a burst of 2


async def test_receiver_removed_by_reload_fails_visibly(h: Harness, chat: FakeChat) -> None:
    chat.then("slack", *[status(503)] * 10_000)  # keeps the row pending until the reload
    await h.fire(make_alert(at=h.clock(), severity="warning"))
    while chat.requests["slack"] < 2:
        await asyncio.sleep(0.005)
    await h.set_rules(RULES.replace("name: chat", "name: chat2").replace("[chat]", "[chat2]"))
    await h.drain()
    failed = await h.handler.outbox.recent(status="failed")
    assert any("no longer configured" in (r["last_error"] or "") for r in failed)


async def test_gives_up_after_max_age(h: Harness, chat: FakeChat) -> None:
    h.handler.outbox.max_age = 600.0
    chat.then("slack", *[status(503)] * 50)
    await h.fire(make_alert(at=h.clock(), severity="warning"))
    await h.drain()
    [row] = await h.handler.outbox.recent(receiver="chat")
    assert row["status"] == "failed" and "gave up after" in row["last_error"]


async def test_restart_resumes_undelivered_notifications(tmp_path: Path, chat: FakeChat
                                                         ) -> None:
    clock = FakeTime()
    chat.clock = clock
    alerts = [make_alert(f"Rule{i}", at=clock(), instance="a") for i in range(3)]
    chat.then("slack", *[status(503)] * 3)
    chat.then("pagerduty", *[Reply(503, accept=True)] * 3)  # accepted, but we never hear so
    async with sqlite_storage(tmp_path / "w.db") as db, aiohttp.ClientSession() as s:
        h1 = await Harness(db, s, clock, chat, RULES).start()

        async def parked(_: float) -> None:
            # park everything behind a backoff that never ends before stop(): FakeTime's own
            # sleep returns at once, so a retry could be delivered before the restart (flaky:
            # 4 pending instead of 6, 2 runs in 8)
            await asyncio.Event().wait()

        h1.handler.outbox.sleep = parked
        await h1.fire(*alerts)
        for _ in range(200):
            if chat.requests["slack"] >= 1 and chat.requests["pagerduty"] >= 1:
                break
            await asyncio.sleep(0.01)
        await h1.stop()
        assert await h1.handler.outbox.pending_count() == 6
    async with sqlite_storage(tmp_path / "w.db") as db, aiohttp.ClientSession() as s:
        h2 = await Harness(db, s, clock, chat, RULES).start()
        clock.advance(3600 * 2)  # past any backoff
        h2.handler.outbox.kick_all()
        await h2.drain()
        await h2.tick(120)  # the pipeline sees no news: the log says all was decided
        await h2.stop()
    assert len(chat.accepted["slack"]) == 3
    assert sorted(m["text"].split(" · ")[1].split(" — ")[0] for m in chat.accepted["slack"]) == [
        "Rule0", "Rule1", "Rule2"]
    assert chat.pages == 3  # PagerDuty saw the first tries too, and deduplicated the re-sends


CHILD = """
import asyncio, sys
sys.path.insert(0, {tests!r})
import aiohttp
from fakes_chat import FakeChat, FakeTime, Harness, make_alert
from watchdog.storage import open_storage

async def main():
    chat = FakeChat()
    chat.port = {port}
    clock = FakeTime({now})
    db = await open_storage({db!r})
    async with aiohttp.ClientSession() as s:
        h = await Harness(db, s, clock, chat, open({rules!r}).read(), timeout=3600).start()
        await h.fire(*[make_alert(f"Rule{{i}}", at=clock(), instance="a") for i in range(3)])
        print("enqueued", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.mark.slow
async def test_sigkill_with_undelivered_notifications(tmp_path: Path, chat: FakeChat,
                                                      state_url: str) -> None:
    """A daemon killed mid-delivery: every notification arrives after the restart, PagerDuty
    opens each incident once, Slack gets each message once (it never answered before)."""
    clock = FakeTime()
    chat.clock = clock
    chat.then("slack", HANG)  # the first Slack request never returns
    chat.then("pagerduty", Reply(hang=True, accept=True))  # PagerDuty took it, then hung
    (tmp_path / "rules.yml").write_text(RULES)
    script = CHILD.format(tests=str(Path(__file__).parent), port=chat.port, now=clock(),
                          db=state_url, rules=str(tmp_path / "rules.yml"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(script), stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.strip() == b"enqueued"
        for _ in range(500):
            if chat.requests["slack"] >= 1 and chat.requests["pagerduty"] >= 1:
                break
            await asyncio.sleep(0.01)
        assert chat.requests["slack"] == 1 and chat.requests["pagerduty"] == 1
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    async with storage_at(state_url) as db, aiohttp.ClientSession() as s:
        h = await Harness(db, s, clock, chat, RULES).start()
        await h.drain()
        await h.tick(120)
        await h.stop()
    assert sorted(m["text"].split(" · ")[1].split(" — ")[0] for m in chat.accepted["slack"]) == [
        "Rule0", "Rule1", "Rule2"]
    assert len(chat.accepted["pagerduty"]) == 4  # one re-sent after the restart…
    assert chat.pages == 3  # …deduplicated by dedup_key: nobody paged twice
