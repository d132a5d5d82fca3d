"""Many replicas on one PostgreSQL (CONTRACT §7), as real `watchdog run` processes against a real
Prometheus and real PostgreSQL: SIGKILL the replica evaluating a firing alert that has an action,
kill random replicas during a second incident, and freeze one (SIGSTOP) past its lease.

What must hold, per incident: every receiver (Slack, PagerDuty, an Alertmanager-style webhook)
gets one firing and one resolved; the action runs once (its webhook reaches the target at most
once: a step cut off mid-flight is marked interrupted and never repeated); every PagerDuty
trigger is later resolved. Delivery across a crash is at-least-once (a notification a receiver
had accepted when its sender died may come once more): a duplicate is allowed only when a
replica was killed within a moment of the first copy's arrival, and the test says so.

`LEASE_TTL` is 2s here (15s by default), evaluation every 500 ms. The fixtures (one Prometheus
scraping `crash_support.SignalTarget`, warm `watchdog run` processes) are the crash matrix's.
Nothing asserts on time: the failover times are printed, waits are bounded by progress.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from crash_support import ActionTarget, HookedChat, Launcher, LogKiller, SignalTarget, classify
from test_crash_matrix import launcher, prometheus, target  # noqa: F401  (module fixtures)
from test_daemon_process import Proc, until
from test_daemon_support import TOKEN, get_json, post_json, write

from watchdog.promserver import PrometheusServer

pytestmark = [pytest.mark.slow, pytest.mark.prometheus]

PD_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PATIENCE = 90.0
TTL = 2.0
ALERT = "HaCheckout"

RULES = """
groups:
  - name: ha-main
    interval: 500ms
    rules:
      - alert: ALERT
        expr: last_over_time(crash_signal{case=~"CASE-.*"}[5s]) > 0
        for: 1s
        labels: {severity: critical}
        annotations: {summary: "ha {{ $labels.case }}"}
        actions: [rollback]
FILLER
actions:
  rollback:
    steps:
      - webhook:
          url: "${HOOK}/action/CASE"
          json: {case: "{{ $labels.case }}"}
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

# Other groups, so that leases spread over the replicas (they never fire).
FILLER = "\n".join(f"""  - name: ha-filler-{i}
    interval: 1s
    rules:
      - alert: HaFiller{i}
        expr: crash_signal{{case="never-{i}"}} > 0""" for i in range(5))


async def api(proc: Proc, path: str) -> Any:
    code, body = await get_json(f"{proc.url}{path}", headers=AUTH)
    assert code == 200, (path, code, body)
    return body["data"]


def sent(chat: HookedChat, case: str) -> dict[str, list[str]]:
    """firing / resolved per receiver kind, in the order accepted."""
    keys = {b.get("dedup_key") for b in chat.accepted["pagerduty"] if case in json.dumps(b)}
    out: dict[str, list[str]] = {}
    for kind in ("slack", "pagerduty", "webhook"):
        out[kind] = [m for b in chat.accepted[kind]
                     if case in json.dumps(b) or (kind == "pagerduty"
                                                  and b.get("dedup_key") in keys)
                     for m in [classify(kind, b)] if m in ("firing", "resolved")]
    return out


class Cluster:
    """The replicas: start, find the holder of a group, kill, replace."""

    def __init__(self, pool: Launcher, env: dict[str, str], tmp: Path) -> None:
        self.launcher, self.env, self.tmp = pool, env, tmp
        self.procs: dict[str, Proc] = {}
        self.count = 0
        self.kills: list[tuple[float, str]] = []  # (time, replica)

    async def add(self) -> Proc:
        self.count += 1
        rid = f"replica-{self.count}"
        p = self.launcher.take({**self.env, "WATCHDOG_REPLICA_ID": rid}, self.tmp)
        self.procs[rid] = p
        await p.up(PATIENCE)
        return p

    def alive(self) -> dict[str, Proc]:
        return {r: p for r, p in self.procs.items() if p.p.poll() is None}

    async def status(self) -> dict[str, Any]:
        for p in self.alive().values():
            try:
                return dict(await api(p, "/api/v1/status"))
            except (OSError, AssertionError):
                continue
        raise AssertionError("no replica answers")

    async def holder(self, group: str) -> str | None:
        st = await self.status()
        for g in st["groups"]:
            if g["name"] == group:
                return str(g["replica"]) if g["replica"] else None
        return None

    def kill(self, rid: str) -> None:
        p = self.procs[rid]
        self.kills.append((time.time(), rid))
        p.p.send_signal(signal.SIGKILL)
        p.p.wait(10)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.p.poll() is None:
                p.p.send_signal(signal.SIGCONT)
                p.stop()


