"""The repositories of `ports.Tx`, written once in the SQL both backends speak.

Statements use `?` placeholders and only syntax SQLite (3.24+) and PostgreSQL share
(`ON CONFLICT ... DO NOTHING/UPDATE`, partial unique indexes, `LIMIT`); each backend's `Conn`
translates placeholders and reports affected rows. Values are stored as JSON text where they are
structured, so one table layout serves both.

Must not: open connections, commit, or know which backend runs it (that is `sqlite.py` /
`postgres.py`); decide anything (callers do).
"""

from __future__ import annotations

import builtins
import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import structlog

from watchdog.interlocks import PastRun
from watchdog.state import Alert
from watchdog.storage.ports import DEPLOYS, SILENCES, DuplicateRun, Lease, LeaseLost
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

log = structlog.get_logger(__name__)

Row = tuple[Any, ...]


class Conn(Protocol):
    """One open transaction on one connection."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it inserted, updated or deleted."""

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...


async def fetchone(c: Conn, sql: str, params: Sequence[Any] = ()) -> Row | None:
    rows = await c.fetchall(sql, params)
    return rows[0] if rows else None


async def bump(c: Conn, name: str) -> None:
    """Count one more change of `name` (`ports.VersionRepo`), in the writer's transaction. The
    row's lock is held until that commits, so replicas reading the count after it see the
    change too (they read the count before the data)."""
    await c.execute("INSERT INTO store_versions (name, version) VALUES (?, 1) "
                    "ON CONFLICT (name) DO UPDATE SET version = store_versions.version + 1",
                    (name,))


class SqlVersions:
    def __init__(self, c: Conn) -> None:
        self.c = c

    async def get(self) -> dict[str, int]:
        return {n: int(v) for n, v in await self.c.fetchall(
            "SELECT name, version FROM store_versions")}


# ---- (de)serialisation -------------------------------------------------------------------------

_ALERT_NAMES = tuple(f.name for f in dataclasses.fields(Alert))
_ALERT_FIELDS = frozenset(_ALERT_NAMES)


def alert_to_json(a: Alert) -> str:
    # Field by field, not dataclasses.asdict: that deep-copies, 4x the cost, and this runs for
    # every alert whose value moved, every tick. The fields are flat but for the two mappings.
    d = {name: getattr(a, name) for name in _ALERT_NAMES}
    d["labels"], d["annotations"] = dict(a.labels), dict(a.annotations)
    return json.dumps(d, separators=(",", ":"), sort_keys=True)  # NaN/Inf kept as NaN/Infinity


def alert_from_json(text: str) -> Alert:
    d: dict[str, Any] = json.loads(text)
    # Ignore fields a newer version wrote; missing optional ones take their defaults.
    return Alert(**{k: v for k, v in d.items() if k in _ALERT_FIELDS})


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


# ---- alert state and rule files ----------------------------------------------------------------


class SqlAlerts:
    def __init__(self, c: Conn) -> None:
        self.c = c

    async def load(self, keys: Sequence[str] | None = None) -> dict[str, StoredGroup]:
        groups: dict[str, StoredGroup] = {}
        rows: list[Row] = []
        if keys is None:
            for key, last in await self.c.fetchall(
                    "SELECT group_key, last_eval_at FROM alert_groups"):
                groups[key] = StoredGroup(_f(last), {})
            rows = await self.c.fetchall("SELECT group_key, rule_key, fingerprint, rule_sig, "
                                         "data FROM alert_instances")
        else:
            wanted = list(dict.fromkeys(keys))
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start:start + _IN_CHUNK]
                marks = ", ".join("?" for _ in chunk)
                for key, last in await self.c.fetchall(
                        f"SELECT group_key, last_eval_at FROM alert_groups "
                        f"WHERE group_key IN ({marks})", chunk):
                    groups[key] = StoredGroup(_f(last), {})
                rows += await self.c.fetchall(
                    "SELECT group_key, rule_key, fingerprint, rule_sig, data FROM "
                    f"alert_instances WHERE group_key IN ({marks})", chunk)
        for gkey, rkey, fp, sig, data in rows:
            g = groups.setdefault(gkey, StoredGroup(None, {}))
            rule = g.rules.setdefault(rkey, StoredRule(sig, {}))
            rule.alerts[fp] = alert_from_json(data)
        return groups

    async def versions(self) -> dict[str, float | None]:
        return {k: _f(v) for k, v in await self.c.fetchall(
            "SELECT group_key, last_eval_at FROM alert_groups")}

    async def save(self, changes: Sequence[GroupChanges]) -> None:
        for ch in changes:
            if not ch and ch.at is None:
                continue
            if ch.drop_group:
                await self.c.execute("DELETE FROM alert_instances WHERE group_key = ?",
                                     (ch.group_key,))
                await self.c.execute("DELETE FROM alert_groups WHERE group_key = ?",
                                     (ch.group_key,))
                continue
            if ch.drop_rules:
                await self.c.executemany(
                    "DELETE FROM alert_instances WHERE group_key = ? AND rule_key = ?",
                    [(ch.group_key, r) for r in ch.drop_rules])
            if ch.deletes:
                await self.c.executemany(
                    "DELETE FROM alert_instances WHERE group_key = ? AND rule_key = ? "
                    "AND fingerprint = ?", [(ch.group_key, r, fp) for r, fp in ch.deletes])
            if ch.upserts:
                await self.c.executemany(
                    "INSERT INTO alert_instances (group_key, rule_key, fingerprint, rule_sig, "
                    "state, active_at, data) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (group_key, rule_key, fingerprint) DO UPDATE SET "
                    "rule_sig = excluded.rule_sig, state = excluded.state, "
                    "active_at = excluded.active_at, data = excluded.data",
                    [(ch.group_key, r, a.fingerprint, sig, a.state, float(a.active_at),
                      alert_to_json(a)) for r, sig, a in ch.upserts])
            if ch.at is not None:
                await self.c.execute(
                    "INSERT INTO alert_groups (group_key, last_eval_at) VALUES (?, ?) "
                    "ON CONFLICT (group_key) DO UPDATE SET last_eval_at = excluded.last_eval_at",
                    (ch.group_key, float(ch.at)))


