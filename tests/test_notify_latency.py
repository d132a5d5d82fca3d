"""Detection latency inside the watchdog: a firing alert is handed to the outbox by the step that
learned of it — the evaluation's own transaction, or, on the replica that sends notifications
for several replicas, the mirror refresh that read another replica's evaluation — never left
for the next periodic flush. Time is a FakeTime; the handlers' timers are off (`tick=None`), so
a notification that waits for a flush is simply not there. (`bench/latency.py` measures the
same on real processes.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes_chat import FakeChat, FakeTime, make_alert, running_harness
from test_daemon_support import settings, wait_for, write

import watchdog.daemon as daemon_module
from watchdog.app.replicas import owner
from watchdog.daemon import Daemon
from watchdog.handlers import LEADER
from watchdog.storage import Lease
from watchdog.testing import FakeSource, sample

RULES = """
receivers:
  - name: team-chat
    slack: {webhook_url: "CHAT/slack/T000/B000/team"}
  - name: am
    alertmanager: {url: "CHAT"}
routes:
  - receivers: [team-chat, am]
    group_by: [alertname]
    group_wait: 0s
"""


class SharedLeases:
    """A replica among several on one store (`LeaseView` with `shared`), holding what it
    is given."""

    shared = True
    ttl = 15.0

    def __init__(self, replica_id: str) -> None:
        self.replica_id = replica_id
        self.leases: dict[str, Lease] = {}

    def held(self, name: str) -> Lease | None:
        return self.leases.get(name)

    def lost(self, name: str, detail: str = "") -> None:
        self.leases.pop(name, None)


async def test_a_firing_evaluated_here_is_in_the_outbox_when_its_transaction_commits(
        tmp_path: Path, chat: FakeChat) -> None:
    async with running_harness(tmp_path, chat, RULES) as h:
        a = make_alert(at=h.clock(), service="checkout")
        await h.fire(a)  # the evaluation's transaction, as Evaluator.commit runs it
        kinds = sorted((r["receiver"], r["kind"]) for r in await h.handler.outbox.recent())
        assert kinds == [("am", "firing"), ("team-chat", "firing")]
        await h.drain()
        assert len(chat.accepted["slack"]) == 1 and len(chat.accepted["alertmanager"]) == 1


async def test_the_notifier_sends_a_firing_mirrored_from_another_replica_without_a_flush(
        tmp_path: Path, chat: FakeChat) -> None:
    """Several replicas: replica A evaluates the group, this replica (B) holds the `~leader`
    lease and sends. What A decided reaches B through the store (`on_mirrored`); B hands it to
    the outbox right then — before, it waited for B's next one-second flush."""
    leases = SharedLeases("replica-b")
    async with running_harness(tmp_path, chat, RULES, leases=leases) as h:
        lease = leases.leases[LEADER] = Lease(LEADER, "replica-b", 1)
        h.handler.lease_changed(LEADER, lease)
        assert h.handler._lead_task is not None
        await h.handler._lead_task  # B is the notifier now

        a = make_alert(at=h.clock(), service="checkout")
        h.board.by_fp[a.fingerprint] = a
        await h.handler.on_mirrored([a])  # no time passes, no flush is called

        kinds = sorted((r["receiver"], r["kind"]) for r in await h.handler.outbox.recent())
        assert kinds == [("am", "firing"), ("team-chat", "firing")]
        await h.drain()
        [msg] = chat.accepted["slack"]
        assert msg["text"].startswith("🔴 FIRING · HighErrorRate")
        [sent] = chat.accepted["alertmanager"]
        assert [x["labels"]["alertname"] for x in sent] == ["HighErrorRate"]

        # Mirrored again unchanged (the next refresh): nothing new is sent.
        await h.handler.on_mirrored([a])
        assert len(await h.handler.outbox.recent()) == 2


async def test_a_follower_sends_nothing_for_what_it_mirrors(tmp_path: Path, chat: FakeChat
                                                             ) -> None:
    leases = SharedLeases("replica-c")  # not the notifier: no `~leader` lease
    async with running_harness(tmp_path, chat, RULES, leases=leases) as h:
        a = make_alert(at=h.clock(), service="checkout")
        h.board.by_fp[a.fingerprint] = a
        await h.handler.on_mirrored([a])
        assert await h.handler.outbox.recent() == []


# ---- two replicas on one PostgreSQL, in-process --------------------------------------------

REPLICA_RULES = """
groups:
  - name: checkout
    rules:
      - alert: CheckoutErrors
        expr: errors
        threshold: "> 0.1"
receivers:
  - name: audit
    webhook: {url: "CHAT/hook/audit"}
routes:
  - receivers: [audit]
    group_wait: 0s
"""


async def test_the_notifier_hears_another_replicas_firing_without_polling(
        tmp_path: Path, chat: FakeChat, postgres_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Replica A evaluates the group, replica B holds `~leader` and sends. The poll that
    mirrors the other replicas' groups is pushed out to an hour here, so B can only learn of
    A's firing through the signal A's decision commits (`ALERTS_SIGNAL`): before, B read it at
    its next one-second poll (and sent it at its next one-second flush)."""
    monkeypatch.setattr(daemon_module, "MIRROR_EVERY", 3600.0)
    write(tmp_path / "rules" / "r.yml", REPLICA_RULES.replace("CHAT", chat.url))
    group = f"{tmp_path / 'rules' / 'r.yml'};checkout"
    ids = next(ids for k in range(100) for ids in [[f"a{k}", f"b{k}"]]
               if owner(group, ids) == ids[0] and owner(LEADER, ids) == ids[1])
    src = FakeSource({"errors": [sample(0.0, service="checkout")]})
    clock = FakeTime(1_800_000_000.0)

    def daemon(replica: str) -> Daemon:
        s = settings(tmp_path, state_url=postgres_url, replica_id=replica, lease_ttl=1.5)
        return Daemon(s, clock=clock, source=src, schedule=False)

    async with daemon(ids[0]) as a, daemon(ids[1]) as b:
        await wait_for(lambda: a.coordinator.held(group) and b.coordinator.held(LEADER)
                       and not a.coordinator.held(LEADER) and not b.coordinator.held(group),
                       timeout=30, what="the group on A, the notifier on B")
        await a.evaluate_all()  # quiet: nothing to tell
        src.answers["errors"] = [sample(0.25, service="checkout")]
        clock.advance(10)
        await a.evaluate_all()  # A decides: firing
        [msg] = await wait_for(lambda: chat.accepted["webhook"], timeout=20,
                               what="B to send A's firing")
        assert msg["status"] == "firing"
        assert [x["labels"]["alertname"] for x in msg["alerts"]] == ["CheckoutErrors"]
        assert [x.state for x in b.alerts()] == ["firing"]  # B's mirror has it too
