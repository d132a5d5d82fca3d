"""Alertmanager's API v2, the subset that `amtool` (0.25) and Grafana's Alertmanager data source
use, so operators can point their usual tools at the watchdog: `GET /api/v2/status`,
`GET /api/v2/receivers`, `GET /api/v2/alerts` and `/api/v2/alerts/groups` (with `filter`,
`active`, `silenced`, `inhibited`, `receiver`), `GET|POST /api/v2/silences`,
`GET|DELETE /api/v2/silence/{id}`.

What it shows: the watchdog's firing alerts as an Alertmanager would hold them, each with the
receivers its routes name and whether a silence or an inhibit rule mutes it. Silences created
here are the watchdog's own: they go through the notification handler's silence commands (the
same store and validation as `/api/v1/silences`). Filters use Alertmanager's matcher syntax
(`name="value"`, `!=`, `=~`, `!~`), regexes Go's RE2 through `watchdog.labels`.

What it must not do: keep state of its own, decide anything about notifications, or import the
daemon or the notification package. It reads them through the Protocols below, so a build
without notifications still lists alerts (the silence endpoints then answer 503). Silence and
inhibition are computed with the same matching as the notification pipeline (tests cross-check
the two). Errors are JSON strings, as Alertmanager's are: go-swagger clients such as amtool
decode an error body into a string. The write routes (POST, DELETE) sit behind the API token
like every other write route (`watchdog.http_api`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote, urlsplit, urlunsplit

import yaml
from aiohttp import web

from watchdog import __version__
from watchdog.durations import format_duration
from watchdog.labels import RegexError, alertmanager_match, alertmanager_regexp, go_regexp, matches
from watchdog.model import InhibitRule, Route
from watchdog.rulesdir import RuleSet
from watchdog.settings import Settings
from watchdog.state import Alert
from watchdog.webinput import BadInput, read_json

# Prometheus sends a firing alert with endsAt = now + 4 × max(evaluation interval, resend delay),
# as the `alertmanager` receiver does (watchdog.notify.receivers.alertmanager).
RESEND_FACTOR = 4

# The bound the silence API puts on a regex (watchdog.notify.silences.MAX_REGEX_LENGTH): RE2 needs
# memory in proportion to a pattern before it can refuse it, and these filters need no token.
MAX_REGEX_LENGTH = 4096

# Go's `\s` (ASCII), which Alertmanager's matcher grammar strips around each token.
_GO_SPACE = "\t\n\f\r "
_MATCHER_HEAD = re.compile(r"[\t\n\f\r ]*([a-zA-Z_:][a-zA-Z0-9_:]*)[\t\n\f\r ]*(=~|=|!=|!~)"
                           r"[\t\n\f\r ]*")
# go-swagger's swag.ConvertBool: these are true, anything else is false (never an error).
_TRUE = frozenset({"true", "1", "yes", "ok", "y", "on", "selected", "checked", "t", "enabled"})


# ---- what the API reads -------------------------------------------------------------------------


@runtime_checkable
class SilenceCommands(Protocol):
    """The notification handler's silence commands (`watchdog.notify.api.Api`), speaking the
    JSON of `/api/v1/silences`; bad input raises ValueError with a message for the caller."""

    async def silence(self, body: Mapping[str, Any]) -> dict[str, Any]: ...

    async def unsilence(self, body: Mapping[str, Any]) -> dict[str, Any]: ...

    def list_silences(self) -> list[dict[str, Any]]: ...


class Watched(Protocol):
    """What the API reads from the daemon (`watchdog.daemon.Daemon` provides it)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def rules(self) -> RuleSet: ...

    @property
    def started_at(self) -> float | None: ...

    @property
    def handlers(self) -> Sequence[object]: ...

    @property
    def clock(self) -> Callable[[], float]: ...

    def alerts(self) -> list[Alert]: ...


def silence_commands(d: Watched) -> SilenceCommands | None:
    """The silence commands of the loaded notification handler (its `api`), if one is loaded."""
    for h in d.handlers:
        api = getattr(h, "api", None)
        if isinstance(api, SilenceCommands):
            return api
    return None


# ---- matchers -----------------------------------------------------------------------------------


class MatcherError(ValueError):
    """A filter Alertmanager would refuse; `str()` is Alertmanager's message."""