async def wait(pred: Callable[[], Awaitable[Any]], what: str,
               explain: Callable[[], str] = lambda: "") -> Any:
    try:
        return await until(pred, PATIENCE, what)
    except AssertionError:
        raise AssertionError(f"timed out waiting for {what}; {explain()}") from None


def failover_seconds(text: str) -> list[float]:
    """The takeovers one replica logged (its `lease acquired` lines with a previous holder)."""
    out = []
    for line in text.splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("event") == "lease acquired" and e.get("failover_seconds") is not None:
            out.append(float(e["failover_seconds"]))
    return out


def check_incident(chat: HookedChat, case: str, kills: list[tuple[float, str]],
                   accepted_at: dict[tuple[str, str], list[float]]) -> None:
    got = sent(chat, case)
    for kind, msgs in got.items():
        n = Counter(msgs)
        assert n["resolved"] >= 1 and msgs[-1] == "resolved", (kind, msgs)
        for what in ("firing", "resolved"):
            if n[what] > 1:
                # At-least-once across a crash: the copy a dying sender had handed over.
                first = accepted_at[(kind, what)][0]
                assert any(abs(t - first) < 1.0 for t, _ in kills), (
                    f"{kind} got {n[what]} {what} messages with no kill around: {msgs}")
            assert n[what] >= 1, (kind, msgs)
    # PagerDuty: every trigger resolved under its dedup_key.
    pd = [b for b in chat.accepted["pagerduty"] if case in json.dumps(b)]
    keys = {b["dedup_key"] for b in pd}
    resolved = {b["dedup_key"] for b in chat.accepted["pagerduty"]
                if b["event_action"] == "resolve"}
    assert keys and keys <= resolved, (keys, resolved)


async def runs_of(proc: Proc, case: str) -> list[dict[str, Any]]:
    runs = await api(proc, "/api/v1/actions/runs?limit=1000")
    return [r for r in runs if r["labels"].get("case") == case]


