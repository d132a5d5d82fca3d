"""Routing, grouping, repeats, escalation, inhibition, silences and acks, end to end: events into
the notification handler, fake Slack and PagerDuty servers checking what arrives. Time is a
FakeTime moved by the test; nothing waits for real windows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from fakes_chat import FakeChat, FakeTime, Harness, make_alert, running_harness
from hypothesis import given, settings
from hypothesis import strategies as st
from storage_support import sqlite_storage

from watchdog.handlers import ActionEvent
from watchdog.model import InhibitRule
from watchdog.notify.pipeline import Inhibitor, inhibited
from watchdog.state import Event
from watchdog.storage.records import LogEntry

KEY = "R0UT1NGKEY0123456789abcdefABCDEF"  # PagerDuty routing keys are 32 characters

RULES = f"""
receivers:
  - name: team-chat
    slack: {{webhook_url: "CHAT/slack/T000/B000/team"}}
  - name: oncall
    pagerduty: {{routing_key: "{KEY}", url: "CHAT/v2/enqueue"}}
  - name: ops
    slack: {{webhook_url: "CHAT/slack/T000/B000/ops"}}
  - name: management
    slack: {{webhook_url: "CHAT/slack/T000/B000/management"}}
routes:
  - receivers: [team-chat]
    group_by: [alertname]
    group_wait: 30s
    group_interval: 5m
    repeat_interval: 4h
  - match: {{severity: critical}}
    receivers: [oncall]
    group_by: ["..."]
    group_wait: 0s
    group_interval: 1m
    repeat_interval: 1h
    escalate:
      - {{after: 5m, receivers: [ops]}}
      - {{after: 15m, receivers: [management]}}
inhibit_rules:
  - {{source_match: {{severity: critical}}, target_match: {{severity: warning}}, equal: [service]}}
