"""The daily digest (`digest:` on a route): which day it covers (time zones, daylight saving),
what it says (count, MTTR, longest, actions, the list), that its route sends nothing else, and
that each receiver gets it once a day — across restarts — on a fixed clock."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from fakes_chat import FakeChat, FakeTime, Harness, make_alert
from storage_support import sqlite_storage

from watchdog.model import Digest, Route
from watchdog.notify import digest
from watchdog.notify.message import Notification, digest_summary
from watchdog.notify.receivers import email as email_receiver
from watchdog.notify.receivers import pagerduty, slack, webhook
from watchdog.rulesdir import build
from watchdog.storage import Storage
from watchdog.storage.records import IncidentAction, IncidentRecord, RunRow

T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC = 09:00 in Berlin
HOUR = 3600.0
KEY = "R0UT1NGKEY0123456789abcdefABCDEF"

RULES = f"""
receivers:
  - name: review
    slack: {{webhook_url: "CHAT/slack/T0/B0/review"}}
  - name: oncall
    pagerduty: {{routing_key: "{KEY}", url: "CHAT/v2/enqueue"}}
  - name: pages
    slack: {{webhook_url: "CHAT/slack/T0/B0/pages"}}
  - name: audit
    webhook: {{url: "CHAT/hook/audit"}}
routes:
  - match: {{severity: info}}
    receivers: [review, oncall, audit]
    digest: {{at: "09:00", timezone: Europe/Berlin}}
  - match: {{severity: critical}}
    receivers: [pages]
    group_wait: 0s
"""


def berlin(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("Europe/Berlin")).timestamp()


def test_the_period_is_the_last_local_day_before_now_across_daylight_saving() -> None:
    d = Digest.model_validate({"at": "09:00", "timezone": "Europe/Berlin"})
    assert digest.period(T0, d) == (T0 - 24 * HOUR, T0)  # exactly at 09:00: that day's
    assert digest.period(T0 - 1, d) == (T0 - 48 * HOUR, T0 - 24 * HOUR)
    # 2027-03-28 has 23 hours in Berlin: the period is as long as the local day
    start, end = digest.period(berlin("2027-03-28T10:00"), d)
    assert (start, end) == (berlin("2027-03-27T09:00"), berlin("2027-03-28T09:00"))
    assert end - start == 23 * HOUR
    assert Digest.model_validate("9:00").timezone == "UTC"
    assert digest.period(T0, Digest.model_validate("23:59"))[1] == T0 - 8 * HOUR - 60


@pytest.mark.parametrize(("text", "problem"), [
    ('digest: "25:00"', "time of day like 09:00"),
    ('digest: {at: "09:00", timezone: Mars/Olympus}', "unknown time zone"),
    ('digest: "09:00"\n    escalate: [{after: 5m, receivers: [r]}]', "cannot escalate"),
])
def test_bad_digests_are_refused_with_their_line(text: str, problem: str) -> None:
    raw = f"""
receivers:
  - name: r
    webhook: {{url: "http://x"}}
routes:
  - receivers: [r]
    {text}
