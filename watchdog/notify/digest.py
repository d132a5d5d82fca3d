"""The daily digest of a route with `digest:` — the runbooks' "info goes to a daily review": the
route's alerts are not notified one by one; once a day, at the route's time of day in its time
zone, each of its receivers gets one message summarising the day's incidents that match the
route (count, resolved and open, MTTR, the longest, the actions run, and the list).

Pure: `period(at, digest)` says which day a digest sent at `at` covers, `build` makes the
document from incident records. No I/O, no clock (times are arguments); reading the records and
enqueueing the message is the notification handler's. Daylight-saving days are as long as they
are: a period runs from the time of day on one local date to the same time on the next.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from watchdog.labels import matches
from watchdog.model import Digest, Route
from watchdog.notify.message import DigestDoc, DigestItem
from watchdog.storage.records import IncidentRecord

LISTED = 50  # incidents listed in one digest; the rest are counted


def period(at: float, d: Digest) -> tuple[float, float]:
    """(start, end) of the latest period whose end is at or before `at`: the end is the last
    `d.at` local time reached, the start the same time one local date earlier."""
    tz = ZoneInfo(d.timezone)
    h, m = d.hour_minute
    local = datetime.fromtimestamp(at, tz)
    day = local.date()
    end = datetime.combine(day, time(h, m), tzinfo=tz)
    if end.timestamp() > at:
        day -= timedelta(days=1)
        end = datetime.combine(day, time(h, m), tzinfo=tz)
    start = datetime.combine(day - timedelta(days=1), time(h, m), tzinfo=tz)
    return start.timestamp(), end.timestamp()


def scope(route: Route) -> str:
    """The route's matchers as a reader sees them."""
    parts = [f'{k}="{v}"' for k, v in sorted(route.match.items())]
    parts += [f'{k}=~"{v}"' for k, v in sorted(route.match_re.items())]
    return ", ".join(parts) if parts else "all alerts"


def _item(i: IncidentRecord, end: float) -> DigestItem:
    assert i.fired_at is not None
    return DigestItem(
        id=i.id, rule=i.rule, labels=dict(i.labels), severity=i.severity, fired_at=i.fired_at,
        resolved_at=i.resolved_at if i.resolved_at is not None and i.resolved_at < end
        else None, acked_by=(i.ack_by or "someone") if i.ack_at is not None else None,
        actions=tuple(f"{a.name}:{a.status}" for a in i.actions))


def build(route: Route, incidents: Iterable[IncidentRecord], start: float, end: float
          ) -> DigestDoc:
    """The digest of [start, end) for `route`: incidents that fired before `end` and were not
    resolved before `start`, whose labels the route matches. Incidents that never fired are not
    incidents a person had to look at, and are left out."""
    assert route.digest is not None
    mine = [i for i in incidents
            if i.fired_at is not None and i.fired_at < end
            and (i.resolved_at is None or i.resolved_at >= start)
            and matches(i.labels, route.match, route.match_re)]
    items = sorted((_item(i, end) for i in mine), key=lambda x: (-x.fired_at, x.id))
    done = [x for x in items if x.duration is not None]
    longest = max(items, key=lambda x: (x.duration if x.duration is not None
                                        else end - x.fired_at), default=None)
    actions = Counter(a.split(":", 1)[0] for x in items for a in x.actions)
    return DigestDoc(
        scope=scope(route), start=start, end=end, timezone=route.digest.timezone,
        count=len(items), resolved=len(done), open=len(items) - len(done),
        mttr=sum(x.duration or 0.0 for x in done) / len(done) if done else None,
        longest=longest, actions=dict(sorted(actions.items())), items=tuple(items[:LISTED]),
        more=max(0, len(items) - LISTED))
