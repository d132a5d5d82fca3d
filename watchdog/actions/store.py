"""Where action runs, their steps, deploy markers and deploy baselines are kept: tables in the
daemon's SQLite database (`DaemonContext.db`).

Shell: database I/O only. Every write commits before it returns, because the runner's promise —
a run and each step are on disk *before* their side effect, and their outcome right after it —
holds only if a SIGKILL one instruction later loses nothing. It must not decide anything (that
is the runner's and `watchdog.interlocks`'), and it never stores a secret: callers pass only
output that is safe to show.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

import aiosqlite
from pydantic import BaseModel, BeforeValidator
from pydantic.fields import FieldInfo

from watchdog.durations import parse_duration
from watchdog.interlocks import PastRun
from watchdog.model import Action

SCHEMA = """
CREATE TABLE IF NOT EXISTS action_runs (
    id TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    trigger TEXT NOT NULL,              -- alert | manual
    rule TEXT, grp TEXT, fingerprint TEXT, incident_id TEXT,
    labels TEXT NOT NULL,
    annotations TEXT NOT NULL DEFAULT '{}',
    value_before REAL,
    active_at REAL,
    dry_run INTEGER NOT NULL,
    spec TEXT NOT NULL,                 -- the action as it was when the run started
    status TEXT NOT NULL,               -- running | succeeded | resolved | failed | dry_run
    next_step INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    finished_at REAL,
    detail TEXT NOT NULL DEFAULT '',
    verify_at REAL,
    verification TEXT,                  -- pending | verified | not_helped | skipped
    value_after REAL
);
-- The database itself refuses a second run for one incident, whatever the code above it does.
CREATE UNIQUE INDEX IF NOT EXISTS action_runs_once_per_incident
    ON action_runs(action, incident_id) WHERE incident_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS action_runs_by_time ON action_runs(action, created_at);