"""
    rs = build({"n.yml": raw.encode()})
    [p] = rs.problems
    assert str(p).startswith("n.yml:") and problem in str(p)


def incident(inc: str, *, severity: str = "info", fired: float | None, resolved: float | None,
             actions: tuple[IncidentAction, ...] = (), ack: str | None = None,
             rule: str = "DiskFilling") -> IncidentRecord:
    return IncidentRecord(
        id=inc, rule=rule, group="g", fingerprint=inc.split("@")[0],
        labels={"alertname": rule, "severity": severity, "host": inc[:2]}, severity=severity,
        active_at=(fired or T0) - 60, fired_at=fired, resolved_at=resolved, ack_by=ack,
        ack_at=None if ack is None else (fired or T0) + 30, actions=actions)


def test_build_summarises_the_routes_incidents_of_the_period() -> None:
    route = Route.model_validate({"match": {"severity": "info"}, "receivers": ["r"],
                                  "digest": "09:00"})
    start, end = T0 - 24 * HOUR, T0
    rows = [
        incident("a1@1", fired=start + HOUR, resolved=start + HOUR + 600, ack="alice",
                 actions=(IncidentAction("clean-tmp", "run-1", "succeeded", "verified"),)),
        incident("b2@1", fired=start + 2 * HOUR, resolved=start + 2 * HOUR + 1200,
                 actions=(IncidentAction("clean-tmp", "run-2", "failed"),)),
        incident("c3@1", fired=end - HOUR, resolved=None),  # open: 1h so far, the longest
        incident("d4@1", fired=start - 2 * HOUR, resolved=start - HOUR),  # the day before
        incident("e5@1", fired=end + 60, resolved=None),  # after the period
        incident("f6@1", fired=None, resolved=start + 5),  # never fired
        incident("g7@1", severity="critical", fired=start + HOUR, resolved=None),  # not routed
        incident("h8@1", fired=start - 600, resolved=start + 60),  # spans the start
    ]
    d = digest.build(route, rows, start, end)
    assert [x.id for x in d.items] == ["c3@1", "b2@1", "a1@1", "h8@1"]
    assert (d.count, d.resolved, d.open) == (4, 3, 1)
    assert d.mttr == pytest.approx((600 + 1200 + 660) / 3)
    assert d.longest is not None and d.longest.id == "c3@1"
    assert d.actions == {"clean-tmp": 2} and d.actions_run == 2
    assert d.scope == 'severity="info"' and d.items[2].acked_by == "alice"
    assert digest_summary(d) == [
        '4 incidents (severity="info"): 3 resolved, 1 still open',
        "MTTR (firing → resolved): 13m40s",
        "Longest: DiskFilling (1h, still open)",
        "Actions run: 2 (clean-tmp ×2)"]
    empty = digest.build(route, [], start, end)
    assert digest_summary(empty) == ['No incidents (severity="info").']

    n = Notification(kind="digest", receiver="r", group_key="k", created_at=end, digest=d)
    body = slack.render(n)
    assert body["text"] == ("📋 DIGEST · 4 incidents · 2027-01-14 08:00 – 2027-01-15 08:00 UTC")
    text = json.dumps(body, ensure_ascii=False)
    assert "DiskFilling (info) 01-14 09:00, 10m · acked by alice · clean-tmp:succeeded" in text
    assert slack.render(Notification(kind="digest", receiver="r", group_key="k",
                                     created_at=end, digest=empty))["text"].startswith(
        "📋 DIGEST · 0 incidents")
    assert webhook.render(n)["watchdog"]["digest"]["count"] == 4
    assert pagerduty.render(n, KEY) == []
    from watchdog.model import EmailConfig

    mail = email_receiver.render(n, EmailConfig.model_validate(
        {"to": ["a@example.com"], "from": "w@example.com", "smarthost": "smtp:25"}))
    assert "MTTR (firing → resolved): 13m40s" in mail.get_body(("plain",)).get_content()


async def _record(storage: Storage, *rows: IncidentRecord) -> None:
    async with storage.transaction() as tx:
        for r in rows:
            await tx.incidents.open([r])
            for a in r.actions:
                await tx.runs.insert(RunRow(
                    id=a.run_id, action=a.name, trigger="alert", rule=r.rule, group="g",
                    fingerprint=r.fingerprint, incident_id=r.id, labels={}, annotations={},
                    value_before=None, active_at=r.active_at, dry_run=False, spec="{}",
                    status=a.status, next_step=0, created_at=r.fired_at or r.active_at,
                    finished_at=None, detail="", verify_at=None, verification=None,
                    value_after=None))


def review(chat: FakeChat) -> list[str]:
    return [b["text"] for b, p in zip(chat.accepted["slack"], chat.paths["slack"], strict=True)
            if p.endswith("/review")]


async def test_a_digest_goes_to_each_receiver_once_a_day_across_restarts(
        tmp_path: Path, chat: FakeChat) -> None:
    clock = FakeTime(T0 - 2 * HOUR)  # 07:00 in Berlin
    chat.clock = clock
    info = make_alert("DiskFilling", at=clock(), severity="info", host="db1")
    crit = make_alert("Down", at=clock(), severity="critical", host="db1")
    async with sqlite_storage(tmp_path / "w.db") as db, aiohttp.ClientSession() as s:
        h = await Harness(db, s, clock, chat, RULES).start()
        # The info alert fires and resolves: its route tells nobody now...
        await h.fire(info, crit)
        await h.tick(1)
        await h.resolve(info)
        await h.tick(600)
        assert review(chat) == [] and chat.accepted["pagerduty"] == []
        assert [t.split(" · ")[0] for t, p in zip(
            [b["text"] for b in chat.accepted["slack"]], chat.paths["slack"], strict=True)
            if p.endswith("/pages")] == ["🔴 FIRING"]  # ...while the critical route pages
        await _record(db, incident(f"{info.fingerprint}@1", fired=clock() - 600,
                                   resolved=clock(), rule="DiskFilling"))
        # Before 09:00 the latest period ended yesterday: that digest goes out now (late).
        assert await h.handler.send_digests() == 2  # Slack and the webhook; not PagerDuty
        await h.drain()
        assert len(review(chat)) == 1 and review(chat)[0].startswith("📋 DIGEST · 0 incidents")
        assert await h.handler.send_digests() == 0
        clock.advance(2 * HOUR)  # 09:00 in Berlin
        assert await h.handler.send_digests() == 2
        await h.drain()
        assert review(chat)[-1].startswith("📋 DIGEST · 1 incident · 2027-01-14 09:00 – "
                                           "2027-01-15 09:00 Europe/Berlin")
        await h.stop()
    async with sqlite_storage(tmp_path / "w.db") as db, aiohttp.ClientSession() as s:
        h2 = await Harness(db, s, clock, chat, RULES).start()
        clock.advance(HOUR)
        assert await h2.handler.send_digests() == 0  # a restart sends no second digest
        await h2.tick(HOUR)
        assert len(review(chat)) == 2
        clock.advance(22 * HOUR)  # the next day's 09:00
        assert await h2.handler.send_digests() == 2
        await h2.drain()
        await h2.stop()
    assert len(review(chat)) == 3 and review(chat)[-1].startswith("📋 DIGEST · 0 incidents")
    assert chat.accepted["pagerduty"] == []  # a summary is never a page
    assert [b["watchdog"]["digest"]["count"] for b in chat.accepted["webhook"]] == [0, 1, 0]
    assert chat.rejected == []
