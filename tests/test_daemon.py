"""The daemon in-process: restart restore, the blind watchdog, scheduling (aligned slots, no
overlap, missed iterations counted), persistence before handlers, shutdown, startup errors.

Fast: time is a FixedClock wherever the scheduler is not the subject; where it is, intervals are
fractions of a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
from test_daemon_support import Recorder, get_json, settings, write

from watchdog.daemon import (
    DATASOURCE_DOWN,
    Daemon,
    StartupError,
    group_offset,
    load_settings,
    run_daemon,
)
from watchdog.evaluate import Sample
from watchdog.source import QueryError
from watchdog.state import Event
from watchdog.storage import Tx
from watchdog.testing import FakeSource, FixedClock, sample

M = 60.0
RULES = """
groups:
  - name: g
    interval: 1m
    rules:
      - {alert: Slow, expr: slow > 1, for: 10m}
      - {alert: Now, expr: now > 1}
      - {alert: Held, expr: held > 1, keep_firing_for: 30m}
"""


def firing_source() -> FakeSource:
    return FakeSource({e: [sample(5.0, __name__=e.split()[0], instance="x")]
                       for e in ("slow > 1", "now > 1", "held > 1")})


async def test_restart_restores_for_progress_and_firing_state(tmp_path: Path) -> None:
    s = settings(tmp_path, for_grace_period=60.0, outage_tolerance=3600.0)
    write(s.rules_dir / "r.yml", RULES)
    clock, src = FixedClock(100_000.0), firing_source()
    first = Recorder()
    async with Daemon(s, clock=clock, source=src, handlers=[first], plugins=False,
                      schedule=False) as d:
        for _ in range(4):  # 3 minutes of `for: 10m` spent
            await d.evaluate_all()
            clock.advance(M)
        before = {a.rule: a for a in d.alerts()}
    assert first.kinds("Now") == ["pending", "firing"]
    assert before["Slow"].state == "pending"
    last_eval = clock.now - M

    clock.advance(5 * M)  # down for five minutes
    second = Recorder()
    async with Daemon(s, clock=clock, source=src, handlers=[second], plugins=False,
                      schedule=False) as d:
        restored = {a.rule: a for a in d.alerts()}
        # pending: the 3 minutes spent count, the downtime does not (Prometheus's rule)
        assert restored["Slow"].active_at == before["Slow"].active_at + (clock.now - last_eval)
        assert restored["Now"] == before["Now"]
        await d.evaluate_all()
        assert second.kinds("Now") == [] and second.kinds("Held") == []  # no second "firing"
        # seven more minutes of pending -> fires, not ten
        clock.advance(7 * M)
        await d.evaluate_all()
        assert second.kinds("Slow") == ["firing"]
        _status, body = await get_json(f"{d.http_url}/api/v1/alerts")
        now_alert = next(a for a in body["data"]["alerts"]
                         if a["labels"]["alertname"] == "Now")
        assert now_alert["activeAt"] == "1970-01-02T03:46:40Z"  # the first run's activeAt


async def test_keep_firing_for_survives_a_restart(tmp_path: Path) -> None:
    s = settings(tmp_path)
    write(s.rules_dir / "r.yml", RULES)
    clock, src = FixedClock(0.0), firing_source()
    async with Daemon(s, clock=clock, source=src, plugins=False, schedule=False) as d:
        await d.evaluate_all()
        clock.advance(M)
        src.answers["held > 1"] = []  # the series goes away: keep_firing_for holds the alert
        await d.evaluate_all()
        held = next(a for a in d.alerts() if a.rule == "Held")
        assert held.state == "firing" and held.keep_firing_since == M
    clock.advance(10 * M)
    rec = Recorder()
    async with Daemon(s, clock=clock, source=src, handlers=[rec], plugins=False,
                      schedule=False) as d:
        await d.evaluate_all()
        assert rec.kinds("Held") == []  # 11 of 30 minutes held: still firing
        clock.advance(20 * M)
        await d.evaluate_all()
        assert rec.kinds("Held") == ["resolved"]  # the hold counted from before the restart


async def test_state_older_than_the_outage_tolerance_is_not_restored(tmp_path: Path) -> None:
    s = settings(tmp_path, outage_tolerance=600.0)
    write(s.rules_dir / "r.yml", RULES)
    clock, src = FixedClock(0.0), firing_source()
    async with Daemon(s, clock=clock, source=src, plugins=False, schedule=False) as d:
        await d.evaluate_all()
    clock.advance(3600)
    rec = Recorder()
    async with Daemon(s, clock=clock, source=src, handlers=[rec], plugins=False,
                      schedule=False) as d:
        # the stale firing ones were resolved at start (and told to the handlers); the stale
        # pending one is gone
        assert sorted((e.kind, e.alert.rule) for e in rec.events) == [
            ("resolved", "Held"), ("resolved", "Now")]
        assert not any(a.rule == "Slow" for a in d.alerts())


async def test_datasource_down_fires_nothing_resolves_then_recovers(tmp_path: Path) -> None:
    s = settings(tmp_path, datasource_down_after=3)
    write(s.rules_dir / "r.yml", RULES)
    clock, src = FixedClock(0.0), firing_source()
    rec = Recorder()
    async with Daemon(s, clock=clock, source=src, handlers=[rec], plugins=False,
                      schedule=False) as d:
        await d.evaluate_all()
        firing_before = {a.fingerprint for a in d.alerts() if a.state == "firing"}
        for expr in list(src.answers):
            src.fail(expr, "http://prometheus:9090/api/v1/query: ClientConnectorError")
        rec.events.clear()
        for i in range(3):
            clock.advance(M)
            await d.evaluate_all()
            if i < 2:
                assert rec.events == []
        assert [(e.kind, e.alert.rule) for e in rec.events] == [
            ("pending", DATASOURCE_DOWN), ("firing", DATASOURCE_DOWN)]
        down = rec.events[-1].alert
        assert down.labels == {"alertname": DATASOURCE_DOWN, "severity": "critical",
                               "datasource": "http://localhost:9090"}
        assert {a.fingerprint for a in d.alerts() if a.state == "firing"} == (
            firing_before | {down.fingerprint})
        status, text = await get_json(f"{d.http_url}/readyz")
        reason = text["reason"]  # /readyz answers JSON; the reason text is unchanged
        assert status == 503 and "not answering" in reason and "ClientConnectorError" in reason
        assert "3 consecutive evaluations failed" in reason
        # more failures: still one incident, nothing else happens
        clock.advance(M)
        await d.evaluate_all()
        assert rec.kinds(DATASOURCE_DOWN) == ["pending", "firing"]
        # back
        for expr in list(src.answers):
            src.answers[expr] = [sample(5.0, instance="x")]
        clock.advance(M)
        await d.evaluate_all()
        assert rec.kinds(DATASOURCE_DOWN) == ["pending", "firing", "resolved"]
        assert [e.kind for e in rec.events if e.alert.rule != DATASOURCE_DOWN] == []
        status, text = await get_json(f"{d.http_url}/readyz")
        assert status == 200


async def test_one_broken_rule_is_not_a_blind_watchdog(tmp_path: Path) -> None:
    s = settings(tmp_path, datasource_down_after=1)
    write(s.rules_dir / "r.yml", RULES)
    src = firing_source()
    src.fail("slow > 1", "bad_data: parse error")
    async with Daemon(s, clock=FixedClock(0.0), source=src, plugins=False,
                      schedule=False) as d:
        with structlog.testing.capture_logs() as logs:
            await d.evaluate_all()
        assert not d.builtin_alerts
        failed = [e for e in logs if e["event"] == "rule evaluation failed"]
        assert failed[0]["rule"] == "Slow" and failed[0]["log_level"] == "error"
        _, body = await get_json(f"{d.http_url}/api/v1/status")
        assert body["data"]["lastErrors"][0]["rule"] == "Slow"


async def test_handlers_see_events_in_the_transaction_that_saves_them(tmp_path: Path) -> None:
    s = settings(tmp_path)
    write(s.rules_dir / "r.yml", RULES)
    seen: list[str] = []
    holder: list[Daemon] = []

    async def check(tx: Tx, events: Sequence[Event]) -> None:
        stored = await tx.alerts.load()
        for e in events:
            if e.kind == "firing":
                rows = stored[f"{s.rules_dir / 'r.yml'};g"].rules[e.alert.rule].alerts
                assert rows[e.alert.fingerprint].state == "firing"
                seen.append(e.alert.rule)

    d = Daemon(s, clock=FixedClock(0.0), source=firing_source(), handlers=[Recorder(check)],
               plugins=False, schedule=False)
    holder.append(d)
    async with d:
        await d.evaluate_all()
    assert sorted(seen) == ["Held", "Now"]


async def test_quiet_groups_write_nothing(tmp_path: Path) -> None:
    s = settings(tmp_path)
    write(s.rules_dir / "r.yml", RULES)
    async with Daemon(s, clock=FixedClock(0.0), source=FakeSource(), plugins=False,
                      schedule=False) as d:
        opened = 0
        real = d.storage.transaction

        def counting() -> Any:
            nonlocal opened
            opened += 1
            return real()

        d.storage.transaction = counting  # type: ignore[method-assign]
        for _ in range(5):
            await d.evaluate_all()
        assert opened == 0


class SlowSource:
    """Answers after `delay`, records each `at` and the highest number of queries in flight."""

    def __init__(self, delay: float) -> None:
        self.delay, self.ats, self.inflight, self.max_inflight = delay, [], 0, 0
        self.ats: list[float]

    async def query(self, expr: str, at: float) -> list[Sample]:
        if expr == "vector(1)":
            return []  # the readiness probe, not an evaluation
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        self.ats.append(at)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.inflight -= 1
        return []


ONE = "groups: [{name: fast, interval: 200ms, rules: [{alert: A, expr: a > 1}]}]\n"


async def test_ticks_are_aligned_to_the_interval(tmp_path: Path) -> None:
    s = settings(tmp_path)
    write(s.rules_dir / "r.yml", ONE)
    src = SlowSource(0.0)
    async with Daemon(s, source=src, plugins=False) as d:
        await asyncio.sleep(1.3)
        key = next(iter(d.runtimes))
    offset = group_offset(key, 0.2)
    assert len(src.ats) >= 4
    for at in src.ats:
        phase = (at - offset) % 0.2
        assert min(phase, 0.2 - phase) < 1e-6, at
    gaps = [round(b - a, 6) for a, b in zip(src.ats, src.ats[1:], strict=False)]
    assert all(g == 0.2 for g in gaps), gaps


async def test_slow_evaluations_are_missed_and_counted_not_piled_up(tmp_path: Path) -> None:
    s = settings(tmp_path)
    write(s.rules_dir / "r.yml", ONE)
    src = SlowSource(0.5)  # every evaluation takes 2.5 intervals
    async with Daemon(s, source=src, plugins=False) as d:
        await asyncio.sleep(1.8)
        missed = d.metrics.missed_iterations.labels("fast")._value.get()
        evaluated = d.metrics.evaluations.labels("fast")._value.get()
    assert src.max_inflight == 1
    assert 2 <= evaluated <= 4
    assert missed >= 2


async def evaluating(tmp_path: Path, shutdown_timeout: float, src: SlowSource, pause: float,
                     **kwargs: Any) -> tuple[Daemon, asyncio.Task[Any]]:
    """A started daemon running ONE, `pause` seconds into an evaluation (the returned task)."""
    s = settings(tmp_path, shutdown_timeout=shutdown_timeout)
    write(s.rules_dir / "r.yml", ONE)
    d = Daemon(s, source=src, plugins=False, schedule=False, **kwargs)
    await d.start()
    tick = asyncio.create_task(d.evaluate(next(iter(d.runtimes))))
    await asyncio.sleep(pause)
    return d, tick


async def test_shutdown_finishes_the_evaluation_in_flight(tmp_path: Path) -> None:
    rec = Recorder()
    d, tick = await evaluating(tmp_path, 3.0, SlowSource(0.5), 0.1, handlers=[rec])
    started = time.monotonic()
    await d.stop()
    assert time.monotonic() - started < 3.0
    assert (await tick) is not None  # finished, not cancelled
    assert rec.stopped


async def test_shutdown_is_bounded_by_the_timeout(tmp_path: Path) -> None:
    d, tick = await evaluating(tmp_path, 1.0, SlowSource(30.0), 0.05)
    started = time.monotonic()
    await d.stop()
    assert time.monotonic() - started < 1.5
    with pytest.raises(asyncio.CancelledError):
        await tick


@pytest.mark.parametrize(("env", "named"), [
    ({"WATCHDOG_EVALUATION_INTERVAL": "soon"}, "WATCHDOG_EVALUATION_INTERVAL"),
    ({"WATCHDOG_HTTP_LISTEN": "localhost"}, "WATCHDOG_HTTP_LISTEN"),
    ({"WATCHDOG_STATE_URL": "mysql://db/w"}, "WATCHDOG_STATE_URL"),
    ({"WATCHDOG_LOG_FORMAT": "xml"}, "WATCHDOG_LOG_FORMAT"),
    ({"WATCHDOG_DATASOURCE_DOWN_AFTER": "0"}, "WATCHDOG_DATASOURCE_DOWN_AFTER"),
    ({"WATCHDOG_PROMETHEUS_URL": "prometheus:9090"}, "WATCHDOG_PROMETHEUS_URL"),
    ({"WATCHDOG_API_TOKEN": "s3cret", "WATCHDOG_RULES_DIR": "/nonexistent"},
     "WATCHDOG_RULES_DIR"),
])
def test_invalid_settings_name_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str],
                                           env: dict[str, str], named: str) -> None:
    (tmp_path / "rules").mkdir()
    monkeypatch.setenv("WATCHDOG_RULES_DIR", str(tmp_path / "rules"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(StartupError, match=named):
        load_settings(None)
    assert run_daemon(None) == 2
    err = capsys.readouterr().err
    assert named in err and "s3cret" not in err


async def test_a_busy_port_is_a_startup_error(tmp_path: Path) -> None:
    s = settings(tmp_path)
    async with Daemon(s, source=FakeSource(), plugins=False, schedule=False) as first:
        assert first.http_url is not None
        port = first.http_url.rsplit(":", 1)[1]
        (tmp_path / "two").mkdir()
        s2 = settings(tmp_path / "two", http_listen=f"127.0.0.1:{port}")
        with pytest.raises(StartupError, match="WATCHDOG_HTTP_LISTEN"):
            await Daemon(s2, source=FakeSource(), plugins=False, schedule=False).start()


async def test_query_failures_are_measured(tmp_path: Path) -> None:
    s = settings(tmp_path)
    write(s.rules_dir / "r.yml", RULES)
    src = firing_source()
    src.answers["now > 1"] = QueryError("boom")
    async with Daemon(s, clock=FixedClock(0.0), source=src, plugins=False,
                      schedule=False) as d:
        await d.evaluate_all()
        assert d.metrics.query_errors._value.get() == 1
        assert d.metrics.evaluation_failures.labels("g")._value.get() == 1


async def test_batched_queries_are_counted(tmp_path: Path) -> None:
    s = settings(tmp_path)
    write(s.rules_dir / "r.yml", """