class SqlRuleFiles:
    def __init__(self, c: Conn) -> None:
        self.c = c

    async def load(self) -> dict[str, bytes]:
        return {p: bytes(content) for p, content in
                await self.c.fetchall("SELECT path, content FROM rule_files")}

    async def save(self, files: Mapping[str, tuple[str, bytes]], forget: Sequence[str] = ()
                   ) -> None:
        if forget:
            await self.c.executemany("DELETE FROM rule_files WHERE path = ?",
                                     [(p,) for p in forget])
        if files:
            await self.c.executemany(
                "INSERT INTO rule_files (path, digest, content) VALUES (?, ?, ?) "
                "ON CONFLICT (path) DO UPDATE SET digest = excluded.digest, "
                "content = excluded.content",
                [(p, d, bytes(content)) for p, (d, content) in files.items()])


# ---- notifications -------------------------------------------------------------------------------

_OUTBOX_ROW = ("SELECT id, receiver, kind, group_key, payload, attempts, created_at, "
               "next_attempt_at FROM notify_outbox")


class SqlOutbox:
    def __init__(self, c: Conn) -> None:
        self.c = c

    async def insert(self, entries: Sequence[OutboxEntry], now: float) -> list[OutboxEntry]:
        added: list[OutboxEntry] = []
        for e in entries:
            if e.supersede:
                await self.c.execute(
                    "UPDATE notify_outbox SET status = 'superseded', finished_at = ? "
                    "WHERE receiver = ? AND group_key = ? AND status = 'pending'",
                    (float(now), e.receiver, e.group_key))
            n = await self.c.execute(
                "INSERT INTO notify_outbox (receiver, kind, group_key, dedup_key, payload, "
                "created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (e.receiver, e.kind, e.group_key, e.dedup_key, e.payload, float(now),
                 float(now)))
            if n:
                added.append(e)
        return added

    async def next(self, receiver: str) -> OutboxRow | None:
        r = await fetchone(self.c, _OUTBOX_ROW + " WHERE status = 'pending' AND receiver = ? "
                           "ORDER BY id LIMIT 1", (receiver,))
        if r is None:
            return None
        return OutboxRow(int(r[0]), r[1], r[2], r[3], r[4], int(r[5]), float(r[6]),
                         float(r[7]))

    async def finish(self, row_id: int, status: str, error: str | None, *,
                     next_at: float | None = None, finished: float | None = None) -> None:
        await self.c.execute(
            "UPDATE notify_outbox SET status = CASE WHEN status = 'pending' THEN ? ELSE status "
            "END, attempts = attempts + 1, last_error = ?, "
            "next_attempt_at = COALESCE(?, next_attempt_at), "
            # A row superseded meanwhile keeps the finished_at it got then (prune needs one).
            "finished_at = CASE WHEN status = 'pending' THEN ? ELSE finished_at END "
            "WHERE id = ?",
            (status, error, _f(next_at), _f(finished), row_id))

    async def pending_receivers(self) -> list[str]:
        return [r for (r,) in await self.c.fetchall(
            "SELECT DISTINCT receiver FROM notify_outbox WHERE status = 'pending' "
            "ORDER BY receiver")]

    async def pending_count(self, receiver: str | None = None) -> int:
        if receiver is None:
            r = await fetchone(self.c,
                               "SELECT COUNT(*) FROM notify_outbox WHERE status = 'pending'")
        else:
            r = await fetchone(self.c, "SELECT COUNT(*) FROM notify_outbox WHERE "
                               "status = 'pending' AND receiver = ?", (receiver,))
        return int(r[0]) if r else 0

    async def recent(self, *, status: str | None = None, receiver: str | None = None,
                     limit: int = 100) -> list[OutboxRecord]:
        where, params = [], []
        if status:
            where.append("status = ?")
            params.append(status)
        if receiver:
            where.append("receiver = ?")
            params.append(receiver)
        sql = ("SELECT id, receiver, kind, group_key, status, attempts, created_at, "
               "next_attempt_at, last_error, finished_at FROM notify_outbox"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY id DESC LIMIT ?")
        return [OutboxRecord(int(r[0]), r[1], r[2], r[3], r[4], int(r[5]), float(r[6]),
                             float(r[7]), r[8], _f(r[9]))
                for r in await self.c.fetchall(sql, (*params, int(limit)))]

    async def prune(self, finished_before: float) -> int:
        return await self.c.execute("DELETE FROM notify_outbox WHERE status != 'pending' AND "
                                    "finished_at < ?", (float(finished_before),))


class SqlNotifyLog:
    def __init__(self, c: Conn) -> None:
        self.c = c

    async def load(self) -> dict[tuple[str, str], LogEntry]:
        return {(r, g): LogEntry(json.loads(firing), float(sent)) for r, g, firing, sent in
                await self.c.fetchall("SELECT receiver, group_key, firing, sent_at "
                                      "FROM notify_log")}

    async def put(self, receiver: str, group_key: str, entry: LogEntry) -> None:
        await self.c.execute(
            "INSERT INTO notify_log (receiver, group_key, firing, sent_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (receiver, group_key) DO UPDATE SET firing = excluded.firing, "
            "sent_at = excluded.sent_at",
            (receiver, group_key, json.dumps(entry.firing, sort_keys=True),
             float(entry.sent_at)))

    async def delete(self, keys: Iterable[tuple[str, str]]) -> None:
        rows = [(r, g) for r, g in keys]
        if rows:
            await self.c.executemany(
                "DELETE FROM notify_log WHERE receiver = ? AND group_key = ?", rows)


class SqlEscalations:
    def __init__(self, c: Conn) -> None:
        self.c = c

    async def load(self) -> dict[EscalationKey, bool]:
        return {(inc, rid, int(level)): bool(done) for inc, rid, level, done in
                await self.c.fetchall("SELECT incident_id, route_id, level, resolved_sent "
                                      "FROM notify_escalations")}

    async def add(self, key: EscalationKey, at: float) -> None:
        await self.c.execute(
            "INSERT INTO notify_escalations (incident_id, route_id, level, at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING", (key[0], key[1], int(key[2]),
                                                           float(at)))

    async def mark_resolved(self, key: EscalationKey) -> None:
        await self.c.execute(
            "UPDATE notify_escalations SET resolved_sent = 1 WHERE incident_id = ? AND "
            "route_id = ? AND level = ?", (key[0], key[1], int(key[2])))

    async def delete(self, keys: Iterable[EscalationKey]) -> None:
        rows = [(i, r, int(lv)) for i, r, lv in keys]
        if rows:
            await self.c.executemany(
                "DELETE FROM notify_escalations WHERE incident_id = ? AND route_id = ? "
                "AND level = ?", rows)


class SqlActionNotes:
    def __init__(self, c: Conn) -> None:
        self.c = c

    async def load(self) -> list[tuple[str, str]]:
        return [(inc, note) for inc, note in await self.c.fetchall(
            "SELECT incident_id, note FROM notify_action_notes ORDER BY id")]

    async def add(self, incident_id: str, note: str, keep: int) -> None:
        await self.c.execute("INSERT INTO notify_action_notes (incident_id, note) VALUES (?, ?)",
                             (incident_id, note))
        await self.c.execute(
            "DELETE FROM notify_action_notes WHERE incident_id = ? AND id NOT IN "
            "(SELECT id FROM notify_action_notes WHERE incident_id = ? "
            "ORDER BY id DESC LIMIT ?)", (incident_id, incident_id, int(keep)))

    async def delete(self, incident_ids: Iterable[str]) -> None:
        rows = [(i,) for i in incident_ids]
        if rows:
            await self.c.executemany("DELETE FROM notify_action_notes WHERE incident_id = ?",
                                     rows)


class SqlSilences:
    def __init__(self, c: Conn) -> None:
        self.c = c

    async def load(self) -> list[SilenceRecord]:
        return [SilenceRecord(r[0], json.loads(r[1]), float(r[2]), float(r[3]), r[4], r[5],
                              float(r[6]))
                for r in await self.c.fetchall(
                    "SELECT id, matchers, starts_at, ends_at, created_by, comment, created_at "
                    "FROM notify_silences ORDER BY created_at, id")]

    async def add(self, s: SilenceRecord) -> None:
        await self.c.execute(
            "INSERT INTO notify_silences (id, matchers, starts_at, ends_at, created_by, "
            "comment, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (s.id, json.dumps(s.matchers), float(s.starts_at), float(s.ends_at), s.created_by,
             s.comment, float(s.created_at)))
        await bump(self.c, SILENCES)

    async def set_times(self, silence_id: str, starts_at: float, ends_at: float) -> None:
        if await self.c.execute("UPDATE notify_silences SET starts_at = ?, ends_at = ? "
                                "WHERE id = ?", (float(starts_at), float(ends_at), silence_id)):
            await bump(self.c, SILENCES)

    async def delete(self, ids: Iterable[str]) -> None:
        rows = [(i,) for i in ids]
        if rows:
            await self.c.executemany("DELETE FROM notify_silences WHERE id = ?", rows)
            await bump(self.c, SILENCES)


