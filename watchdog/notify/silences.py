"""Silences and acknowledgements: their validation, their matching, and their persistence.

A silence mutes notifications for alerts its matchers select until `endsAt` (Alertmanager's
matcher semantics: `isRegex` is a Go RE2 pattern, fully anchored, `isEqual: false` negates). An
acknowledgement belongs to one incident (an alert instance from activation to resolution): it stops
escalation and repeats for that incident only, so the next incident pages again. Both survive
restarts.

No delivery logic here, and nothing here reads the clock: callers pass `now`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from watchdog import webinput
from watchdog.gocompat import rfc3339_millis
from watchdog.labels import RegexError, alertmanager_match, alertmanager_regexp
from watchdog.storage import SILENCES, Storage, Tx
from watchdog.storage.records import AckRecord, SilenceRecord

# Expired silences and acks of long-resolved incidents are kept this long (for the API's
# history), then deleted so the tables stay small.
KEEP_EXPIRED = 7 * 86400.0


# RE2 needs memory in proportion to a pattern before it can refuse it as too large (some 12 KB
# per `\pL`: a 150 KB pattern takes 1.5 GB), so a pattern from the API is bounded; rule files,
# checked before they are deployed, are not.
MAX_REGEX_LENGTH = 4096


class InputError(ValueError):
    """Bad input from the API or an MQTT command; the message is shown to the caller."""


@dataclass(frozen=True)
class Matcher:
    name: str
    value: str
    is_regex: bool = False
    is_equal: bool = True

    def matches(self, labels: Mapping[str, str]) -> bool:
        v = labels.get(self.name, "")
        if not self.is_regex:
            return (v == self.value) == self.is_equal
        try:
            hit = alertmanager_match(self.value, v)
        except RegexError:
            # Only a silence stored before matching moved to RE2 gets here (Python's re took
            # a lookahead or a backreference): it then mutes nothing, rather than everything.
            return False
        return hit == self.is_equal

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "isRegex": self.is_regex,
                "isEqual": self.is_equal}


def parse_matchers(raw: Any) -> tuple[Matcher, ...]:
    """`[{name, value, isRegex, isEqual}]` (Alertmanager's API), or a `{name: value}` map."""
    if isinstance(raw, Mapping):
        raw = [{"name": k, "value": v} for k, v in raw.items()]
    if not isinstance(raw, list) or not raw:
        raise InputError("matchers must be a non-empty list of {name, value, isRegex}")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, Mapping):
            raise InputError(f"matchers[{i}] must be an object with name and value")
        name, value = m.get("name"), m.get("value")
        if not isinstance(name, str) or not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name):
            raise InputError(f"matchers[{i}].name must be a label name, got {name!r}")
        if not isinstance(value, str):
            raise InputError(f"matchers[{i}].value must be a string")
        is_regex, is_equal = m.get("isRegex", False), m.get("isEqual", True)
        if not isinstance(is_regex, bool) or not isinstance(is_equal, bool):
            raise InputError(f"matchers[{i}]: isRegex and isEqual must be booleans")
        if is_regex:
            if len(value) > MAX_REGEX_LENGTH:
                raise InputError(f"matchers[{i}].value: a regex may be at most "
                                 f"{MAX_REGEX_LENGTH} characters long, this one has {len(value)}")
            try:
                alertmanager_regexp(value)
            except RegexError as e:
                raise InputError(f"matchers[{i}].value: invalid regex {value!r}: {e}") from None
        out.append(Matcher(name, value, is_regex, is_equal))
    # Alertmanager refuses a silence that would match every alert; so do we.
    if all(x.matches({}) for x in out):
        raise InputError("matchers would match every alert (including alerts with no labels)")
    return tuple(out)


