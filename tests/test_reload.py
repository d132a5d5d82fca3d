"""Carrying state over a reload and a restart (pure), and hot reload through all three
triggers — polling, SIGHUP, `POST /-/reload` — for added, changed, removed and broken files."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
import structlog
from test_daemon_support import Recorder, get_json, post_json, settings, wait_for, write

from watchdog.daemon import Daemon
from watchdog.engine import GroupRuntime
from watchdog.reload import carry_over, restore, restore_alerts, rule_sig
from watchdog.rulesdir import build
from watchdog.state import Alert
from watchdog.storage.records import StoredGroup, StoredRule
from watchdog.testing import FakeSource, FixedClock, sample

M = 60.0


def runtimes(**files: str) -> dict[str, GroupRuntime]:
    rs = build({name: text.encode() for name, text in files.items()})
    assert not rs.rejected, [str(p) for st in rs.rejected for p in st.problems]
    return {f"{f};{g.name}": GroupRuntime.new(f, g) for f, g in rs.groups()}


def pending(fp: str = "a", active_at: float = 0.0, last_seen: float = 0.0) -> Alert:
    return Alert("R", "g", fp, {"alertname": "R"}, {}, "pending", active_at, 1.0,
                 last_seen_at=last_seen)


def firing(fp: str = "a", active_at: float = 0.0, last_seen: float = 0.0,
           keep_since: float | None = None) -> Alert:
    return Alert("R", "g", fp, {"alertname": "R"}, {}, "firing", active_at, 1.0,
                 fired_at=active_at, last_seen_at=last_seen, keep_firing_since=keep_since)


# ---- restart restore: Prometheus's RestoreForState ----------------------------------------------

TOL, GRACE = 60 * M, 10 * M


@pytest.mark.parametrize(("hold", "active_at", "down_at", "ts", "expected"), [
    # 10m of 30m spent, down 5m: the downtime does not count -> activeAt moves 5m later
    (30 * M, 0.0, 10 * M, 15 * M, 5 * M),
    # 25m of 30m spent: 5m remaining < grace -> fires exactly one grace period after restart
    (30 * M, 0.0, 25 * M, 30 * M, 30 * M + GRACE - 30 * M),
    # `for` shorter than the grace period: Prometheus restores nothing, the wait starts afresh
    (5 * M, 0.0, 3 * M, 4 * M, 4 * M),
])
def test_restore_pending_like_prometheus(hold: float, active_at: float, down_at: float,
                                         ts: float, expected: float) -> None:
    out, events, dropped = restore_alerts(
        {"a": pending(active_at=active_at, last_seen=down_at)}, hold=hold, ts=ts,
        group_last_eval=down_at, outage_tolerance=TOL, grace_period=GRACE)
    assert out["a"].active_at == expected and out["a"].state == "pending"
    assert events == [] and dropped == []


def test_restore_keeps_firing_alerts_and_their_keep_firing_clock() -> None:
    a = firing(active_at=0.0, last_seen=5 * M, keep_since=6 * M)
    out, events, _ = restore_alerts({"a": a}, hold=2 * M, ts=9 * M, group_last_eval=8 * M,
                                    outage_tolerance=TOL, grace_period=GRACE)
    assert out["a"] is a and events == []  # same incident: no second "firing"


def test_restore_drops_state_older_than_the_outage_tolerance() -> None:
    alerts = {"p": pending("p", 0.0, 10 * M), "f": firing("f", 0.0, 10 * M),
              "i": Alert("R", "g", "i", {}, {}, "inactive", 0.0, None, resolved_at=5 * M)}
    out, events, dropped = restore_alerts(alerts, hold=30 * M, ts=10 * M + TOL + 1,
                                          group_last_eval=10 * M, outage_tolerance=TOL,
                                          grace_period=GRACE)
    assert dropped == ["p"] and "p" not in out
    assert [e.kind for e in events] == ["resolved"] and out["f"].state == "inactive"
    assert out["i"] is alerts["i"]


def test_restore_matches_rules_by_key_expr_and_labels() -> None:
    rts = runtimes(**{"f.yml": """
groups:
  - name: g
    rules:
      - {alert: Same, expr: up == 0, for: 1m}
      - {alert: NewExpr, expr: up == 2}