async def test_three_replicas_sigkill_the_holder_then_random_ones(
        postgres_url: str, tmp_path: Path, target: SignalTarget,  # noqa: F811
        prometheus: PrometheusServer, launcher: Launcher) -> None:  # noqa: F811
    rng = random.Random(7)
    chat = HookedChat()
    await chat.start()
    action = ActionTarget()
    accepted_at: dict[tuple[str, str], list[float]] = {}

    def note(kind: str, body: Any) -> None:
        accepted_at.setdefault((kind, classify(kind, body)), []).append(time.time())

    chat.hook = note
    prefix = f"ha{uuid.uuid4().hex[:6]}"
    cases = [f"{prefix}-1", f"{prefix}-2"]
    cluster: Cluster | None = None
    try:
        async with action.serving():
            for c in cases:
                target.set(c, 0.0)
            env = {"WATCHDOG_RULES_DIR": str(tmp_path / "rules"),
                   "WATCHDOG_STATE_URL": postgres_url,
                   "WATCHDOG_PROMETHEUS_URL": prometheus.url,
                   "WATCHDOG_EVALUATION_INTERVAL": "500ms",
                   "WATCHDOG_RULES_POLL_INTERVAL": "1h",
                   "WATCHDOG_SHUTDOWN_TIMEOUT": "3s",
                   "WATCHDOG_LEASE_TTL": str(TTL),
                   "HOOK": action.url}
            cluster = Cluster(launcher, env, tmp_path)
            results: list[tuple[str, float]] = []
            write(tmp_path / "rules" / "ha.yml",
                  RULES.replace("FILLER", FILLER).replace("CASE", prefix)
                  .replace("ALERT", ALERT).replace("PD_KEY", PD_KEY)
                  .replace("CHAT", chat.url))
            for _ in range(3):
                await cluster.add()
            for n, case in enumerate(cases):
                async def spread() -> bool:
                    st = await cluster.status()
                    holders = {g["replica"] for g in st["groups"]}
                    return None not in holders and len(holders) >= 2

                await wait(spread, "the groups spread over the replicas")
                holder = await wait(lambda: cluster.holder("ha-main"), "ha-main's holder")
                target.set(case, 1.0)
                if n == 0:
                    # SIGKILL the holder the moment it logs the firing.
                    proc = cluster.procs[holder]
                    killer = LogKiller(proc.log_path, proc.p.pid,
                                       lambda e: e.get("event") == "alert"
                                       and e.get("kind") == "firing", 0.0).start()
                    await asyncio.to_thread(proc.p.wait, PATIENCE)
                    killer.stop()
                    cluster.kills.append((time.time(), holder))
                    await cluster.add()
                else:
                    # Kill random replicas (one at a time, replaced) while it fires.
                    for _ in range(3):
                        await asyncio.sleep(rng.uniform(0.5, 2.5))
                        victim = rng.choice(sorted(cluster.alive()))
                        cluster.kill(victim)
                        await cluster.add()

                def explain(case: str = case) -> str:
                    return f"sent={sent(chat, case)} action={action.bodies}"

                async def fired(case: str = case) -> bool:
                    got = sent(chat, case)
                    return all("firing" in m for m in got.values())

                await wait(fired, f"incident {n + 1}: a firing on every receiver", explain)
                await wait(lambda case=case: runs_of(next(iter(cluster.alive().values())),
                                                     case),
                           f"incident {n + 1}: its action run", explain)
                target.set(case, 0.0)

                async def resolved(case: str = case) -> bool:
                    got = sent(chat, case)
                    return all(m and m[-1] == "resolved" for m in got.values())

                await wait(resolved, f"incident {n + 1}: resolved on every receiver", explain)

                async def settled(case: str = case) -> bool:
                    runs = await runs_of(next(iter(cluster.alive().values())), case)
                    return bool(runs) and all(r["status"] != "running" for r in runs)

                await wait(settled, f"incident {n + 1}: its run finished", explain)
                await asyncio.sleep(2 * TTL)  # anything late (a re-send) would show up now
                check_incident(chat, case, cluster.kills, accepted_at)
                runs = await runs_of(next(iter(cluster.alive().values())), case)
                assert len(runs) == 1, runs
                calls = sum(1 for b in action.bodies if b.get("case") == case)
                assert calls <= 1, action.bodies
                if calls == 0:
                    assert runs[0]["status"] == "failed", runs  # interrupted mid-step
                results.append((case, float(calls)))

            takeovers = [s for p in cluster.procs.values()
                         for s in failover_seconds(p.log_path.read_text())]
            print(f"\nfailover (previous holder's last renewal -> takeover), LEASE_TTL={TTL}s: "
                  f"{len(takeovers)} takeovers, max {max(takeovers, default=0):.2f}s, "
                  f"mean {sum(takeovers) / max(1, len(takeovers)):.2f}s; kills: "
                  f"{len(cluster.kills)}")
            assert takeovers, "no takeover was logged"
    finally:
        if cluster is not None:
            cluster.stop()
        await chat.close()