@dataclass(frozen=True)
class AmMatcher:
    """One Alertmanager matcher: `name op "value"`."""

    name: str
    op: str  # "=", "!=", "=~", "!~"
    value: str

    @property
    def is_regex(self) -> bool:
        return self.op in ("=~", "!~")

    @property
    def is_equal(self) -> bool:
        return self.op in ("=", "=~")

    @classmethod
    def from_json(cls, m: Mapping[str, Any]) -> AmMatcher:
        regex, equal = bool(m.get("isRegex", False)), bool(m.get("isEqual", True))
        op = ("=~" if equal else "!~") if regex else ("=" if equal else "!=")
        return cls(str(m["name"]), op, str(m["value"]))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "isRegex": self.is_regex,
                "isEqual": self.is_equal}

    def __str__(self) -> str:
        """Alertmanager's spelling (`labels.Matcher.String`), e.g. `severity=~"crit.*"`."""
        escaped = self.value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        return f'{self.name}{self.op}"{escaped}"'

    def matches_value(self, value: str) -> bool:
        """The matcher on one label value, as a silence applies it (a missing label is "").
        A pattern stored before regexes moved to RE2 may not compile: it then matches nothing,
        as in the notification pipeline."""
        if self.is_regex:
            try:
                hit = alertmanager_match(self.value, value)
            except RegexError:
                return False
        else:
            hit = value == self.value
        return hit == self.is_equal

    def filters(self, labels: Mapping[str, str]) -> bool:
        """The matcher as an API filter (Alertmanager's `matchFilterLabels`). Its special cases
        for an empty value (`x=""` accepts a missing label, `x!=""` an empty one) only say
        that an empty label is a missing one, which `labels.get(name, "")` says already."""
        return self.matches_value(labels.get(self.name, ""))


def parse_matcher(text: str) -> AmMatcher:
    """One matcher in Alertmanager's syntax (`labels.ParseMatcher` of Alertmanager 0.25): a label
    name, one of `=`, `!=`, `=~`, `!~`, and a value, optionally double-quoted, with `\\"`, `\\n`
    and `\\\\` escapes; whitespace around the tokens is ignored. Regexes are Go's, anchored."""
    head = _MATCHER_HEAD.match(text)
    if head is None:
        raise MatcherError(f"bad matcher format: {text}")
    name, op = head.group(1), head.group(2)
    # Go's `\s*((?s).*?)\s*$`: the rest, without trailing whitespace (taken without a regex,
    # whose lazy match would be quadratic on a long run of blanks).
    raw = text[head.end():].rstrip(_GO_SPACE)
    body, expect_quote = (raw[1:], True) if raw.startswith('"') else (raw, False)
    out: list[str] = []
    escaped = False
    last = len(body) - 1
    for i, ch in enumerate(body):
        if escaped:
            escaped = False
            # \n, \" and \\ are escapes; any other backslash stands for itself
            out.append("\n" if ch == "n" else ch if ch in '"\\' else "\\" + ch)
        elif ch == "\\":
            if i < last:
                escaped = True
            else:
                out.append(ch)
        elif ch == '"':
            if not expect_quote or i < last:
                raise MatcherError(f"matcher value contains unescaped double quote: {raw}")
            expect_quote = False
        else:
            out.append(ch)
    if expect_quote:
        raise MatcherError(f"matcher value contains unescaped double quote: {raw}")
    value = "".join(out)
    if op in ("=~", "!~"):
        if len(value) > MAX_REGEX_LENGTH:
            raise MatcherError(f"a regex may be at most {MAX_REGEX_LENGTH} characters long, "
                               f"this one has {len(value)}")
        try:
            alertmanager_regexp(value)
        except RegexError as e:
            raise MatcherError(str(e)) from None
    return AmMatcher(name, op, value)


def parse_filters(texts: Iterable[str]) -> list[AmMatcher]:
    return [parse_matcher(t) for t in texts]


# ---- routing, silences, inhibition, as the pipeline applies them --------------------------------


def receivers_for(labels: Mapping[str, str], routes: Sequence[Route]) -> list[str]:
    """Every receiver of every route that matches (an alert goes to all of them), in order."""
    out: dict[str, None] = {}
    for r in routes:
        if matches(labels, r.match, r.match_re):
            out.update(dict.fromkeys(r.receivers))
    return list(out)


def group_labels(route: Route, labels: Mapping[str, str]) -> dict[str, str]:
    if "..." in route.group_by:  # Alertmanager's "group by every label"
        return dict(labels)
    return {k: labels[k] for k in route.group_by if k in labels}