"""})
    same = rts["f.yml;g"].rules[0]
    stored = {
        "f.yml;g": StoredGroup(60.0, {
            "Same": StoredRule(rule_sig(same.rule), {"a": firing(last_seen=60.0)}),
            "NewExpr": StoredRule("old-signature", {"b": firing("b", last_seen=60.0)}),
        }),
        "gone.yml;x": StoredGroup(60.0, {"X": StoredRule("s", {"c": firing("c", 0, 60)})}),
    }
    out = restore(rts, stored, 120.0, outage_tolerance=TOL, grace_period=GRACE)
    assert same.alerts["a"].state == "firing"
    assert rts["f.yml;g"].rules[1].alerts == {}
    assert sorted(e.alert.fingerprint for e in out.events) == ["b", "c"]
    assert all(e.kind == "resolved" for e in out.events)
    by_key = {c.group_key: c for c in out.changes}
    assert by_key["gone.yml;x"].drop_group and by_key["f.yml;g"].drop_rules == ["NewExpr"]


# ---- reload: carry_over ------------------------------------------------------------------

V1 = """
groups:
  - name: g
    interval: 1m
    rules:
      - {alert: Keep, expr: a > 1, for: 5m}
      - {alert: Change, expr: b > 1}
      - {alert: Drop, expr: c > 1}
  - name: same
    rules:
      - {alert: S, expr: s > 1}
"""
V2 = """
groups:
  - name: g
    interval: 1m
    rules:
      - {alert: Keep, expr: a > 1, for: 10m, annotations: {summary: longer wait now}}
      - {alert: Change, expr: b > 2}
      - {alert: Added, expr: d > 1}
  - name: same
    rules:
      - {alert: S, expr: s > 1}
"""


def test_carry_over_keeps_unchanged_rules_and_resolves_the_rest() -> None:
    old = runtimes(**{"f.yml": V1, "other.yml": "groups: [{name: o, rules: [{alert: O, "
                                                "expr: o > 1}]}]"})
    g = old["f.yml;g"]
    g.rules[0].alerts = {"k": firing("k")}
    g.rules[1].alerts = {"c": firing("c"), "p": pending("p")}
    g.rules[2].alerts = {"d": firing("d")}
    old["other.yml;o"].rules[0].alerts = {"o": firing("o")}
    new_groups = [(f, grp) for f, grp in build({"f.yml": V2.encode()}).groups()]
    out = carry_over(old, new_groups, at=500.0)
    assert out.unchanged == ["f.yml;same"] and out.runtimes["f.yml;same"] is old["f.yml;same"]
    assert out.changed == ["f.yml;g"] and out.removed == ["other.yml;o"] and out.added == []
    new = {r.key: r for r in out.runtimes["f.yml;g"].rules}
    assert new["Keep"].alerts == {"k": firing("k")}  # `for` and annotations changed: kept
    assert new["Keep"].rule.for_ == 600.0
    assert new["Change"].alerts == {} and new["Added"].alerts == {}
    resolved = sorted(e.alert.fingerprint for e in out.events)
    assert resolved == ["c", "d", "o"]  # firing ones only; the pending "p" just goes
    assert all(e.kind == "resolved" and e.at == 500.0 for e in out.events)
    changes = {c.group_key: c for c in out.changes}
    assert sorted(changes["f.yml;g"].drop_rules) == ["Change", "Drop"]
    assert changes["other.yml;o"].drop_group


# ---- the daemon: three triggers ---------------------------------------------------------------

A1 = """
groups:
  - name: ga
    rules:
      - {alert: A, expr: a > 1}
      - {alert: B, expr: b > 1}
"""
A2 = """
groups:
  - name: ga
    rules:
      - {alert: A, expr: a > 1, for: 5m, annotations: {summary: changed}}
      - {alert: B, expr: b > 100}
"""
B1 = """
groups:
  - name: gb
    rules:
      - {alert: C, expr: c > 1}
"""
C1 = """
groups:
  - name: gc
    rules:
      - {alert: N, expr: n > 1}
"""
BROKEN = """
groups:
  - name: ga
    rules:
      - {alert: A, expr: a > 1}
      - {alert: B, expr: "b >"}