class SqlAcks:
    def __init__(self, c: Conn) -> None:
        self.c = c

    async def load(self) -> list[AckRecord]:
        return [AckRecord(r[0], r[1], json.loads(r[2]), float(r[3]), r[4], r[5])
                for r in await self.c.fetchall(
                    "SELECT incident_id, fingerprint, labels, at, created_by, comment "
                    "FROM notify_acks ORDER BY at, incident_id")]

    async def add(self, acks: Sequence[AckRecord]) -> None:
        if acks:
            await self.c.executemany(
                "INSERT INTO notify_acks (incident_id, fingerprint, labels, at, created_by, "
                "comment) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(a.incident_id, a.fingerprint, json.dumps(dict(a.labels)), float(a.at),
                  a.created_by, a.comment) for a in acks])
            await bump(self.c, SILENCES)

    async def delete(self, incident_ids: Iterable[str]) -> None:
        rows = [(i,) for i in incident_ids]
        if rows:
            await self.c.executemany("DELETE FROM notify_acks WHERE incident_id = ?", rows)
            await bump(self.c, SILENCES)


# ---- actions and deploys ------------------------------------------------------------------------

_RUN_COLS = ("id, action, trigger, rule, grp, fingerprint, incident_id, labels, annotations, "
             "value_before, active_at, dry_run, spec, status, next_step, created_at, "
             "finished_at, detail, verify_at, verification, value_after, lock_key, "
             "deferred_to, tier")


def _run(r: Row) -> RunRow:
    return RunRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), json.loads(r[8]),
                  _f(r[9]), _f(r[10]), bool(r[11]), r[12], r[13], int(r[14]), float(r[15]),
                  _f(r[16]), r[17], _f(r[18]), r[19], _f(r[20]), r[21], r[22], r[23])


_FLOAT_FIELDS = frozenset({"finished_at", "verify_at", "value_after"})