class Inhibitor:
    """Which firing alert mutes a target (at most one, as Alertmanager reports), with the
    pipeline's rule: a source matches its side, the target its side, the `equal` labels agree,
    and an alert never inhibits itself. The sources of each rule are indexed by their `equal`
    labels once, so marking n alerts costs O(n) per rule, not O(n²)."""

    def __init__(self, sources: Sequence[tuple[str, Mapping[str, str]]],
                 rules: Sequence[InhibitRule]) -> None:
        self.rules: list[tuple[InhibitRule, dict[tuple[str, ...],
                                                 list[tuple[str, Mapping[str, str]]]]]] = []
        for rule in rules:
            index: dict[tuple[str, ...], list[tuple[str, Mapping[str, str]]]] = {}
            for fp, src in sources:
                if matches(src, rule.source_match, rule.source_match_re):
                    key = tuple(src.get(k, "") for k in rule.equal)
                    index.setdefault(key, []).append((fp, src))
            self.rules.append((rule, index))

    def by(self, target: Mapping[str, str]) -> list[str]:
        for rule, index in self.rules:
            if not matches(target, rule.target_match, rule.target_match_re):
                continue
            for fp, src in index.get(tuple(target.get(k, "") for k in rule.equal), ()):
                if src is not target and dict(src) != dict(target):
                    return [fp]
        return []


def inhibited_by(target: Mapping[str, str], sources: Sequence[tuple[str, Mapping[str, str]]],
                 rules: Sequence[InhibitRule]) -> list[str]:
    return Inhibitor(sources, rules).by(target)


@dataclass(frozen=True)
class SilenceView:
    """A silence as the notification API lists it, with its matchers parsed for matching."""

    raw: Mapping[str, Any]
    matchers: tuple[AmMatcher, ...]

    @property
    def id(self) -> str:
        return str(self.raw["id"])

    @property
    def state(self) -> str:
        return str(self.raw.get("status", {}).get("state", "expired"))

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Do the matchers select `labels`? (Whether the silence is in force is `state`.)"""
        return all(m.matches_value(labels.get(m.name, "")) for m in self.matchers)

    def to_json(self) -> dict[str, Any]:
        """Alertmanager's gettableSilence."""
        r = self.raw
        return {"id": self.id, "status": {"state": self.state},
                # the store keeps when a silence was created, not when it was last changed
                "updatedAt": r.get("updatedAt") or r.get("createdAt") or r["startsAt"],
                "comment": r.get("comment", ""), "createdBy": r.get("createdBy", ""),
                "startsAt": r["startsAt"], "endsAt": r["endsAt"],
                "matchers": [m.to_json() for m in self.matchers]}


def silence_views(api: SilenceCommands | None) -> list[SilenceView]:
    if api is None:
        return []
    return [SilenceView(s, tuple(AmMatcher.from_json(m) for m in s.get("matchers", [])))
            for s in api.list_silences()]


@dataclass(frozen=True)
class Marked:
    """A firing alert with what Alertmanager's marker would say about it."""

    alert: Alert
    receivers: list[str]
    silenced_by: list[str]
    inhibited_by: list[str]

    @property
    def state(self) -> str:
        return "suppressed" if self.silenced_by or self.inhibited_by else "active"


def mark(alerts: Iterable[Alert], rules: RuleSet, silences: Sequence[SilenceView]
         ) -> list[Marked]:
    """The firing alerts (pending ones are not sent to an Alertmanager, resolved ones have
    ended), one per fingerprint, with receivers, silences and inhibitions."""
    firing: dict[str, Alert] = {}
    for a in alerts:
        if a.state == "firing":
            firing.setdefault(a.fingerprint, a)
    routes, inhibit_rules = rules.routes, rules.inhibit_rules
    active = [s for s in silences if s.state == "active"]
    inhibitor = Inhibitor([(fp, a.labels) for fp, a in firing.items()], inhibit_rules)
    return [Marked(a, receivers_for(a.labels, routes),
                   sorted(s.id for s in active if s.matches(a.labels)), inhibitor.by(a.labels))
            for a in firing.values()]


@dataclass(frozen=True)
class AlertFilter:
    """`GET /api/v2/alerts`'s query: matchers, the three state switches, a receiver regex."""

    matchers: Sequence[AmMatcher] = ()
    active: bool = True
    silenced: bool = True
    inhibited: bool = True
    receiver: str | None = None  # Go regex, anchored

    def receiver_ok(self, name: str) -> bool:
        return self.receiver is None or alertmanager_match(self.receiver, name)

    def accepts(self, m: Marked) -> bool:
        """Alertmanager's `alertFilter` (the receiver is checked by the caller)."""
        if not self.active and m.state == "active":
            return False
        if not self.silenced and m.silenced_by:
            return False
        if not self.inhibited and m.inhibited_by:
            return False
        return all(x.filters(m.alert.labels) for x in self.matchers)