"""


def source() -> FakeSource:
    return FakeSource({e: [sample(5.0, __name__=e[0], instance="x")]
                       for e in ("a > 1", "b > 1", "c > 1", "n > 1")})


async def test_reload_by_polling_add_change_remove_broken(tmp_path: Path) -> None:
    s = settings(tmp_path)
    write(s.rules_dir / "a.yml", A1)
    write(s.rules_dir / "b.yml", B1)
    rec, clock = Recorder(), FixedClock(1000.0)
    async with Daemon(s, clock=clock, source=source(), handlers=[rec], plugins=False,
                      schedule=False) as d:
        await d.evaluate_all()
        assert sorted(a.rule for a in d.alerts() if a.state == "firing") == ["A", "B", "C"]
        a_incident = next(a.incident_id for a in d.alerts() if a.rule == "A")
        assert not await d.poll_rules()  # nothing changed, nothing reloaded

        # add
        clock.advance(10)
        write(s.rules_dir / "c.yml", C1)
        assert await d.poll_rules()
        assert d.last_reload is not None and d.last_reload.added == [
            f"{s.rules_dir / 'c.yml'};gc"]
        await d.evaluate_all()
        assert "N" in {a.rule for a in d.alerts() if a.state == "firing"}

        # change: A keeps its incident, B's expression changed -> it resolves
        clock.advance(10)
        rec.events.clear()
        write(s.rules_dir / "a.yml", A2)
        assert await d.poll_rules()
        assert [(e.kind, e.alert.rule) for e in rec.events] == [("resolved", "B")]
        await d.evaluate_all()
        a = next(a for a in d.alerts() if a.rule == "A")
        assert a.state == "firing" and a.incident_id == a_incident
        assert "firing" not in rec.kinds("A")

        # remove: the group stops, its firing alert resolves, its rows leave the store
        clock.advance(10)
        rec.events.clear()
        (s.rules_dir / "b.yml").unlink()
        assert await d.poll_rules()
        assert [(e.kind, e.alert.rule) for e in rec.events] == [("resolved", "C")]
        assert not any(k.endswith(";gb") for k in d.runtimes)
        async with d.storage.transaction() as tx:
            assert not any(k.endswith(";gb") for k in await tx.alerts.load())

        # broken: rejected with file:line, the last good version keeps running
        clock.advance(10)
        rec.events.clear()
        with structlog.testing.capture_logs() as logs:
            write(s.rules_dir / "a.yml", BROKEN)
            assert await d.poll_rules()
        rejected = [e for e in logs if e["event"] == "rule file rejected"]
        assert rejected and rejected[0]["problem"].startswith(f"{s.rules_dir / 'a.yml'}:6:")
        assert rec.events == []
        assert [r.rule.expr for r in d.runtimes[f"{s.rules_dir / 'a.yml'};ga"].rules] == [
            "a > 1", "b > 100"]
        await d.evaluate_all()
        assert next(a for a in d.alerts() if a.rule == "A").incident_id == a_incident
        _status, body = await get_json(f"{d.http_url}/api/v1/status")
        files = {f["path"]: f for f in body["data"]["files"]}
        bad = files[str(s.rules_dir / "a.yml")]
        assert bad["status"] == "rejected" and bad["runningPrevious"]
        assert bad["errors"][0].startswith(f"{s.rules_dir / 'a.yml'}:6:")


async def test_reload_by_post(tmp_path: Path) -> None:
    s = settings(tmp_path)
    write(s.rules_dir / "a.yml", A1)
    async with Daemon(s, clock=FixedClock(1000.0), source=source(), plugins=False,
                      schedule=False) as d:
        write(s.rules_dir / "c.yml", C1)
        status, body = await post_json(f"{d.http_url}/-/reload", token=None)
        assert status == 401 and len(d.runtimes) == 1
        status, body = await post_json(f"{d.http_url}/-/reload", token="wrong")
        assert status == 403 and len(d.runtimes) == 1
        status, body = await post_json(f"{d.http_url}/-/reload")
        assert status == 200 and body["data"]["added"] == [f"{s.rules_dir / 'c.yml'};gc"]
        write(s.rules_dir / "a.yml", A2)
        status, body = await post_json(f"{d.http_url}/-/reload")
        assert status == 200 and body["data"]["changed"] == [f"{s.rules_dir / 'a.yml'};ga"]
        (s.rules_dir / "c.yml").unlink()
        write(s.rules_dir / "a.yml", BROKEN)
        status, body = await post_json(f"{d.http_url}/-/reload")
        assert status == 422 and body["errorType"] == "bad_data"
        assert f"{s.rules_dir / 'a.yml'}:6:" in body["error"]
        assert body["data"]["removed"] == [f"{s.rules_dir / 'c.yml'};gc"]
        assert list(d.runtimes) == [f"{s.rules_dir / 'a.yml'};ga"]


async def test_reload_by_sighup(tmp_path: Path) -> None:
    s = settings(tmp_path)
    write(s.rules_dir / "a.yml", A1)
    async with Daemon(s, clock=FixedClock(1000.0), source=source(), plugins=False,
                      schedule=False, install_signals=True) as d:
        write(s.rules_dir / "c.yml", C1)
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(lambda: d.last_reload is not None, 5, what="the SIGHUP reload")
        assert d.last_reload is not None and d.last_reload.trigger == "sighup"
        assert len(d.runtimes) == 2
        write(s.rules_dir / "a.yml", BROKEN)
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(lambda: d.last_reload is not None and d.last_reload.rejected, 5)
        assert len(d.runtimes) == 2


async def test_polling_runs_on_the_scheduler_and_jobs_follow_the_groups(tmp_path: Path
                                                                       ) -> None:
    s = settings(tmp_path, rules_poll_interval=0.1)
    write(s.rules_dir / "a.yml", A1)
    async with Daemon(s, source=source(), plugins=False) as d:
        assert d.scheduler is not None
        assert set(d.scheduler.jobs()) >= set(d.runtimes)
        write(s.rules_dir / "c.yml", C1)
        await wait_for(lambda: len(d.runtimes) == 2, 5, what="the poller to add a group")
        assert set(d.scheduler.jobs()) >= set(d.runtimes)
        (s.rules_dir / "a.yml").unlink()
        await wait_for(lambda: len(d.runtimes) == 1, 5, what="the poller to remove a group")
        assert d.scheduler is not None
        ids = set(d.scheduler.jobs())
        assert f"{s.rules_dir / 'a.yml'};ga" not in ids
        # an interval change reschedules the job
        write(s.rules_dir / "c.yml", C1.replace("- name: gc", "- name: gc\n    interval: 7s"))
        key = f"{s.rules_dir / 'c.yml'};gc"
        await wait_for(lambda: d.scheduler is not None and d.scheduler.jobs().get(key) == 7.0, 5)


async def test_a_vanished_rules_folder_is_not_a_deletion(tmp_path: Path) -> None:
    s = settings(tmp_path)
    write(s.rules_dir / "a.yml", A1)
    async with Daemon(s, clock=FixedClock(0.0), source=source(), plugins=False,
                      schedule=False) as d:
        renamed = tmp_path / "elsewhere"
        s.rules_dir.rename(renamed)
        report = await d.reload("test")
        assert report.error is not None and len(d.runtimes) == 1
        renamed.rename(s.rules_dir)


async def test_concurrent_triggers_are_serialised(tmp_path: Path) -> None:
    s = settings(tmp_path)
    write(s.rules_dir / "a.yml", A1)
    async with Daemon(s, clock=FixedClock(0.0), source=source(), plugins=False,
                      schedule=False) as d:
        write(s.rules_dir / "c.yml", C1)
        reports = await asyncio.gather(d.reload("a"), d.reload("b"), d.evaluate_all())
        assert reports[0].added and not reports[1].added  # type: ignore[union-attr]
        assert len(d.runtimes) == 2


async def test_a_file_broken_while_down_runs_its_last_good_version(tmp_path: Path) -> None:
    s = settings(tmp_path)
    write(s.rules_dir / "a.yml", A1)
    clock, src = FixedClock(0.0), source()
    async with Daemon(s, clock=clock, source=src, plugins=False, schedule=False) as d:
        await d.evaluate_all()
        incident = next(a.incident_id for a in d.alerts() if a.rule == "A")
    write(s.rules_dir / "a.yml", BROKEN)  # edited badly while the daemon was down
    clock.advance(M)
    rec = Recorder()
    async with Daemon(s, clock=clock, source=src, handlers=[rec], plugins=False,
                      schedule=False) as d:
        st = d.rules.status[str(s.rules_dir / "a.yml")]
        assert not st.ok and st.running_previous
        await d.evaluate_all()
        assert next(a.incident_id for a in d.alerts() if a.rule == "A") == incident
        assert rec.events == []  # nothing resolved, nothing fired again
