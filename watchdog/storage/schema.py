"""The tables, their version, and the migrations between versions, for both SQL dialects.

Version 1 is the layout of the first release (v0.1.0), whose tables each subsystem created with
`CREATE TABLE IF NOT EXISTS` and no version record: a database without `schema_meta` but with
those tables is adopted as it is (every statement here is idempotent). A later version appends a
migration; a database recording a version newer than `SCHEMA_VERSION` is refused, because this
code cannot know what the newer one means by its rows.

Only DDL text lives here: no driver, no I/O.
"""

from __future__ import annotations

from typing import Literal

Dialect = Literal["sqlite", "postgresql"]

SCHEMA_VERSION = 7

_V1 = """
CREATE TABLE IF NOT EXISTS alert_instances (
    group_key   {TEXT} NOT NULL,
    rule_key    {TEXT} NOT NULL,
    fingerprint {TEXT} NOT NULL,
    rule_sig    {TEXT} NOT NULL,
    state       {TEXT} NOT NULL,
    active_at   {REAL} NOT NULL,
    data        {TEXT} NOT NULL,
    PRIMARY KEY (group_key, rule_key, fingerprint)
);
CREATE TABLE IF NOT EXISTS alert_groups (
    group_key    {TEXT} PRIMARY KEY,
    last_eval_at {REAL}
);
CREATE TABLE IF NOT EXISTS rule_files (
    path    {TEXT} PRIMARY KEY,
    digest  {TEXT} NOT NULL,
    content {BLOB} NOT NULL
);
CREATE TABLE IF NOT EXISTS notify_outbox (
    id {SERIAL},
    receiver {TEXT} NOT NULL,
    kind {TEXT} NOT NULL,
    group_key {TEXT} NOT NULL,
    dedup_key {TEXT} UNIQUE,
    payload {TEXT} NOT NULL,
    status {TEXT} NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at {REAL} NOT NULL,
    next_attempt_at {REAL} NOT NULL,
    last_error {TEXT},
    finished_at {REAL}
);
CREATE INDEX IF NOT EXISTS notify_outbox_pending ON notify_outbox (status, receiver, id);
CREATE TABLE IF NOT EXISTS notify_log (
    receiver {TEXT} NOT NULL,
    group_key {TEXT} NOT NULL,
    firing {TEXT} NOT NULL,
    sent_at {REAL} NOT NULL,
    PRIMARY KEY (receiver, group_key)
);
CREATE TABLE IF NOT EXISTS notify_escalations (
    incident_id {TEXT} NOT NULL,
    route_id {TEXT} NOT NULL,
    level INTEGER NOT NULL,
    at {REAL} NOT NULL,
    resolved_sent INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (incident_id, route_id, level)
);
CREATE TABLE IF NOT EXISTS notify_action_notes (
    id {SERIAL_PLAIN},
    incident_id {TEXT} NOT NULL,
    note {TEXT} NOT NULL
);
CREATE INDEX IF NOT EXISTS notify_action_notes_incident ON notify_action_notes (incident_id);
CREATE TABLE IF NOT EXISTS notify_silences (
    id {TEXT} PRIMARY KEY,
    matchers {TEXT} NOT NULL,
    starts_at {REAL} NOT NULL,
    ends_at {REAL} NOT NULL,
    created_by {TEXT} NOT NULL,
    comment {TEXT} NOT NULL,
    created_at {REAL} NOT NULL
);
CREATE TABLE IF NOT EXISTS notify_acks (
    incident_id {TEXT} PRIMARY KEY,
    fingerprint {TEXT} NOT NULL,
    labels {TEXT} NOT NULL,
    at {REAL} NOT NULL,
    created_by {TEXT} NOT NULL,
    comment {TEXT} NOT NULL
);
CREATE TABLE IF NOT EXISTS action_runs (
    id {TEXT} PRIMARY KEY,
    action {TEXT} NOT NULL,
    trigger {TEXT} NOT NULL,
    rule {TEXT}, grp {TEXT}, fingerprint {TEXT}, incident_id {TEXT},
    labels {TEXT} NOT NULL,
    annotations {TEXT} NOT NULL DEFAULT '{{}}',
    value_before {REAL},
    active_at {REAL},
    dry_run INTEGER NOT NULL,
    spec {TEXT} NOT NULL,
    status {TEXT} NOT NULL,
    next_step INTEGER NOT NULL DEFAULT 0,
    created_at {REAL} NOT NULL,
    finished_at {REAL},
    detail {TEXT} NOT NULL DEFAULT '',
    verify_at {REAL},
    verification {TEXT},
    value_after {REAL}
);
CREATE UNIQUE INDEX IF NOT EXISTS action_runs_once_per_incident
    ON action_runs(action, incident_id) WHERE incident_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS action_runs_by_time ON action_runs(action, created_at);
CREATE INDEX IF NOT EXISTS action_runs_by_status ON action_runs(status);
CREATE TABLE IF NOT EXISTS action_steps (
    run_id {TEXT} NOT NULL,
    idx INTEGER NOT NULL,
    kind {TEXT} NOT NULL,
    status {TEXT} NOT NULL,
    started_at {REAL} NOT NULL,
    finished_at {REAL},
    duration {REAL},
    deadline {REAL},
    detail {TEXT} NOT NULL DEFAULT '',
    output {TEXT} NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, idx)
);
CREATE TABLE IF NOT EXISTS deploy_markers (
    id {TEXT} PRIMARY KEY,
    service {TEXT} NOT NULL,
    version {TEXT} NOT NULL,
    labels {TEXT} NOT NULL,
    at {REAL} NOT NULL,
    window_end {REAL} NOT NULL,
    status {TEXT} NOT NULL,
    summary {TEXT} NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS deploy_baselines (
    rule {TEXT} NOT NULL,
    fingerprint {TEXT} NOT NULL,
    value {REAL} NOT NULL,
    labels {TEXT} NOT NULL,
    deploy_id {TEXT} NOT NULL,
    captured_at {REAL} NOT NULL,
    PRIMARY KEY (rule, fingerprint)
);
CREATE TABLE IF NOT EXISTS deploy_alerts (
    deploy_id {TEXT} NOT NULL,
    rule {TEXT} NOT NULL,
    fingerprint {TEXT} NOT NULL,
    labels {TEXT} NOT NULL,
    value {REAL},
    at {REAL} NOT NULL,
    PRIMARY KEY (deploy_id, rule, fingerprint)
);
"""