def parse_alert_filter(getall: Callable[[str], list[str]]) -> AlertFilter:
    """The query, read as go-swagger binds it: the last value of a repeated parameter, an
    empty one as absent."""
    receiver = _last(getall, "receiver") or None
    if receiver is not None:
        if len(receiver) > MAX_REGEX_LENGTH:
            raise MatcherError(f"failed to parse receiver param: a regex may be at most "
                               f"{MAX_REGEX_LENGTH} characters long")
        try:
            alertmanager_regexp(receiver)
        except RegexError as e:
            raise MatcherError(f"failed to parse receiver param: {e}") from None
    return AlertFilter(parse_filters(getall("filter")), _flag(getall, "active"),
                       _flag(getall, "silenced"), _flag(getall, "inhibited"), receiver)


def _last(getall: Callable[[str], list[str]], name: str) -> str:
    values = getall(name)
    return values[-1] if values else ""


def _flag(getall: Callable[[str], list[str]], name: str) -> bool:
    raw = _last(getall, name)
    return True if raw == "" else raw.lower() in _TRUE


# ---- JSON ---------------------------------------------------------------------------------------


def timestamp(t: float) -> str:
    """Alertmanager's time format: RFC 3339 in UTC with milliseconds."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def link_base(settings: Settings) -> str:
    """Where generatorURL links point: EXTERNAL_URL, else the Prometheus URL without its
    credentials (these endpoints need no token, so no password may appear in them)."""
    if settings.external_url:
        return settings.external_url
    try:
        parts = urlsplit(settings.prometheus_url)
    except ValueError:
        return ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def generator_url(base: str, expr: str | None) -> str:
    """Prometheus's generatorURL, the graph page of the rule's expression (the same link the
    notifications carry)."""
    if not base or not expr:
        return ""
    return f"{base.rstrip('/')}/graph?g0.expr={quote(expr, safe='')}&g0.tab=1"


@dataclass(frozen=True)
class AlertJson:
    """Turns marked alerts into Alertmanager's gettableAlert."""

    exprs: Mapping[tuple[str, str], str]
    base: str
    resend: float  # seconds until an Alertmanager would time a firing alert out

    @classmethod
    def of(cls, d: Watched) -> AlertJson:
        exprs: dict[tuple[str, str], str] = {}
        for _, g in d.rules.groups():
            for r in g.alerting_rules:
                exprs.setdefault((g.name, r.alert), r.expr)
        s = d.settings
        return cls(exprs, link_base(s),
                   RESEND_FACTOR * max(s.evaluation_interval, s.resend_delay))

    def __call__(self, m: Marked, now: float) -> dict[str, Any]:
        a = m.alert
        seen = a.last_seen_at if a.last_seen_at is not None else now
        out: dict[str, Any] = {
            "labels": dict(a.labels), "annotations": dict(a.annotations),
            "startsAt": timestamp(a.active_at),  # activeAt, as Prometheus sends it
            "endsAt": timestamp(seen + self.resend), "updatedAt": timestamp(seen),
            "fingerprint": a.fingerprint,
            "receivers": [{"name": r} for r in m.receivers],
            "status": {"state": m.state, "silencedBy": m.silenced_by,
                       "inhibitedBy": m.inhibited_by},
        }
        url = generator_url(self.base, self.exprs.get((a.group, a.rule)))
        if url:
            out["generatorURL"] = url
        return out


# ---- the routing, as an Alertmanager configuration ----------------------------------------------


def _route_matchers(route: Route) -> list[str]:
    out = [str(AmMatcher(k, "=", v)) for k, v in route.match.items()]
    for k, v in route.match_re.items():
        # A `match_re` value is anchored around its source; a pattern that is a whole regex by
        # itself means the same as a matcher, one like `a)|(b` needs the anchors spelled out.
        try:
            go_regexp(v)
            pattern = v
        except RegexError:
            pattern = f"^(?:{v})$"
        out.append(str(AmMatcher(k, "=~", pattern)))
    return out


def config_receivers(rules: RuleSet) -> tuple[str, list[str]]:
    """The root receiver (an integration-less one for alerts no route matches: the watchdog
    sends those nowhere) and every receiver name."""
    names = list(rules.receivers)
    root = "unrouted"
    while root in names:
        root += "_"
    return root, [root, *names]


