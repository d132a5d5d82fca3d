"""Carrying alert state across a change of rules (hot reload) and across a restart (restore).

Both are the same question — which existing alert instances belong to which rule now — so they
share one matching rule: a rule keeps its state when its key (`engine.rule_keys`), its `expr`
and its labels are unchanged; anything else about it (`for`, annotations, thresholds) may change
and the state carries over, as Prometheus's `Group.CopyState` does. Alerts of a rule that is gone
are dropped; those that were firing resolve, with a `resolved` event for the handlers, so no
receiver is left with a page nobody will ever close.

Restart restore follows Prometheus's `Group.RestoreForState` (rules/group.go): state older than
the outage tolerance is not restored; a pending alert of a rule whose `for` is shorter than the
grace period waits its `for` afresh; otherwise the time spent pending before the crash counts
and the downtime does not, and an alert never fires sooner than the grace period after the
restart. Firing alerts (and their `keep_firing_for` clock) are restored as they were: the same
incident, no second `firing`.

Pure functions over in-memory runtimes: no I/O, no clock (`at`/`ts` are arguments). The store
writes what these functions return; the state machine itself stays in `watchdog.state`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from watchdog.engine import GroupRuntime, RuleRuntime
from watchdog.model import AlertingRule, Group
from watchdog.state import Alert, Event
from watchdog.storage.records import GroupChanges, StoredGroup


def group_key(file: str, group: Group) -> str:
    return f"{file};{group.name}"


def rule_sig(rule: AlertingRule) -> str:
    """What must stay the same for a rule to keep its alerts: the query and the labels."""
    text = json.dumps([rule.expr, sorted(rule.labels.items())], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resolve(alerts: Iterable[Alert], at: float) -> list[Event]:
    """`resolved` events for the firing ones among alerts that are being dropped."""
    return [Event("resolved", at, replace(a, state="inactive", resolved_at=at, value=None))
            for a in alerts if a.state == "firing"]


@dataclass
class Carried:
    runtimes: dict[str, GroupRuntime]
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    changes: list[GroupChanges] = field(default_factory=list)  # rows to delete from the store


def _carry_rules(new: GroupRuntime, old_rules: Mapping[str, RuleRuntime]) -> list[RuleRuntime]:
    """Move state from matching old rules into `new`; return the old rules left unmatched."""
    matched: set[str] = set()
    for r in new.rules:
        o = old_rules.get(r.key)
        if o is not None and rule_sig(o.rule) == rule_sig(r.rule):
            r.alerts, r.history = o.alerts, o.history
            matched.add(r.key)
    return [o for k, o in old_rules.items() if k not in matched]


def carry_over(current: Mapping[str, GroupRuntime], groups: Sequence[tuple[str, Group]],
               at: float) -> Carried:
    """The runtimes for the reloaded `groups`, with the state of unchanged rules carried over."""
    out = Carried({})
    for file, g in groups:
        key = group_key(file, g)
        old = current.get(key)
        if old is not None and old.group == g:
            out.runtimes[key] = old  # same object: its job, history and alerts go on untouched
            out.unchanged.append(key)
            continue
        rt = GroupRuntime.new(file, g)
        out.runtimes[key] = rt
        if old is None:
            out.added.append(key)
            continue
        out.changed.append(key)
        rt.last_at, rt.last_duration, rt.last_error = old.last_at, old.last_duration, None
        gone = _carry_rules(rt, {r.key: r for r in old.rules})
        out.events.extend(resolve((a for r in gone for a in r.alerts.values()), at))
        if gone:
            out.changes.append(GroupChanges(key, drop_rules=[r.key for r in gone]))
    for key, old in current.items():
        if key not in out.runtimes:
            out.removed.append(key)
            out.events.extend(resolve(old.alerts(), at))
            out.changes.append(GroupChanges(key, drop_group=True))
    return out


@dataclass
class Restored:
    events: list[Event] = field(default_factory=list)
    changes: list[GroupChanges] = field(default_factory=list)


def restore_alerts(alerts: Mapping[str, Alert], *, hold: float, ts: float,
                   group_last_eval: float | None, outage_tolerance: float, grace_period: float
                   ) -> tuple[dict[str, Alert], list[Event], list[str]]:
    """One rule's saved alerts, adjusted for a restart at `ts` -> (alerts, events, dropped fps).

    Prometheus reads "when was this alert last active" from its ALERTS_FOR_STATE series; our
    equivalent is the alert's `last_seen_at` (the last evaluation whose result held it), or for
    a firing alert the group's last evaluation (an alert held by `keep_firing_for` is active
    without being seen).
    """
    out: dict[str, Alert] = {}
    events: list[Event] = []
    dropped: list[str] = []
    for fp, a in alerts.items():
        if a.state == "inactive":
            out[fp] = a  # resolved and remembered: state.step forgets it after the retention
            continue
        down_at = a.last_seen_at if a.last_seen_at is not None else a.active_at
        if a.state == "firing" and group_last_eval is not None:
            down_at = max(down_at, group_last_eval)
        if ts - down_at > outage_tolerance:
            # Too old to trust (Prometheus restores nothing beyond the outage tolerance).
            if a.state == "firing":
                ev = resolve([a], ts)
                events.extend(ev)
                out[fp] = ev[0].alert
            else:
                dropped.append(fp)
            continue
        if a.state == "firing":
            out[fp] = a
            continue
        out[fp] = replace(a, active_at=_restored_active_at(a.active_at, down_at, hold, ts,
                                                           grace_period))
    return out, events, dropped


def _restored_active_at(active_at: float, down_at: float, hold: float, ts: float,
                        grace: float) -> float:
    if hold < grace:
        # Prometheus skips restoring such rules: waiting `for` from the restart is already
        # shorter than the grace period would make it wait.
        return ts
    remaining = hold - (down_at - active_at)
    if remaining <= 0:
        return active_at  # was due to fire: it fires at the next evaluation if still true
    if remaining < grace:
        return ts + grace - hold  # fires exactly one grace period after the restart
    return active_at + (ts - down_at)  # the downtime does not count as pending time


def restore(runtimes: Mapping[str, GroupRuntime], stored: Mapping[str, StoredGroup], ts: float,
            *, outage_tolerance: float, grace_period: float) -> Restored:
    """Put saved alerts back into `runtimes` (fresh from the rule files) after a restart."""
    out = Restored()
    for key, sg in stored.items():
        rt = runtimes.get(key)
        if rt is None:
            out.events.extend(resolve((a for sr in sg.rules.values()
                                       for a in sr.alerts.values()), ts))
            out.changes.append(GroupChanges(key, drop_group=True))
            continue
        changes = GroupChanges(key)
        rules = {r.key: r for r in rt.rules}
        for rkey, sr in sg.rules.items():
            r = rules.get(rkey)
            sig = rule_sig(r.rule) if r is not None else ""
            if r is None or sr.sig != sig:
                out.events.extend(resolve(sr.alerts.values(), ts))
                changes.drop_rules.append(rkey)
                continue
            alerts, events, dropped = restore_alerts(
                sr.alerts, hold=r.rule.for_, ts=ts, group_last_eval=sg.last_eval_at,
                outage_tolerance=outage_tolerance, grace_period=grace_period)
            r.alerts = alerts
            out.events.extend(events)
            # Alerts resolved here are saved now so a second crash does not resolve them twice.
            changes.upserts.extend((rkey, sig, e.alert) for e in events)
            changes.deletes.extend((rkey, fp) for fp in dropped)
        if changes:
            out.changes.append(changes)
    return out


def takeover(rt: GroupRuntime, stored: StoredGroup | None, ts: float, *,
             outage_tolerance: float) -> Restored:
    """A group whose lease this replica just took (CONTRACT §7): its saved alerts become the
    runtime's. A lease move is not a restart: the previous holder evaluated the group until its
    last renewal, at most LEASE_TTL plus an interval ago, so pending alerts keep their activeAt
    — their `for` progress, their incident ids, and what was notified about them, carry over
    unchanged. Alerts of rules that changed (another rule version on the previous holder) or
    that were not seen within the outage tolerance are resolved, as at a restart."""
    out = Restored()
    changes = GroupChanges(rt.key)
    saved = stored.rules if stored is not None else {}
    rules = {r.key: r for r in rt.rules}
    for each in rt.rules:
        each.alerts = {}
    for rkey, sr in saved.items():
        r = rules.get(rkey)
        if r is None or sr.sig != rule_sig(r.rule):
            out.events.extend(resolve(sr.alerts.values(), ts))
            changes.drop_rules.append(rkey)
            continue
        alerts: dict[str, Alert] = {}
        for fp, a in sr.alerts.items():
            down_at = a.last_seen_at if a.last_seen_at is not None else a.active_at
            if a.state == "firing" and stored is not None and stored.last_eval_at is not None:
                down_at = max(down_at, stored.last_eval_at)
            if a.state != "inactive" and ts - down_at > outage_tolerance:
                if a.state == "firing":
                    ev = resolve([a], ts)
                    out.events.extend(ev)
                    alerts[fp] = ev[0].alert
                    changes.upserts.append((rkey, sr.sig, ev[0].alert))
                else:
                    changes.deletes.append((rkey, fp))
                continue
            alerts[fp] = a
        r.alerts = alerts
    if stored is not None:
        rt.last_at = stored.last_eval_at
    if changes:
        out.changes.append(changes)
    return out


def mirror(rt: GroupRuntime, stored: StoredGroup | None) -> list[Alert]:
    """A group another replica evaluates, as saved: its alerts become the runtime's (for the
    API, the notifier, and "still firing?" of action waits). Rules whose saved version differs
    from this replica's are left empty. Returns the alerts that are new or changed."""
    saved = stored.rules if stored is not None else {}
    changed: list[Alert] = []
    for r in rt.rules:
        sr = saved.get(r.key)
        new = dict(sr.alerts) if sr is not None and sr.sig == rule_sig(r.rule) else {}
        changed.extend(a for fp, a in new.items() if r.alerts.get(fp) != a)
        r.alerts = new
    return changed
