"""The crash matrix: `watchdog run` (a real process, a real Prometheus) is SIGKILLed right after
an alert starts firing, at many points — a fixed delay after the daemon logs the firing, while
each receiver's firing notification is in flight (the fake has it and never answers), while one
waits for its retry, when the action run is logged (before its step starts), while the step is
in flight, when the run is logged as finished, and after the "started" notice reached a
receiver. A second process then starts on the same state (`WATCHDOG_STATE_URL`), the alert keeps
firing, then resolves. For every kill point:

- **one incident**: the second process restores the first one's firing incident and resolves
  it — or, if the kill came before that firing was committed, fires and resolves a new one, and
  then the first must have left no trace (no notification, no action);
- **the action runs once for the incident**: exactly one run is recorded for it, and its webhook
  step reached the target at most once. A call counts when it *arrives* at the target (a flag
  service acts on arrival, whether or not the watchdog lives to read the answer). The one
  ambiguity `watchdog/actions/runner.py` allows is a step cut off mid-flight: it is marked
  `interrupted`, never repeated, and the run fails loudly — so such a step may have reached the
  target once or not at all; any other step must have succeeded and reached it exactly once.
  The run's outcome (succeeded, or failed) is notified, whichever process ended it;
- **every receiver gets its firing and its resolved** (Slack, PagerDuty, an Alertmanager-style
  webhook). Delivery is at-least-once (`watchdog/notify/outbox.py`): a notification the receiver
  had accepted when the process died may be sent once more by the next process, so a receiver
  holding the firing at the kill may see it twice, any other exactly once; the resolved comes
  once, and last. PagerDuty deduplicates by `dedup_key`: one page, and it ends resolved.

Written for issue 9 (one transaction per evaluation). On the storage code of v0.1.0 the kill
points between the firing and the action run's insert fail — the notification handler commits
its outbox and starts sending before the actions handler inserts the run, and a restart never
creates a missing run — and so does `action-finished-logged`: a run's end is committed before,
and apart from, the notice of its outcome, which a kill in between loses.

The state backend is conftest's `state_url` fixture: a SQLite file, and a fresh PostgreSQL
database.

One Prometheus (scraping `crash_support.SignalTarget` every 250 ms) serves the whole module;
each test uses its own series (`case` label), rules (evaluated every 500 ms, `for: 0s`,
`group_wait: 0s`), receivers and state. The rule reads `last_over_time(...[5s])`, not the bare
series: on a loaded machine scrapes time out or fall behind (a failed scrape marks the series
stale), and a bare selector — or a 1 s window, seen at a load average of 20 — would then resolve
the alert and fire it again as a new incident: a flap of the test's making, not the daemon's.
The window costs nothing on the way down: the first scrape of 0 is the last sample.
The daemons come from `crash_support.Launcher`: real
`python -m watchdog run` processes whose imports were done ahead of time, since twenty cold
starts would be most of the module's time on a 2-core machine.

Nothing here asserts on time: delays only choose where the kill lands; waits are bounded by
progress the test observes (evaluations, deliveries), with generous timeouts.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from crash_support import (
    ActionTarget,
    HookedChat,
    Launcher,
    LogKiller,
    SignalTarget,
    classify,
    kill,
)
from fakes_chat import Reply, status
from test_daemon_process import Proc, ts, until
from test_daemon_support import TOKEN, get_json, write

from watchdog.promserver import PrometheusServer

pytestmark = [pytest.mark.slow, pytest.mark.prometheus]

ALERT = "CrashMatrix"
ACTION = "rollback"
PD_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"
RECEIVERS = {"slack": "team-slack", "pagerduty": "oncall", "webhook": "audit"}  # kind: name
AUTH = {"Authorization": f"Bearer {TOKEN}"}

RULES = """
groups:
  - name: crash-CASE
    interval: 500ms
    rules:
      - alert: ALERT
        expr: last_over_time(crash_signal{case="CASE"}[5s]) > 0
        for: 0s
        labels: {severity: critical}
        annotations: {summary: "crash matrix {{ $labels.case }}"}
        actions: [ACTION]
actions:
  ACTION:
    steps:
      - webhook:
          url: "${HOOK}/action/CASE"
          json: {case: "{{ $labels.case }}", value: "{{ $value }}"}
receivers:
  - {name: team-slack, slack: {webhook_url: "CHAT/slack/T0/B0/CASE"}}
  - {name: oncall, pagerduty: {routing_key: PD_KEY, url: "CHAT/v2/enqueue"}}
  - {name: audit, webhook: {url: "CHAT/hook/CASE"}}
routes:
  - receivers: [team-slack, oncall, audit]
    group_by: [alertname, case]
    group_wait: 0s
    group_interval: 1s