groups:
  - name: g
    rules:
      - {alert: A, expr: 'up{job="a"} == 0'}
      - {alert: B, expr: 'up{job="b"} == 0'}
      - {alert: C, expr: 'up{job="c"} != 1'}
""")
    src = FakeSource()
    async with Daemon(s, clock=FixedClock(0.0), source=src, plugins=False,
                      schedule=False) as d:
        await d.evaluate_all()
        asked = sorted(e for e, _ in src.calls if "job" in e)
        assert asked == ['up{job="c"} != 1', 'up{job=~"a|b"} == 0']
        assert d.metrics.queries_batched._value.get() == 2


def test_logs_never_carry_secrets() -> None:
    from watchdog.logs import _redact_processor, redact_url
    from watchdog.schema import SecretStr

    assert redact_url("https://u:pw@prom:9090/x?q=1") == "https://u:***@prom:9090/x?q=1"
    assert redact_url("http://prom:9090") == "http://prom:9090"
    event = _redact_processor(None, "info", {
        "event": "calling http://bob:hunter2@host/api", "api_token": "abc",
        "token_file": "/etc/secret/token", "dsn": SecretStr("https://k@sentry/1"),
        "headers": "x", "password": None})
    assert event["event"] == "calling http://bob:***@host/api"
    assert event["api_token"] == "**********" and event["dsn"] == "**********"
    assert event["token_file"] == "/etc/secret/token" and event["password"] is None