async def test_a_replica_frozen_past_its_lease_acts_on_nothing_when_it_wakes(
        postgres_url: str, tmp_path: Path, target: SignalTarget,  # noqa: F811
        prometheus: PrometheusServer, launcher: Launcher) -> None:  # noqa: F811
    """SIGSTOP the replica evaluating a firing alert for longer than LEASE_TTL; the other takes
    the group over and, when the alert clears, resolves it. SIGCONT: the woken process still
    believes the alert fires and evaluates its missed slots at once — and its writes are
    refused (its lease has a newer token now), so no second resolved, notification or run
    comes from it, and it logs that it lost the lease."""
    chat = HookedChat()
    await chat.start()
    action = ActionTarget()
    prefix = f"hp{uuid.uuid4().hex[:6]}"
    case = f"{prefix}-1"
    target.set(case, 0.0)
    cluster: Cluster | None = None
    try:
        async with action.serving():
            write(tmp_path / "rules" / "ha.yml",
                  RULES.replace("FILLER", FILLER).replace("CASE", prefix)
                  .replace("ALERT", ALERT).replace("PD_KEY", PD_KEY).replace("CHAT", chat.url))
            env = {"WATCHDOG_RULES_DIR": str(tmp_path / "rules"),
                   "WATCHDOG_STATE_URL": postgres_url,
                   "WATCHDOG_PROMETHEUS_URL": prometheus.url,
                   "WATCHDOG_EVALUATION_INTERVAL": "500ms",
                   "WATCHDOG_RULES_POLL_INTERVAL": "1h",
                   "WATCHDOG_SHUTDOWN_TIMEOUT": "3s",
                   "WATCHDOG_LEASE_TTL": str(TTL),
                   "HOOK": action.url}
            cluster = Cluster(launcher, env, tmp_path)
            for _ in range(2):
                await cluster.add()

            async def both_hold() -> bool:
                st = await cluster.status()
                return len({g["replica"] for g in st["groups"]} - {None}) == 2

            await wait(both_hold, "both replicas holding groups")
            frozen_id = await wait(lambda: cluster.holder("ha-main"), "ha-main's holder")
            st = await cluster.status()
            roles = next(r["groups"] for r in st["replicas"] if r["id"] == frozen_id)
            frozen = cluster.procs[frozen_id]
            target.set(case, 1.0)

            def explain() -> str:
                return f"sent={sent(chat, case)} action={action.bodies}"

            async def fired_and_acted() -> bool:
                got = sent(chat, case)
                return (all("firing" in m for m in got.values())
                        and any(b.get("case") == case for b in action.bodies)
                        and bool(await runs_of(frozen, case)))

            await wait(fired_and_acted, "the firing on every receiver and the action", explain)
            await asyncio.sleep(1.0)  # the run's outcome and notices settle

            frozen.p.send_signal(signal.SIGSTOP)
            stopped_at = time.time()
            other = next(p for r, p in cluster.procs.items() if r != frozen_id)

            async def moved() -> bool:
                _, body = await get_json(f"{other.url}/api/v1/status", headers=AUTH)
                return any(g["name"] == "ha-main" and g["replica"] not in (None, frozen_id)
                           for g in body["data"]["groups"])

            await wait(moved, "ha-main taken over by the other replica")
            target.set(case, 0.0)

            async def resolved() -> bool:
                return all(m and m[-1] == "resolved" for m in sent(chat, case).values())

            await wait(resolved, "the resolved on every receiver, from the other replica",
                       explain)
            before = sent(chat, case)
            assert time.time() - stopped_at > TTL
            frozen.p.send_signal(signal.SIGCONT)
            # Its scheduler now runs the slots it missed; give it several lease periods.
            await asyncio.sleep(4 * TTL)
            assert frozen.p.poll() is None, frozen.log_path.read_text()[-3000:]
            after = sent(chat, case)
            assert after == before, (before, after)
            for kind, msgs in after.items():
                assert Counter(msgs) == Counter({"firing": 1, "resolved": 1}), (kind, msgs)
            runs = await runs_of(other, case)
            assert len(runs) == 1 and sum(b.get("case") == case for b in action.bodies) == 1
            log_text = frozen.log_path.read_text()
            lost = [json.loads(x) for x in log_text.splitlines()
                    if x.startswith("{") and "lease lost" in x]
            assert any(e.get("lease") for e in lost), log_text[-3000:]
            print(f"\nfrozen replica held {roles}; after SIGCONT it logged {len(lost)} lost "
                  f"leases: {sorted({e['lease'].rsplit(';', 1)[-1] for e in lost})}")
    finally:
        if cluster is not None:
            cluster.stop()
        await chat.close()