CREATE INDEX IF NOT EXISTS action_runs_by_status ON action_runs(status);
CREATE TABLE IF NOT EXISTS action_steps (
    run_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,               -- running | succeeded | failed | would_run | interrupted
    started_at REAL NOT NULL,
    finished_at REAL,
    duration REAL,
    deadline REAL,                      -- wait steps: when the wait ends
    detail TEXT NOT NULL DEFAULT '',
    output TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE IF NOT EXISTS deploy_markers (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    version TEXT NOT NULL,
    labels TEXT NOT NULL,
    at REAL NOT NULL,
    window_end REAL NOT NULL,
    status TEXT NOT NULL,               -- open | passed | failed
    summary TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS deploy_baselines (
    rule TEXT NOT NULL,
    fingerprint TEXT NOT NULL,          -- of the series labels without __name__
    value REAL NOT NULL,
    labels TEXT NOT NULL,
    deploy_id TEXT NOT NULL,
    captured_at REAL NOT NULL,
    PRIMARY KEY (rule, fingerprint)
);
CREATE TABLE IF NOT EXISTS deploy_alerts (
    deploy_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    labels TEXT NOT NULL,
    value REAL,
    at REAL NOT NULL,
    PRIMARY KEY (deploy_id, rule, fingerprint)
);
"""

@dataclass(frozen=True)
class RunRow:
    id: str
    action: str
    trigger: str
    rule: str | None
    group: str | None
    fingerprint: str | None
    incident_id: str | None
    labels: dict[str, str]
    annotations: dict[str, str]
    value_before: float | None
    active_at: float | None
    dry_run: bool
    spec: str
    status: str
    next_step: int
    created_at: float
    finished_at: float | None
    detail: str
    verify_at: float | None
    verification: str | None
    value_after: float | None


@dataclass(frozen=True)
class StepRow:
    run_id: str
    idx: int
    kind: str
    status: str
    started_at: float
    finished_at: float | None
    duration: float | None
    deadline: float | None
    detail: str
    output: str


@dataclass(frozen=True)
class DeployRow:
    id: str
    service: str
    version: str
    labels: dict[str, str]
    at: float
    window_end: float
    status: str
    summary: str


class DuplicateRun(Exception):
    """The action already has a run for this incident (the unique index said so)."""


_RUN_COLS = ("id, action, trigger, rule, grp, fingerprint, incident_id, labels, annotations, "
             "value_before, active_at, dry_run, spec, status, next_step, created_at, "
             "finished_at, detail, verify_at, verification, value_after")


def _run(r: Sequence[Any]) -> RunRow:
    return RunRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), json.loads(r[8]),
                  r[9], r[10], bool(r[11]), r[12], r[13], r[14], r[15], r[16], r[17], r[18],
                  r[19], r[20])


def _step(r: Sequence[Any]) -> StepRow:
    return StepRow(*r)


def _is_duration_validator(m: Any) -> bool:
    return isinstance(m, BeforeValidator) and m.func is parse_duration


def _is_duration(f: FieldInfo) -> bool:
    def walk(tp: Any) -> bool:
        if any(_is_duration_validator(m) for m in getattr(tp, "__metadata__", ())):
            return True
        return any(walk(a) for a in get_args(tp))
    return any(_is_duration_validator(m) for m in f.metadata) or walk(f.annotation)


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        out: dict[str, Any] = {}
        for name, f in type(value).model_fields.items():
            v = getattr(value, name)
            if v is None:
                continue
            # A Duration field dumps as a float, which its own validator then refuses (a bare
            # number is not a Prometheus duration); milliseconds round-trip exactly enough.
            if _is_duration(f):
                out[f.alias or name] = f"{round(v * 1000)}ms" if v else 0
            else:
                out[f.alias or name] = _dump(v)
        return out
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


def dump_action(action: Action) -> str:
    """The action as it was when a run started, so a restart resumes that sequence even if the
    rules changed meanwhile (step numbers must keep meaning the same steps)."""
    return json.dumps(_dump(action))


def load_action(text: str) -> Action:
    return Action.model_validate(json.loads(text))


class ActionStore:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def init(self) -> None:
        await self.db.executescript(SCHEMA)
        await self.db.commit()

    # ---- runs -------------------------------------------------------------------------------

    async def insert_run(self, run: RunRow) -> None:
        # OR IGNORE rather than catching IntegrityError: a rollback on the shared connection
        # would throw away other subsystems' uncommitted writes.
        cur = await self.db.execute(
            f"INSERT OR IGNORE INTO action_runs ({_RUN_COLS}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run.id, run.action, run.trigger, run.rule, run.group, run.fingerprint,
             run.incident_id, json.dumps(run.labels), json.dumps(run.annotations),
             run.value_before, run.active_at, int(run.dry_run), run.spec, run.status,
             run.next_step, run.created_at, run.finished_at, run.detail, run.verify_at,
             run.verification, run.value_after))
        inserted = cur.rowcount
        await cur.close()
        await self.db.commit()
        if inserted == 0:
            raise DuplicateRun(f"{run.action} already has a run for incident {run.incident_id}")

    async def update_run(self, run_id: str, **fields: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in fields)
        await self.db.execute(f"UPDATE action_runs SET {cols} WHERE id = ?",
                              (*fields.values(), run_id))
        await self.db.commit()

    async def get_run(self, run_id: str) -> RunRow | None:
        async with self.db.execute(f"SELECT {_RUN_COLS} FROM action_runs WHERE id = ?",
                                   (run_id,)) as cur:
            row = await cur.fetchone()
        return _run(row) if row else None

    async def runs(self, *, status: Sequence[str] | None = None, action: str | None = None,
                   limit: int = 100) -> list[RunRow]:
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
        async with self.db.execute(sql, (*args, limit)) as cur:
            return [_run(r) for r in await cur.fetchall()]

    async def pending_verifications(self) -> list[RunRow]:
        async with self.db.execute(
                f"SELECT {_RUN_COLS} FROM action_runs WHERE verification = 'pending'") as cur:
            return [_run(r) for r in await cur.fetchall()]

    async def history(self, action: str, since: float, incident_id: str | None, *,
                      include_dry: bool) -> list[PastRun]:
        """The runs `interlocks.decide` needs: recent ones, and any of this incident. Dry runs
        count only for another dry run: its report should show the interlocks, but trying an
        action out must never hold back a real rollback."""
        async with self.db.execute(
                "SELECT action, created_at, fingerprint, incident_id FROM action_runs "
                "WHERE action = ? AND (? OR dry_run = 0) AND (created_at >= ? OR "
                "(incident_id IS NOT NULL AND incident_id = ?))",
                (action, int(include_dry), since, incident_id)) as cur:
            return [PastRun(r[0], r[1], r[2], r[3]) for r in await cur.fetchall()]

    # ---- steps ------------------------------------------------------------------------------

    async def steps(self, run_id: str) -> list[StepRow]:
        async with self.db.execute(
                "SELECT run_id, idx, kind, status, started_at, finished_at, duration, deadline, "
                "detail, output FROM action_steps WHERE run_id = ? ORDER BY idx",
                (run_id,)) as cur:
            return [_step(r) for r in await cur.fetchall()]

    async def start_step(self, run_id: str, idx: int, kind: str, at: float,
                         deadline: float | None = None, status: str = "running") -> None:
        await self.db.execute(
            "INSERT INTO action_steps (run_id, idx, kind, status, started_at, deadline) "
            "VALUES (?, ?, ?, ?, ?, ?)", (run_id, idx, kind, status, at, deadline))
        await self.db.commit()

    async def finish_step(self, run_id: str, idx: int, status: str, at: float, detail: str,
                          output: str = "", *, next_step: int | None = None) -> None:
        """The step's outcome and the run's progress in one transaction: after a crash either
        both are on disk or neither is."""
        await self.db.execute(
            "UPDATE action_steps SET status = ?, finished_at = ?, duration = ? - started_at, "
            "detail = ?, output = ? WHERE run_id = ? AND idx = ?",
            (status, at, at, detail, output, run_id, idx))
        if next_step is not None:
            await self.db.execute("UPDATE action_runs SET next_step = ? WHERE id = ?",
                                  (next_step, run_id))
        await self.db.commit()

    # ---- deploy markers ---------------------------------------------------------------------

    async def insert_deploy(self, d: DeployRow) -> None:
        await self.db.execute(
            "INSERT INTO deploy_markers (id, service, version, labels, at, window_end, status, "
            "summary) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (d.id, d.service, d.version, json.dumps(d.labels), d.at, d.window_end, d.status,
             d.summary))
        await self.db.commit()

    async def finish_deploy(self, deploy_id: str, status: str, summary: str) -> None:
        await self.db.execute("UPDATE deploy_markers SET status = ?, summary = ? WHERE id = ?",
                              (status, summary, deploy_id))
        await self.db.commit()

    async def deploys(self, *, status: str | None = None, limit: int = 100) -> list[DeployRow]:
        sql = ("SELECT id, service, version, labels, at, window_end, status, summary "
               "FROM deploy_markers")
        args: list[Any] = []
        if status:
            sql += " WHERE status = ?"
            args.append(status)
        sql += " ORDER BY at DESC, id LIMIT ?"
        async with self.db.execute(sql, (*args, limit)) as cur:
            return [DeployRow(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7])
                    for r in await cur.fetchall()]

    async def save_baselines(self, deploy_id: str, at: float,
                             rows: Sequence[tuple[str, str, float, Mapping[str, str]]]) -> None:
        """(rule, fingerprint, value, labels); the latest deploy wins per series."""
        await self.db.executemany(
            "INSERT INTO deploy_baselines (rule, fingerprint, value, labels, deploy_id, "
            "captured_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (rule, fingerprint) DO UPDATE "
            "SET value = excluded.value, labels = excluded.labels, "
            "deploy_id = excluded.deploy_id, captured_at = excluded.captured_at",
            [(r, fp, v, json.dumps(dict(lb)), deploy_id, at) for r, fp, v, lb in rows])
        await self.db.commit()

    async def baselines(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        async with self.db.execute(
                "SELECT rule, fingerprint, value FROM deploy_baselines") as cur:
            for rule, fp, value in await cur.fetchall():
                out.setdefault(rule, {})[fp] = value
        return out

    async def baselines_of(self, deploy_id: str) -> list[tuple[str, dict[str, str], float]]:
        async with self.db.execute(
                "SELECT rule, labels, value FROM deploy_baselines WHERE deploy_id = ? "
                "ORDER BY rule, fingerprint", (deploy_id,)) as cur:
            return [(r[0], json.loads(r[1]), r[2]) for r in await cur.fetchall()]

    async def record_deploy_alert(self, deploy_id: str, rule: str, fingerprint: str,
                                  labels: Mapping[str, str], value: float | None,
                                  at: float) -> None:
        await self.db.execute(
            "INSERT OR IGNORE INTO deploy_alerts (deploy_id, rule, fingerprint, labels, value, "
            "at) VALUES (?, ?, ?, ?, ?, ?)",
            (deploy_id, rule, fingerprint, json.dumps(dict(labels)), value, at))
        await self.db.commit()

    async def deploy_alerts(self, deploy_id: str
                            ) -> list[tuple[str, dict[str, str], float | None, float]]:
        async with self.db.execute(
                "SELECT rule, labels, value, at FROM deploy_alerts WHERE deploy_id = ? "
                "ORDER BY at, rule", (deploy_id,)) as cur:
            return [(r[0], json.loads(r[1]), r[2], r[3]) for r in await cur.fetchall()]