"""


@pytest.fixture
async def h(tmp_path: Path, chat: FakeChat) -> AsyncIterator[Harness]:
    async with running_harness(tmp_path, chat, RULES) as harness:
        yield harness


def slack_to(chat: FakeChat, name: str) -> list[dict[str, object]]:
    return [b for b, p in zip(chat.accepted["slack"], chat.paths["slack"], strict=True)
            if p.endswith("/" + name)]


def text_of(body: dict[str, object]) -> str:
    import json

    return json.dumps(body, ensure_ascii=False)


async def test_firing_then_resolved_reach_slack_and_pagerduty(h: Harness, chat: FakeChat
                                                              ) -> None:
    a = make_alert(at=h.clock(), service="checkout", instance="web-1")
    await h.fire(a)
    await h.drain()
    # PagerDuty's route has group_wait 0: paged at once; Slack waits for its group_wait.
    assert [e["event_action"] for e in chat.accepted["pagerduty"]] == ["trigger"]
    assert chat.accepted["pagerduty"][0]["dedup_key"] == a.incident_id
    assert slack_to(chat, "team") == []
    await h.tick(29)
    assert slack_to(chat, "team") == []
    await h.tick(2)
    [msg] = slack_to(chat, "team")
    assert msg["text"].startswith("🔴 FIRING · HighErrorRate")
    body = text_of(msg)
    assert "0.17 (threshold &gt; 0.1)" in body
    assert "https://runbooks.example/high-error-rate" in body
    assert "http://watchdog.example/graph?g0.expr=" not in body  # no rules: no expr, no graph

    await h.tick(600)
    done = await h.resolve(a)
    await h.tick(0)  # the group's last alert resolved: told at once, not a group_interval later
    [_, resolved] = slack_to(chat, "team")
    assert resolved["text"].startswith("✅ RESOLVED · HighErrorRate")
    assert "Lasted" in text_of(resolved)
    assert resolved["attachments"][0]["color"] == "#2EB886"
    assert [e["event_action"] for e in chat.accepted["pagerduty"]] == ["trigger", "resolve"]
    assert chat.incidents == {a.incident_id: "resolved"}
    assert done[0].resolved_at is not None
    # nothing more, ever: the log says everyone was told
    await h.tick(5 * 3600)
    assert len(slack_to(chat, "team")) == 2 and len(chat.accepted["pagerduty"]) == 2


async def test_grouping_batches_alerts_and_a_new_incident_does_not_wait_for_group_interval(
        h: Harness, chat: FakeChat) -> None:
    alerts = [make_alert("Latency", at=h.clock(), severity="warning", service=f"s{i}")
              for i in range(3)]
    await h.fire(alerts[0])
    await h.tick(10)
    await h.fire(*alerts[1:])
    await h.tick(25)  # group_wait (30s) from the first alert
    [msg] = slack_to(chat, "team")
    assert msg["text"].startswith("🟠 FIRING ×3 · Latency")
    late = make_alert("Latency", at=h.clock(), severity="warning", service="s9")
    await h.fire(late)
    await h.tick(1)
    # Alertmanager would hold it until the group's next group_interval; a new incident is news.
    assert len(slack_to(chat, "team")) == 2
    assert slack_to(chat, "team")[1]["text"].startswith("🟠 FIRING ×4 · Latency")
    # Changes to incidents already told do wait: one of four resolving is not news yet...
    await h.resolve(alerts[0])
    await h.tick(60)
    assert len(slack_to(chat, "team")) == 2
    await h.tick(300)  # ...until the group's interval
    assert len(slack_to(chat, "team")) == 3
    assert "FIRING ×3, 1 resolved · Latency" in slack_to(chat, "team")[2]["text"]
    # a different alertname is a different group
    other = make_alert("Saturation", at=h.clock(), severity="warning", service="s1")
    await h.fire(other)
    await h.tick(31)
    assert slack_to(chat, "team")[-1]["text"].startswith("🟠 FIRING · Saturation")


async def test_repeat_after_repeat_interval_only(h: Harness, chat: FakeChat) -> None:
    a = make_alert("Latency", at=h.clock(), severity="warning", service="api")
    await h.fire(a)
    await h.tick(31)
    assert len(slack_to(chat, "team")) == 1
    for _ in range(11):  # 3h40m of group flushes: no news, no message
        await h.tick(1200)
    assert len(slack_to(chat, "team")) == 1
    await h.tick(1200)  # past 4h
    await h.tick(300)
    msgs = slack_to(chat, "team")
    assert len(msgs) == 2
    assert msgs[1]["text"].startswith("🔁 STILL FIRING · Latency")


async def test_escalation_levels_then_resolve_tells_everyone(h: Harness, chat: FakeChat
                                                             ) -> None:
    a = make_alert(at=h.clock(), service="checkout")
    await h.fire(a)
    await h.tick(0)
    await h.tick(4 * 60)
    assert slack_to(chat, "ops") == []
    await h.tick(61)
    [ops] = slack_to(chat, "ops")
    assert "ESCALATED · level 2" in ops["text"]
    assert "Not acknowledged after 5m" in text_of(ops)
    await h.tick(9 * 60)
    assert slack_to(chat, "management") == []
    await h.tick(61)
    [mgmt] = slack_to(chat, "management")
    assert "level 3" in mgmt["text"]
    await h.tick(3600)
    assert len(slack_to(chat, "ops")) == 1 and len(slack_to(chat, "management")) == 1
    await h.resolve(a)
    await h.tick(0)
    assert slack_to(chat, "ops")[-1]["text"].startswith("✅ RESOLVED")
    assert slack_to(chat, "management")[-1]["text"].startswith("✅ RESOLVED")


async def test_ack_stops_escalation_and_repeats_until_resolved(h: Harness, chat: FakeChat
                                                               ) -> None:
    a = make_alert(at=h.clock(), service="checkout")
    await h.fire(a)
    await h.tick(31)
    result = await h.handler.api.ack({"matchers": [{"name": "service",
                                                        "value": "checkout"}],
                                          "createdBy": "alice"})
    assert result["count"] == 1
    await h.tick(20 * 60)
    await h.tick(5 * 3600)
    assert slack_to(chat, "ops") == [] and slack_to(chat, "management") == []
    assert len(slack_to(chat, "team")) == 1  # no repeats
    assert [e["event_action"] for e in chat.accepted["pagerduty"]] == ["trigger"]
    # the next incident of the same series is not acknowledged
    await h.resolve(a)
    await h.tick(300)
    again = make_alert(at=h.clock(), service="checkout")
    again = replace(again, active_at=h.clock())
    await h.fire(again)
    await h.tick(0)
    await h.tick(6 * 60)
    assert len(slack_to(chat, "ops")) == 1


async def test_ack_survives_restart(tmp_path: Path, chat: FakeChat) -> None:
    clock = FakeTime()
    chat.clock = clock
    a = make_alert(at=clock(), service="checkout")
    async with sqlite_storage(tmp_path / "w.db") as db, aiohttp.ClientSession() as s:
        h1 = await Harness(db, s, clock, chat, RULES).start()
        await h1.fire(a)
        await h1.tick(0)
        await h1.handler.api.ack({"matchers": {"alertname": "HighErrorRate"}})
        await h1.stop()
    async with sqlite_storage(tmp_path / "w.db") as db, aiohttp.ClientSession() as s:
        h2 = Harness(db, s, clock, chat, RULES)
        h2.board.by_fp[a.fingerprint] = a  # the engine restored it
        await h2.start()
        await h2.tick(0)
        await h2.tick(20 * 60)
        await h2.stop()
    assert slack_to(chat, "ops") == []
    assert chat.pages == 1 and len(chat.accepted["pagerduty"]) == 1  # not re-paged on restart


async def test_inhibition_mutes_warning_while_critical_fires(h: Harness, chat: FakeChat
                                                             ) -> None:
    crit = make_alert("ErrorRateCritical", at=h.clock(), severity="critical",
                      service="checkout")
    warn = make_alert("LatencyWarning", at=h.clock(), severity="warning", service="checkout")
    other = make_alert("LatencyWarning", at=h.clock(), severity="warning", service="search")
    await h.fire(crit, warn, other)
    await h.tick(31)
    texts = [m["text"] for m in slack_to(chat, "team")]
    assert any(t.startswith("🔴 FIRING · ErrorRateCritical") for t in texts)
    [lat] = [m for m in slack_to(chat, "team") if "LatencyWarning" in m["text"]]
    assert "search" in text_of(lat) and "checkout" not in text_of(lat)  # only the other service
    await h.resolve(crit)
    await h.tick(300)
    lat2 = [m for m in slack_to(chat, "team") if "LatencyWarning" in m["text"]][-1]
    assert lat2["text"].startswith("🟠 FIRING ×2 · LatencyWarning")


async def test_silence_mutes_and_expiring_it_notifies(h: Harness, chat: FakeChat) -> None:
    res = await h.handler.api.silence({
        "matchers": [{"name": "service", "value": "check.*", "isRegex": True}],
        "endsAt": h.clock() + 3600, "createdBy": "bob", "comment": "deploying"})
    sid = res["silenceID"]
    a = make_alert(at=h.clock(), service="checkout")
    await h.fire(a)
    await h.tick(31)
    await h.tick(20 * 60)
    assert chat.accepted["slack"] == [] and chat.accepted["pagerduty"] == []
    await h.handler.api.unsilence({"silenceID": sid})
    await h.tick(300)
    assert len(slack_to(chat, "team")) == 1
    assert [e["event_action"] for e in chat.accepted["pagerduty"]] == ["trigger"]


async def test_silence_ends_by_itself(h: Harness, chat: FakeChat) -> None:
    await h.handler.api.silence({"matchers": {"alertname": "HighErrorRate"},
                                     "endsAt": h.clock() + 600})
    await h.fire(make_alert(at=h.clock(), service="checkout"))
    await h.tick(31)
    assert chat.accepted["pagerduty"] == []
    await h.tick(601)
    assert len(chat.accepted["pagerduty"]) == 1


async def test_severity_tier_up_is_notified_as_escalation(h: Harness, chat: FakeChat) -> None:
    w = make_alert("ErrorRate", at=h.clock(), severity="warning", service="checkout")
    await h.fire(w)
    await h.tick(31)
    assert chat.accepted["pagerduty"] == []
    labels = {**w.labels, "severity": "critical"}
    c = replace(w, labels=labels, severity="critical", value=0.6, threshold="> 0.5")
    await h.events(Event("escalated", h.clock(), c, previous_severity="warning"))
    await h.tick(0)
    await h.tick(300)
    msg = slack_to(chat, "team")[-1]
    assert msg["text"].startswith("🔺 ESCALATED to critical · ErrorRate")
    assert "warning* → *critical" in text_of(msg)
    assert chat.accepted["pagerduty"][0]["payload"]["severity"] == "critical"


async def test_action_events_are_notified_and_shown_on_the_alert(h: Harness, chat: FakeChat
                                                                 ) -> None:
    a = make_alert(at=h.clock(), service="checkout")
    await h.fire(a)
    await h.tick(0)
    for kind in ("started", "succeeded"):
        await h.handler.on_action_event(ActionEvent(
            kind=kind, action="rollback-checkout", at=h.clock(), labels=a.labels,
            rule=a.rule, run_id="run-1", detail="flag checkout-v2 off" if kind ==
            "succeeded" else ""))
    await h.handler.on_action_event(ActionEvent(  # step progress: only on the alert
        kind="started", action="rollback-checkout", at=h.clock(), labels=a.labels,
        rule=a.rule, run_id="run-1", step="webhook"))
    # a replayed event (e.g. after a restart) is not notified twice
    await h.handler.on_action_event(ActionEvent(
        kind="started", action="rollback-checkout", at=h.clock(), labels=a.labels,
        rule=a.rule, run_id="run-1"))
    await h.tick(31)
    texts = [m["text"] for m in slack_to(chat, "team")]
    assert "⚙️ Action rollback-checkout started" in texts
    assert "✅ Action rollback-checkout succeeded" in texts
    assert len([t for t in texts if "Action" in t]) == 2
    [firing] = [m for m in slack_to(chat, "team") if m["text"].startswith("🔴")]
    assert "What the watchdog did" in text_of(firing)
    assert "rollback-checkout succeeded: flag checkout-v2 off" in text_of(firing)
    # PagerDuty gets them as change events, not as pages
    assert len(chat.accepted["pd_change"]) == 2 and chat.pages == 1


async def test_generator_url_from_rules_and_external_url(h: Harness, chat: FakeChat) -> None:
    await h.set_rules(RULES + """