DEPLOY_RULES = """
groups:
  - name: ha-deploy
    interval: 500ms
    rules:
      - alert: HaDeployErrors
        expr: last_over_time(crash_signal{case=~"CASE-.*"}[5s]) > 0
        labels: {severity: warning}
FILLER
receivers:
  - {name: audit, webhook: {url: "CHAT/hook/CASE"}}
  - {name: oncall, pagerduty: {routing_key: PD_KEY, url: "CHAT/v2/enqueue"}}
routes:
  - receivers: [audit]
    group_wait: 0s
    group_interval: 1s
  - match: {severity: critical}
    receivers: [oncall]
    group_wait: 0s
"""


def deploy_messages(chat: HookedChat, deploy_id: str) -> dict[str, int]:
    """What the receivers got about one marker: its verdict's action message, its page, its
    report (webhook), and its PagerDuty trigger."""
    out: Counter[str] = Counter()
    for b in chat.accepted["webhook"]:
        w = b["watchdog"]
        if w["kind"] == "action" and w["action"]["run_id"] == f"deploy-{deploy_id}":
            out[f"action {w['action']['kind']}"] += 1
        elif w["kind"] == "report" and w["report"]["id"] == deploy_id:
            out["report"] += 1
        elif w["kind"] == "firing" and any(a["labels"].get("deploy_id") == deploy_id
                                           for a in b["alerts"]):
            out["page"] += 1
    out["pagerduty"] = sum(1 for b in chat.accepted["pagerduty"]
                           if b.get("dedup_key") == f"deploy-{deploy_id}")
    return dict(out)


async def windows_known(proc: Proc) -> float:
    """How many open deploy windows the replica knows of (its `/metrics`)."""
    code, text = await get_json(f"{proc.url}/metrics", headers=AUTH)
    assert code == 200, text
    for line in str(text).splitlines():
        if line.startswith("watchdog_deploy_windows_open "):
            return float(line.split()[1])
    raise AssertionError("no watchdog_deploy_windows_open in /metrics")


def logged(cluster: Cluster, event: str, deploy_id: str) -> list[str]:
    """The replicas that logged `event` for the marker (every process, the killed one too)."""
    return [rid for rid, p in cluster.procs.items() for e in p.lines()
            if e.get("event") == event and e.get("deploy_id") == deploy_id]


