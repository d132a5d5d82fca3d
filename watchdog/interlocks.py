"""Whether an action may run now: the interlocks that keep automated rollback from making things
worse. One pure function, `decide`, used by the daemon (with runs read from its store) and by
`replay` (with an in-memory `History`), so both answer the same way.

Functional core: no I/O, never reads the clock (`at` is always an argument), knows nothing about
how runs are stored or executed.

The rules, in the order they are checked (the first that refuses is the reason given):
1. an action never runs twice for one incident (alert instance from activation to resolution);
2. `cooldown`: not again for the same alert instance (fingerprint) within the window, counted
   from the start of the previous run — this is what stops a flapping alert, whose every
   re-fire is a new incident, from rolling back again and again;
3. `max_runs_per_hour`: across all instances, runs started in the last 3600 s.
A manual trigger is a person's deliberate decision: it skips 1 and 2 (it belongs to no incident
and no instance), but still honours 3 unless forced, because a rate limit guards against a
runaway script as much as against a runaway rule.

4. the target lock (`lock_verdict`): one run per lock key — the action's `lock:` template, by
   default the action name and the alert's fingerprint — while the run holding it is running,
   while that run's incident is open, and for `cooldown` after it started. The default key makes
   the lock's cooldown the same as 2.; a shared key (`deploy/{{ $labels.ns }}/
   {{ $labels.deployment }}`) makes three firing series of one Deployment undo it once, not three
   times (the third undo would put the bad version back). A manual trigger, like 1 and 2, is
   not held back by the lock, but takes it: the automated runs after it defer to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from watchdog.durations import format_duration
from watchdog.model import Action

HOUR = 3600.0

Reason = Literal["ok", "already_ran", "cooldown", "rate_limited", "locked"]


@dataclass(frozen=True)
class PastRun:
    """A run that counts for the interlocks (dry runs included: a dry run shows what would
    happen, and that includes being held back)."""

    action: str
    at: float  # when it started
    fingerprint: str | None = None  # alert instance; None for a manual run
    incident_id: str | None = None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: Reason
    detail: str = ""
    retry_at: float | None = None  # when the refusing interlock lets go, if it ever does
    deferred_to: str | None = None  # "locked": the run holding the lock


ALLOWED = Verdict(True, "ok")


def lookback(action: Action) -> float:
    """How far back a caller must supply runs for `decide` to see every one that matters
    (the incident check needs the runs of that incident as well, whatever their age)."""
    return max(action.cooldown, HOUR if action.max_runs_per_hour is not None else 0.0)


def decide(name: str, action: Action, at: float, history: Iterable[PastRun], *,
           fingerprint: str | None = None, incident_id: str | None = None,
           manual: bool = False, force: bool = False) -> Verdict:
    """May action `name` start at `at`, given the runs in `history`?"""
    runs = [r for r in history if r.action == name and r.at <= at]
    if not manual:
        if incident_id is not None and any(r.incident_id == incident_id for r in runs):
            return Verdict(False, "already_ran", f"{name} already ran for this incident")
        if fingerprint is not None and action.cooldown > 0:
            last = max((r.at for r in runs if r.fingerprint == fingerprint), default=None)
            if last is not None and at - last < action.cooldown:
                return Verdict(False, "cooldown",
                               f"{name} ran for this alert {format_duration(at - last)} ago; "
                               f"cooldown {format_duration(action.cooldown)}",
                               last + action.cooldown)
    if action.max_runs_per_hour is not None and not force:
        recent = sorted(r.at for r in runs if at - r.at < HOUR)
        if len(recent) >= action.max_runs_per_hour:
            # The oldest run that still counts leaves the window first.
            leaves = recent[len(recent) - action.max_runs_per_hour] + HOUR
            return Verdict(False, "rate_limited",
                           f"{name} ran {len(recent)} times in the last hour; "
                           f"max_runs_per_hour {action.max_runs_per_hour}", leaves)
    return ALLOWED


@dataclass(frozen=True)
class Holder:
    """The run holding a lock key, as `lock_verdict` needs it."""

    run_id: str
    action: str
    at: float  # when it took the lock
    running: bool
    incident_open: bool


def lock_verdict(key: str, holder: Holder | None, at: float, cooldown: float, *,
                 manual: bool = False, force: bool = False) -> Verdict:
    """May a run take lock `key` at `at`?"""
    if holder is None or force or manual:
        return ALLOWED
    why = ""
    retry_at: float | None = None
    if holder.running:
        why = "is running"
    elif holder.incident_open:
        why = "acted for an incident that is still open"
    elif cooldown > 0 and at - holder.at < cooldown:
        why = (f"started {format_duration(max(0.0, at - holder.at))} ago; cooldown "
               f"{format_duration(cooldown)}")
        retry_at = holder.at + cooldown
    if not why:
        return ALLOWED
    return Verdict(False, "locked", f"lock {key!r} is held: {holder.action} run {holder.run_id} "
                                    f"{why}", retry_at, holder.run_id)


def default_lock_key(name: str, fingerprint: str | None) -> str:
    """The action name and the alert instance; a manual run, which has none, locks the action."""
    return f"{name}/{fingerprint}" if fingerprint else name


@dataclass
class History:
    """An in-memory run history and lock table for callers without a store (`replay`, where
    a run takes no time: its holder is never "running", only its incident open or cooling)."""

    runs: list[PastRun] = field(default_factory=list)
    locks: dict[str, Holder] = field(default_factory=dict)
    open_incidents: set[str] = field(default_factory=set)
    _incident_of: dict[str, str | None] = field(default_factory=dict)

    def check_and_record(self, name: str, action: Action, at: float, *,
                         fingerprint: str | None = None, incident_id: str | None = None,
                         lock_key: str | None = None, same_incident_shares: bool = True
                         ) -> Verdict:
        """`same_incident_shares`: a lock held by a run of the same incident does not hold
        this one back (the daemon serialises the runs of one incident instead)."""
        verdict = decide(name, action, at, self.runs, fingerprint=fingerprint,
                         incident_id=incident_id)
        key = lock_key or default_lock_key(name, fingerprint)
        if verdict.allowed:
            held = self.locks.get(key)
            if held is not None and same_incident_shares and incident_id is not None \
                    and self._incident_of.get(held.run_id) == incident_id:
                held = None
            if held is not None:
                inc = self._incident_of.get(held.run_id)
                held = Holder(held.run_id, held.action, held.at, False,
                              inc is not None and inc in self.open_incidents)
            verdict = lock_verdict(key, held, at, action.cooldown)
        if verdict.allowed:
            run_id = f"{name}@{at:g}#{len(self.runs)}"
            self.runs.append(PastRun(name, at, fingerprint, incident_id))
            self.locks[key] = Holder(run_id, name, at, False, True)
            self._incident_of[run_id] = incident_id
            if incident_id is not None:
                self.open_incidents.add(incident_id)
        return verdict

    def resolved(self, incident_id: str) -> None:
        self.open_incidents.discard(incident_id)


def effective_dry_run(global_dry_run: bool, rule_dry_run: bool,
                      requested: bool = False) -> bool:
    """Any one of the switches makes a run a dry run; none can make a dry run real."""
    return global_dry_run or rule_dry_run or requested

