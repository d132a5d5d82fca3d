"""The rules folder as the daemon runs it: loading at start (with restart restore and the last
good version of a file broken while the daemon was down), hot reload (poll, SIGHUP,
`POST /-/reload`) that keeps unchanged rules' state, and the record of accepted files.

Must not: evaluate (it waits for in-flight ticks of the groups it replaces, through the
evaluator's locks), schedule (it calls `on_groups` with the new intervals), or decide how state
carries over (that is `watchdog.reload`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from watchdog.app import heap
from watchdog.app.evaluation import Evaluator, Inflight
from watchdog.app.health import BUILTIN_KEY
from watchdog.app.live import Live
from watchdog.engine import GroupRuntime
from watchdog.handlers import EventHandler
from watchdog.metrics import Metrics
from watchdog.reload import Carried, carry_over, group_key, restore
from watchdog.rulesdir import FileStatus, RuleSet, build, digest_of, folder_digest, read_files
from watchdog.state import Event
from watchdog.storage import Storage

log = structlog.get_logger("watchdog.daemon")


class RulesDirMissing(Exception):
    """The rules folder is not a directory at start; the message names the setting."""


@dataclass
class ReloadReport:
    trigger: str
    at: float
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    rejected: list[FileStatus] = field(default_factory=list)
    resolved: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.rejected


class RuleManager:
    def __init__(self, *, rules_dir: Path, live: Live, storage: Storage, evaluator: Evaluator,
                 metrics: Metrics, handlers: Sequence[EventHandler], clock: Callable[[], float],
                 outage_tolerance: float, grace_period: float, inflight: Inflight,
                 on_groups: Callable[[], None],
                 on_rules: Callable[[RuleSet], Awaitable[None]],
                 held: Callable[[str], bool] | None = None) -> None:
        self.rules_dir = rules_dir
        self.live = live
        self.storage = storage
        self.evaluator = evaluator
        self.metrics = metrics
        self.handlers = handlers
        self.clock = clock
        self.outage_tolerance = outage_tolerance
        self.grace_period = grace_period
        self.inflight = inflight
        self.on_groups = on_groups
        self.on_rules = on_rules
        # Several replicas share the store: alert state is read and written by each group's
        # lease holder only (`watchdog.app.replicas`); None: this process holds every group.
        self.held = held
        self.last_reload: ReloadReport | None = None
        self.digest: str | None = None
        self._saved: dict[str, str] = {}  # path -> digest of the accepted version stored
        self._lock = asyncio.Lock()

    def _read(self) -> tuple[str, dict[str, bytes | OSError]]:
        raw = read_files([self.rules_dir])
        return digest_of(raw), raw

    async def load_at_start(self) -> list[Event]:
        """Read the folder, restore the stored alert state into the new runtimes; the events
        of alerts that resolved meanwhile are returned for the caller to commit."""
        try:
            return await self._load_at_start()
        finally:
            heap.release()  # what loading built and dropped (see watchdog.app.heap)

    async def _load_at_start(self) -> list[Event]:
        if not self.rules_dir.is_dir():
            raise RulesDirMissing(f"WATCHDOG_RULES_DIR: {self.rules_dir} is not a directory")
        digest, raw = await asyncio.to_thread(self._read)
        async with self.storage.transaction() as tx:
            saved = await tx.rule_files.load()
        self._saved = {p: hashlib.sha256(c).hexdigest() for p, c in saved.items()}
        rs = await asyncio.to_thread(build, raw)
        if any(st.path in saved for st in rs.rejected):
            # A file broken while we were down: run its last good version from the store.
            last_good = await asyncio.to_thread(build, {p: c for p, c in saved.items()
                                                        if p in raw})
            rs = await asyncio.to_thread(build, raw, last_good)
        ts = self.clock()
        runtimes = {group_key(f, g): GroupRuntime.new(f, g) for f, g in rs.groups()}
        if self.held is not None:
            # Shared store: nothing is restored (or resolved) here. Each group's state is
            # loaded when this replica takes its lease, and mirrored from the store meanwhile.
            self.live.runtimes, self.live.rules = runtimes, rs
            self.digest, self.live.rules_loaded = digest, True
            await self._save_files(raw, rs)
            self._log_problems(rs, "startup")
            return []
        async with self.storage.transaction() as tx:
            stored = await tx.alerts.load()
        # The built-in group is restored like the others (it is one).
        restored = restore({**runtimes, BUILTIN_KEY: self.live.builtin}, stored, ts,
                           outage_tolerance=self.outage_tolerance,
                           grace_period=self.grace_period)
        async with self.storage.transaction() as tx:
            await tx.alerts.save(restored.changes)
        self.live.runtimes, self.live.rules = runtimes, rs
        self.digest, self.live.rules_loaded = digest, True
        await self._save_files(raw, rs)
        self._log_problems(rs, "startup")
        n = sum(len(r.alerts) for rt in runtimes.values() for r in rt.rules)
        if n or restored.events:
            log.info("alert state restored", alerts=n, resolved=len(restored.events))
        return list(restored.events)

    async def poll(self) -> bool:
        """Reload when the folder's content hash changed."""
        digest = await asyncio.to_thread(folder_digest, [self.rules_dir])
        if digest == self.digest:
            return False
        await self.reload("poll")
        return True

    async def reload(self, trigger: str = "manual") -> ReloadReport:
        """Re-read the folder; start, stop and update groups; keep unchanged rules' state."""
        with self.inflight.tracked():
            report, events, at = await self._reload(trigger)
        await self.evaluator.commit([], events, at)
        if report.error is None:
            await self.on_rules(self.live.rules)
        if report.added or report.removed or report.changed or report.rejected:
            heap.release()  # the previous rule set and what building this one dropped
        return report

    async def _reload(self, trigger: str) -> tuple[ReloadReport, list[Event], float]:
        async with self._lock:
            at = self.clock()
            report = ReloadReport(trigger, at)
            if not self.rules_dir.is_dir():
                # A vanished folder (a bad mount) must not read as "every rule was deleted".
                report.error = f"{self.rules_dir} is not a directory; rules unchanged"
                log.error("reload failed", trigger=trigger, error=report.error)
                self.metrics.reloads.labels(trigger, "error").inc()
                self.last_reload = report
                return report, [], at
            digest, raw = await asyncio.to_thread(self._read)
            # Parsing YAML and PromQL of changed files is CPU work: keep the loop (and the
            # evaluations on it) running meanwhile.
            rs = await asyncio.to_thread(build, raw, self.live.rules)
            groups = rs.groups()
            wanted = {group_key(f, g): g for f, g in groups}
            touched = sorted(k for k, rt in self.live.runtimes.items()
                             if k not in wanted or wanted[k] != rt.group)
            async with contextlib.AsyncExitStack() as stack:
                # Wait for in-flight ticks of the groups we replace, so none of their results
                # lands in a runtime that is gone.
                for k in touched:
                    await stack.enter_async_context(self.evaluator.lock(k))
                carried = carry_over(self.live.runtimes, groups, at)
                if self.held is not None:
                    self._only_held(carried)
                try:
                    # Before the swap: cancelled or failed here, the old rules simply go on.
                    async with self.storage.transaction() as tx:
                        await tx.alerts.save(carried.changes)
                except Exception:
                    log.exception("cannot persist reload changes")
                # From here to the end of the block nothing awaits: readers (HTTP, handlers,
                # the scheduler) see either the old rules or the new ones, never a mixture.
                gone = {k: self.live.runtimes[k].group.name for k in carried.removed}
                self.live.runtimes, self.live.rules = carried.runtimes, rs
                self.digest = digest
                for k in carried.removed:
                    self.evaluator.forget(k)
                names = {rt.group.name for rt in self.live.runtimes.values()}
                for gname in set(gone.values()) - names:
                    self.metrics.forget_group(gname)
                self.on_groups()
            report.added, report.removed = carried.added, carried.removed
            report.changed, report.unchanged = carried.changed, carried.unchanged
            report.rejected, report.resolved = rs.rejected, len(carried.events)
            self.last_reload = report
            self.metrics.reloads.labels(trigger, "ok" if report.ok else "rejected").inc()
            await self._save_files(raw, rs)
            self._log_problems(rs, trigger)
            log.info("rules reloaded", trigger=trigger, added=len(carried.added),
                     removed=len(carried.removed), changed=len(carried.changed),
                     rejected=len(rs.rejected), resolved=len(carried.events))
        return report, list(carried.events), at

    def _only_held(self, carried: Carried) -> None:
        """Shared store: what a reload resolves and deletes, only for the groups this replica
        holds; the holder of each other group does that in its own reload."""
        assert self.held is not None
        held = self.held
        carried.changes = [c for c in carried.changes if held(c.group_key)]
        others = {(a.rule, a.fingerprint, a.incident_id)
                  for k, rt in self.live.runtimes.items() if not held(k) for a in rt.alerts()}
        carried.events = [e for e in carried.events
                          if (e.alert.rule, e.alert.fingerprint, e.alert.incident_id)
                          not in others]

    async def _save_files(self, raw: Mapping[str, bytes | OSError], rs: RuleSet) -> None:
        new: dict[str, tuple[str, bytes]] = {}
        for path, st in rs.status.items():
            data = raw.get(path)
            if st.ok and isinstance(data, bytes) and self._saved.get(path) != st.digest:
                new[path] = (st.digest, data)
        gone = [p for p in self._saved if p not in raw]
        try:
            async with self.storage.transaction() as tx:
                await tx.rule_files.save(new, gone)
        except Exception:
            log.exception("cannot save the accepted rule files")
            return
        for p in gone:
            del self._saved[p]
        self._saved.update({p: d for p, (d, _) in new.items()})

    @staticmethod
    def _log_problems(rs: RuleSet, trigger: str) -> None:
        for st in rs.status.values():
            for p in st.problems:
                if p.warning:
                    log.warning("rule file warning", problem=str(p), file=p.file, line=p.line,
                                trigger=trigger)
                else:
                    log.error("rule file rejected", problem=str(p), file=p.file, line=p.line,
                              running_previous=st.running_previous, trigger=trigger)
