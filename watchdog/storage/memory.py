"""The in-memory `ports.Storage`: the fake unit tests run against (`STATE_URL=memory://`).

It keeps the same tables the SQL backends keep, row by row, and answers every repository method
with the semantics of `watchdog.storage.sql` — the same orderings, conflicts, "only a pending row
changes status", first-wins and latest-wins rules — so a test passing here passes there;
`tests/test_storage_contract.py` holds all three backends to that. Structured values are kept
as the JSON text SQL stores (alerts through the same codec), floats as floats, so every read
builds fresh objects: a caller mutating a result cannot reach the stored state.

Transactions are real: one at a time (an asyncio lock, like the SQLite backend), writes applied
in place with an undo log that a raising block replays backwards, `on_commit` callbacks only
after a commit. Must not: persist anything, import a database driver, or be used outside tests
and `memory://` (nothing survives the process).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from watchdog.interlocks import PastRun
from watchdog.storage import ports
from watchdog.storage.ports import Coordination, DuplicateRun, StorageError
from watchdog.storage.records import (
    RUN_UPDATABLE,
    AckRecord,
    AttemptRow,
    DeployRow,
    EscalationKey,
    GroupChanges,
    IncidentAction,
    IncidentChange,
    IncidentRecord,
    LockHolder,
    LogEntry,
    OutboxEntry,
    OutboxRecord,
    OutboxRow,
    PauseRecord,
    RunRow,
    SilenceRecord,
    StepRow,
    StoredGroup,
    StoredRule,
)
from watchdog.storage.schema import SCHEMA_VERSION
from watchdog.storage.solo import SoloCoordination
from watchdog.storage.sql import alert_from_json, alert_to_json, run_callbacks

K = TypeVar("K")
V = TypeVar("V")

_MISSING: Any = object()


class Conflict(Exception):
    """A plain INSERT hit an existing key (SQL raises its driver's IntegrityError there)."""


def _f(v: float | None) -> float | None:
    return None if v is None else float(v)


def _j(v: Any) -> str:
    return json.dumps(v)


# ---- rows: immutable, structured columns as JSON text, as the tables hold them -----------------


@dataclass(frozen=True)
class _Outbox:
    id: int
    receiver: str
    kind: str
    group_key: str
    dedup_key: str | None
    payload: str
    status: str
    attempts: int
    created_at: float
    next_attempt_at: float
    last_error: str | None
    finished_at: float | None


@dataclass(frozen=True)
class _Run:
    id: str
    action: str
    trigger: str
    rule: str | None
    grp: str | None
    fingerprint: str | None
    incident_id: str | None
    labels: str
    annotations: str
    value_before: float | None
    active_at: float | None
    dry_run: int
    spec: str
    status: str
    next_step: int
    created_at: float
    finished_at: float | None
    detail: str
    verify_at: float | None
    verification: str | None
    value_after: float | None
    lock_key: str | None
    deferred_to: str | None
    tier: str | None

    def out(self) -> RunRow:
        return RunRow(self.id, self.action, self.trigger, self.rule, self.grp, self.fingerprint,
                      self.incident_id, json.loads(self.labels), json.loads(self.annotations),
                      self.value_before, self.active_at, bool(self.dry_run), self.spec,
                      self.status, int(self.next_step), self.created_at, self.finished_at,
                      self.detail, self.verify_at, self.verification, self.value_after,
                      self.lock_key, self.deferred_to, self.tier)


@dataclass(frozen=True)
class _Deploy:
    id: str
    service: str
    version: str
    labels: str
    at: float
    window_end: float
    status: str
    summary: str
    on_fail: str = "[]"
    decided_at: float | None = None
    report: str = "[]"
    report_days: float | None = None
    reported_at: float | None = None

    def out(self) -> DeployRow:
        return DeployRow(self.id, self.service, self.version, json.loads(self.labels), self.at,
                         self.window_end, self.status, self.summary,
                         tuple(json.loads(self.on_fail)), self.decided_at,
                         tuple(json.loads(self.report)), self.report_days, self.reported_at)


@dataclass(frozen=True)
class _Incident:
    id: str
    rule: str
    grp: str
    fingerprint: str
    labels: str
    severity: str | None
    active_at: float
    fired_at: float | None
    resolved_at: float | None
    ack_by: str | None
    ack_at: float | None
    notifications: int
    first_action_at: float | None


class _Tables:
    """Every table (and unique index) of the schema, by primary key."""

    def __init__(self) -> None:
        self.alert_groups: dict[str, float | None] = {}
        # (group, rule key, fingerprint) -> (rule sig, alert JSON)
        self.alert_instances: dict[tuple[str, str, str], tuple[str, str]] = {}
        self.rule_files: dict[str, tuple[str, bytes]] = {}
        self.outbox: dict[int, _Outbox] = {}
        self.outbox_dedup: dict[str, int] = {}  # the UNIQUE (dedup_key) index
        self.notify_log: dict[tuple[str, str], tuple[str, float]] = {}
        self.escalations: dict[EscalationKey, tuple[float, bool]] = {}  # -> (at, resolved)
        self.notes: dict[int, tuple[str, str]] = {}  # id -> (incident id, note JSON)
        # id -> (matchers JSON, starts_at, ends_at, created_by, comment, created_at)
        self.silences: dict[str, tuple[str, float, float, str, str, float]] = {}
        # incident id -> (fingerprint, labels JSON, at, created_by, comment)
        self.acks: dict[str, tuple[str, str, float, str, str]] = {}
        self.runs: dict[str, _Run] = {}
        self.runs_once: dict[tuple[str, str], str] = {}  # UNIQUE (action, incident_id)
        self.steps: dict[tuple[str, int], StepRow] = {}  # StepRow holds only scalars
        self.deploys: dict[str, _Deploy] = {}
        # (rule, fingerprint) -> (value, labels JSON, deploy id, captured_at)
        self.baselines: dict[tuple[str, str], tuple[float, str, str, float]] = {}
        # (deploy id, rule, fingerprint) -> (labels JSON, value, at)
        self.deploy_alerts: dict[tuple[str, str, str], tuple[str, float | None, float]] = {}
        self.incidents: dict[str, _Incident] = {}
        self.attempts: dict[tuple[str, int, int], AttemptRow] = {}
        self.locks: dict[str, tuple[str | None, float | None]] = {}  # key -> (run id, at)
        self.pause: dict[int, PauseRecord] = {}
        self.versions: dict[str, int] = {}  # store_versions: name -> changes counted
        # Sequences, like PostgreSQL's: never rolled back, never reused.
        self.next_outbox_id = 1
        self.next_note_id = 1


class _Work:
    """One transaction's view: writes go straight into the tables (nobody else can look while
    the lock is held), each first recording what it overwrote so a rollback can put it back."""

    def __init__(self, t: _Tables) -> None:
        self.t = t
        self.undo: list[tuple[dict[Any, Any], Any, Any]] = []
        self.open = True

    def check(self) -> _Tables:
        if not self.open:
            raise StorageError("this transaction has ended; use the Tx only inside its "
                               "`async with storage.transaction()` block")
        return self.t

    def put(self, table: dict[K, V], key: K, value: V) -> None:
        self.undo.append((table, key, table.get(key, _MISSING)))
        table[key] = value

    def delete(self, table: dict[K, V], key: K) -> bool:
        if key not in table:
            return False
        self.undo.append((table, key, table[key]))
        del table[key]
        return True

    def rollback(self) -> None:
        for table, key, old in reversed(self.undo):
            if old is _MISSING:
                table.pop(key, None)
            else:
                table[key] = old
        self.undo.clear()


class _Repo:
    def __init__(self, w: _Work) -> None:
        self.w = w

    @property
    def t(self) -> _Tables:
        return self.w.check()

    def bump(self, name: str) -> None:
        t = self.t
        self.w.put(t.versions, name, t.versions.get(name, 0) + 1)


class MemVersions(_Repo):
    async def get(self) -> dict[str, int]:
        return dict(self.t.versions)


# ---- alert state and rule files ----------------------------------------------------------------


class MemAlerts(_Repo):
    async def load(self, keys: Sequence[str] | None = None) -> dict[str, StoredGroup]:
        t = self.t
        wanted = None if keys is None else set(keys)
        groups = {key: StoredGroup(last, {}) for key, last in t.alert_groups.items()
                  if wanted is None or key in wanted}
        for (gkey, rkey, fp), (sig, data) in t.alert_instances.items():
            if wanted is not None and gkey not in wanted:
                continue
            g = groups.setdefault(gkey, StoredGroup(None, {}))
            g.rules.setdefault(rkey, StoredRule(sig, {})).alerts[fp] = alert_from_json(data)
        return groups

    async def versions(self) -> dict[str, float | None]:
        return dict(self.t.alert_groups)

    async def save(self, changes: Sequence[GroupChanges]) -> None:
        t, w = self.t, self.w
        for ch in changes:
            if not ch and ch.at is None:
                continue
            if ch.drop_group:
                for k in [k for k in t.alert_instances if k[0] == ch.group_key]:
                    w.delete(t.alert_instances, k)
                w.delete(t.alert_groups, ch.group_key)
                continue
            if ch.drop_rules:
                drop = set(ch.drop_rules)
                for k in [k for k in t.alert_instances
                          if k[0] == ch.group_key and k[1] in drop]:
                    w.delete(t.alert_instances, k)
            for rkey, fp in ch.deletes:
                w.delete(t.alert_instances, (ch.group_key, rkey, fp))
            for rkey, sig, a in ch.upserts:
                w.put(t.alert_instances, (ch.group_key, rkey, a.fingerprint),
                      (sig, alert_to_json(a)))
            if ch.at is not None:
                w.put(t.alert_groups, ch.group_key, float(ch.at))


class MemRuleFiles(_Repo):
    async def load(self) -> dict[str, bytes]:
        return {p: content for p, (_, content) in self.t.rule_files.items()}

    async def save(self, files: Mapping[str, tuple[str, bytes]], forget: Sequence[str] = ()
                   ) -> None:
        t = self.t
        for p in forget:
            self.w.delete(t.rule_files, p)
        for p, (digest, content) in files.items():
            self.w.put(t.rule_files, p, (digest, bytes(content)))


# ---- notifications -------------------------------------------------------------------------------


class MemOutbox(_Repo):
    async def insert(self, entries: Sequence[OutboxEntry], now: float) -> list[OutboxEntry]:
        t, w = self.t, self.w
        now = float(now)
        added: list[OutboxEntry] = []
        for e in entries:
            if e.supersede:
                for row in list(t.outbox.values()):
                    if (row.receiver == e.receiver and row.group_key == e.group_key
                            and row.status == "pending"):
                        w.put(t.outbox, row.id, replace(row, status="superseded",
                                                        finished_at=now))
            if e.dedup_key is not None and e.dedup_key in t.outbox_dedup:
                continue  # ON CONFLICT DO NOTHING
            row_id = t.next_outbox_id
            t.next_outbox_id += 1
            w.put(t.outbox, row_id, _Outbox(row_id, e.receiver, e.kind, e.group_key,
                                            e.dedup_key, e.payload, "pending", 0, now, now,
                                            None, None))
            if e.dedup_key is not None:
                w.put(t.outbox_dedup, e.dedup_key, row_id)
            added.append(e)
        return added

    async def next(self, receiver: str) -> OutboxRow | None:
        ids = [r.id for r in self.t.outbox.values()
               if r.status == "pending" and r.receiver == receiver]
        if not ids:
            return None
        r = self.t.outbox[min(ids)]
        return OutboxRow(r.id, r.receiver, r.kind, r.group_key, r.payload, r.attempts,
                         r.created_at, r.next_attempt_at)

    async def finish(self, row_id: int, status: str, error: str | None, *,
                     next_at: float | None = None, finished: float | None = None) -> None:
        t = self.t
        r = t.outbox.get(row_id)
        if r is None:
            return
        self.w.put(t.outbox, row_id, replace(
            r, status=status if r.status == "pending" else r.status, attempts=r.attempts + 1,
            last_error=error,
            next_attempt_at=r.next_attempt_at if next_at is None else float(next_at),
            finished_at=_f(finished) if r.status == "pending" else r.finished_at))

    async def pending_receivers(self) -> list[str]:
        return sorted({r.receiver for r in self.t.outbox.values() if r.status == "pending"})

    async def pending_count(self, receiver: str | None = None) -> int:
        return sum(1 for r in self.t.outbox.values() if r.status == "pending"
                   and (receiver is None or r.receiver == receiver))

    async def recent(self, *, status: str | None = None, receiver: str | None = None,
                     limit: int = 100) -> list[OutboxRecord]:
        rows = [r for r in self.t.outbox.values()
                if (not status or r.status == status) and (not receiver or r.receiver == receiver)]
        rows.sort(key=lambda r: r.id, reverse=True)
        return [OutboxRecord(r.id, r.receiver, r.kind, r.group_key, r.status, r.attempts,
                             r.created_at, r.next_attempt_at, r.last_error, r.finished_at)
                for r in _limit(rows, limit)]

    async def prune(self, finished_before: float) -> int:
        t, w = self.t, self.w
        old = [r for r in t.outbox.values() if r.status != "pending"
               and r.finished_at is not None and r.finished_at < finished_before]
        for r in old:
            w.delete(t.outbox, r.id)
            if r.dedup_key is not None:  # the row's unique key goes with it
                w.delete(t.outbox_dedup, r.dedup_key)
        return len(old)


class MemNotifyLog(_Repo):
    async def load(self) -> dict[tuple[str, str], LogEntry]:
        return {k: LogEntry(json.loads(firing), sent) for k, (firing, sent)
                in self.t.notify_log.items()}

    async def put(self, receiver: str, group_key: str, entry: LogEntry) -> None:
        self.w.put(self.t.notify_log, (receiver, group_key),
                   (json.dumps(entry.firing, sort_keys=True), float(entry.sent_at)))

    async def delete(self, keys: Iterable[tuple[str, str]]) -> None:
        t = self.t
        for r, g in keys:
            self.w.delete(t.notify_log, (r, g))


class MemEscalations(_Repo):
    async def load(self) -> dict[EscalationKey, bool]:
        return {k: done for k, (_, done) in self.t.escalations.items()}

    async def add(self, key: EscalationKey, at: float) -> None:
        k = (key[0], key[1], int(key[2]))
        if k not in self.t.escalations:
            self.w.put(self.t.escalations, k, (float(at), False))

    async def mark_resolved(self, key: EscalationKey) -> None:
        k = (key[0], key[1], int(key[2]))
        row = self.t.escalations.get(k)
        if row is not None:
            self.w.put(self.t.escalations, k, (row[0], True))

    async def delete(self, keys: Iterable[EscalationKey]) -> None:
        t = self.t
        for i, r, lv in keys:
            self.w.delete(t.escalations, (i, r, int(lv)))


class MemActionNotes(_Repo):
    async def load(self) -> list[tuple[str, str]]:
        return [self.t.notes[i] for i in sorted(self.t.notes)]

    async def add(self, incident_id: str, note: str, keep: int) -> None:
        t, w = self.t, self.w
        note_id = t.next_note_id
        t.next_note_id += 1
        w.put(t.notes, note_id, (incident_id, note))
        mine = sorted((i for i, (inc, _) in t.notes.items() if inc == incident_id),
                      reverse=True)
        for i in _limit(mine, int(keep), tail=True):
            w.delete(t.notes, i)

    async def delete(self, incident_ids: Iterable[str]) -> None:
        t = self.t
        gone = set(incident_ids)
        for i in [i for i, (inc, _) in t.notes.items() if inc in gone]:
            self.w.delete(t.notes, i)


class MemSilences(_Repo):
    async def load(self) -> list[SilenceRecord]:
        rows = sorted(self.t.silences.items(), key=lambda kv: (kv[1][5], kv[0]))
        return [SilenceRecord(sid, json.loads(m), starts, ends, by, comment, created)
                for sid, (m, starts, ends, by, comment, created) in rows]

    async def add(self, s: SilenceRecord) -> None:
        t = self.t
        if s.id in t.silences:
            raise Conflict(f"silence {s.id!r} exists already")
        self.w.put(t.silences, s.id, (_j(s.matchers), float(s.starts_at), float(s.ends_at),
                                      s.created_by, s.comment, float(s.created_at)))
        self.bump(ports.SILENCES)

    async def set_times(self, silence_id: str, starts_at: float, ends_at: float) -> None:
        t = self.t
        row = t.silences.get(silence_id)
        if row is not None:
            self.w.put(t.silences, silence_id,
                       (row[0], float(starts_at), float(ends_at), row[3], row[4], row[5]))
            self.bump(ports.SILENCES)

    async def delete(self, ids: Iterable[str]) -> None:
        t = self.t
        ids = list(ids)
        for i in ids:
            self.w.delete(t.silences, i)
        if ids:
            self.bump(ports.SILENCES)


class MemAcks(_Repo):
    async def load(self) -> list[AckRecord]:
        rows = sorted(self.t.acks.items(), key=lambda kv: (kv[1][2], kv[0]))
        return [AckRecord(inc, fp, json.loads(labels), at, by, comment)
                for inc, (fp, labels, at, by, comment) in rows]

    async def add(self, acks: Sequence[AckRecord]) -> None:
        t = self.t
        for a in acks:
            if a.incident_id not in t.acks:  # the first ack of an incident stays
                self.w.put(t.acks, a.incident_id, (a.fingerprint, _j(dict(a.labels)),
                                                   float(a.at), a.created_by, a.comment))
        if acks:
            self.bump(ports.SILENCES)

    async def delete(self, incident_ids: Iterable[str]) -> None:
        t = self.t
        ids = list(incident_ids)
        for i in ids:
            self.w.delete(t.acks, i)
        if ids:
            self.bump(ports.SILENCES)


# ---- actions and deploys ------------------------------------------------------------------------

_RUN_FLOATS = frozenset({"finished_at", "verify_at", "value_after"})


def _by_time(r: _Run) -> tuple[float, str]:
    return (r.created_at, r.id)


class MemRuns(_Repo):
    async def insert(self, run: RunRow) -> None:
        t, w = self.t, self.w
        row = _Run(run.id, run.action, run.trigger, run.rule, run.group, run.fingerprint,
                   run.incident_id, _j(run.labels), _j(run.annotations), _f(run.value_before),
                   _f(run.active_at), int(run.dry_run), run.spec, run.status,
                   int(run.next_step), float(run.created_at), _f(run.finished_at), run.detail,
                   _f(run.verify_at), run.verification, _f(run.value_after), run.lock_key,
                   run.deferred_to, run.tier)
        once = None if run.incident_id is None else (run.action, run.incident_id)
        if run.id in t.runs or (once is not None and once in t.runs_once):
            raise DuplicateRun(f"{run.action} already has a run for incident {run.incident_id}")
        w.put(t.runs, run.id, row)
        if once is not None:
            w.put(t.runs_once, once, run.id)

    async def update(self, run_id: str, **fields: Any) -> None:
        bad = set(fields) - RUN_UPDATABLE
        if bad:
            raise ValueError(f"run fields that cannot change: {sorted(bad)}")
        t = self.t
        row = t.runs.get(run_id)
        if row is None or not fields:
            return
        values: dict[str, Any] = {k: _f(v) if k in _RUN_FLOATS else v
                                  for k, v in fields.items()}
        self.w.put(t.runs, run_id, replace(row, **values))

    async def get(self, run_id: str) -> RunRow | None:
        row = self.t.runs.get(run_id)
        return row.out() if row is not None else None

    async def list(self, *, status: Sequence[str] | None = None, action: str | None = None,
                   limit: int = 100) -> builtins.list[RunRow]:
        rows = [r for r in self.t.runs.values()
                if (not status or r.status in status) and (not action or r.action == action)]
        rows.sort(key=lambda r: r.id)  # ORDER BY created_at DESC, id: two stable sorts
        rows.sort(key=lambda r: r.created_at, reverse=True)
        return [r.out() for r in _limit(rows, limit)]

    async def pending_verifications(self) -> builtins.list[RunRow]:
        return [r.out() for r in sorted(self.t.runs.values(), key=_by_time)
                if r.verification == "pending"]

    async def history(self, action: str, since: float, incident_id: str | None, *,
                      include_dry: bool) -> builtins.list[PastRun]:
        return [PastRun(r.action, r.created_at, r.fingerprint, r.incident_id)
                for r in sorted(self.t.runs.values(), key=_by_time)
                if r.action == action and r.status != "locked" and (not r.dry_run or include_dry)
                and (r.created_at >= since
                     or (r.incident_id is not None and r.incident_id == incident_id))]

    async def for_incident(self, incident_id: str) -> builtins.list[RunRow]:
        return [r.out() for r in sorted(self.t.runs.values(), key=_by_time)
                if r.incident_id == incident_id]

    async def claim(self, run_id: str, replica: str, ttl: float) -> bool:
        return True  # one process owns this store

    async def renew_claims(self, replica: str, ttl: float, ids: Sequence[str]
                           ) -> builtins.list[str]:
        return list(ids)

    async def take_expired(self, replica: str, ttl: float, limit: int = 100, *,
                           own: bool = False) -> builtins.list[str]:
        return []


class _MemAttempts(_Repo):
    async def add_attempt(self, a: AttemptRow) -> None:
        key = (a.run_id, int(a.idx), int(a.attempt))
        if key not in self.t.attempts:
            self.w.put(self.t.attempts, key, a)

    async def attempts(self, run_id: str) -> list[AttemptRow]:
        return sorted((a for (rid, _, _), a in self.t.attempts.items() if rid == run_id),
                      key=lambda a: (a.idx, a.attempt))


class MemSteps(_MemAttempts):
    async def list(self, run_id: str) -> list[StepRow]:
        return sorted((s for (rid, _), s in self.t.steps.items() if rid == run_id),
                      key=lambda s: s.idx)

    async def start(self, run_id: str, idx: int, kind: str, at: float,
                    deadline: float | None = None, status: str = "running") -> None:
        t = self.t
        key = (run_id, int(idx))
        if key in t.steps:
            raise Conflict(f"run {run_id!r} has a step {idx} already")
        self.w.put(t.steps, key, StepRow(run_id, int(idx), kind, status, float(at), None, None,
                                         _f(deadline), "", ""))

    async def finish(self, run_id: str, idx: int, status: str, at: float, detail: str,
                     output: str = "", *, next_step: int | None = None) -> None:
        t = self.t
        key = (run_id, int(idx))
        s = t.steps.get(key)
        if s is not None:
            self.w.put(t.steps, key, replace(s, status=status, finished_at=float(at),
                                             duration=float(at) - s.started_at, detail=detail,
                                             output=output))
        run = t.runs.get(run_id)
        if next_step is not None and run is not None:
            self.w.put(t.runs, run_id, replace(run, next_step=int(next_step)))


class MemLocks(_Repo):
    async def holder(self, key: str) -> LockHolder | None:
        t = self.t
        if key not in t.locks:
            self.w.put(t.locks, key, (None, None))
        run_id, at = t.locks[key]
        run = t.runs.get(run_id) if run_id is not None else None
        if run is None or at is None:
            return None
        inc = t.incidents.get(run.incident_id) if run.incident_id is not None else None
        return LockHolder(key, run.id, run.action, float(at), run.status, run.incident_id,
                          inc is not None and inc.resolved_at is None)

    async def take(self, key: str, run_id: str, at: float) -> None:
        self.w.put(self.t.locks, key, (run_id, float(at)))


class MemPause(_Repo):
    async def get(self) -> PauseRecord | None:
        return self.t.pause.get(1)

    async def set(self, p: PauseRecord) -> None:
        self.w.put(self.t.pause, 1, p)

    async def clear(self) -> bool:
        return self.w.delete(self.t.pause, 1)


class MemDeploys(_Repo):
    async def insert(self, d: DeployRow) -> None:
        t = self.t
        if d.id in t.deploys:
            raise Conflict(f"deploy {d.id!r} exists already")
        self.w.put(t.deploys, d.id, _Deploy(d.id, d.service, d.version, _j(d.labels),
                                            float(d.at), float(d.window_end), d.status,
                                            d.summary, _j(list(d.on_fail)),
                                            _f(d.decided_at), _j(list(d.report)),
                                            _f(d.report_days), _f(d.reported_at)))
        self.bump(ports.DEPLOYS)

    async def finish(self, deploy_id: str, status: str, summary: str) -> None:
        t = self.t
        d = t.deploys.get(deploy_id)
        if d is not None:
            self.w.put(t.deploys, deploy_id, replace(d, status=status, summary=summary))
            self.bump(ports.DEPLOYS)

    async def decide(self, deploy_id: str, status: str, summary: str, at: float) -> bool:
        t = self.t
        d = t.deploys.get(deploy_id)
        if d is None or d.status != "open":
            return False
        self.w.put(t.deploys, deploy_id, replace(d, status=status, summary=summary,
                                                 decided_at=float(at)))
        self.bump(ports.DEPLOYS)
        return True

    async def mark_reported(self, deploy_id: str, at: float) -> bool:
        t = self.t
        d = t.deploys.get(deploy_id)
        if d is None or d.reported_at is not None or d.report_days is None:
            return False
        self.w.put(t.deploys, deploy_id, replace(d, reported_at=float(at)))
        self.bump(ports.DEPLOYS)
        return True

    async def take_due(self, replica: str, ttl: float, now: float, limit: int = 100, *,
                       own: bool = False) -> builtins.list[DeployRow]:
        """One process owns this store: every due marker, nothing to claim."""
        rows = sorted((d for d in self.t.deploys.values()
                       if (d.status == "open" and d.window_end <= now)
                       or (d.report_days is not None and d.reported_at is None
                           and d.at + d.report_days * 86400.0 <= now)),
                      key=lambda d: (d.window_end, d.id))
        return [d.out() for d in _limit(rows, limit)]

    async def claim(self, deploy_id: str, replica: str, ttl: float) -> bool:
        return True

    async def renew_claims(self, replica: str, ttl: float, ids: Sequence[str]
                           ) -> builtins.list[str]:
        return list(ids)

    async def release(self, deploy_id: str, replica: str) -> None:
        return None

    async def unreported(self, limit: int = 1000) -> builtins.list[DeployRow]:
        rows = sorted((d for d in self.t.deploys.values()
                       if d.report_days is not None and d.reported_at is None),
                      key=lambda d: (d.at, d.id))
        return [d.out() for d in _limit(rows, limit)]

    async def get(self, deploy_id: str) -> DeployRow | None:
        d = self.t.deploys.get(deploy_id)
        return d.out() if d is not None else None

    async def list(self, *, status: str | None = None, limit: int = 100,
                   service: str | None = None, version: str | None = None
                   ) -> builtins.list[DeployRow]:
        rows = [d for d in self.t.deploys.values()
                if (not status or d.status == status) and (not service or d.service == service)
                and (not version or d.version == version)]
        rows.sort(key=lambda d: d.id)  # ORDER BY at DESC, id
        rows.sort(key=lambda d: d.at, reverse=True)
        return [d.out() for d in _limit(rows, limit)]

    async def save_baselines(self, deploy_id: str, at: float,
                             rows: Sequence[tuple[str, str, float, Mapping[str, str]]]) -> None:
        t = self.t
        for rule, fp, value, labels in rows:
            self.w.put(t.baselines, (rule, fp),
                       (float(value), _j(dict(labels)), deploy_id, float(at)))
        if rows:
            self.bump(ports.DEPLOYS)

    async def baselines(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for (rule, fp), (value, *_) in self.t.baselines.items():
            out.setdefault(rule, {})[fp] = value
        return out

    async def baselines_of(self, deploy_id: str
                           ) -> builtins.list[tuple[str, dict[str, str], float]]:
        return [(rule, json.loads(labels), value)
                for (rule, _), (value, labels, did, _) in sorted(self.t.baselines.items())
                if did == deploy_id]

    async def record_alert(self, deploy_id: str, rule: str, fingerprint: str,
                           labels: Mapping[str, str], value: float | None, at: float) -> None:
        t = self.t
        key = (deploy_id, rule, fingerprint)
        if key not in t.deploy_alerts:  # the first firing counts
            self.w.put(t.deploy_alerts, key, (_j(dict(labels)), _f(value), float(at)))

    async def alerts(self, deploy_id: str
                     ) -> builtins.list[tuple[str, dict[str, str], float | None, float]]:
        rows = [(rule, json.loads(labels), value, at)
                for (did, rule, _), (labels, value, at) in self.t.deploy_alerts.items()
                if did == deploy_id]
        rows.sort(key=lambda r: (r[3], r[0]))
        return rows


class MemIncidents(_Repo):
    async def open(self, incidents: Sequence[IncidentRecord]) -> None:
        for i in incidents:
            if i.id in self.t.incidents:
                continue  # ON CONFLICT DO NOTHING
            self.w.put(self.t.incidents, i.id, _Incident(
                i.id, i.rule, i.group, i.fingerprint, _j(dict(i.labels)), i.severity,
                float(i.active_at), _f(i.fired_at), _f(i.resolved_at), i.ack_by, _f(i.ack_at),
                int(i.notifications), _f(i.first_action_at)))

    async def find(self, ids: Iterable[str]) -> dict[str, IncidentRecord]:
        t = self.t
        return {i: self._out(t.incidents[i], with_actions=False)
                for i in dict.fromkeys(ids) if i in t.incidents}

    def _update(self, incident_id: str, **fields: Any) -> bool:
        row = self.t.incidents.get(incident_id)
        if row is None:
            return False
        self.w.put(self.t.incidents, incident_id, replace(row, **fields))
        return True

    async def update(self, changes: Sequence[IncidentChange]) -> None:
        for ch in changes:
            row = self.t.incidents.get(ch.id)
            if row is not None:
                fired = row.fired_at if row.fired_at is not None else _f(ch.fired_at)
                self._update(ch.id, severity=ch.severity, labels=_j(dict(ch.labels)),
                             fired_at=fired)

    async def resolve(self, ended: Sequence[tuple[str, float]]) -> None:
        for incident_id, at in ended:
            row = self.t.incidents.get(incident_id)
            if row is None or row.resolved_at is not None:
                continue
            ack = self.t.acks.get(incident_id)
            by, ack_at = row.ack_by, row.ack_at
            if ack_at is None:
                by, ack_at = (ack[3], ack[2]) if ack is not None else (None, None)
            self._update(incident_id, resolved_at=float(at), ack_by=by, ack_at=ack_at)

    async def add_notifications(self, counts: Mapping[str, int]) -> None:
        for i, n in counts.items():
            row = self.t.incidents.get(i)
            if row is not None and n:
                self._update(i, notifications=row.notifications + int(n))

    async def first_action(self, incident_id: str, at: float) -> bool:
        row = self.t.incidents.get(incident_id)
        if row is None or row.first_action_at is not None:
            return False
        return self._update(incident_id, first_action_at=float(at))

    async def rekey(self, old_id: str, new_id: str, active_at: float) -> None:
        t = self.t
        row = t.incidents.get(old_id)
        if old_id == new_id or row is None:
            return
        self.w.delete(t.incidents, old_id)
        if new_id not in t.incidents:
            self.w.put(t.incidents, new_id, replace(row, id=new_id, active_at=float(active_at)))

    def _out(self, row: _Incident, *, with_actions: bool = True) -> IncidentRecord:
        t = self.t
        by, ack_at = row.ack_by, row.ack_at
        if ack_at is None:  # the live ack, as the SQL's LEFT JOIN reads it
            ack = t.acks.get(row.id)
            by, ack_at = (ack[3], ack[2]) if ack is not None else (None, None)
        runs = sorted((r for r in t.runs.values() if r.incident_id == row.id),
                      key=_by_time) if with_actions else []
        return IncidentRecord(row.id, row.rule, row.grp, row.fingerprint,
                              json.loads(row.labels), row.severity, row.active_at,
                              row.fired_at, row.resolved_at, by, ack_at, row.notifications,
                              row.first_action_at,
                              tuple(IncidentAction(r.action, r.id, r.status, r.verification)
                                    for r in runs))

    async def get(self, incident_id: str) -> IncidentRecord | None:
        row = self.t.incidents.get(incident_id)
        return self._out(row) if row is not None else None

    async def list(self, *, rule: str | None = None, state: str | None = None,
                   since: float | None = None, limit: int | None = 100
                   ) -> builtins.list[IncidentRecord]:
        if state not in (None, "", "open", "resolved"):
            raise ValueError(f"state: expected 'open' or 'resolved', got {state!r}")
        rows = [r for r in self.t.incidents.values()
                if (not rule or r.rule == rule)
                and (state != "open" or r.resolved_at is None)
                and (state != "resolved" or r.resolved_at is not None)
                and (since is None or r.resolved_at is None or r.resolved_at >= since)]
        rows.sort(key=lambda r: r.id)  # ORDER BY active_at DESC, id
        rows.sort(key=lambda r: r.active_at, reverse=True)
        if limit is not None:
            rows = rows[:max(0, int(limit))]
        return [self._out(r) for r in rows]

    async def prune(self, resolved_before: float) -> int:
        t = self.t
        old = [i for i, r in t.incidents.items()
               if r.resolved_at is not None and r.resolved_at < resolved_before]
        for i in old:
            self.w.delete(t.incidents, i)
        return len(old)


def _limit(rows: list[Any], limit: int, *, tail: bool = False) -> list[Any]:
    """SQL's LIMIT (SQLite reads a negative one as "no limit"); `tail`: what it leaves out."""
    if tail:
        return [] if limit < 0 else rows[limit:]
    return rows if limit < 0 else rows[:limit]


# ---- the unit of work ---------------------------------------------------------------------------


class MemoryTx:
    """`ports.Tx` over the in-memory tables."""

    def __init__(self, w: _Work) -> None:
        # Typed as the port's repositories: `Tx`'s attributes are invariant.
        self.alerts: ports.AlertRepo = MemAlerts(w)
        self.rule_files: ports.RuleFileRepo = MemRuleFiles(w)
        self.outbox: ports.OutboxRepo = MemOutbox(w)
        self.notify_log: ports.NotifyLogRepo = MemNotifyLog(w)
        self.escalations: ports.EscalationRepo = MemEscalations(w)
        self.action_notes: ports.ActionNoteRepo = MemActionNotes(w)
        self.silences: ports.SilenceRepo = MemSilences(w)
        self.acks: ports.AckRepo = MemAcks(w)
        self.runs: ports.RunRepo = MemRuns(w)
        self.steps: ports.StepRepo = MemSteps(w)
        self.deploys: ports.DeployRepo = MemDeploys(w)
        self.incidents: ports.IncidentRepo = MemIncidents(w)
        self.locks: ports.LockRepo = MemLocks(w)
        self.pause: ports.PauseRepo = MemPause(w)
        self.versions: ports.VersionRepo = MemVersions(w)
        self.callbacks: list[Callable[[], object]] = []

    def on_commit(self, fn: Callable[[], object]) -> None:
        self.callbacks.append(fn)

    async def fence(self, leases: Sequence[ports.Lease]) -> None:
        """One process owns this store: nothing else can hold a lease."""

    async def signal(self, channel: str, payload: str = "") -> None:
        """One process owns this store: nobody else to tell."""


class MemoryStorage:
    kind = "memory"
    schema_version = SCHEMA_VERSION

    def __init__(self) -> None:
        self.coordination: Coordination = SoloCoordination()
        self._tables = _Tables()
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        self._closed = False

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[MemoryTx]:
        if self._closed:
            raise StorageError("the memory:// store is closed")
        me = asyncio.current_task()
        if me is not None and self._owner is me:
            # The SQLite backend would wait for itself forever here; say so instead.
            raise StorageError("transaction() inside a transaction of the same task")
        async with self._lock:
            self._owner = me
            w = _Work(self._tables)
            tx = MemoryTx(w)
            try:
                yield tx
            except BaseException:
                w.rollback()
                raise
            finally:
                w.open = False
                self._owner = None
        run_callbacks(tx.callbacks)

    async def close(self) -> None:
        self._closed = True
