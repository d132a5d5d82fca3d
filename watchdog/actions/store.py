"""Where action runs, their steps, deploy markers and deploy baselines are kept, as the actions
subsystem sees it: each call is one transaction of the storage port (`watchdog.storage`), except
`insert_run`, which joins the caller's transaction when given one (an alert's run commits with
the evaluation that started it).

Shell, no SQL (that is `watchdog.storage`). Every write commits before it returns, because the
runner's promise — a run and each step are durable *before* their side effect, and their outcome
right after it — holds only if a SIGKILL one instruction later loses nothing. It must not decide
anything (that is the runner's and `watchdog.interlocks`'), and it never stores a secret: callers
pass only output that is safe to show.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

from watchdog.durations import parse_duration
from watchdog.interlocks import PastRun
from watchdog.model import Action
from watchdog.schema import BaseModel, BeforeValidator, FieldInfo
from watchdog.storage import DEPLOYS, DuplicateRun, LeaseLost, Storage, Tx
from watchdog.storage.records import AttemptRow, DeployRow, PauseRecord, RunRow, StepRow

__all__ = ["ActionStore", "AttemptRow", "DeployRow", "DeploysView", "DuplicateRun",
           "PauseRecord", "RunRow", "StepRow", "dump_action", "load_action"]


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


@dataclass(frozen=True)
class DeploysView:
    """What a replica keeps of the deploy markers: the open ones (their windows), the ones whose
    report is not posted yet, and the baselines the evaluation compares with."""

    open: list[DeployRow]
    unreported: list[DeployRow]
    baselines: dict[str, dict[str, float]]


class ActionStore:
    """`replica`/`ttl`: several replicas share the store (PostgreSQL). A run is driven by the
    replica that claims it: the claim is taken with the run, renewed while the replica lives,
    and checked inside the transaction of every step's start and end — a replica whose claim
    ran out (dead, frozen, partitioned) raises `LeaseLost` there and executes nothing more;
    another replica takes the run over after `ttl`."""

    def __init__(self, storage: Storage, replica: str = "solo", ttl: float = 15.0) -> None:
        self.storage = storage
        self.replica = replica
        self.ttl = ttl

    async def claim(self, tx: Tx, run_id: str) -> None:
        """Inside `tx`: the run is still this replica's (and stays so for another `ttl`)."""
        if not await tx.runs.claim(run_id, self.replica, self.ttl):
            raise LeaseLost(f"run {run_id}", "its claim ran out; another replica drives it")

    async def renew_claims(self, ids: Sequence[str]) -> list[str]:
        async with self.storage.transaction() as tx:
            return await tx.runs.renew_claims(self.replica, self.ttl, ids)

    async def take_expired(self, *, own: bool = False) -> list[RunRow]:
        """Runs whose driver is gone (their claim ran out; `own`: or an earlier process of
        this replica id claimed them), now this replica's."""
        async with self.storage.transaction() as tx:
            ids = await tx.runs.take_expired(self.replica, self.ttl, own=own)
            runs = [await tx.runs.get(i) for i in ids]
        return [r for r in runs if r is not None]

    # ---- runs -------------------------------------------------------------------------------

    async def insert_run(self, run: RunRow, tx: Tx | None = None) -> None:
        """Raises `DuplicateRun` when the action already ran for the incident."""
        if tx is not None:
            await tx.runs.insert(run)
            await self.claim(tx, run.id)
            return
        async with self.storage.transaction() as own:
            await own.runs.insert(run)
            await self.claim(own, run.id)

    async def update_run(self, run_id: str, **fields: Any) -> None:
        async with self.storage.transaction() as tx:
            await tx.runs.update(run_id, **fields)

    async def get_run(self, run_id: str) -> RunRow | None:
        async with self.storage.transaction() as tx:
            return await tx.runs.get(run_id)

    async def runs(self, *, status: Sequence[str] | None = None, action: str | None = None,
                   limit: int = 100) -> list[RunRow]:
        async with self.storage.transaction() as tx:
            return await tx.runs.list(status=status, action=action, limit=limit)

    async def pending_verifications(self) -> list[RunRow]:
        async with self.storage.transaction() as tx:
            return await tx.runs.pending_verifications()

    async def history(self, action: str, since: float, incident_id: str | None, *,
                      include_dry: bool, tx: Tx | None = None) -> list[PastRun]:
        """The runs `interlocks.decide` needs: recent ones, and any of this incident. Dry runs
        count only for another dry run: its report should show the interlocks, but trying an
        action out must never hold back a real rollback."""
        if tx is not None:
            return await tx.runs.history(action, since, incident_id, include_dry=include_dry)
        async with self.storage.transaction() as own:
            return await own.runs.history(action, since, incident_id, include_dry=include_dry)

    # ---- steps ------------------------------------------------------------------------------

    async def steps(self, run_id: str) -> list[StepRow]:
        async with self.storage.transaction() as tx:
            return await tx.steps.list(run_id)

    async def start_step(self, run_id: str, idx: int, kind: str, at: float,
                         deadline: float | None = None, status: str = "running") -> None:
        async with self.storage.transaction() as tx:
            await self.claim(tx, run_id)
            await tx.steps.start(run_id, idx, kind, at, deadline, status)

    async def finish_step(self, run_id: str, idx: int, status: str, at: float, detail: str,
                          output: str = "", *, next_step: int | None = None) -> None:
        """The step's outcome and the run's progress in one transaction: after a crash either
        both are on disk or neither is."""
        async with self.storage.transaction() as tx:
            await self.claim(tx, run_id)
            await tx.steps.finish(run_id, idx, status, at, detail, output, next_step=next_step)

    async def add_attempt(self, a: AttemptRow) -> None:
        async with self.storage.transaction() as tx:
            await self.claim(tx, a.run_id)
            await tx.steps.add_attempt(a)

    async def attempts(self, run_id: str) -> list[AttemptRow]:
        async with self.storage.transaction() as tx:
            return await tx.steps.attempts(run_id)

    # ---- pause ------------------------------------------------------------------------------

    async def pause(self) -> PauseRecord | None:
        async with self.storage.transaction() as tx:
            return await tx.pause.get()

    async def set_pause(self, p: PauseRecord) -> None:
        async with self.storage.transaction() as tx:
            await tx.pause.set(p)

    async def clear_pause(self) -> bool:
        async with self.storage.transaction() as tx:
            return await tx.pause.clear()

    # ---- deploy markers ---------------------------------------------------------------------

    async def insert_deploy(self, d: DeployRow,
                            baselines: Sequence[tuple[str, str, float, Mapping[str, str]]] = ()
                            ) -> None:
        """The marker and the baselines captured for it, together."""
        async with self.storage.transaction() as tx:
            await tx.deploys.insert(d)
            await tx.deploys.save_baselines(d.id, d.at, baselines)

    async def finish_deploy(self, deploy_id: str, status: str, summary: str) -> None:
        async with self.storage.transaction() as tx:
            await tx.deploys.finish(deploy_id, status, summary)

    async def deploys(self, *, status: str | None = None, limit: int = 100,
                      service: str | None = None, version: str | None = None
                      ) -> list[DeployRow]:
        async with self.storage.transaction() as tx:
            return await tx.deploys.list(status=status, limit=limit, service=service,
                                         version=version)

    async def unreported(self, limit: int = 1000) -> list[DeployRow]:
        async with self.storage.transaction() as tx:
            return await tx.deploys.unreported(limit)

    async def baselines(self) -> dict[str, dict[str, float]]:
        async with self.storage.transaction() as tx:
            return await tx.deploys.baselines()

    async def baselines_of(self, deploy_id: str) -> list[tuple[str, dict[str, str], float]]:
        async with self.storage.transaction() as tx:
            return await tx.deploys.baselines_of(deploy_id)

    # ---- closing due markers (several replicas: by claim, like runs) -------------------------

    async def take_due_deploys(self, now: float, *, own: bool = False) -> list[DeployRow]:
        """Markers with work due at `now` (a window to close, a report to post) that no other
        live replica is working on (`own`: also those an earlier process of this replica id
        claimed), now this replica's for `ttl`."""
        async with self.storage.transaction() as tx:
            return await tx.deploys.take_due(self.replica, self.ttl, now, own=own)

    async def claim_deploy(self, tx: Tx, deploy_id: str) -> None:
        """Inside `tx` (the verdict's or the report's): the marker is still this replica's."""
        if not await tx.deploys.claim(deploy_id, self.replica, self.ttl):
            raise LeaseLost(f"deploy {deploy_id}", "its claim ran out; another replica closes it")

    async def renew_deploy_claims(self, ids: Sequence[str]) -> list[str]:
        async with self.storage.transaction() as tx:
            return await tx.deploys.renew_claims(self.replica, self.ttl, ids)

    async def release_deploy(self, deploy_id: str) -> None:
        async with self.storage.transaction() as tx:
            await tx.deploys.release(deploy_id, self.replica)

    async def deploys_changed(self, seen: int | None) -> tuple[int, DeploysView | None]:
        """The store's count of deploy changes, and — only when it differs from `seen` — the
        open markers, the unreported ones and every baseline, read after that count (so a
        change committed meanwhile is read now or counted as unseen next time)."""
        async with self.storage.transaction() as tx:
            version = (await tx.versions.get()).get(DEPLOYS, 0)
            if version == seen:
                return version, None
            view = DeploysView(await tx.deploys.list(status="open", limit=10_000),
                               await tx.deploys.unreported(limit=10_000),
                               await tx.deploys.baselines())
        return version, view

    async def deploy_alerts(self, deploy_id: str
                            ) -> list[tuple[str, dict[str, str], float | None, float]]:
        async with self.storage.transaction() as tx:
            return await tx.deploys.alerts(deploy_id)