def alertmanager_config(rules: RuleSet) -> str:
    """The routes, receivers and inhibit rules of the rules folder as Alertmanager configuration
    YAML (what `config.original` holds; Grafana and `amtool config routes` parse it). Every route
    becomes one child route per receiver with `continue: true`, because an alert goes to every
    route that matches. Receivers are shown by name only: their settings may hold secrets.
    Escalations have no Alertmanager equivalent and are left out."""
    root, names = config_receivers(rules)
    children = []
    for r in rules.routes:
        for receiver in dict.fromkeys(r.receivers):
            child: dict[str, Any] = {"receiver": receiver}
            if r.group_by:
                child["group_by"] = list(r.group_by)
            ms = _route_matchers(r)
            if ms:
                child["matchers"] = ms
            child.update({"continue": True, "group_wait": format_duration(r.group_wait),
                          "group_interval": format_duration(r.group_interval),
                          "repeat_interval": format_duration(r.repeat_interval)})
            children.append(child)
    config: dict[str, Any] = {"route": {"receiver": root, "routes": children}}
    inhibit = []
    for ir in rules.inhibit_rules:
        rule: dict[str, Any] = {}
        src = _route_matchers(Route(match=ir.source_match, match_re=ir.source_match_re,
                                    receivers=["-"]))
        tgt = _route_matchers(Route(match=ir.target_match, match_re=ir.target_match_re,
                                    receivers=["-"]))
        if src:
            rule["source_matchers"] = src
        if tgt:
            rule["target_matchers"] = tgt
        if ir.equal:
            rule["equal"] = list(ir.equal)
        inhibit.append(rule)
    if inhibit:
        config["inhibit_rules"] = inhibit
    config["receivers"] = [{"name": n} for n in names]
    head = ("# metrics-watchdog's routing as Alertmanager configuration, for reading only: each "
            "route is one\n# child route per receiver (continue: true); receiver settings and "
            "escalations are not shown.\n")
    return head + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


# ---- HTTP ---------------------------------------------------------------------------------------


NO_SILENCES = ("silences need the notification subsystem (watchdog.notify), which is not "
               "loaded")


def error(status: int, message: str) -> web.Response:
    return web.json_response(message, status=status)