# Version 2: incident history (CONTRACT §8). Acks and action runs are joined when read; the
# index on action_runs.incident_id serves that join (the unique index leads with the action).
_V2 = """
CREATE TABLE IF NOT EXISTS incidents (
    id {TEXT} PRIMARY KEY,
    rule {TEXT} NOT NULL,
    grp {TEXT} NOT NULL,
    fingerprint {TEXT} NOT NULL,
    labels {TEXT} NOT NULL,
    severity {TEXT},
    active_at {REAL} NOT NULL,
    fired_at {REAL},
    resolved_at {REAL},
    ack_by {TEXT},
    ack_at {REAL},
    notifications INTEGER NOT NULL DEFAULT 0,
    first_action_at {REAL}
);
CREATE INDEX IF NOT EXISTS incidents_by_time ON incidents (active_at);
CREATE INDEX IF NOT EXISTS incidents_by_resolution ON incidents (resolved_at);
CREATE INDEX IF NOT EXISTS action_runs_by_incident ON action_runs (incident_id);
"""

# Version 3: deploy verdicts (CONTRACT §10). A marker keeps the actions to run when it fails and
# when its verdict was decided; `status` stays "open" | "passed" | "failed" (the API says
# open | pass | fail). Columns added with defaults, so the rows of version 2 read as they were:
# no on_fail actions, decided at their window's end if they were decided at all.
_V3 = """
ALTER TABLE deploy_markers ADD COLUMN on_fail {TEXT} NOT NULL DEFAULT '[]';
ALTER TABLE deploy_markers ADD COLUMN decided_at {REAL};
UPDATE deploy_markers SET decided_at = window_end WHERE status <> 'open';
CREATE INDEX IF NOT EXISTS deploy_markers_by_service ON deploy_markers (service, at)
"""

# Version 4: many replicas on one database (CONTRACT §7). `replicas` is each process's
# heartbeat and the group keys it knows; `leases` hands each rule group (and the singleton
# roles) to one replica at a time, with a fencing token that grows by one at every change of
# holder; `action_runs.claimed_by`/`claim_until` say which replica drives a run, until when.
# Times are the database's clock (Unix seconds), never a replica's. Self-contained: it only
# adds tables and columns, so it can be renumbered when merged beside another migration.
_V4 = """
CREATE TABLE IF NOT EXISTS replicas (
    id {TEXT} PRIMARY KEY,
    instance {TEXT} NOT NULL,
    started_at {REAL} NOT NULL,
    last_seen {REAL} NOT NULL,
    keys {TEXT} NOT NULL DEFAULT '[]',
    keys_digest {TEXT} NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS leases (
    name {TEXT} PRIMARY KEY,
    holder {TEXT},
    token BIGINT NOT NULL DEFAULT 0,
    expires_at {REAL} NOT NULL,
    acquired_at {REAL},
    renewed_at {REAL},
    prev_holder {TEXT},
    prev_renewed_at {REAL}
);
ALTER TABLE action_runs ADD COLUMN claimed_by {TEXT};
ALTER TABLE action_runs ADD COLUMN claim_until {REAL};
CREATE INDEX IF NOT EXISTS action_runs_claims ON action_runs (claim_until)
"""