"""


@dataclass(frozen=True)
class KillPoint:
    """Where the first process dies: `delay` seconds after the daemon logs a line with
    `log_event` (the firing `alert` line unless said otherwise), or — `on` set — the moment that
    fake accepts the request it waits for, which then never gets an answer."""

    id: str
    delay: float = 0.0
    on: str | None = None  # "slack" | "pagerduty" | "webhook" | "action" | "notice"
    log_event: str = "alert"
    script: tuple[tuple[str, Reply], ...] = ()  # FakeChat replies for the first process


HANG_ACCEPTED = Reply(hang=True, accept=True)

KILL_POINTS = [
    # The firing's notification rows, the action run and the first sends all follow the firing
    # line within a few hundred milliseconds (~200 ms on an idle 2-core machine): the delays land
    # before, between and after them.
    KillPoint("firing-logged+0ms"),
    KillPoint("firing-logged+20ms", delay=0.02),
    KillPoint("firing-logged+80ms", delay=0.08),
    KillPoint("firing-logged+250ms", delay=0.25),
    # While each receiver holds its firing notification (accepted, never answered).
    KillPoint("slack-firing-in-flight", on="slack", script=(("slack", HANG_ACCEPTED),)),
    KillPoint("pagerduty-trigger-in-flight", on="pagerduty",
              script=(("pagerduty", HANG_ACCEPTED),)),
    KillPoint("webhook-firing-in-flight", on="webhook", script=(("webhook", HANG_ACCEPTED),)),
    # Slack refused the firing (503): killed while it waits for its retry, before it is sent.
    KillPoint("slack-firing-awaiting-retry", log_event="notification delivery failed; will retry",
              script=(("slack", status(503)),)),
    # The run is recorded and about to start its step; the step in flight; the run recorded as
    # finished, its outcome not yet notified.
    KillPoint("action-run-logged", log_event="action.run"),
    KillPoint("action-step-in-flight", on="action"),
    KillPoint("action-finished-logged", log_event="action.finished"),
    # After the "action started" notice reached a receiver: the run was persisted before.
    KillPoint("action-started-notified", on="notice"),
]


# ---- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target() -> Iterator[SignalTarget]:
    t = SignalTarget().start()
    yield t
    t.stop()


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _scraped(prom: PrometheusServer) -> bool:
    with _opener.open(f"{prom.url}/api/v1/query?query=up", timeout=10) as r:
        result = json.load(r)["data"]["result"]
    return any(s["value"][1] == "1" for s in result)


@pytest.fixture(scope="module")
def prometheus(target: SignalTarget, prometheus_binary: str,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """One real Prometheus for the module (its start and target discovery take seconds)."""
    prom = PrometheusServer.scraping([target.address], "250ms",
                                     tsdb_dir=tmp_path_factory.mktemp("crash-prom") / "tsdb",
                                     binary=prometheus_binary)
    prom.start()
    try:
        deadline = time.monotonic() + 30
        while not _scraped(prom):
            assert time.monotonic() < deadline, f"target never scraped:\n{prom.log_tail()}"
            time.sleep(0.1)
        yield prom
    finally:
        prom.stop()


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    pool = Launcher(tmp_path_factory.mktemp("crash-daemons"), standby=2).start()
    yield pool
    pool.close()


# ---- observing the daemon ------------------------------------------------------------------


# Bounds on waits, not expectations: with a load average of 14 on this 2-core machine a start
# has taken over 20 s. A healthy run needs a fraction of each.
PATIENCE = 60.0


async def ready(proc: Proc) -> None:
    await proc.up(PATIENCE)

    async def ok() -> bool:
        status_, _ = await get_json(f"{proc.url}/readyz")
        return status_ == 200

    await until(ok, PATIENCE, "/readyz (rules loaded, Prometheus answered)")


async def api(proc: Proc, path: str) -> Any:
    code, body = await get_json(f"{proc.url}{path}", headers=AUTH)
    assert code == 200, (path, code, body)
    return body["data"]


async def evaluations(proc: Proc, case: str) -> int:
    """How often `proc` has evaluated the test's rule (its in-memory history, up to 20)."""
    groups = (await api(proc, "/api/v1/rules"))["groups"]
    return sum(len(r.get("history", ())) for g in groups if g["name"] == f"crash-{case}"
               for r in g["rules"])


def messages(chat: HookedChat, kind: str, case: str) -> list[str]:
    """What `kind` accepted about this case, in order: firing / resolved / action / other."""
    kinds = [kind, "pd_change"] if kind == "pagerduty" else [kind]
    # A PagerDuty resolve carries only the dedup_key of the trigger that named the case.
    keys = {b.get("dedup_key") for b in chat.accepted["pagerduty"] if case in json.dumps(b)}
    return [classify(k, b) for k in kinds for b in chat.accepted[k]
            if case in json.dumps(b) or (k == "pagerduty" and b.get("dedup_key") in keys)]


