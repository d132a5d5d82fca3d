"""The storage port: everything the watchdog keeps across restarts, behind one `transaction()`.

`Storage.transaction()` yields a `Tx` whose attributes are one repository per record family.
All reads and writes made through one `Tx` commit together or not at all; callbacks given to
`Tx.on_commit` run only after the commit succeeded — that is where side effects (waking a
delivery worker, starting an action task) are started, so nothing is sent or executed before the
decision that caused it is durable.

Interfaces only: no SQL and no driver here. Implementations: `watchdog.storage.sqlite`,
`watchdog.storage.postgres`, and the in-memory fake `watchdog.storage.memory`; all pass the one
contract suite in `tests/test_storage_contract.py`.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from watchdog.interlocks import PastRun
from watchdog.storage.records import (
    AckRecord,
    AttemptRow,
    DeployRow,
    EscalationKey,
    GroupChanges,
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
)


class StorageError(Exception):
    """The store cannot be opened or used as configured; the message names `STATE_URL`."""


class DuplicateRun(Exception):
    """The action already has a run for this incident (the database's unique index said so)."""


class LeaseLost(Exception):
    """A fenced write found its lease (or its action run's claim) no longer held by this
    replica with the same token: another replica holds it now. The transaction rolls back."""

    def __init__(self, name: str, detail: str = "") -> None:
        super().__init__(f"lease {name!r} is no longer held" + (f": {detail}" if detail else ""))
        self.name = name


# The names of `VersionRepo`'s counts.
SILENCES = "silences"
DEPLOYS = "deploys"


@dataclass(frozen=True)
class Lease:
    """A lease as its holder knows it: the fencing token is what every fenced write checks."""

    name: str
    holder: str
    token: int


@dataclass(frozen=True)
class Acquired:
    lease: Lease
    prev_holder: str | None  # the replica whose lease expired (None: it was free or released)
    gap: float | None  # seconds from the previous holder's last renewal to this takeover
    restarted: bool = False  # it was this replica's: an earlier process under the same id


@dataclass(frozen=True)
class ReplicaRecord:
    id: str
    instance: str  # one per process: a second process with the same REPLICA_ID differs here
    started_at: float
    last_seen: float
    age: float  # seconds since last_seen, by the database's clock
    keys_digest: str


@dataclass(frozen=True)
class LeaseRecord:
    name: str
    holder: str | None
    token: int
    expires_at: float
    remaining: float  # seconds until it expires, by the database's clock (negative: expired)


class Coordination(Protocol):
    """Replicas and leases (CONTRACT §7). On a store one process owns (SQLite, memory) that
    process trivially holds every lease; on PostgreSQL leases are rows with fencing tokens and
    every time is the database's clock, so the replicas' own clocks never matter."""

    shared: bool  # True: several processes may use this store at once

    async def identify(self, replica: str) -> bool:
        """Claim the replica id for this process: false while another live process has it."""

    async def beat(self, replica: str, instance: str, ttl: float, keys: Sequence[str] | None
                   ) -> list[ReplicaRecord]:
        """Record this replica alive now (and, when not None, the lease names it can hold);
        returns every replica known, with its age. Raises `StorageError` when another process
        seen within `ttl` records itself under the same replica id."""

    async def keys_of(self, replicas: Sequence[str]) -> dict[str, frozenset[str]]:
        """The lease names each of those replicas can hold."""

    async def acquire(self, names: Sequence[str], replica: str, ttl: float) -> list[Acquired]:
        """Take each lease that is free, expired or already this replica's (token + 1 when
        the holder changes or it had expired); returns the ones taken."""

    async def renew(self, leases: Sequence[Lease], ttl: float) -> list[Lease]:
        """Extend the ones still held with the same token and unexpired; returns them."""

    async def release(self, leases: Sequence[Lease]) -> None:
        """Give them up now (only where still held with the same token)."""

    async def leases(self) -> list[LeaseRecord]: ...

    async def leave(self, replica: str, instance: str) -> None:
        """A clean shutdown: this replica is gone (its leases were released before)."""

    async def listen(self, channel: str, on_signal: Callable[[str], None]) -> bool:
        """Call `on_signal(payload)` for every `Tx.signal(channel, payload)` committed by any
        process on this store, from now on (this one's own included). Idempotent: called
        again, it only re-subscribes if the connection it listened on was lost (signals sent
        meanwhile are lost: listeners must also poll). False where there is nobody else to
        hear from (a store one process owns)."""


class AlertRepo(Protocol):
    async def load(self, keys: Sequence[str] | None = None) -> dict[str, StoredGroup]:
        """Everything saved, by group key (only those groups when `keys` is given)."""

    async def versions(self) -> dict[str, float | None]:
        """Each stored group's last recorded evaluation (it changes whenever its alerts do)."""

    async def save(self, changes: Sequence[GroupChanges]) -> None:
        """Apply `changes` (upserts, deletes, dropped rules and groups, last evaluation)."""


class RuleFileRepo(Protocol):
    async def load(self) -> dict[str, bytes]:
        """The last accepted content of each rule file, by path."""

    async def save(self, files: Mapping[str, tuple[str, bytes]], forget: Sequence[str] = ()
                   ) -> None:
        """Record accepted files ({path: (digest, content)}); forget deleted ones."""


class OutboxRepo(Protocol):
    async def insert(self, entries: Sequence[OutboxEntry], now: float) -> list[OutboxEntry]:
        """Add rows (pending, due now); an entry whose `dedup_key` exists is skipped. Returns the
        entries that were added."""

    async def next(self, receiver: str) -> OutboxRow | None:
        """The receiver's oldest pending row."""

    async def finish(self, row_id: int, status: str, error: str | None, *,
                     next_at: float | None = None, finished: float | None = None) -> None:
        """Record an attempt; only a row still pending changes status (superseded stays)."""

    async def pending_receivers(self) -> list[str]: ...

    async def pending_count(self, receiver: str | None = None) -> int: ...

    async def recent(self, *, status: str | None = None, receiver: str | None = None,
                     limit: int = 100) -> list[OutboxRecord]:
        """Newest first."""

    async def prune(self, finished_before: float) -> int:
        """Delete finished rows older than that; returns how many."""


class NotifyLogRepo(Protocol):
    async def load(self) -> dict[tuple[str, str], LogEntry]:
        """(receiver, aggregation group key) -> what was last sent."""

    async def put(self, receiver: str, group_key: str, entry: LogEntry) -> None: ...

    async def delete(self, keys: Iterable[tuple[str, str]]) -> None: ...


class EscalationRepo(Protocol):
    async def load(self) -> dict[EscalationKey, bool]:
        """Escalation levels sent, and whether their resolved message was sent too."""

    async def add(self, key: EscalationKey, at: float) -> None:
        """Idempotent."""

    async def mark_resolved(self, key: EscalationKey) -> None: ...

    async def delete(self, keys: Iterable[EscalationKey]) -> None: ...


class ActionNoteRepo(Protocol):
    async def load(self) -> list[tuple[str, str]]:
        """(incident id, note JSON) in insertion order."""

    async def add(self, incident_id: str, note: str, keep: int) -> None:
        """Append a note, keeping only the newest `keep` of that incident."""

    async def delete(self, incident_ids: Iterable[str]) -> None: ...


class SilenceRepo(Protocol):
    async def load(self) -> list[SilenceRecord]: ...

    async def add(self, s: SilenceRecord) -> None: ...

    async def set_times(self, silence_id: str, starts_at: float, ends_at: float) -> None: ...

    async def delete(self, ids: Iterable[str]) -> None: ...


class AckRepo(Protocol):
    async def load(self) -> list[AckRecord]: ...

    async def add(self, acks: Sequence[AckRecord]) -> None:
        """An incident already acknowledged keeps its first ack."""

    async def delete(self, incident_ids: Iterable[str]) -> None: ...


class RunRepo(Protocol):
    async def insert(self, run: RunRow) -> None:
        """Raises `DuplicateRun` when the action already has a run for the incident."""

    async def update(self, run_id: str, **fields: Any) -> None:
        """Change fields of `records.RUN_UPDATABLE` only."""

    async def get(self, run_id: str) -> RunRow | None: ...

    async def list(self, *, status: Sequence[str] | None = None, action: str | None = None,
                   limit: int = 100) -> builtins.list[RunRow]:
        """Newest first (created_at, then id)."""

    async def pending_verifications(self) -> builtins.list[RunRow]: ...

    async def history(self, action: str, since: float, incident_id: str | None, *,
                      include_dry: bool) -> builtins.list[PastRun]:
        """Runs of `action` created at or after `since`, plus any of `incident_id`; dry runs
        only when `include_dry`; never a run held back by a lock (status `locked`), which did
        not run."""

    async def for_incident(self, incident_id: str) -> builtins.list[RunRow]:
        """Every run started for the incident (any action), oldest first."""

    async def claim(self, run_id: str, replica: str, ttl: float) -> bool:
        """Claim (or extend the claim on) the run for `ttl` seconds: true when it was unclaimed
        or this replica's unexpired claim; false when another replica's, or this one's expired
        (then the run is retaken elsewhere and this replica must stop driving it). Always true
        on a store one process owns."""

    async def renew_claims(self, replica: str, ttl: float, ids: Sequence[str]
                           ) -> builtins.list[str]:
        """Extend this replica's unexpired claims on those runs (the ones it drives); the ids
        still claimed."""

    async def take_expired(self, replica: str, ttl: float, limit: int = 100, *,
                           own: bool = False) -> builtins.list[str]:
        """Claim unfinished runs (running, or a verification pending) whose claim expired or
        that have none — with `own`, also those claimed under this replica id (by an earlier
        process of it, known dead); their ids (skipping rows another replica is claiming right
        now)."""


class StepRepo(Protocol):
    async def list(self, run_id: str) -> builtins.list[StepRow]: ...

    async def start(self, run_id: str, idx: int, kind: str, at: float,
                    deadline: float | None = None, status: str = "running") -> None: ...

    async def finish(self, run_id: str, idx: int, status: str, at: float, detail: str,
                     output: str = "", *, next_step: int | None = None) -> None:
        """The step's outcome and (optionally) the run's next step, together."""

    async def add_attempt(self, a: AttemptRow) -> None:
        """Record one try of a retried step (idempotent per run, step and attempt)."""

    async def attempts(self, run_id: str) -> builtins.list[AttemptRow]:
        """By step, then attempt."""


class LockRepo(Protocol):
    """Target locks (`lock:` on an action): one row per key naming the run holding it."""

    async def holder(self, key: str) -> LockHolder | None:
        """The run holding `key` (None: never taken, or its run is gone). Claims the key for
        this transaction first, so a concurrent transaction asking for the same key (another
        replica) waits until this one ends and then sees what it wrote."""

    async def take(self, key: str, run_id: str, at: float) -> None:
        """`run_id` holds `key` from `at` on."""


class PauseRepo(Protocol):
    async def get(self) -> PauseRecord | None:
        """The recorded pause, even one whose `until` has passed (callers compare)."""

    async def set(self, p: PauseRecord) -> None: ...

    async def clear(self) -> bool:
        """Whether there was one."""


class DeployRepo(Protocol):
    async def insert(self, d: DeployRow) -> None: ...

    async def finish(self, deploy_id: str, status: str, summary: str) -> None: ...

    async def decide(self, deploy_id: str, status: str, summary: str, at: float) -> bool:
        """Set the verdict of a marker that is still open; whether this call decided it (a
        marker already decided, by this process or another replica, keeps its verdict)."""

    async def get(self, deploy_id: str) -> DeployRow | None: ...

    async def mark_reported(self, deploy_id: str, at: float) -> bool:
        """Record that the marker's report was posted; whether this call did (a report is
        posted once, whichever process or replica gets there first). False for a marker
        without a report."""

    async def unreported(self, limit: int = 1000) -> builtins.list[DeployRow]:
        """Markers with a report not posted yet, oldest first."""

    async def list(self, *, status: str | None = None, limit: int = 100,
                   service: str | None = None, version: str | None = None
                   ) -> builtins.list[DeployRow]:
        """Newest first (at, then id)."""

    async def save_baselines(self, deploy_id: str, at: float,
                             rows: Sequence[tuple[str, str, float, Mapping[str, str]]]) -> None:
        """(rule, fingerprint, value, labels); the latest deploy wins per series."""

    async def baselines(self) -> dict[str, dict[str, float]]:
        """rule -> fingerprint -> value."""

    async def baselines_of(self, deploy_id: str
                           ) -> builtins.list[tuple[str, dict[str, str], float]]:
        """(rule, labels, value) captured by that deploy, by rule and fingerprint."""

    async def record_alert(self, deploy_id: str, rule: str, fingerprint: str,
                           labels: Mapping[str, str], value: float | None, at: float) -> None:
        """Idempotent per (deploy, rule, fingerprint): the first firing counts."""

    async def alerts(self, deploy_id: str
                     ) -> builtins.list[tuple[str, dict[str, str], float | None, float]]:
        """(rule, labels, value, at) by time."""

    # Claims: where several replicas share the store (PostgreSQL), the marker whose window
    # ended (or whose report is due) is closed by the one replica that claims it. Claims use
    # the database's clock; whether work is due uses the caller's `now`.

    async def take_due(self, replica: str, ttl: float, now: float, limit: int = 100, *,
                       own: bool = False) -> builtins.list[DeployRow]:
        """Claim, for `ttl` seconds, the markers with work due at `now` — open with their window
        ended, or a report due (`at + report_days`) and not posted — that no live claim holds
        (with `own`, also those claimed under this replica id: by an earlier process of it,
        known dead, like `RunRepo.take_expired`'s); those rows (skipping rows another replica
        is claiming right now). A store one process owns claims nothing and answers every due
        marker."""

    async def claim(self, deploy_id: str, replica: str, ttl: float) -> bool:
        """Extend this replica's unexpired claim on the marker (the fence: checked in the
        transaction that writes its verdict or posts its report); false when the claim ran out
        or another replica holds it. Always true on a store one process owns."""

    async def renew_claims(self, replica: str, ttl: float, ids: Sequence[str]
                           ) -> builtins.list[str]:
        """Extend this replica's unexpired claims on those markers; the ids still claimed."""

    async def release(self, deploy_id: str, replica: str) -> None:
        """Give up this replica's claim on the marker (its due work is done)."""


class VersionRepo(Protocol):
    """How many times each kind of shared state changed: a replica that keeps it in memory
    reads it again only when its count moved. Every write of that state bumps its count in
    the writer's transaction (`SILENCES`: silences and acks; `DEPLOYS`: deploy markers and
    baselines — not their claims)."""

    async def get(self) -> dict[str, int]:
        """name -> count (a name never bumped may be missing: read it as 0)."""


class IncidentRepo(Protocol):
    """Incident history (`records.IncidentRecord`), one row per alert instance. The evaluation
    that changes an alert writes its incident in the same transaction."""

    async def open(self, incidents: Sequence[IncidentRecord]) -> None:
        """Insert each incident unless its id exists (the first record stays)."""

    async def find(self, ids: Iterable[str]) -> dict[str, IncidentRecord]:
        """The records of those ids that exist, with their ack, without action runs."""

    async def update(self, changes: Sequence[IncidentChange]) -> None:
        """Set severity and labels; `fired_at` only where none is recorded (the first firing
        counts). Unknown ids are ignored."""

    async def resolve(self, ended: Sequence[tuple[str, float]]) -> None:
        """(id, at): each open one ended then; the ack it has (in `acks`) is kept with it, as
        acks of resolved incidents are pruned. An incident already resolved keeps its time."""

    async def add_notifications(self, counts: Mapping[str, int]) -> None:
        """Add to the notifications counted per incident id; unknown ids are ignored."""

    async def first_action(self, incident_id: str, at: float) -> bool:
        """Record when its first action run started; whether this was the first."""

    async def rekey(self, old_id: str, new_id: str, active_at: float) -> None:
        """A pending alert restored after a restart counts its `for` afresh, so its incident
        id changes: carry the record over to the new id."""

    async def get(self, incident_id: str) -> IncidentRecord | None:
        """With its ack and its action runs."""

    async def list(self, *, rule: str | None = None, state: str | None = None,
                   since: float | None = None, limit: int | None = 100
                   ) -> builtins.list[IncidentRecord]:
        """Newest first (active_at, then id), with acks and action runs. `state`: "open" or
        "resolved"; `since`: open at any moment since then (still open, or resolved after);
        `limit=None`: all."""

    async def prune(self, resolved_before: float) -> int:
        """Delete incidents resolved before then; how many."""


class Tx(Protocol):
    """One unit of work: every repository, and the after-commit hook."""

    @property
    def alerts(self) -> AlertRepo: ...

    @property
    def rule_files(self) -> RuleFileRepo: ...

    @property
    def outbox(self) -> OutboxRepo: ...

    @property
    def notify_log(self) -> NotifyLogRepo: ...

    @property
    def escalations(self) -> EscalationRepo: ...

    @property
    def action_notes(self) -> ActionNoteRepo: ...

    @property
    def silences(self) -> SilenceRepo: ...

    @property
    def acks(self) -> AckRepo: ...

    @property
    def runs(self) -> RunRepo: ...

    @property
    def steps(self) -> StepRepo: ...

    @property
    def deploys(self) -> DeployRepo: ...

    @property
    def incidents(self) -> IncidentRepo: ...

    @property
    def locks(self) -> LockRepo: ...

    @property
    def pause(self) -> PauseRepo: ...

    @property
    def versions(self) -> VersionRepo: ...

    def on_commit(self, fn: Callable[[], object]) -> None:
        """Run `fn` after the transaction committed (never if it rolled back). Callbacks run
        in order; one that raises is logged and does not stop the others."""

    async def fence(self, leases: Sequence[Lease]) -> None:
        """Raise `LeaseLost` unless each lease is still held by its holder with its token and
        unexpired — and keep it so until this transaction ends (a takeover waits for it). A
        no-op on a store one process owns."""

    async def signal(self, channel: str, payload: str = "") -> None:
        """Tell the processes listening on `channel` (`Coordination.listen`) once this
        transaction commits — never if it rolls back, so a listener reads what it was told
        about. A no-op on a store one process owns."""


class Storage(Protocol):
    kind: str  # "sqlite" | "postgresql" | "memory"
    schema_version: int
    coordination: Coordination

    def transaction(self) -> AbstractAsyncContextManager[Tx]: ...

    async def close(self) -> None: ...