groups:
  - name: checkout
    rules:
      - alert: HighErrorRate
        expr: rate(errors_total[5m]) > 0.1
""")
    await h.fire(make_alert(at=h.clock(), service="checkout"))
    await h.tick(0)
    link = chat.accepted["pagerduty"][0]["links"][0]
    assert link == {"href": "http://watchdog.example/graph?g0.expr=rate%28errors_total%5B5m%5D"
                            "%29%20%3E%200.1&g0.tab=1", "text": "Graph"}


async def test_deescalation_is_quiet_and_a_later_escalation_is_news(h: Harness, chat: FakeChat
                                                                    ) -> None:
    c = make_alert("ErrorRate", at=h.clock(), severity="critical", service="checkout")
    await h.fire(c)
    await h.tick(31)
    w = replace(c, labels={**c.labels, "severity": "warning"}, severity="warning")
    await h.events(Event("deescalated", h.clock(), w, previous_severity="critical"))
    await h.tick(300)
    assert len(slack_to(chat, "team")) == 1
    await h.events(Event("escalated", h.clock(), c, previous_severity="warning"))
    await h.tick(300)
    assert slack_to(chat, "team")[-1]["text"].startswith("🔺 ESCALATED to critical")


async def test_repeats_continue_while_any_alert_of_the_group_is_unacknowledged(
        h: Harness, chat: FakeChat) -> None:
    a = make_alert("Latency", at=h.clock(), severity="warning", service="api")
    b = make_alert("Latency", at=h.clock(), severity="warning", service="web")
    await h.fire(a, b)
    await h.tick(31)
    await h.handler.api.ack({"matchers": {"service": "api"}})
    await h.tick(4 * 3600)
    await h.tick(300)
    repeat = slack_to(chat, "team")[-1]
    assert repeat["text"].startswith("🔁 STILL FIRING")
    assert "*Acknowledged*" in text_of(repeat)  # the acked one says so
    await h.handler.api.ack({"matchers": {"service": "web"}})
    await h.tick(4 * 3600)
    await h.tick(300)
    assert len(slack_to(chat, "team")) == 2


async def test_restart_neither_repeats_nor_loses_a_resolved_notification(
        tmp_path: Path, chat: FakeChat) -> None:
    """The log is persisted: after a restart a firing alert already notified is not sent again,
    and a resolution that happened while we were down is still sent."""
    clock = FakeTime()
    chat.clock = clock
    a = make_alert("Latency", at=clock(), severity="warning", service="api")
    async with sqlite_storage(tmp_path / "w.db") as db, aiohttp.ClientSession() as s:
        h1 = await Harness(db, s, clock, chat, RULES).start()
        await h1.fire(a)
        await h1.tick(31)
        await h1.stop()
    assert len(slack_to(chat, "team")) == 1
    async with sqlite_storage(tmp_path / "w.db") as db, aiohttp.ClientSession() as s:
        h2 = Harness(db, s, clock, chat, RULES)
        h2.board.by_fp[a.fingerprint] = a  # restored by the engine
        await h2.start()
        await h2.tick(31)
        assert len(slack_to(chat, "team")) == 1
        await h2.resolve(a)
        await h2.tick(300)
        await h2.stop()
    assert slack_to(chat, "team")[-1]["text"].startswith("✅ RESOLVED · Latency")


def test_inhibition_rules_follow_alertmanager() -> None:
    from watchdog.model import InhibitRule
    from watchdog.notify.pipeline import inhibited

    rule = InhibitRule(source_match={"severity": "critical"},
                       target_match={"severity": "warning"}, equal=["service"])
    crit = {"alertname": "A", "severity": "critical", "service": "x"}
    warn = {"alertname": "B", "severity": "warning", "service": "x"}
    other = {"alertname": "B", "severity": "warning", "service": "y"}
    assert inhibited(warn, [crit, warn], [rule])
    assert not inhibited(other, [crit, other], [rule])
    assert not inhibited(crit, [crit], [rule])
    both = InhibitRule(source_match={"alertname": "A"}, target_match={"alertname": "A"})
    assert not inhibited(crit, [crit], [both])  # never itself


async def test_prune_forgets_what_cannot_matter(h: Harness, chat: FakeChat) -> None:
    a = make_alert(at=h.clock(), service="checkout")
    await h.fire(a)
    await h.tick(0)
    await h.tick(6 * 60)  # escalated once
    await h.resolve(a)
    await h.tick(300)
    await h.tick(3600)  # the resolved alert leaves the pipeline after its retention
    p = h.handler.pipeline
    assert a.incident_id not in p.tracked
    async with h.storage.transaction() as tx:
        await p.prune(tx, h.clock() + 8 * 86400)
    assert p.escalated == {} and p.log == {}
    async with h.storage.transaction() as tx:
        assert await tx.escalations.load() == {}


async def test_action_notes_survive_restart_and_are_pruned_with_the_incident(
        tmp_path: Path, chat: FakeChat) -> None:
    """What the watchdog did is persisted: the resolved message sent after a restart still
    lists the actions, and the notes are forgotten once the incident is."""
    clock = FakeTime()
    chat.clock = clock
    a = make_alert("Latency", at=clock(), severity="warning", service="api")
    async with sqlite_storage(tmp_path / "w.db") as db, aiohttp.ClientSession() as s:
        h1 = await Harness(db, s, clock, chat, RULES).start()
        await h1.fire(a)
        await h1.tick(31)
        for kind in ("started", "succeeded"):
            await h1.handler.on_action_event(ActionEvent(
                kind=kind, action="staged-rollback", at=clock(), labels=a.labels,
                rule=a.rule, run_id="run-7",
                detail="3 steps done" if kind == "succeeded" else ""))
        await h1.tick(0)
        await h1.stop()
    async with sqlite_storage(tmp_path / "w.db") as db, aiohttp.ClientSession() as s:
        h2 = Harness(db, s, clock, chat, RULES)
        h2.board.by_fp[a.fingerprint] = a  # restored by the engine
        await h2.start()
        await h2.tick(31)
        await h2.resolve(a)
        await h2.tick(300)
        resolved = slack_to(chat, "team")[-1]
        assert resolved["text"].startswith("✅ RESOLVED · Latency")
        assert "What the watchdog did" in text_of(resolved)
        assert "staged-rollback succeeded: 3 steps done" in text_of(resolved)
        # the incident leaves the pipeline after its retention; pruning forgets its notes
        await h2.tick(3600)
        assert a.incident_id not in h2.handler.pipeline.tracked
        async with db.transaction() as tx:
            await h2.handler.pipeline.prune(tx, clock())
        async with db.transaction() as tx:
            assert await tx.action_notes.load() == []
        await h2.stop()


# ---- incidents, not series ----------------------------------------------------------------


def kinds(chat: FakeChat, name: str) -> list[str]:
    return [m["text"].split(" · ")[0] for m in slack_to(chat, name)]


async def test_a_series_flapping_within_group_interval_is_three_incidents_everywhere(
        h: Harness, chat: FakeChat) -> None:
    """The same series fires and resolves three times within one group_interval (5m): every
    receiver hears three firings and three resolves, and PagerDuty three incidents. (Comparing
    series fingerprints, the second and third incidents looked already sent.)"""
    start = h.clock()
    a = make_alert(at=h.clock(), service="checkout")
    await h.fire(a)
    await h.tick(31)  # the team route's group_wait
    for _ in range(3):
        await h.tick(30)
        await h.resolve(a)
        await h.tick(1)
        if len(chat.accepted["pagerduty"]) == 6:
            break
        await h.tick(30)
        a = replace(a, active_at=h.clock() - 300, fired_at=h.clock())  # the next incident
        await h.fire(a)
        await h.tick(1)
    assert h.clock() - (start + 31) < 300
    assert kinds(chat, "team") == ["🔴 FIRING", "✅ RESOLVED"] * 3
    pd = [(e["event_action"], e["dedup_key"]) for e in chat.accepted["pagerduty"]]
    assert [action for action, _ in pd] == ["trigger", "resolve"] * 3
    assert len({key for _, key in pd}) == 3 and chat.pages == 3
    assert set(chat.incidents.values()) == {"resolved"}


async def test_a_new_incident_and_the_all_clear_go_out_at_once_after_a_restart(
        tmp_path: Path, chat: FakeChat) -> None:
    """A restart re-arms the group timers; the receivers heard of the group before, so neither
    the resolve of its last alert nor the next incident waits for group_wait/group_interval."""
    clock = FakeTime()
    chat.clock = clock
    a = make_alert("Latency", at=clock(), severity="warning", service="api")
    async with sqlite_storage(tmp_path / "w.db") as db, aiohttp.ClientSession() as s:
        h1 = await Harness(db, s, clock, chat, RULES).start()
        await h1.fire(a)
        await h1.tick(31)
        await h1.stop()
    assert kinds(chat, "team") == ["🟠 FIRING"]
    async with sqlite_storage(tmp_path / "w.db") as db, aiohttp.ClientSession() as s:
        h2 = Harness(db, s, clock, chat, RULES)
        h2.board.by_fp[a.fingerprint] = a  # restored by the engine
        await h2.start()
        await h2.tick(1)
        await h2.resolve(a)
        await h2.tick(1)
        assert kinds(chat, "team") == ["🟠 FIRING", "✅ RESOLVED"]
        b = replace(a, active_at=clock(), fired_at=clock())
        await h2.fire(b)
        await h2.tick(1)
        assert kinds(chat, "team") == ["🟠 FIRING", "✅ RESOLVED", "🟠 FIRING"]
        await h2.tick(3600)
        await h2.stop()
    assert len(slack_to(chat, "team")) == 3


async def test_an_incident_over_within_group_wait_is_told_once_as_resolved(
        h: Harness, chat: FakeChat) -> None:
    a = make_alert("Latency", at=h.clock(), severity="warning", service="api")
    await h.fire(a)
    await h.tick(10)
    await h.resolve(a)
    await h.tick(25)  # group_wait (30s) ends
    [msg] = slack_to(chat, "team")
    assert msg["text"].startswith("✅ RESOLVED · Latency")
    for _ in range(4):
        await h.tick(300)
    assert len(slack_to(chat, "team")) == 1


async def test_a_page_sent_by_v010_is_closed_under_its_series_key(tmp_path: Path,
                                                                  chat: FakeChat) -> None:
    """v0.1.0's notification log named series fingerprints and its PagerDuty dedup_key was the
    fingerprint: after the upgrade that page is neither sent again nor left open."""
    clock = FakeTime()
    chat.clock = clock
    a = make_alert(at=clock(), service="checkout")
    async with sqlite_storage(tmp_path / "w.db") as db, aiohttp.ClientSession() as s:
        h1 = await Harness(db, s, clock, chat, RULES).start()
        await h1.fire(a)
        await h1.tick(31)
        await h1.stop()
        async with db.transaction() as tx:  # the log as v0.1.0 wrote it
            for (receiver, key), entry in (await tx.notify_log.load()).items():
                await tx.notify_log.put(receiver, key, LogEntry(
                    {k.split("@")[0]: v for k, v in entry.firing.items()}, entry.sent_at))
    sent = len(chat.accepted["pagerduty"]), len(slack_to(chat, "team"))
    async with sqlite_storage(tmp_path / "w.db") as db, aiohttp.ClientSession() as s:
        h2 = Harness(db, s, clock, chat, RULES)
        h2.board.by_fp[a.fingerprint] = a
        await h2.start()
        await h2.tick(400)
        assert (len(chat.accepted["pagerduty"]), len(slack_to(chat, "team"))) == sent
        await h2.resolve(a)
        await h2.tick(1)
        await h2.stop()
    assert [(e["event_action"], e["dedup_key"]) for e in chat.accepted["pagerduty"][sent[0]:]
            ] == [("resolve", a.incident_id), ("resolve", a.fingerprint)]
    assert slack_to(chat, "team")[-1]["text"].startswith("✅ RESOLVED")


async def test_a_group_that_went_quiet_waits_its_group_wait_again(h: Harness, chat: FakeChat
                                                                  ) -> None:
    a = make_alert("Latency", at=h.clock(), severity="warning", service="api")
    await h.fire(a)
    await h.tick(31)
    await h.resolve(a)
    await h.tick(1)
    await h.tick(3600)  # the resolved incident and its group are forgotten
    assert kinds(chat, "team") == ["🟠 FIRING", "✅ RESOLVED"]
    b = replace(a, active_at=h.clock(), fired_at=h.clock())
    await h.fire(b)
    await h.tick(1)
    assert len(slack_to(chat, "team")) == 2  # a new group again: gathered for group_wait
    await h.tick(30)
    assert kinds(chat, "team") == ["🟠 FIRING", "✅ RESOLVED", "🟠 FIRING"]


def _page(h: Harness, run_id: str = "deploy-d1", **labels: str) -> ActionEvent:
    return ActionEvent(kind="failed", action="deploy", at=h.clock(),
                       labels={"alertname": "DeployVerificationFailed", "service": "checkout",
                               "version": "v2", "deploy_id": "d1", **labels},
                       detail="deploy checkout v2: FAIL — ErrorRate fired", run_id=run_id,
                       page=True)


async def test_a_page_is_a_critical_firing_alert_on_every_matching_route(
        h: Harness, chat: FakeChat) -> None:
    await h.handler.on_action_event(_page(h, severity="info"))
    await h.handler.on_action_event(_page(h))  # decided again after a crash: one page
    await h.drain()
    [trigger] = chat.accepted["pagerduty"]
    assert trigger["event_action"] == "trigger" and trigger["dedup_key"] == "deploy-d1"
    assert trigger["payload"]["severity"] == "critical"  # whatever the labels said
    assert trigger["payload"]["summary"].startswith("[DeployVerificationFailed] deploy "
                                                    "checkout v2: FAIL")
    assert chat.accepted["pd_change"] == []
    [msg] = slack_to(chat, "team")
    assert msg["text"].startswith("🔴") and "DeployVerificationFailed" in msg["text"]
    # No escalation or repeat machinery: the page is told once per receiver.
    await h.tick(20 * 60)
    assert len(chat.accepted["pagerduty"]) == 1 and len(slack_to(chat, "team")) == 1


async def test_a_silenced_page_is_not_sent(h: Harness, chat: FakeChat) -> None:
    await h.handler.api.silence({
        "matchers": [{"name": "alertname", "value": "DeployVerificationFailed"}],
        "endsAt": h.clock() + 3600, "createdBy": "bob", "comment": "known bad deploy"})
    await h.handler.on_action_event(_page(h))
    await h.drain()
    assert chat.accepted["pagerduty"] == [] and chat.accepted["slack"] == []


_label_sets = st.lists(st.dictionaries(st.sampled_from(["alertname", "severity", "service", "env"]),
                                       st.sampled_from(["a", "b", "critical", "warning", ""]),
                                       max_size=4), max_size=12)
_rules = st.lists(st.builds(
    InhibitRule,
    source_match=st.dictionaries(st.sampled_from(["severity", "alertname"]),
                                 st.sampled_from(["critical", "a"]), max_size=1),
    target_match=st.dictionaries(st.sampled_from(["severity", "service"]),
                                 st.sampled_from(["warning", "b"]), max_size=1),
    equal=st.lists(st.sampled_from(["service", "env", "missing"]), max_size=2, unique=True)),
    max_size=3)


@given(_label_sets, _rules)
@settings(max_examples=300, deadline=None)
def test_indexed_inhibitor_agrees_with_alertmanagers_rule(sets: list[dict[str, str]],
                                                          rules: list[InhibitRule]) -> None:
    """The index that made inhibition linear decides exactly what the pairwise definition does,
    self-inhibition and empty `equal` values included."""
    distinct = list({tuple(sorted(d.items())): d for d in sets}.values())
    index = Inhibitor(distinct, rules)
    for target in distinct:
        assert index(target) == inhibited(target, distinct, rules), (target, distinct, rules)