# The database's clock, in Unix seconds: leases and claims never trust a replica's clock.
# clock_timestamp(), not now(): now() is the transaction's start, and a fence checked late in
# a long transaction must see the time it is checked at.
PG_NOW = "extract(epoch from clock_timestamp())::float8"


async def _renew_claims(c: Conn, table: str, shared: bool, replica: str, ttl: float,
                        ids: Sequence[str]) -> builtins.list[str]:
    """Extend this replica's live claims on rows of `table` (action runs, deploy markers); the
    ids still held. Alone on its store a replica holds everything."""
    if not shared:
        return list(ids)
    if not ids:
        return []
    return [r[0] for r in await c.fetchall(
        f"UPDATE {table} SET claim_until = {PG_NOW} + ?::float8 "
        f"WHERE claimed_by = ? AND claim_until > {PG_NOW} AND id = ANY(?::text[]) "
        "RETURNING id", (float(ttl), replica, list(ids)))]


class SqlRuns:
    def __init__(self, c: Conn, shared: bool = False) -> None:
        self.c = c
        self.shared = shared

    async def insert(self, run: RunRow) -> None:
        # ON CONFLICT DO NOTHING rather than catching an IntegrityError: a failed statement
        # aborts the whole transaction on PostgreSQL, and the caller's other writes with it.
        n = await self.c.execute(
            f"INSERT INTO action_runs ({_RUN_COLS}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (run.id, run.action, run.trigger, run.rule, run.group, run.fingerprint,
             run.incident_id, json.dumps(run.labels), json.dumps(run.annotations),
             _f(run.value_before), _f(run.active_at), int(run.dry_run), run.spec, run.status,
             int(run.next_step), float(run.created_at), _f(run.finished_at), run.detail,
             _f(run.verify_at), run.verification, _f(run.value_after), run.lock_key,
             run.deferred_to, run.tier))
        if n == 0:
            raise DuplicateRun(f"{run.action} already has a run for incident {run.incident_id}")

    async def update(self, run_id: str, **fields: Any) -> None:
        bad = set(fields) - RUN_UPDATABLE
        if bad:
            raise ValueError(f"run fields that cannot change: {sorted(bad)}")
        if not fields:
            return
        values = [_f(v) if k in _FLOAT_FIELDS else v for k, v in fields.items()]
        cols = ", ".join(f"{k} = ?" for k in fields)
        await self.c.execute(f"UPDATE action_runs SET {cols} WHERE id = ?", (*values, run_id))

    async def get(self, run_id: str) -> RunRow | None:
        r = await fetchone(self.c, f"SELECT {_RUN_COLS} FROM action_runs WHERE id = ?",
                           (run_id,))
        return _run(r) if r else None

    async def list(self, *, status: Sequence[str] | None = None, action: str | None = None,
                   limit: int = 100) -> builtins.list[RunRow]:
        where: list[str] = []
        args: list[Any] = []
        if status:
            where.append(f"status IN ({', '.join('?' for _ in status)})")
            args.extend(status)
        if action:
            where.append("action = ?")
            args.append(action)
        sql = f"SELECT {_RUN_COLS} FROM action_runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id LIMIT ?"
        return [_run(r) for r in await self.c.fetchall(sql, (*args, int(limit)))]

    async def pending_verifications(self) -> builtins.list[RunRow]:
        return [_run(r) for r in await self.c.fetchall(
            f"SELECT {_RUN_COLS} FROM action_runs WHERE verification = 'pending' "
            "ORDER BY created_at, id")]

    async def history(self, action: str, since: float, incident_id: str | None, *,
                      include_dry: bool) -> builtins.list[PastRun]:
        rows = await self.c.fetchall(
            "SELECT action, created_at, fingerprint, incident_id FROM action_runs "
            "WHERE action = ? AND status <> 'locked' AND (dry_run = 0 OR ? = 1) AND "
            "(created_at >= ? OR "
            "(incident_id IS NOT NULL AND incident_id = ?)) ORDER BY created_at, id",
            (action, int(include_dry), float(since), incident_id))
        return [PastRun(r[0], float(r[1]), r[2], r[3]) for r in rows]

    async def for_incident(self, incident_id: str) -> builtins.list[RunRow]:
        return [_run(r) for r in await self.c.fetchall(
            f"SELECT {_RUN_COLS} FROM action_runs WHERE incident_id = ? "
            "ORDER BY created_at, id", (incident_id,))]

    # Claims exist only where several replicas share the store (PostgreSQL): elsewhere the one
    # process drives every run.

    async def claim(self, run_id: str, replica: str, ttl: float) -> bool:
        if not self.shared:
            return True
        n = await self.c.execute(
            f"UPDATE action_runs SET claimed_by = ?, claim_until = {PG_NOW} + ?::float8 "
            f"WHERE id = ? AND (claimed_by IS NULL OR (claimed_by = ? AND claim_until > "
            f"{PG_NOW}))", (replica, float(ttl), run_id, replica))
        return n > 0

    async def renew_claims(self, replica: str, ttl: float, ids: Sequence[str]
                           ) -> builtins.list[str]:
        return await _renew_claims(self.c, "action_runs", self.shared, replica, ttl, ids)

    async def take_expired(self, replica: str, ttl: float, limit: int = 100, *,
                           own: bool = False) -> builtins.list[str]:
        if not self.shared:
            return []
        # SKIP LOCKED: two replicas reaping at once each take different runs, neither waits.
        return [r[0] for r in await self.c.fetchall(
            f"UPDATE action_runs SET claimed_by = ?, claim_until = {PG_NOW} + ?::float8 "
            "WHERE id IN (SELECT id FROM action_runs WHERE "
            "(status = 'running' OR verification = 'pending') AND "
            f"(claim_until IS NULL OR claim_until <= {PG_NOW} OR (? AND claimed_by = ?)) "
            "ORDER BY created_at, id LIMIT ? FOR UPDATE SKIP LOCKED) RETURNING id",
            (replica, float(ttl), bool(own), replica, int(limit)))]


