"""The notification pipeline, Alertmanager's `notify/` stages in one place: inhibit → silence →
route → group (group_wait / group_interval) → dedup against the persisted notification log →
outbox; plus repeats, time-based escalation, acknowledgements, and the Prometheus-style re-sends
to Alertmanager receivers.

The unit is the incident (`Alert.incident_id`), not the series: the log remembers which incidents
each receiver was told about, so a series that resolves and fires again is a new incident and is
notified, however close together. Unlike Alertmanager, a group that has had its first flush does
not hold two things until its next `group_interval`: a new incident (sent at the next flush, so a
page never waits minutes and a short incident is never over before anyone hears of it) and the
resolution of its last firing alert (so "all clear" is as quick as the page was). Everything else
— more alerts resolving, severity changes, repeats — waits for `group_interval` as in Alertmanager.
An incident that fired and resolved before its receiver heard of it (within `group_wait`, or while
silenced) is told once, as resolved. A route with `digest:` sends nothing here: its receivers get
one summary a day (`watchdog.notify.digest`).

State: the alerts it has been told about (`observe`), one timer per aggregation group, and four
persisted records — the notification log (what each receiver was last told about each group), the
escalation levels already sent per incident, what the watchdog's actions did per incident (shown
in the alert's messages, so a restart does not forget it), and (in `silences`) silences and
acks. Everything it decides is written to the outbox, together with the log update, before
anything is sent; it never sends, sleeps or reads the clock: `flush(at)` is called with the time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from watchdog.handlers import ActionEvent, AlertView
from watchdog.labels import fingerprint, format_labels, matches
from watchdog.model import InhibitRule, Receiver, Route
from watchdog.notify.message import (
    ActionNote,
    AlertDoc,
    Kind,
    Notification,
    ReportDoc,
    alert_doc,
)
from watchdog.notify.message import generator_url as make_generator_url
from watchdog.notify.outbox import Entry, Outbox
from watchdog.notify.receivers import integration_of
from watchdog.notify.silences import Ack, Matcher, SilenceStore, matches_all
from watchdog.rulesdir import RuleSet
from watchdog.state import RESOLVED_RETENTION, Alert, Event, severity_rank
from watchdog.storage import Tx
from watchdog.storage.records import EscalationKey, LogEntry

# Action events worth a message of their own. Step-level progress stays in the alert's own
# message ("what the watchdog did") so a five-step rollback doesn't post ten messages.
NOTIFIED_ACTION_KINDS = frozenset({"started", "succeeded", "failed", "would_run", "not_helped"})
KEEP_ESCALATIONS = 7 * 86400.0
KEEP_NOTES = 20  # per incident: a runaway action must not grow a message without bound


def route_id(route: Route) -> str:
    """Identity of a route across reloads and restarts: a hash of its content, so editing one
    route neither resets nor inherits another route's notification log."""
    text = route.model_dump_json(by_alias=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class Tracked:
    alert: Alert
    notes: list[ActionNote] = field(default_factory=list)


@dataclass
class GroupState:
    key: str
    labels: dict[str, str]
    next_flush: float
    created: float = 0.0
    flushed: bool = False  # past its group_wait (or told before a restart): news goes out at once
    seen: tuple[int, frozenset[str]] | None = None  # (changes, muted) at its last look


def group_labels(route: Route, labels: Mapping[str, str]) -> dict[str, str]:
    if "..." in route.group_by:  # Alertmanager: group by all labels, i.e. one alert per group
        return dict(labels)
    return {k: labels[k] for k in route.group_by if k in labels}


def inhibited(target: Mapping[str, str], sources: Iterable[Mapping[str, str]],
              rules: Sequence[InhibitRule]) -> bool:
    """Alertmanager's inhibitor: a firing source mutes a target when both match their sides and
    the `equal` labels agree; an alert never inhibits itself."""
    for rule in rules:
        if not matches(target, rule.target_match, rule.target_match_re):
            continue
        for src in sources:
            if src is target or dict(src) == dict(target):
                continue
            if not matches(src, rule.source_match, rule.source_match_re):
                continue
            if all(src.get(k, "") == target.get(k, "") for k in rule.equal):
                return True
    return False


_SourcesByKey = dict[tuple[str, ...], set[frozenset[tuple[str, str]]]]


class Inhibitor:
    """`inhibited` for many targets against one set of sources, in O(sources + targets) per rule
    instead of O(sources × targets): each rule indexes its matching sources by their `equal`
    labels once (1,000 firing alerts with 3 rules took 6 s per flush the quadratic way).
    Agrees with `inhibited` — a property test holds the two together."""

    __slots__ = ("_index",)

    def __init__(self, sources: Iterable[Mapping[str, str]], rules: Sequence[InhibitRule]) -> None:
        srcs = [(s, frozenset(s.items())) for s in sources]
        # per rule: the equal-label values of its sources -> the distinct label sets having them
        self._index: list[tuple[InhibitRule, _SourcesByKey]] = []
        for rule in rules:
            by_key: _SourcesByKey = {}
            for src, items in srcs:
                if matches(src, rule.source_match, rule.source_match_re):
                    by_key.setdefault(tuple(src.get(k, "") for k in rule.equal), set()).add(items)
            self._index.append((rule, by_key))

    def __call__(self, target: Mapping[str, str]) -> bool:
        items: frozenset[tuple[str, str]] | None = None
        for rule, by_key in self._index:
            if not by_key or not matches(target, rule.target_match, rule.target_match_re):
                continue
            found = by_key.get(tuple(target.get(k, "") for k in rule.equal))
            if not found:
                continue
            if items is None:
                items = frozenset(target.items())
            # an alert never inhibits itself: some other label set must be among the sources
            if len(found) > 1 or items not in found:
                return True
        return False


@dataclass
class Pipeline:
    outbox: Outbox
    silences: SilenceStore
    external_url: str = ""
    generator_base: str = ""
    resend_delay: float = 60.0
    view: AlertView | None = None

    rules: RuleSet | None = None
    routes: list[tuple[str, Route]] = field(default_factory=list)
    receivers: dict[str, Receiver] = field(default_factory=dict)
    inhibit_rules: list[InhibitRule] = field(default_factory=list)
    exprs: dict[tuple[str, str], str] = field(default_factory=dict)
    tracked: dict[str, Tracked] = field(default_factory=dict)  # by incident id
    groups: dict[str, GroupState] = field(default_factory=dict)
    log: dict[tuple[str, str], LogEntry] = field(default_factory=dict)
    escalated: dict[tuple[str, str, int], bool] = field(default_factory=dict)
    am_sent: dict[str, tuple[float, frozenset[tuple[str, str]]]] = field(default_factory=dict)
    # Action notes read back at start, by incident, until the alert they belong to is tracked;
    # and every incident that has notes in the database (what `prune` may have to delete).
    restored_notes: dict[str, list[ActionNote]] = field(default_factory=dict)
    noted: set[str] = field(default_factory=set)
    # Incidents announced under a v0.1.0 log entry (keyed by series fingerprint, when PagerDuty's
    # dedup_key was the fingerprint too): their resolve also goes to the fingerprint's key.
    legacy: set[str] = field(default_factory=set)
    changes: int = 0  # alert events observed: between intervals a group looks again only then

    async def load(self, tx: Tx) -> None:
        self.log.update(await tx.notify_log.load())
        self.escalated.update(await tx.escalations.load())
        for inc, note in await tx.action_notes.load():
            self.noted.add(inc)
            notes = self.restored_notes.setdefault(inc, [])
            notes.append(ActionNote.model_validate_json(note))
            del notes[:-KEEP_NOTES]

    # ---- inputs --------------------------------------------------------------------------

    def set_rules(self, rules: RuleSet) -> None:
        self.rules = rules
        self.routes = [(route_id(r), r) for r in rules.routes]
        self.receivers = rules.receivers
        self.inhibit_rules = rules.inhibit_rules
        self.exprs = {}
        for _, g in rules.groups():
            for r in g.alerting_rules:
                self.exprs.setdefault((g.name, r.alert), r.expr)

    def seed(self, alerts: Iterable[Alert]) -> None:
        """After a restart: the alerts the engine restored. The persisted log says what was
        already notified, so nothing is sent twice; what was not yet sent, is."""
        for a in alerts:
            if a.state in ("firing", "inactive") and a.incident_id not in self.tracked:
                self.tracked[a.incident_id] = self._track(a)
        self.changes += 1

    def sync(self, alerts: Iterable[Alert]) -> None:
        """Alerts of groups another replica evaluates, as read from the store: the same input
        as their events would have been (a new incident tracked, a known one updated)."""
        for a in alerts:
            if a.state == "pending":
                continue
            t = self.tracked.get(a.incident_id)
            if t is None:
                self.tracked[a.incident_id] = self._track(a)
            elif t.alert == a:
                continue
            else:
                t.alert = a
            self.changes += 1

    def observe(self, events: Sequence[Event]) -> None:
        for e in events:
            a = e.alert
            if e.kind == "pending":
                continue
            self.changes += 1
            t = self.tracked.get(a.incident_id)
            if t is None:
                # A series that fires again is a new incident tracked beside the old one, which
                # stays until its resolution has been told.
                self.tracked[a.incident_id] = self._track(a)
            else:
                t.alert = a

    def _track(self, a: Alert) -> Tracked:
        """A newly tracked alert, with what the actions did for its incident before a restart."""
        return Tracked(a, notes=self.restored_notes.pop(a.incident_id, []))

    def note_action(self, ev: ActionEvent) -> Tracked | None:
        t = self._find(ev.labels)
        if t is not None:
            note = ActionNote(action=ev.action, kind=ev.kind, at=ev.at, step=ev.step,
                              detail=ev.detail, run_id=ev.run_id)
            t.notes.append(note)
            del t.notes[:-KEEP_NOTES]
        return t

    async def _save_note(self, tx: Tx, t: Tracked) -> None:
        """Persist the note just added to `t`, keeping only the last KEEP_NOTES per incident."""
        inc = t.alert.incident_id
        await tx.action_notes.add(inc, t.notes[-1].model_dump_json(), KEEP_NOTES)
        self.noted.add(inc)

    def _find(self, labels: Mapping[str, str]) -> Tracked | None:
        """The series' current incident: the one still active, else the latest."""
        fps = {fingerprint(labels), fingerprint(labels, exclude=("severity",))}
        found = [t for t in self.tracked.values() if t.alert.fingerprint in fps]
        if not found:
            bare = {k: v for k, v in labels.items() if k != "severity"}
            found = [t for t in self.tracked.values()
                     if {k: v for k, v in t.alert.labels.items() if k != "severity"} == bare]
        return max(found, key=lambda t: (t.alert.state != "inactive", t.alert.active_at),
                   default=None)

    # ---- helpers -------------------------------------------------------------------------

    def _integration(self, receiver: str) -> str:
        r = self.receivers.get(receiver)
        return integration_of(r) if r is not None else "unknown"

    def _doc(self, t: Tracked) -> AlertDoc:
        a = t.alert
        url = make_generator_url(self.generator_base, self.exprs.get((a.group, a.rule)))
        return alert_doc(a, generator=url, acked=self.silences.acked(a.incident_id),
                         actions=t.notes, series_dedup=a.incident_id in self.legacy)

    def _refresh(self) -> None:
        """Take current values of firing alerts from the engine, so a repeat shows today's
        value; transitions still come only from events."""
        if self.view is None or not self.tracked:
            return
        # One pass over the view (not `find` per alert, which is linear itself).
        current = {(a.rule, a.fingerprint): a for a in self.view.alerts()
                   if a.state == "firing"}
        for t in self.tracked.values():
            if t.alert.state != "firing":
                continue
            fresh = current.get((t.alert.rule, t.alert.fingerprint))
            if fresh is not None and fresh.incident_id == t.alert.incident_id:
                t.alert = fresh

    def _retention(self) -> float:
        longest = max((r.group_wait + r.group_interval for _, r in self.routes), default=0.0)
        return max(RESOLVED_RETENTION, longest + 60.0)

    def suppressed(self, at: float) -> dict[str, str]:
        """Firing alerts muted now, with the reason (silence id or "inhibited")."""
        firing = [t.alert for t in self.tracked.values() if t.alert.state == "firing"]
        out: dict[str, str] = {}
        inhibits = (Inhibitor([a.labels for a in firing], self.inhibit_rules)
                    if self.inhibit_rules else None)
        for a in firing:
            s = self.silences.muted(a.labels, at)
            if s is not None:
                out[a.fingerprint] = f"silenced by {s.id}"
            elif inhibits is not None and inhibits(a.labels):
                out[a.fingerprint] = "inhibited"
        return out

    # ---- the flush -------------------------------------------------------------------------

    async def flush(self, tx: Tx, at: float) -> int:
        """Decide every notification due at `at` and write them, with the notification log and
        the escalation levels they advance, through `tx`.

        Memory follows the decision at once rather than at commit: another flush may run
        before this transaction commits (PostgreSQL runs groups' transactions concurrently),
        and it must not decide the same notification again. If the transaction rolls back,
        the caller reloads the persisted log (`reload_log`)."""
        self._refresh()
        self.expire(at)

        muted = self.suppressed(at)
        # Between its intervals a group can only have news (a new incident, its all-clear) after
        # an alert event or a change of what is muted: the flush every second skips it otherwise.
        now_seen = (self.changes, frozenset(muted))
        entries: list[Entry] = []
        log_updates: dict[tuple[str, str], LogEntry | None] = {}
        esc_updates: dict[tuple[str, str, int], bool] = {}
        live_groups: set[str] = set()

        for rid, route in self.routes:
            if route.digest is not None:
                continue  # told once a day, by the digest
            members = [t for t in self.tracked.values()
                       if matches(t.alert.labels, route.match, route.match_re)]
            by_group: dict[str, tuple[dict[str, str], list[Tracked]]] = {}
            for t in members:
                gl = group_labels(route, t.alert.labels)
                key = f"{rid}:{format_labels(gl)}"
                by_group.setdefault(key, (gl, []))[1].append(t)
            for key, (gl, ts) in by_group.items():
                live_groups.add(key)
                st = self.groups.get(key)
                if st is None:
                    # A group its receivers believe is firing (a restart) is not new to them;
                    # one that went quiet before starts afresh, with its group_wait.
                    told = any(bool(e.firing) for e in (self.log.get((r, key))
                                                        for r in route.receivers) if e)
                    st = self.groups[key] = GroupState(key, gl, at + route.group_wait, at, told)
                due = at >= st.next_flush
                if not due and (not st.flushed or st.seen == now_seen):
                    continue  # group_wait (gathering its first alerts), or nothing happened
                if due:
                    st.next_flush, st.flushed = at + route.group_interval, True
                st.seen = now_seen
                for receiver in dict.fromkeys(route.receivers):
                    if self._integration(receiver) == "alertmanager":
                        continue  # Alertmanager groups by itself: see _alertmanager
                    self._flush_group(receiver, route, st, ts, muted, at, entries,
                                      log_updates, due=due)
            if route.escalate:
                self._escalate(rid, route, members, muted, at, entries, esc_updates)

        for key in [k for k in self.groups if k not in live_groups]:
            del self.groups[key]
        self._alertmanager(at, entries)

        if not entries and not log_updates and not esc_updates:
            return 0
        for (receiver, key), entry in log_updates.items():
            if entry is None:
                self.log.pop((receiver, key), None)
            else:
                self.log[(receiver, key)] = entry
        self.escalated.update(esc_updates)
        gone = [k for k, v in log_updates.items() if v is None]
        if gone:
            await tx.notify_log.delete(gone)
        for (receiver, key), entry in log_updates.items():
            if entry is not None:
                await tx.notify_log.put(receiver, key, entry)
        for k, resolved_sent in esc_updates.items():
            if resolved_sent:
                await tx.escalations.mark_resolved(k)
            else:
                await tx.escalations.add(k, at)
        return await self.outbox.enqueue(entries, tx) if entries else 0

    def expire(self, at: float) -> None:
        """Forget incidents resolved longer ago than anything could still say about them."""
        retention = self._retention()
        for inc in [inc for inc, t in self.tracked.items()
                    if t.alert.state == "inactive" and t.alert.resolved_at is not None
                    and at - t.alert.resolved_at > retention]:
            del self.tracked[inc]

    async def reload_log(self, tx: Tx) -> None:
        """After a transaction that flushed was rolled back: memory back to what is stored."""
        self.log = await tx.notify_log.load()
        self.escalated = await tx.escalations.load()
        for st in self.groups.values():
            st.seen = None  # what was decided is undone: look again

    def _told(self, entry: LogEntry | None, ts: Sequence[Tracked]) -> dict[str, str]:
        """What the receiver was told is firing, by incident id. A v0.1.0 log names series
        fingerprints: such an entry means the oldest incident of that series in the group."""
        if entry is None:
            return {}
        told: dict[str, str] = {}
        for k, sev in entry.firing.items():
            if "@" in k:  # an incident id is "<fingerprint>@<activeAt>"
                told[k] = sev
                continue
            same = [t.alert for t in ts if t.alert.fingerprint == k]
            if same:
                inc = min(same, key=lambda a: a.active_at).incident_id
                told[inc] = sev
                self.legacy.add(inc)
        return told

    def _unannounced(self, a: Alert, entry: LogEntry | None, st: GroupState, at: float
                     ) -> bool:
        """A resolved incident its receiver was not told about: it fired, is not silenced, and
        ended after the last message (or, before any message, fired since the group began)."""
        if a.fired_at is None:
            return False
        if entry is not None:
            ended_since = (a.resolved_at if a.resolved_at is not None else at) > entry.sent_at
        else:
            ended_since = a.fired_at >= st.created
        return ended_since and self.silences.muted(a.labels, at) is None

    def _flush_group(self, receiver: str, route: Route, st: GroupState, ts: list[Tracked],
                     muted: Mapping[str, str], at: float, entries: list[Entry],
                     log_updates: dict[tuple[str, str], LogEntry | None], *, due: bool
                     ) -> None:
        key = st.key
        entry = self.log.get((receiver, key))
        firing = {t.alert.incident_id: t for t in ts
                  if t.alert.state == "firing" and t.alert.fingerprint not in muted}
        resolved = {t.alert.incident_id: t for t in ts if t.alert.state == "inactive"}
        sev = {inc: t.alert.labels.get("severity", t.alert.severity or "")
               for inc, t in firing.items()}
        prev = self._told(entry, ts)
        new = [inc for inc in firing if inc not in prev]
        if not due and firing and not new:
            return
        up = [inc for inc in firing if inc in prev and severity_rank(sev[inc] or None)
              > severity_rank(prev[inc] or None)]
        gone_resolved: list[str] = []
        unannounced: list[str] = []
        if route.send_resolved:
            # Resolved alerts are not filtered by silences or inhibition (Alertmanager would): a
            # page that went out must be closed, or it stays open in PagerDuty forever.
            gone_resolved = [inc for inc in prev if inc in resolved]
            # Fired and over before this receiver heard of it (group_wait, a silence): told once.
            # Once means: after the last message to it, or (first message) since the group began.
            unannounced = [inc for inc, t in resolved.items()
                           if inc not in prev and self._unannounced(t.alert, entry, st, at)]
        if not due and not (new or (not firing and (gone_resolved or unannounced))):
            return  # neither a new incident nor the group's all-clear: group_interval

        kind: Kind | None = None
        previous_severity = None
        if new:
            kind = "firing"
        elif up:
            kind, previous_severity = "escalated", prev[up[0]] or None
        elif gone_resolved or unannounced:
            kind = "resolved"
        elif (firing and entry is not None and at - entry.sent_at >= route.repeat_interval
              and not all(self.silences.acked(t.alert.incident_id) for t in firing.values())):
            kind = "repeated"

        if kind is None:
            if prev != sev:  # silently follow: a re-fire after this is new again
                log_updates[(receiver, key)] = LogEntry(sev, entry.sent_at if entry else at)
            return
        docs = [self._doc(t) for t in firing.values()]
        docs += [self._doc(resolved[inc]) for inc in gone_resolved + unannounced]
        entries.append(Entry(Notification(
            kind=kind, receiver=receiver, group_key=key, created_at=at, group_labels=st.labels,
            alerts=tuple(docs), external_url=self.external_url,
            previous_severity=previous_severity)))
        # Kept even when nothing fires any more: `sent_at` is what "told once" counts from.
        log_updates[(receiver, key)] = LogEntry(sev, at)

    def _escalate(self, rid: str, route: Route, members: list[Tracked],
                  muted: Mapping[str, str], at: float, entries: list[Entry],
                  esc_updates: dict[EscalationKey, bool]) -> None:
        for t in members:
            a = t.alert
            inc = a.incident_id
            if a.state == "inactive":
                if not route.send_resolved:
                    continue
                for level, esc in enumerate(route.escalate):
                    k = (inc, rid, level)
                    if self.escalated.get(k) is False and k not in esc_updates:
                        self._escalation_entries(t, esc.receivers, rid, level, None, at,
                                                 entries, resolved=True)
                        esc_updates[k] = True
                continue
            if (a.state != "firing" or a.fingerprint in muted
                    or self.silences.acked(inc)):
                continue
            since = a.fired_at if a.fired_at is not None else a.active_at
            for level, esc in enumerate(route.escalate):
                k = (inc, rid, level)
                if at - since < esc.after or k in self.escalated or k in esc_updates:
                    continue
                self._escalation_entries(t, esc.receivers, rid, level, esc.after, at, entries,
                                         resolved=False)
                esc_updates[k] = False

    def _escalation_entries(self, t: Tracked, receivers: list[str], rid: str, level: int,
                            after: float | None, at: float, entries: list[Entry], *,
                            resolved: bool) -> None:
        doc = self._doc(t)
        for receiver in dict.fromkeys(receivers):
            key = f"{rid}:escalation:{level}:{t.alert.fingerprint}"
            n = Notification(kind="resolved" if resolved else "escalated", receiver=receiver,
                             group_key=key, created_at=at, alerts=(doc,),
                             external_url=self.external_url, level=None if resolved else level + 2,
                             escalated_after=after)
            tag = "resolved" if resolved else "escalated"
            entries.append(Entry(n, dedup_key=f"{tag}:{t.alert.incident_id}:{rid}:{level}:"
                                              f"{receiver}"))

    def _alertmanager(self, at: float, entries: list[Entry]) -> None:
        """Prometheus's sender: every alert routed to an Alertmanager receiver, firing or
        resolved within the retention, re-sent every `resend_delay` and on every change.
        Silences and inhibition are left to Alertmanager, which has its own."""
        targets: dict[str, list[Tracked]] = {}
        for _, route in self.routes:
            if route.digest is not None:
                continue
            names = [r for r in route.receivers if self._integration(r) == "alertmanager"]
            if not names:
                continue
            for t in self.tracked.values():
                if matches(t.alert.labels, route.match, route.match_re):
                    for n in names:
                        lst = targets.setdefault(n, [])
                        if t not in lst:
                            lst.append(t)
        for receiver, ts in targets.items():
            docs = [self._doc(t) for t in ts if t.alert.state in ("firing", "inactive")]
            sig = frozenset((d.fingerprint + d.incident_id, d.status) for d in docs)
            last = self.am_sent.get(receiver)
            if not docs:
                continue
            if last is not None and last[1] == sig and at - last[0] < self.resend_delay:
                continue
            kind: Kind = "firing" if any(d.status == "firing" for d in docs) else "resolved"
            entries.append(Entry(Notification(
                kind=kind, receiver=receiver, group_key=f"alertmanager:{receiver}",
                created_at=at, alerts=tuple(docs), external_url=self.external_url),
                supersede=True))
            self.am_sent[receiver] = (at, sig)

    # ---- actions and acks ---------------------------------------------------------------

    async def notify_action(self, tx: Tx, ev: ActionEvent, at: float) -> int:
        if ev.page:
            return await self.page(tx, ev, at)
        if ev.kind == "report":
            return await self.report(tx, ev, at)
        t = self.note_action(ev)
        if t is not None:
            await self._save_note(tx, t)
        if ev.kind not in NOTIFIED_ACTION_KINDS or (ev.step is not None and ev.kind != "failed"):
            return 0
        labels = dict(ev.labels)
        if ev.rule and "alertname" not in labels:
            labels["alertname"] = ev.rule
        page = bool(ev.extra.get("page")) and ev.kind in ("failed", "not_helped")
        if page:
            # Automation gave up: a critical notification, routed as a critical alert would be
            # (PagerDuty: a trigger that pages, not a change event).
            labels["severity"] = "critical"
        if self.silences.muted(labels, at) is not None:
            return 0
        note = ActionNote(action=ev.action, kind=ev.kind, at=ev.at, step=ev.step,
                          detail=ev.detail, run_id=ev.run_id, page=page)
        docs = (self._doc(t),) if t is not None else ()
        entries = []
        for rid, route in self.routes:
            if route.digest is not None or not matches(labels, route.match, route.match_re):
                continue
            for receiver in dict.fromkeys(route.receivers):
                if self._integration(receiver) == "alertmanager":
                    continue  # Alertmanager only takes alerts
                n = Notification(kind="action", receiver=receiver,
                                 group_key=f"{rid}:action:{ev.action}", created_at=at,
                                 alerts=docs, external_url=self.external_url, action=note,
                                 action_labels=labels)
                dedup = (f"action:{ev.run_id}:{ev.step or ''}:{ev.kind}:{receiver}"
                         + (":page" if page else "") if ev.run_id else None)
                entries.append(Entry(n, dedup_key=dedup))
        if not entries:
            return 0
        return await self.outbox.enqueue(entries, tx)

    async def page(self, tx: Tx, ev: ActionEvent, at: float) -> int:
        """Something that is not a rule's alert but must page (a deploy that failed its
        verification): one firing alert with `severity: critical` (whatever the event's labels
        say) to every route its labels match, at once — no group_wait, a decision already
        waited its window — and never resolved by us (the person paged closes it). The
        outbox's dedup key (the event's `run_id` per receiver) makes it one page, however
        often the decision is retried. Silences apply; Alertmanager receivers and digest
        routes get none (they take only the rules' alerts)."""
        labels = {**ev.labels, "severity": "critical"}
        labels.setdefault("alertname", ev.rule or ev.action)
        if self.silences.muted(labels, at) is not None:
            return 0
        key = ev.run_id or fingerprint(labels)
        annotations = {"summary": ev.detail.split("\n", 1)[0][:300], "description": ev.detail}
        doc = AlertDoc(fingerprint=fingerprint(labels), rule=labels["alertname"],
                       group=ev.action, labels=labels, annotations=annotations,
                       status="firing", starts_at=ev.at, fired_at=ev.at, severity="critical",
                       incident_id=key)
        entries = []
        for rid, route in self.routes:
            if route.digest is not None or not matches(labels, route.match, route.match_re):
                continue
            for receiver in dict.fromkeys(route.receivers):
                if self._integration(receiver) == "alertmanager":
                    continue
                n = Notification(kind="firing", receiver=receiver,
                                 group_key=f"{rid}:page:{key}", created_at=at,
                                 group_labels={"alertname": labels["alertname"]},
                                 alerts=(doc,), external_url=self.external_url)
                entries.append(Entry(n, dedup_key=f"page:{key}:{receiver}"))
        if not entries:
            return 0
        return await self.outbox.enqueue(entries, tx)

    async def report(self, tx: Tx, ev: ActionEvent, at: float) -> int:
        """A deploy report (`ev.extra["report"]`) as one chat message per receiver of every
        route its labels match, at once, deduplicated by the event's `run_id` per receiver:
        posted once however often the caller retries. Silences apply; PagerDuty and
        Alertmanager receivers and digest routes get none (a report is not an alert)."""
        doc = ReportDoc.model_validate(ev.extra.get("report", {}))
        labels = dict(ev.labels)
        if self.silences.muted(labels, at) is not None:
            return 0
        entries = []
        for rid, route in self.routes:
            if route.digest is not None or not matches(labels, route.match, route.match_re):
                continue
            for receiver in dict.fromkeys(route.receivers):
                if self._integration(receiver) in ("alertmanager", "pagerduty"):
                    continue
                n = Notification(kind="report", receiver=receiver,
                                 group_key=f"{rid}:report:{doc.id}", created_at=at,
                                 external_url=self.external_url, report=doc,
                                 action_labels=labels)
                entries.append(Entry(n, dedup_key=f"report:{ev.run_id}:{receiver}"))
        if not entries:
            return 0
        return await self.outbox.enqueue(entries, tx)

    def firing_matching(self, matchers: Sequence[Matcher]) -> list[Alert]:
        return [t.alert for t in self.tracked.values()
                if t.alert.state == "firing" and matches_all(matchers, t.alert.labels)]

    async def ack(self, tx: Tx, matchers: Sequence[Matcher], at: float, created_by: str = "",
                  comment: str = "") -> list[Alert]:
        alerts = self.firing_matching(matchers)
        await self.silences.ack((Ack(a.incident_id, a.fingerprint, dict(a.labels), at,
                                     created_by, comment) for a in alerts), tx)
        return alerts

    async def prune(self, tx: Tx, at: float) -> None:
        """Forget what can no longer matter: escalations and action notes of incidents that are
        gone (an incident id never recurs), expired silences, acks of resolved incidents, old
        rows."""
        live = set(self.tracked)
        self.legacy &= live
        gone = sorted(self.noted - live)
        if gone:
            await tx.action_notes.delete(gone)
            self.noted.difference_update(gone)
        for inc in [inc for inc in self.restored_notes if inc not in live]:
            del self.restored_notes[inc]
        old = [k for k in self.escalated if k[0] not in live]
        if old:
            await tx.escalations.delete(old)
            for k in old:
                del self.escalated[k]
        # Log entries of groups that no longer exist (a route edited away, alerts long gone).
        stale = [k for k, e in self.log.items()
                 if k[1] not in self.groups and e.sent_at < at - KEEP_ESCALATIONS]
        if stale:
            await tx.notify_log.delete(stale)
            for key in stale:
                del self.log[key]
        await self.silences.prune(at, keep=live, tx=tx)
        await self.outbox.prune(at, tx)