class AlertmanagerApi:
    def __init__(self, d: Watched) -> None:
        self.d = d

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v2/status", self.status),
            web.get("/api/v2/receivers", self.receivers),
            web.get("/api/v2/alerts", self.alerts),
            web.get("/api/v2/alerts/groups", self.alert_groups),
            web.get("/api/v2/silences", self.silences),
            web.post("/api/v2/silences", self.post_silence),
            web.get("/api/v2/silence/{id}", self.silence),
            web.delete("/api/v2/silence/{id}", self.delete_silence),
        ]

    # -- general

    async def status(self, request: web.Request) -> web.Response:
        d = self.d
        started = d.started_at if d.started_at is not None else d.clock()
        unknown = "unknown"  # a Go build's stamps do not exist for a Python package
        return web.json_response({
            "cluster": {"status": "disabled", "peers": []},
            "versionInfo": {"version": __version__, "revision": unknown, "branch": unknown,
                            "buildUser": unknown, "buildDate": unknown, "goVersion": unknown},
            "config": {"original": alertmanager_config(d.rules)},
            "uptime": timestamp(started),
        })

    async def receivers(self, request: web.Request) -> web.Response:
        return web.json_response([{"name": n} for n in config_receivers(self.d.rules)[1]])

    # -- alerts

    def _marked(self, request: web.Request) -> tuple[AlertFilter, list[Marked]]:
        q = request.query
        f = parse_alert_filter(lambda name: q.getall(name, []))
        d = self.d
        return f, mark(d.alerts(), d.rules, silence_views(silence_commands(d)))

    async def alerts(self, request: web.Request) -> web.Response:
        try:
            f, marked = self._marked(request)
        except MatcherError as e:
            return error(400, str(e))
        to_json, now = AlertJson.of(self.d), self.d.clock()
        out = [to_json(m, now) for m in marked
               if (f.receiver is None or any(f.receiver_ok(r) for r in m.receivers))
               and f.accepts(m)]
        out.sort(key=lambda x: x["fingerprint"])
        return web.json_response(out)

    async def alert_groups(self, request: web.Request) -> web.Response:
        """One group per route, receiver and group-by labels, as Alertmanager's dispatcher
        forms them; groups left empty by the filter are not shown."""
        try:
            f, marked = self._marked(request)
        except MatcherError as e:
            return error(400, str(e))
        to_json, now = AlertJson.of(self.d), self.d.clock()
        wanted = [m for m in marked if f.accepts(m)]
        groups: list[dict[str, Any]] = []
        for route in self.d.rules.routes:
            members = [m for m in wanted if matches(m.alert.labels, route.match, route.match_re)]
            if not members:
                continue
            by_labels: dict[tuple[tuple[str, str], ...], list[Marked]] = {}
            for m in members:
                key = tuple(sorted(group_labels(route, m.alert.labels).items()))
                by_labels.setdefault(key, []).append(m)
            for receiver in dict.fromkeys(route.receivers):
                if not f.receiver_ok(receiver):
                    continue
                for key, ms in by_labels.items():
                    groups.append({"labels": dict(key), "receiver": {"name": receiver},
                                   "alerts": [to_json(m, now) for m in sorted(
                                       ms, key=lambda m: (m.alert.active_at,
                                                          m.alert.fingerprint))]})
        groups.sort(key=lambda g: (sorted(g["labels"].items()), g["receiver"]["name"]))
        return web.json_response(groups)

    # -- silences


    async def silences(self, request: web.Request) -> web.Response:
        try:
            wanted = parse_filters(request.query.getall("filter", []))
        except MatcherError as e:
            return error(400, str(e))
        api = silence_commands(self.d)
        if api is None:
            return error(503, NO_SILENCES)
        # Alertmanager's filter on silences: every filter matcher is one of the silence's own
        # (same name, operator and value), not "the silence would mute such an alert".
        out = [s for s in silence_views(api) if all(w in s.matchers for w in wanted)]
        out.sort(key=_silence_order)
        return web.json_response([s.to_json() for s in out])

    async def silence(self, request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        api = silence_commands(self.d)
        if api is None:
            return error(503, NO_SILENCES)
        for s in silence_views(api):
            if s.id == sid:
                return web.json_response(s.to_json())
        return error(404, f"silence {sid} not found")

    async def post_silence(self, request: web.Request) -> web.Response:
        """Create a silence, or replace one: with an `id`, Alertmanager expires that silence
        and creates a new one (unless it could edit it in place; the watchdog always
        replaces), and answers the new id."""
        api = silence_commands(self.d)
        if api is None:
            return error(503, NO_SILENCES)
        try:
            # the one bounded reader: deep nesting, huge numbers or an unknown charset are a
            # 4xx with a message, never a 500
            body = await read_json(request)
        except BadInput as e:
            return error(e.status, f"the request body must be a JSON silence: {e}")
        if not isinstance(body, dict):
            return error(400, "the request body must be a JSON object "
                              "{matchers, startsAt, endsAt, createdBy, comment}")
        previous = body.pop("id", None)
        replaced: SilenceView | None = None
        if previous:
            replaced = next((s for s in silence_views(api) if s.id == previous), None)
            if replaced is None:
                return error(404, f"silence {previous} not found")
        try:
            created = await api.silence(body)
        except ValueError as e:
            return error(400, str(e))
        # Only once the new silence exists: a refused edit leaves the old one in force.
        if replaced is not None and replaced.state != "expired":
            await api.unsilence({"silenceID": replaced.id})
        return web.json_response({"silenceID": created["silenceID"]})

    async def delete_silence(self, request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        api = silence_commands(self.d)
        if api is None:
            return error(503, NO_SILENCES)
        # An unknown id gets Alertmanager's answer, a 500 saying "silence not found": the only
        # error status amtool's client knows for this endpoint (it shows a 404 as "response
        # status code does not match any response statuses").
        if not any(s.id == sid for s in silence_views(api)):
            return error(500, "silence not found")
        try:
            await api.unsilence({"silenceID": sid})
        except ValueError:
            return error(500, "silence not found")  # expired and pruned meanwhile
        return web.Response(status=200)  # Alertmanager answers an empty 200


def _silence_order(s: SilenceView) -> tuple[int, float]:
    """Alertmanager's order: active ones ending soonest, pending ones starting soonest, then
    expired ones, the most recently ended first."""
    state = s.state
    if state == "active":
        return 0, _seconds(s.raw["endsAt"])
    if state == "pending":
        return 1, _seconds(s.raw["startsAt"])
    return 2, -_seconds(s.raw["endsAt"])


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def routes(d: Watched) -> list[web.RouteDef]:
    return AlertmanagerApi(d).routes()