async def test_deploy_windows_of_a_killed_replica_are_closed_once_by_the_others(
        postgres_url: str, tmp_path: Path, target: SignalTarget,  # noqa: F811
        prometheus: PrometheusServer, launcher: Launcher) -> None:  # noqa: F811
    """Two markers POSTed to a replica that does not evaluate the watched group, which is then
    SIGKILLed: the quiet one passes when its window ends, closed by one of the two others; the
    other fails as its alert fires on the replica evaluating the group (which learnt of the
    marker from the store — the test waits until its /metrics count the window, the one
    second a replica may lag). Each verdict is readable through the live replicas, notified
    once, and each marker's report is posted once."""
    chat = HookedChat()
    await chat.start()
    prefix = f"hd{uuid.uuid4().hex[:6]}"
    quiet, bad = f"{prefix}-quiet", f"{prefix}-bad"
    for c in (quiet, bad):
        target.set(c, 0.0)
    cluster: Cluster | None = None
    try:
        write(tmp_path / "rules" / "ha.yml",
              DEPLOY_RULES.replace("FILLER", FILLER).replace("CASE", prefix)
              .replace("PD_KEY", PD_KEY).replace("CHAT", chat.url))
        env = {"WATCHDOG_RULES_DIR": str(tmp_path / "rules"),
               "WATCHDOG_STATE_URL": postgres_url,
               "WATCHDOG_PROMETHEUS_URL": prometheus.url,
               "WATCHDOG_EVALUATION_INTERVAL": "500ms",
               "WATCHDOG_RULES_POLL_INTERVAL": "1h",
               "WATCHDOG_SHUTDOWN_TIMEOUT": "3s",
               "WATCHDOG_LEASE_TTL": str(TTL)}
        cluster = Cluster(launcher, env, tmp_path)
        for _ in range(3):
            await cluster.add()

        async def spread() -> bool:
            st = await cluster.status()
            holders = {g["replica"] for g in st["groups"]}
            return None not in holders and len(holders) >= 2

        await wait(spread, "the groups spread over the replicas")
        evaluator = await wait(lambda: cluster.holder("ha-deploy"), "ha-deploy's holder")
        marked_on = next(r for r in sorted(cluster.procs) if r != evaluator)
        proc = cluster.procs[marked_on]
        ids = {}
        for case, window in ((bad, "10m"), (quiet, "3s")):
            code, doc = await post_json(f"{proc.url}/api/v1/deploys", {
                "service": "checkout", "version": case, "labels": {"case": case},
                "window": window, "report_days": 20.0 / 86400})
            assert code == 201, doc
            ids[case] = doc["id"]
            if case == bad:
                await wait(lambda: _at_least(windows_known(cluster.procs[evaluator]), 1),
                           "the evaluating replica knowing the marker")
        cluster.kill(marked_on)
        target.set(bad, 1.0)  # fires on `evaluator`, inside the bad marker's window
        others = list(cluster.alive().values())

        def explain() -> str:
            return (f"webhook={[b['watchdog'] for b in chat.accepted['webhook']]}; "
                    f"verdicts via {[p.url for p in others]}")

        async def verdicts(p: Proc) -> dict[str, dict[str, Any]]:
            out: dict[str, dict[str, Any]] = {}
            for case, deploy_id in ids.items():
                code, doc = await get_json(f"{p.url}/api/v1/deploys/{deploy_id}", headers=AUTH)
                assert code == 200, doc
                out[case] = doc
            return out

        async def decided() -> dict[str, dict[str, Any]] | None:
            got = await verdicts(others[0])
            return got if all(d["status"] != "open" for d in got.values()) else None

        got = await wait(decided, "both verdicts, through a live replica", explain)
        assert await verdicts(others[1]) == got  # one store: the other answers the same
        assert got[quiet]["status"] == "pass", got[quiet]
        assert got[quiet]["decided_at"] >= got[quiet]["window_end"]
        assert got[bad]["status"] == "fail", got[bad]
        assert [a["rule"] for a in got[bad]["alerts"]] == ["HaDeployErrors"]
        assert got[bad]["decided_at"] < got[bad]["window_end"]
        target.set(bad, 0.0)

        async def reported() -> bool:
            return all(deploy_messages(chat, i).get("report") for i in ids.values())

        await wait(reported, "both reports posted", explain)
        await asyncio.sleep(3 * TTL)  # a second verdict or report would show up now
        assert deploy_messages(chat, ids[quiet]) == {
            "action started": 1, "action succeeded": 1, "report": 1, "pagerduty": 0}, explain()
        assert deploy_messages(chat, ids[bad]) == {
            "action started": 1, "page": 1, "report": 1, "pagerduty": 1}, explain()
        verified = {c: logged(cluster, "deploy.verified", i) for c, i in ids.items()}
        assert len(verified[quiet]) == 1 and marked_on not in verified[quiet], verified
        # (by the replica evaluating the group: `evaluator`, unless the group moved meanwhile)
        assert len(verified[bad]) == 1 and marked_on not in verified[bad], verified
        reports = {c: logged(cluster, "deploy.reported", i) for c, i in ids.items()}
        assert all(len(r) == 1 for r in reports.values()), reports
        assert marked_on not in reports[quiet], reports
        print(f"\nmarkers taken by {marked_on} (killed); the quiet window closed by "
              f"{verified[quiet][0]}, the bad one failed on {verified[bad][0]} (the group's "
              f"holder: {evaluator}); reports posted by {reports}")
    finally:
        if cluster is not None:
            cluster.stop()
        await chat.close()


async def _at_least(value: Awaitable[float], n: float) -> bool:
    return await value >= n