def action_outcomes(chat: HookedChat, case: str) -> list[str]:
    """The action notes (started, succeeded, failed, ...) the webhook receiver got."""
    return [b["watchdog"]["action"]["kind"] for b in chat.accepted["webhook"]
            if case in json.dumps(b) and b["watchdog"]["kind"] == "action"]


def alert_messages(chat: HookedChat, kind: str, case: str) -> list[str]:
    return [m for m in messages(chat, kind, case) if m in ("firing", "resolved")]


async def wait_until(pred: Callable[[], Awaitable[bool]], timeout: float, what: str,
                     explain: Callable[[], Awaitable[str]]) -> None:
    """`until`, with what was seen when it times out (a lost notification or action shows up
    here, named)."""
    try:
        await until(pred, timeout, what)
    except AssertionError:
        raise AssertionError(f"timed out waiting for {what}; {await explain()}") from None


def case_id(point: KillPoint) -> str:
    # A fresh token per run, so a reused PostgreSQL database never mixes two runs' rows.
    return f"{re.sub(r'[^a-z0-9]+', '-', point.id)}-{uuid.uuid4().hex[:6]}"


# ---- the test ------------------------------------------------------------------------------


@pytest.mark.parametrize("point", KILL_POINTS, ids=lambda p: p.id)
async def test_sigkill_right_after_firing(point: KillPoint, state_url: str, tmp_path: Path,
                                          target: SignalTarget, prometheus: PrometheusServer,
                                          launcher: Launcher) -> None:
    case = case_id(point)
    target.set(case, 0.0)
    chat = HookedChat()
    await chat.start()
    action = ActionTarget()
    procs: list[Proc] = []
    killer: LogKiller | None = None
    try:
        async with action.serving():
            write(tmp_path / "rules" / "crash.yml",
                  RULES.replace("CASE", case).replace("ALERT", ALERT)
                  .replace("ACTION", ACTION).replace("PD_KEY", PD_KEY).replace("CHAT", chat.url))
            env = {"WATCHDOG_RULES_DIR": str(tmp_path / "rules"),
                   "WATCHDOG_STATE_URL": state_url,
                   "WATCHDOG_PROMETHEUS_URL": prometheus.url,
                   "WATCHDOG_EVALUATION_INTERVAL": "500ms",
                   "WATCHDOG_RULES_POLL_INTERVAL": "1h",
                   "WATCHDOG_SHUTDOWN_TIMEOUT": "3s",
                   "HOOK": action.url}

            # ---- the first process, killed at the point --------------------------------
            for kind, reply in point.script:
                chat.then(kind, reply)
            first = launcher.take(env, tmp_path)
            procs.append(first)
            armed = [True]

            def fire(why: bool) -> None:
                if why and armed[0]:
                    armed[0] = False
                    kill(first.p.pid)

            if point.on == "action":
                action.hang_next = True
                action.hook = lambda _case: fire(True)
            elif point.on == "notice":
                chat.hook = lambda kind, body: fire(classify(kind, body) == "action")
            elif point.on is not None:
                chat.hook = lambda kind, body: fire(kind == point.on
                                                    and classify(kind, body) == "firing")
            else:
                killer = LogKiller(
                    first.log_path, first.p.pid,
                    lambda e: e.get("event") == point.log_event and (
                        point.log_event != "alert" or e.get("kind") == "firing"),
                    point.delay).start()
            await ready(first)
            target.set(case, 1.0)
            code = await asyncio.to_thread(first.p.wait, PATIENCE)
            assert code == -signal.SIGKILL, (
                f"kill point {point.id} never reached; log:\n"
                + first.log_path.read_text()[-3000:])
            if killer is not None:
                killer.stop()
            chat.hook, action.hook = None, None
            chat.script.clear()  # a reply scripted for the first process is not the second's
            # A request the dead process had already written reaches the fakes a moment later.
            await asyncio.sleep(0.2)
            # What each receiver held when the process died: those may be re-sent once.
            held = {k: alert_messages(chat, k, case).count("firing") for k in RECEIVERS}
            arrived_at_kill = action.arrived[case]
            [fired] = first.alert_events("firing")

            # ---- the second process: the alert keeps firing, then resolves -------------
            second = launcher.take(env, tmp_path)
            procs.append(second)
            await ready(second)

            async def settled() -> bool:
                if await evaluations(second, case) < 2:
                    return False
                if any("firing" not in alert_messages(chat, k, case) for k in RECEIVERS):
                    return False
                if await api(second, "/api/v1/notifications?status=pending"):
                    return False
                runs = await api(second, "/api/v1/actions/runs?status=running")
                return not runs

            async def explain() -> str:
                return (f"receivers saw {({k: messages(chat, k, case) for k in RECEIVERS})}, "
                        f"outbox pending "
                        f"{await api(second, '/api/v1/notifications?status=pending')}, "
                        f"runs {await api(second, '/api/v1/actions/runs')}, "
                        f"action calls {dict(action.arrived)}")

            # Two evaluations: the first one's commit may still be under way when it shows up.
            await wait_until(settled, PATIENCE, "every receiver's firing, an empty outbox and no "
                             "running action, after two evaluations by the second process", explain)
            target.set(case, 0.0)

            async def resolved() -> bool:
                if any("resolved" not in alert_messages(chat, k, case) for k in RECEIVERS):
                    return False
                return not await api(second, "/api/v1/notifications?status=pending")

            await wait_until(resolved, PATIENCE, "every receiver's resolved and an empty outbox",
                             explain)
            runs = [r for r in await api(second, f"/api/v1/actions/runs?action={ACTION}")
                    if r["labels"].get("case") == case]
    finally:
        if killer is not None:
            killer.stop()
        for p in procs:
            p.stop()
        await chat.close()

    # ---- one incident, from the first firing to the resolve --------------------------------
    # The second process resolves one incident: the first process's, restored — or, when the
    # kill came before that firing was committed, a fresh one. Then the first one must have
    # left no trace: nothing notified, nothing run (checked below, and here by the webhook's
    # startsAt, which is the incident's activeAt).
    story = [(e["kind"], e["incident"]) for e in second.alert_events()
             if e["kind"] in ("firing", "resolved")]
    assert [k for k, _ in story] in (["resolved"], ["firing", "resolved"]), (
        f"the second process saw {story}: resolved and fired again is a gap in Prometheus's "
        "data (scrapes failing or late), not the crash")
    ended = second.alert_events("resolved")[0]
    incident = ended["incident"]
    assert [e["incident"] for e in second.alert_events("firing")] in ([], [incident])
    if incident != fired["incident"]:
        assert second.alert_events("firing"), "a new incident resolved that never fired"
        assert held == dict.fromkeys(RECEIVERS, 0) and arrived_at_kill == 0, (
            f"the first process's incident {fired['incident']} was notified or acted on, "
            f"but the restart opened a new one, {incident}")
    starts = {a["startsAt"] for b in chat.accepted["webhook"] if case in json.dumps(b)
              and b["watchdog"]["kind"] in ("firing", "resolved") for a in b["alerts"]}
    assert len(starts) == 1, f"the webhook was told about several incidents: {starts}"
    assert abs(ts(next(iter(starts))) - ended["active_at"]) < 0.002, (starts, incident)

    # ---- its action: decided once, executed at most once, exactly once unless cut off ------
    assert [r["incident"] for r in runs] == [incident], (
        f"kill at {point.id}: action runs for incidents {[r['incident'] for r in runs]}, want "
        f"exactly one for {incident}; the action target saw {action.arrived[case]} call(s)")
    [run] = runs
    [step] = run["steps"]
    calls = action.arrived[case]
    assert calls <= 1, f"the action's webhook ran {calls} times for one incident"
    assert [b["case"] for b in action.bodies] == [case] * calls  # rendered for this alert
    told = action_outcomes(chat, case)
    if step["status"] == "interrupted":
        # The runner's one allowed ambiguity: the step was in flight at the kill (it may or may
        # not have reached the target); it is not repeated, and the run fails loudly.
        assert run["status"] == "failed", run
        assert calls == arrived_at_kill, "an interrupted step was run again"
    else:
        assert (step["status"], run["status"]) == ("succeeded", "succeeded"), run
        assert calls == 1 and action.answered[case] == 1
    # The outcome is notified too (CONTRACT §3: "action started / succeeded / failed"), so a run
    # that ended — here or in the dead process — is not left announced as started only.
    assert run["status"] in told, (
        f"the run ended {run['status']!r}, but the webhook receiver was only told {told}")
    if point.on == "action":
        assert step["status"] == "interrupted" and calls == 1

    # ---- every receiver: its firing (re-sent at most once, and only if it held it at the
    # kill) and then its resolved, once --------------------------------------------------------
    for kind in RECEIVERS:
        seen = alert_messages(chat, kind, case)
        firing = seen.count("firing")
        assert 1 <= firing <= 1 + held[kind], (kind, seen, held)
        assert seen.count("resolved") == 1 and seen[-1] == "resolved", (kind, seen)
    assert chat.pages == 1, f"PagerDuty paged {chat.pages} times for one incident"
    assert set(chat.incidents.values()) == {"resolved"}, chat.incidents
    assert chat.rejected == [], chat.rejected