class SqlSteps:
    def __init__(self, c: Conn) -> None:
        self.c = c

    async def list(self, run_id: str) -> builtins.list[StepRow]:
        return [StepRow(r[0], int(r[1]), r[2], r[3], float(r[4]), _f(r[5]), _f(r[6]),
                        _f(r[7]), r[8], r[9])
                for r in await self.c.fetchall(
                    "SELECT run_id, idx, kind, status, started_at, finished_at, duration, "
                    "deadline, detail, output FROM action_steps WHERE run_id = ? ORDER BY idx",
                    (run_id,))]

    async def start(self, run_id: str, idx: int, kind: str, at: float,
                    deadline: float | None = None, status: str = "running") -> None:
        await self.c.execute(
            "INSERT INTO action_steps (run_id, idx, kind, status, started_at, deadline) "
            "VALUES (?, ?, ?, ?, ?, ?)", (run_id, int(idx), kind, status, float(at),
                                          _f(deadline)))

    async def finish(self, run_id: str, idx: int, status: str, at: float, detail: str,
                     output: str = "", *, next_step: int | None = None) -> None:
        await self.c.execute(
            "UPDATE action_steps SET status = ?, finished_at = ?, duration = ? - started_at, "
            "detail = ?, output = ? WHERE run_id = ? AND idx = ?",
            (status, float(at), float(at), detail, output, run_id, int(idx)))
        if next_step is not None:
            await self.c.execute("UPDATE action_runs SET next_step = ? WHERE id = ?",
                                 (int(next_step), run_id))

    async def add_attempt(self, a: AttemptRow) -> None:
        await self.c.execute(
            "INSERT INTO action_attempts (run_id, idx, attempt, started_at, finished_at, status, "
            "detail) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (a.run_id, int(a.idx), int(a.attempt), float(a.started_at), float(a.finished_at),
             a.status, a.detail))

    async def attempts(self, run_id: str) -> builtins.list[AttemptRow]:
        return [AttemptRow(r[0], int(r[1]), int(r[2]), float(r[3]), float(r[4]), r[5], r[6])
                for r in await self.c.fetchall(
                    "SELECT run_id, idx, attempt, started_at, finished_at, status, detail "
                    "FROM action_attempts WHERE run_id = ? ORDER BY idx, attempt", (run_id,))]


class SqlLocks:
    def __init__(self, c: Conn) -> None:
        self.c = c

    async def holder(self, key: str) -> LockHolder | None:
        # Make sure the row exists, then write to it: on PostgreSQL the write takes the row's
        # lock, so a concurrent claim of the same key waits for this transaction to end and its
        # next statement sees what this one committed (READ COMMITTED). SQLite runs one write
        # transaction at a time anyway.
        await self.c.execute("INSERT INTO action_locks (lock_key, run_id, at) VALUES (?, NULL, "
                             "NULL) ON CONFLICT DO NOTHING", (key,))
        await self.c.execute("UPDATE action_locks SET lock_key = lock_key WHERE lock_key = ?",
                             (key,))
        r = await fetchone(
            self.c,
            "SELECT l.run_id, l.at, r.action, r.status, r.incident_id, "
            "CASE WHEN i.id IS NOT NULL AND i.resolved_at IS NULL THEN 1 ELSE 0 END "
            "FROM action_locks l JOIN action_runs r ON r.id = l.run_id "
            "LEFT JOIN incidents i ON i.id = r.incident_id WHERE l.lock_key = ?", (key,))
        if r is None:
            return None
        return LockHolder(key, r[0], r[2], float(r[1]), r[3], r[4], bool(r[5]))

    async def take(self, key: str, run_id: str, at: float) -> None:
        await self.c.execute(
            "INSERT INTO action_locks (lock_key, run_id, at) VALUES (?, ?, ?) "
            "ON CONFLICT (lock_key) DO UPDATE SET run_id = excluded.run_id, at = excluded.at",
            (key, run_id, float(at)))


class SqlPause:
    def __init__(self, c: Conn) -> None:
        self.c = c

    async def get(self) -> PauseRecord | None:
        r = await fetchone(self.c, "SELECT until_at, reason, paused_by, at FROM action_pause "
                                   "WHERE id = 1")
        return PauseRecord(float(r[0]), r[1], r[2], float(r[3])) if r else None

    async def set(self, p: PauseRecord) -> None:
        await self.c.execute(
            "INSERT INTO action_pause (id, until_at, reason, paused_by, at) "
            "VALUES (1, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET until_at = excluded.until_at, "
            "reason = excluded.reason, paused_by = excluded.paused_by, at = excluded.at",
            (float(p.until), p.reason, p.by, float(p.at)))

    async def clear(self) -> bool:
        return await self.c.execute("DELETE FROM action_pause WHERE id = 1") > 0


_DEPLOY_COLS = ("id, service, version, labels, at, window_end, status, summary, on_fail, "
                "decided_at, report, report_days, reported_at")


def _deploy(r: Row) -> DeployRow:
    return DeployRow(r[0], r[1], r[2], json.loads(r[3]), float(r[4]), float(r[5]), r[6], r[7],
                     tuple(json.loads(r[8])), _f(r[9]), tuple(json.loads(r[10])), _f(r[11]),
                     _f(r[12]))


# Due work of a marker at the caller's `now` (twice): its window ended while it is open, or its
# report is due and not posted.
_DUE = ("((status = 'open' AND window_end <= ?) OR (report_days IS NOT NULL AND "
        f"reported_at IS NULL AND at + report_days * {86400.0!r} <= ?))")