# Version 5: deploy reports (CONTRACT §10). A marker keeps the report queries it declared, how
# many days before and after it the report compares (NULL: no report is posted, as for every
# marker set before this version) and when the report was posted (once).
_V5 = """
ALTER TABLE deploy_markers ADD COLUMN report {TEXT} NOT NULL DEFAULT '[]';
ALTER TABLE deploy_markers ADD COLUMN report_days {REAL};
ALTER TABLE deploy_markers ADD COLUMN reported_at {REAL}
"""

# Version 6: actions, continued (CONTRACT §9). `action_locks` holds one row per target lock key:
# the run holding it and since when; a run takes it in the transaction that creates the run, after
# touching the row (`UPDATE ... SET lock_key = lock_key`), which on PostgreSQL makes a second
# replica claiming the same key wait for this transaction and then see its holder. A run held back
# by a lock is a row of `action_runs` too (status `locked`, `deferred_to` the holder), so the run
# list shows it. `action_attempts`: every try of a retried step. `action_pause`: maintenance mode,
# at most one row.
_V6 = """
ALTER TABLE action_runs ADD COLUMN lock_key {TEXT};
ALTER TABLE action_runs ADD COLUMN deferred_to {TEXT};
ALTER TABLE action_runs ADD COLUMN tier {TEXT};
CREATE TABLE IF NOT EXISTS action_locks (
    lock_key {TEXT} PRIMARY KEY,
    run_id {TEXT},
    at {REAL}
);
CREATE TABLE IF NOT EXISTS action_attempts (
    run_id {TEXT} NOT NULL,
    idx INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    started_at {REAL} NOT NULL,
    finished_at {REAL} NOT NULL,
    status {TEXT} NOT NULL,
    detail {TEXT} NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, idx, attempt)
);
CREATE TABLE IF NOT EXISTS action_pause (
    id INTEGER PRIMARY KEY,
    until_at {REAL} NOT NULL,
    reason {TEXT} NOT NULL,
    paused_by {TEXT} NOT NULL,
    at {REAL} NOT NULL
);
"""

# Version 7: what replicas keep in memory, re-read only when it changed, and deploy windows closed
# by any live replica (CONTRACT §7, §10). `store_versions` counts the changes of each kind of
# shared state ("silences": silences and acks; "deploys": markers and baselines), bumped in the
# transaction that writes it, so a replica polling every second reads one small row when nothing
# changed. `deploy_markers.claimed_by`/`claim_until`: the replica closing a window (or posting a
# report) that is due, until when — like `action_runs`' claims. Self-contained, renumberable.
_V7 = """
CREATE TABLE IF NOT EXISTS store_versions (
    name {TEXT} PRIMARY KEY,
    version BIGINT NOT NULL DEFAULT 0
);
INSERT INTO store_versions (name, version) VALUES ('silences', 0) ON CONFLICT DO NOTHING;
INSERT INTO store_versions (name, version) VALUES ('deploys', 0) ON CONFLICT DO NOTHING;
ALTER TABLE deploy_markers ADD COLUMN claimed_by {TEXT};
ALTER TABLE deploy_markers ADD COLUMN claim_until {REAL};
CREATE INDEX IF NOT EXISTS deploy_markers_open ON deploy_markers (status, window_end)
"""

_TYPES: dict[Dialect, dict[str, str]] = {
    # SQLite's REAL is a double; PostgreSQL's REAL is a float4, hence DOUBLE PRECISION there.
    # Text compares bytewise on both (PostgreSQL's default collation follows the server's
    # locale, which would make every ORDER BY on a text column differ between servers).
    "sqlite": {"REAL": "REAL", "BLOB": "BLOB", "TEXT": "TEXT",
               "SERIAL": "INTEGER PRIMARY KEY AUTOINCREMENT",
               "SERIAL_PLAIN": "INTEGER PRIMARY KEY"},
    "postgresql": {"REAL": "DOUBLE PRECISION", "BLOB": "BYTEA", "TEXT": 'TEXT COLLATE "C"',
                   "SERIAL": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
                   "SERIAL_PLAIN": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"},
}

META = "CREATE TABLE IF NOT EXISTS schema_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"

# MIGRATIONS[n] takes a database from version n-1 to n.
_MIGRATIONS: dict[int, str] = {1: _V1, 2: _V2, 3: _V3, 4: _V4, 5: _V5, 6: _V6, 7: _V7}


def statements(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";") if s.strip()]


def migration(version: int, dialect: Dialect) -> list[str]:
    """The DDL statements that take a database from `version - 1` to `version`."""
    return statements(_MIGRATIONS[version].format(**_TYPES[dialect]))


def too_new(found: int, where: str) -> str:
    return (f"WATCHDOG_STATE_URL: the state database at {where} has schema version {found}, "
            f"newer than this watchdog knows ({SCHEMA_VERSION}): it was written by a newer "
            "release. Run that release (or newer), or point WATCHDOG_STATE_URL at another "
            "database; nothing was changed.")