def matches_all(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    return all(x.matches(labels) for x in matchers)


def parse_time(value: Any, what: str) -> float:
    """RFC 3339 or Unix seconds, bounded to what RFC 3339 can show again (years 1 to 9999):
    a NaN, an Infinity or 1e20 would be stored and then break every listing."""
    try:
        return webinput.parse_time(value, what)
    except webinput.BadInput as e:
        raise InputError(str(e)) from None


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    starts_at: float
    ends_at: float
    created_by: str
    comment: str
    created_at: float

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def mutes(self, labels: Mapping[str, str], now: float) -> bool:
        return self.active(now) and matches_all(self.matchers, labels)

    def to_json(self, now: float) -> dict[str, Any]:
        state = "active" if self.active(now) else ("pending" if now < self.starts_at
                                                   else "expired")
        return {"id": self.id, "matchers": [x.to_json() for x in self.matchers],
                "startsAt": rfc3339_millis(self.starts_at),
                "endsAt": rfc3339_millis(self.ends_at),
                "createdBy": self.created_by, "comment": self.comment,
                "createdAt": rfc3339_millis(self.created_at), "status": {"state": state}}


def silence_from_request(body: Any, now: float) -> Silence:
    if not isinstance(body, Mapping):
        raise InputError("expected a JSON object {matchers, endsAt, createdBy, comment}")
    matchers = parse_matchers(body.get("matchers"))
    starts = parse_time(body["startsAt"], "startsAt") if body.get("startsAt") else now
    if "endsAt" not in body:
        raise InputError("endsAt is required")
    ends = parse_time(body["endsAt"], "endsAt")
    if ends <= max(starts, now):
        raise InputError("endsAt must be in the future and after startsAt")
    created_by = body.get("createdBy", "")
    comment = body.get("comment", "")
    if not isinstance(created_by, str) or not isinstance(comment, str):
        raise InputError("createdBy and comment must be strings")
    return Silence(str(uuid.uuid4()), matchers, starts, ends, created_by or "unknown", comment,
                   now)


@dataclass(frozen=True)
class Ack:
    incident_id: str
    fingerprint: str
    labels: Mapping[str, str]
    at: float
    created_by: str = ""
    comment: str = ""


@dataclass
class SilenceStore:
    """The silences and acks, in memory for matching and in the storage for restarts.

    Several replicas share the store: each re-reads them every second (`refresh`), which reads
    one small row — the store's count of silence and ack changes — unless that count moved."""

    storage: Storage
    silences: dict[str, Silence] = field(default_factory=dict)
    acks: dict[str, Ack] = field(default_factory=dict)
    version: int | None = None  # the store's count of changes when they were last read
    reads: int = 0  # full reads done (the tests count them)

    async def load(self, *, replace: bool = False) -> None:
        """Read what is stored; `replace`: forget what is no longer there (several replicas
        share the store: another one may have expired, pruned or added some)."""
        await self._read(replace=replace, unless=None)

    async def refresh(self) -> bool:
        """`load(replace=True)` if a silence or an ack changed in the store since the last
        read (through any replica, this one included); whether it read them."""
        return await self._read(replace=True, unless=self.version)

    async def _read(self, *, replace: bool, unless: int | None) -> bool:
        async with self.storage.transaction() as tx:
            # The count first: a change committed between it and the rows is then either in
            # the rows or counted as unseen, read again next time — never missed.
            version = (await tx.versions.get()).get(SILENCES, 0)
            if unless is not None and version == unless:
                return False
            silences = await tx.silences.load()
            acks = await tx.acks.load()
        self.version = version
        self.reads += 1
        if replace:
            self.silences, self.acks = {}, {}
        for r in silences:
            ms = tuple(Matcher(x["name"], x["value"], x.get("isRegex", False),
                               x.get("isEqual", True)) for x in r.matchers)
            self.silences[r.id] = Silence(r.id, ms, r.starts_at, r.ends_at, r.created_by,
                                          r.comment, r.created_at)
        for a in acks:
            self.acks[a.incident_id] = Ack(a.incident_id, a.fingerprint, dict(a.labels), a.at,
                                           a.created_by, a.comment)
        return True

    async def add(self, s: Silence) -> None:
        async with self.storage.transaction() as tx:
            await tx.silences.add(SilenceRecord(
                s.id, [x.to_json() for x in s.matchers], s.starts_at, s.ends_at, s.created_by,
                s.comment, s.created_at))
        self.silences[s.id] = s

    async def expire(self, silence_id: str, now: float) -> Silence | None:
        """Alertmanager's DELETE: the silence ends now (kept, as expired, for the history)."""
        s = self.silences.get(silence_id)
        if s is None:
            return None
        ended = Silence(s.id, s.matchers, min(s.starts_at, now), min(s.ends_at, now),
                        s.created_by, s.comment, s.created_at)
        async with self.storage.transaction() as tx:
            await tx.silences.set_times(s.id, ended.starts_at, ended.ends_at)
        self.silences[s.id] = ended
        return ended

    def muted(self, labels: Mapping[str, str], now: float) -> Silence | None:
        for s in self.silences.values():
            if s.mutes(labels, now):
                return s
        return None

    async def ack(self, acks: Iterable[Ack], tx: Tx | None = None) -> list[Ack]:
        new = [a for a in acks if a.incident_id not in self.acks]
        if not new:
            return []
        records = [AckRecord(a.incident_id, a.fingerprint, dict(a.labels), a.at, a.created_by,
                             a.comment) for a in new]
        if tx is None:
            async with self.storage.transaction() as own:
                await own.acks.add(records)
        else:
            await tx.acks.add(records)
        for a in new:
            self.acks[a.incident_id] = a
        return new

    def acked(self, incident_id: str) -> bool:
        return incident_id in self.acks

    async def prune(self, now: float, keep: Iterable[str] = (), tx: Tx | None = None) -> None:
        """Delete silences expired long ago and acks of incidents not in `keep` (the live ones:
        an incident that lasts a week keeps its ack)."""
        live = set(keep)
        old_s = [k for k, s in self.silences.items() if s.ends_at < now - KEEP_EXPIRED]
        old_a = [k for k, a in self.acks.items() if k not in live and a.at < now - 3600.0]
        if not old_s and not old_a:
            return
        if tx is None:
            async with self.storage.transaction() as own:
                await own.silences.delete(old_s)
                await own.acks.delete(old_a)
        else:
            await tx.silences.delete(old_s)
            await tx.acks.delete(old_a)
        for k in old_s:
            del self.silences[k]
        for k in old_a:
            del self.acks[k]
