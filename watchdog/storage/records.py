"""The records the storage keeps, as plain frozen dataclasses: what goes in and comes out of
every repository of `watchdog.storage.ports`.

Pure data: no I/O, no SQL, no behaviour beyond construction. Types that belong to the core
(`Alert`, `PastRun`) are used as they are; the rest are rows as the subsystems need them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from watchdog.state import Alert

# ---- alert state ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredRule:
    sig: str
    alerts: dict[str, Alert]  # fingerprint -> alert


@dataclass(frozen=True)
class StoredGroup:
    last_eval_at: float | None
    rules: dict[str, StoredRule]  # rule key -> its alerts


@dataclass
class GroupChanges:
    """What one tick (or a reload) changed in one group; saved as one unit."""

    group_key: str
    at: float | None = None  # evaluation time to record as the group's last
    upserts: list[tuple[str, str, Alert]] = field(default_factory=list)  # (rule key, sig, alert)
    deletes: list[tuple[str, str]] = field(default_factory=list)  # (rule key, fingerprint)
    drop_rules: list[str] = field(default_factory=list)  # rule keys whose alerts all go
    drop_group: bool = False

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes or self.drop_rules or self.drop_group)


# ---- notifications ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OutboxEntry:
    """A notification to enqueue. `dedup_key` makes a repeated enqueue a no-op; `supersede`
    first marks the receiver's still-pending rows of the same group superseded."""

    receiver: str
    kind: str
    group_key: str
    payload: str  # the Notification as JSON
    dedup_key: str | None = None
    supersede: bool = False


@dataclass(frozen=True)
class OutboxRow:
    """A pending row as a delivery worker takes it."""

    id: int
    receiver: str
    kind: str
    group_key: str
    payload: str
    attempts: int
    created_at: float
    next_attempt_at: float


@dataclass(frozen=True)
class OutboxRecord:
    """Any row, as the API shows it."""

    id: int
    receiver: str
    kind: str
    group_key: str
    status: str  # pending | delivered | failed | superseded
    attempts: int
    created_at: float
    next_attempt_at: float
    last_error: str | None
    finished_at: float | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "receiver": self.receiver, "kind": self.kind,
                "group_key": self.group_key, "status": self.status, "attempts": self.attempts,
                "created_at": self.created_at, "next_attempt_at": self.next_attempt_at,
                "last_error": self.last_error, "finished_at": self.finished_at}


@dataclass(frozen=True)
class LogEntry:
    """What a receiver was last told about an aggregation group: fingerprint -> severity."""

    firing: dict[str, str]
    sent_at: float


EscalationKey = tuple[str, str, int]  # (incident id, route id, level)


@dataclass(frozen=True)
class SilenceRecord:
    id: str
    matchers: list[dict[str, Any]]  # [{"name", "value", "isRegex", "isEqual"}]
    starts_at: float
    ends_at: float
    created_by: str
    comment: str
    created_at: float


@dataclass(frozen=True)
class AckRecord:
    incident_id: str
    fingerprint: str
    labels: Mapping[str, str]
    at: float
    created_by: str = ""
    comment: str = ""


# ---- actions and deploys ------------------------------------------------------------------------


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
    lock_key: str | None = None  # the target it holds (or, when locked, was held back from)
    deferred_to: str | None = None  # status "locked": the run that holds the lock
    tier: str | None = None  # the severity tier whose actions started it


# The run fields a later update may change (everything else is fixed when the run starts).
RUN_UPDATABLE = frozenset({"status", "next_step", "finished_at", "detail", "verify_at",
                           "verification", "value_after"})


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
class AttemptRow:
    """One try of a step with `retry:`."""

    run_id: str
    idx: int
    attempt: int  # 1, 2, ...
    started_at: float
    finished_at: float
    status: str  # succeeded | failed | retrying
    detail: str


@dataclass(frozen=True)
class LockHolder:
    """Who holds a target lock: the run, when it took it, and what the interlocks need to know
    about it (is it still running, is its incident still open)."""

    key: str
    run_id: str
    action: str
    at: float
    status: str
    incident_id: str | None
    incident_open: bool


@dataclass(frozen=True)
class PauseRecord:
    """Maintenance mode: no action step executes until `until`."""

    until: float
    reason: str
    by: str
    at: float


@dataclass(frozen=True)
class DeployRow:
    id: str
    service: str
    version: str
    labels: dict[str, str]
    at: float
    window_end: float
    status: str  # "open" | "passed" | "failed"
    summary: str
    on_fail: tuple[str, ...] = ()  # actions to run when the verdict is "failed"
    decided_at: float | None = None  # when the verdict was decided (None while open)
    report: tuple[dict[str, Any], ...] = ()  # report queries the marker declared
    report_days: float | None = None  # the report's N days before and after; None: no report
    reported_at: float | None = None  # when the report was posted (once)


# ---- incidents ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class IncidentAction:
    """An action run started for an incident (joined from the runs, not stored twice)."""

    name: str
    run_id: str
    status: str
    verification: str | None = None  # "did it help?": verified | not_helped | pending | None


@dataclass(frozen=True)
class IncidentChange:
    """What an evaluation changes on an incident: its severity (the highest reached) with its
    labels, and when it fired (kept only where none is recorded yet)."""

    id: str
    severity: str | None
    labels: Mapping[str, str]
    fired_at: float | None = None


@dataclass(frozen=True)
class IncidentRecord:
    """One alert instance from activation (pending) to resolution, kept after it resolves.

    `severity` is the highest reached; `resolved_at` is set once, when it resolves (or, for an
    incident that never fired, when its pending alert went away). `ack_*` is the first ack;
    `notifications` counts the notifications written for it; `first_action_at` is when the
    first action run (not a dry run) started for it. `actions` is filled on reads only."""

    id: str
    rule: str
    group: str
    fingerprint: str
    labels: Mapping[str, str]
    severity: str | None
    active_at: float
    fired_at: float | None = None
    resolved_at: float | None = None
    ack_by: str | None = None
    ack_at: float | None = None
    notifications: int = 0
    first_action_at: float | None = None
    actions: tuple[IncidentAction, ...] = ()

    @property
    def open(self) -> bool:
        return self.resolved_at is None