class SqlDeploys:
    def __init__(self, c: Conn, shared: bool = False) -> None:
        self.c = c
        self.shared = shared

    async def insert(self, d: DeployRow) -> None:
        await self.c.execute(
            f"INSERT INTO deploy_markers ({_DEPLOY_COLS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (d.id, d.service, d.version, json.dumps(d.labels), float(d.at),
             float(d.window_end), d.status, d.summary, json.dumps(list(d.on_fail)),
             _f(d.decided_at), json.dumps(list(d.report)), _f(d.report_days),
             _f(d.reported_at)))
        await bump(self.c, DEPLOYS)

    async def finish(self, deploy_id: str, status: str, summary: str) -> None:
        if await self.c.execute("UPDATE deploy_markers SET status = ?, summary = ? "
                                "WHERE id = ?", (status, summary, deploy_id)):
            await bump(self.c, DEPLOYS)

    async def decide(self, deploy_id: str, status: str, summary: str, at: float) -> bool:
        n = await self.c.execute(
            "UPDATE deploy_markers SET status = ?, summary = ?, decided_at = ? "
            "WHERE id = ? AND status = 'open'", (status, summary, float(at), deploy_id))
        if n:
            await bump(self.c, DEPLOYS)
        return n > 0

    async def mark_reported(self, deploy_id: str, at: float) -> bool:
        n = await self.c.execute(
            "UPDATE deploy_markers SET reported_at = ? WHERE id = ? AND reported_at IS NULL "
            "AND report_days IS NOT NULL", (float(at), deploy_id))
        if n:
            await bump(self.c, DEPLOYS)
        return n > 0

    # Claims, like action runs': only where several replicas share the store (PostgreSQL).

    async def take_due(self, replica: str, ttl: float, now: float, limit: int = 100, *,
                       own: bool = False) -> builtins.list[DeployRow]:
        if not self.shared:
            return [_deploy(r) for r in await self.c.fetchall(
                f"SELECT {_DEPLOY_COLS} FROM deploy_markers WHERE {_DUE} "
                "ORDER BY window_end, id LIMIT ?", (float(now), float(now), int(limit)))]
        # SKIP LOCKED: replicas taking due markers at the same moment each take different
        # ones, and none waits for another's transaction. (RETURNING keeps no order.)
        return sorted((_deploy(r) for r in await self.c.fetchall(
            f"UPDATE deploy_markers SET claimed_by = ?, claim_until = {PG_NOW} + ?::float8 "
            f"WHERE id IN (SELECT id FROM deploy_markers WHERE {_DUE} AND "
            f"(claim_until IS NULL OR claim_until <= {PG_NOW} OR (? AND claimed_by = ?)) "
            "ORDER BY window_end, id LIMIT ? FOR UPDATE SKIP LOCKED) "
            f"RETURNING {_DEPLOY_COLS}",
            (replica, float(ttl), float(now), float(now), bool(own), replica, int(limit)))),
            key=lambda d: (d.window_end, d.id))

    async def claim(self, deploy_id: str, replica: str, ttl: float) -> bool:
        if not self.shared:
            return True
        # An UPDATE: it holds the row's lock until this transaction ends, so no other replica
        # can take the marker over between this check and the verdict written after it.
        n = await self.c.execute(
            f"UPDATE deploy_markers SET claim_until = {PG_NOW} + ?::float8 WHERE id = ? AND "
            f"claimed_by = ? AND claim_until > {PG_NOW}", (float(ttl), deploy_id, replica))
        return n > 0

    async def renew_claims(self, replica: str, ttl: float, ids: Sequence[str]
                           ) -> builtins.list[str]:
        return await _renew_claims(self.c, "deploy_markers", self.shared, replica, ttl, ids)

    async def release(self, deploy_id: str, replica: str) -> None:
        if self.shared:
            await self.c.execute("UPDATE deploy_markers SET claimed_by = NULL, "
                                 "claim_until = NULL WHERE id = ? AND claimed_by = ?",
                                 (deploy_id, replica))

    async def unreported(self, limit: int = 1000) -> builtins.list[DeployRow]:
        return [_deploy(r) for r in await self.c.fetchall(
            f"SELECT {_DEPLOY_COLS} FROM deploy_markers WHERE report_days IS NOT NULL "
            "AND reported_at IS NULL ORDER BY at, id LIMIT ?", (int(limit),))]

    async def get(self, deploy_id: str) -> DeployRow | None:
        r = await fetchone(self.c, f"SELECT {_DEPLOY_COLS} FROM deploy_markers WHERE id = ?",
                           (deploy_id,))
        return _deploy(r) if r else None

    async def list(self, *, status: str | None = None, limit: int = 100,
                   service: str | None = None, version: str | None = None
                   ) -> builtins.list[DeployRow]:
        where: list[str] = []
        args: list[Any] = []
        for col, value in (("status", status), ("service", service), ("version", version)):
            if value:
                where.append(f"{col} = ?")
                args.append(value)
        sql = f"SELECT {_DEPLOY_COLS} FROM deploy_markers"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY at DESC, id LIMIT ?"
        return [_deploy(r) for r in await self.c.fetchall(sql, (*args, int(limit)))]

    async def save_baselines(self, deploy_id: str, at: float,
                             rows: Sequence[tuple[str, str, float, Mapping[str, str]]]) -> None:
        if rows:
            await self.c.executemany(
                "INSERT INTO deploy_baselines (rule, fingerprint, value, labels, deploy_id, "
                "captured_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (rule, fingerprint) DO "
                "UPDATE SET value = excluded.value, labels = excluded.labels, "
                "deploy_id = excluded.deploy_id, captured_at = excluded.captured_at",
                [(r, fp, float(v), json.dumps(dict(lb)), deploy_id, float(at))
                 for r, fp, v, lb in rows])
            await bump(self.c, DEPLOYS)

    async def baselines(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for rule, fp, value in await self.c.fetchall(
                "SELECT rule, fingerprint, value FROM deploy_baselines"):
            out.setdefault(rule, {})[fp] = float(value)
        return out

    async def baselines_of(self, deploy_id: str
                           ) -> builtins.list[tuple[str, dict[str, str], float]]:
        return [(r[0], json.loads(r[1]), float(r[2])) for r in await self.c.fetchall(
            "SELECT rule, labels, value FROM deploy_baselines WHERE deploy_id = ? "
            "ORDER BY rule, fingerprint", (deploy_id,))]

    async def record_alert(self, deploy_id: str, rule: str, fingerprint: str,
                           labels: Mapping[str, str], value: float | None, at: float) -> None:
        await self.c.execute(
            "INSERT INTO deploy_alerts (deploy_id, rule, fingerprint, labels, value, at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (deploy_id, rule, fingerprint, json.dumps(dict(labels)), _f(value), float(at)))

    async def alerts(self, deploy_id: str
                     ) -> builtins.list[tuple[str, dict[str, str], float | None, float]]:
        return [(r[0], json.loads(r[1]), _f(r[2]), float(r[3])) for r in await self.c.fetchall(
            "SELECT rule, labels, value, at FROM deploy_alerts WHERE deploy_id = ? "
            "ORDER BY at, rule", (deploy_id,))]


# ---- incidents -----------------------------------------------------------------------------------

# The ack stored with the incident (copied when it resolved), else the live one from notify_acks.
_INCIDENT_COLS = (
    "i.id, i.rule, i.grp, i.fingerprint, i.labels, i.severity, i.active_at, i.fired_at, "
    "i.resolved_at, CASE WHEN i.ack_at IS NULL THEN a.created_by ELSE i.ack_by END, "
    "COALESCE(i.ack_at, a.at), i.notifications, i.first_action_at")
_INCIDENT_FROM = "FROM incidents i LEFT JOIN notify_acks a ON a.incident_id = i.id"
_IN_CHUNK = 500  # ids per IN (...): far below every backend's limit on parameters


def _incident(r: Row, actions: Sequence[IncidentAction] = ()) -> IncidentRecord:
    return IncidentRecord(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], float(r[6]),
                          _f(r[7]), _f(r[8]), r[9], _f(r[10]), int(r[11]), _f(r[12]),
                          tuple(actions))


class SqlIncidents:
    def __init__(self, c: Conn) -> None:
        self.c = c

    async def open(self, incidents: Sequence[IncidentRecord]) -> None:
        if incidents:
            await self.c.executemany(
                "INSERT INTO incidents (id, rule, grp, fingerprint, labels, severity, "
                "active_at, fired_at, resolved_at, ack_by, ack_at, notifications, "
                "first_action_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                [(i.id, i.rule, i.group, i.fingerprint, json.dumps(dict(i.labels)), i.severity,
                  float(i.active_at), _f(i.fired_at), _f(i.resolved_at), i.ack_by,
                  _f(i.ack_at), int(i.notifications), _f(i.first_action_at))
                 for i in incidents])

    async def find(self, ids: Iterable[str]) -> dict[str, IncidentRecord]:
        wanted = list(dict.fromkeys(ids))
        out: dict[str, IncidentRecord] = {}
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start:start + _IN_CHUNK]
            for r in await self.c.fetchall(
                    f"SELECT {_INCIDENT_COLS} {_INCIDENT_FROM} "
                    f"WHERE i.id IN ({', '.join('?' for _ in chunk)})", chunk):
                out[r[0]] = _incident(r)
        return out

    async def update(self, changes: Sequence[IncidentChange]) -> None:
        if changes:
            await self.c.executemany(
                "UPDATE incidents SET severity = ?, labels = ?, "
                "fired_at = COALESCE(fired_at, ?) WHERE id = ?",
                [(ch.severity, json.dumps(dict(ch.labels)), _f(ch.fired_at), ch.id)
                 for ch in changes])

    async def resolve(self, ended: Sequence[tuple[str, float]]) -> None:
        if ended:
            await self.c.executemany(
                "UPDATE incidents SET resolved_at = ?, "
                "ack_by = CASE WHEN ack_at IS NULL THEN (SELECT created_by FROM notify_acks "
                "WHERE incident_id = ?) ELSE ack_by END, "
                "ack_at = COALESCE(ack_at, (SELECT at FROM notify_acks WHERE incident_id = ?)) "
                "WHERE id = ? AND resolved_at IS NULL",
                [(float(at), i, i, i) for i, at in ended])

    async def add_notifications(self, counts: Mapping[str, int]) -> None:
        rows = [(int(n), i) for i, n in counts.items() if n]
        if rows:
            await self.c.executemany(
                "UPDATE incidents SET notifications = notifications + ? WHERE id = ?", rows)

    async def first_action(self, incident_id: str, at: float) -> bool:
        n = await self.c.execute(
            "UPDATE incidents SET first_action_at = ? WHERE id = ? AND first_action_at IS NULL",
            (float(at), incident_id))
        return n > 0

    async def rekey(self, old_id: str, new_id: str, active_at: float) -> None:
        if old_id == new_id:
            return
        # A row under the new id already (written by a newer event) wins; the old one goes.
        n = await self.c.execute(
            "UPDATE incidents SET id = ?, active_at = ? WHERE id = ? AND NOT EXISTS "
            "(SELECT 1 FROM incidents WHERE id = ?)",
            (new_id, float(active_at), old_id, new_id))
        if n == 0:
            await self.c.execute("DELETE FROM incidents WHERE id = ?", (old_id,))

    async def get(self, incident_id: str) -> IncidentRecord | None:
        rows = await self.c.fetchall(
            f"SELECT {_INCIDENT_COLS} {_INCIDENT_FROM} WHERE i.id = ?", (incident_id,))
        return (await self._with_actions(rows))[0] if rows else None

    async def list(self, *, rule: str | None = None, state: str | None = None,
                   since: float | None = None, limit: int | None = 100
                   ) -> builtins.list[IncidentRecord]:
        where: list[str] = []
        args: list[Any] = []
        if rule:
            where.append("i.rule = ?")
            args.append(rule)
        if state == "open":
            where.append("i.resolved_at IS NULL")
        elif state == "resolved":
            where.append("i.resolved_at IS NOT NULL")
        elif state:
            raise ValueError(f"state: expected 'open' or 'resolved', got {state!r}")
        if since is not None:
            where.append("(i.resolved_at IS NULL OR i.resolved_at >= ?)")
            args.append(float(since))
        sql = f"SELECT {_INCIDENT_COLS} {_INCIDENT_FROM}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY i.active_at DESC, i.id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(max(0, int(limit)))
        return await self._with_actions(await self.c.fetchall(sql, args))

    async def _with_actions(self, rows: Sequence[Row]) -> builtins.list[IncidentRecord]:
        ids = [r[0] for r in rows]
        runs: dict[str, builtins.list[IncidentAction]] = {}
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start:start + _IN_CHUNK]
            for inc, action, run_id, status, verification in await self.c.fetchall(
                    "SELECT incident_id, action, id, status, verification FROM action_runs "
                    f"WHERE incident_id IN ({', '.join('?' for _ in chunk)}) "
                    "ORDER BY created_at, id", chunk):
                runs.setdefault(inc, []).append(IncidentAction(action, run_id, status,
                                                               verification))
        return [_incident(r, runs.get(r[0], ())) for r in rows]

    async def prune(self, resolved_before: float) -> int:
        return await self.c.execute(
            "DELETE FROM incidents WHERE resolved_at IS NOT NULL AND resolved_at < ?",
            (float(resolved_before),))


# ---- the unit of work ----------------------------------------------------------------------------


class _Guarded:
    """The connection as a transaction's repositories see it: closed with the transaction, so
    a `Tx` kept past its block cannot write outside any transaction (SQLite would autocommit
    each statement on its own)."""

    def __init__(self, c: Conn) -> None:
        self.c = c
        self.open = True

    def _check(self) -> None:
        if not self.open:
            raise RuntimeError("this transaction has ended; open a new one")

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._check()
        return await self.c.execute(sql, params)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._check()
        await self.c.executemany(sql, rows)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._check()
        return await self.c.fetchall(sql, params)


class SqlTx:
    """`ports.Tx` over one backend connection inside one transaction. `shared`: several
    replicas use this database (PostgreSQL), so leases and claims are real."""

    def __init__(self, conn: Conn, shared: bool = False) -> None:
        self.shared = shared
        self._conn = c = _Guarded(conn)
        self.alerts = SqlAlerts(c)
        self.rule_files = SqlRuleFiles(c)
        self.outbox = SqlOutbox(c)
        self.notify_log = SqlNotifyLog(c)
        self.escalations = SqlEscalations(c)
        self.action_notes = SqlActionNotes(c)
        self.silences = SqlSilences(c)
        self.acks = SqlAcks(c)
        self.runs = SqlRuns(c, shared)
        self.steps = SqlSteps(c)
        self.deploys = SqlDeploys(c, shared)
        self.incidents = SqlIncidents(c)
        self.locks = SqlLocks(c)
        self.pause = SqlPause(c)
        self.versions = SqlVersions(c)
        self.callbacks: list[Callable[[], object]] = []

    def on_commit(self, fn: Callable[[], object]) -> None:
        self.callbacks.append(fn)

    async def fence(self, leases: Sequence[Lease]) -> None:
        if not self.shared or not leases:
            return
        # FOR KEY SHARE: a takeover (which locks the row FOR UPDATE first, `PgCoordination.
        # acquire`) waits until this transaction ends, so a lease checked here cannot change
        # hands before what this transaction writes commits; the holder's renewals (FOR NO
        # KEY UPDATE) go on meanwhile, and this check does not wait for one.
        rows = await self._conn.fetchall(
            f"SELECT name, holder, token, expires_at > {PG_NOW} FROM leases "
            "WHERE name = ANY(?::text[]) FOR KEY SHARE", ([x.name for x in leases],))
        found = {r[0]: (r[1], int(r[2]), bool(r[3])) for r in rows}
        for x in leases:
            holder, token, live = found.get(x.name, (None, -1, False))
            if holder != x.holder or token != x.token:
                raise LeaseLost(x.name, f"now held by {holder or 'nobody'} (token {token}, "
                                        f"ours {x.token})")
            if not live:
                raise LeaseLost(x.name, "expired")

    async def signal(self, channel: str, payload: str = "") -> None:
        if self.shared:
            # NOTIFY inside a transaction is delivered when it commits, and dropped on rollback.
            await self._conn.execute("SELECT pg_notify(?, ?)", (channel, payload))

    def close(self) -> None:
        self._conn.open = False

    def committed(self) -> None:
        self.close()
        run_callbacks(self.callbacks)


def run_callbacks(callbacks: Sequence[Callable[[], object]]) -> None:
    for fn in callbacks:
        try:
            fn()
        except Exception:
            # The decision is durable already; a failed wake-up is retried by the next one.
            log.exception("after-commit callback failed", callback=getattr(fn, "__qualname__",
                                                                           repr(fn)))
