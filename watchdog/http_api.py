"""The daemon's HTTP interface on aiohttp.web: the status page (`/`, `/status`), probes that
answer JSON with each check, `/metrics`, Prometheus-shaped `/api/v1/rules` and `/api/v1/alerts`,
`/api/v1/status`, `POST /-/reload`, plus the routes that notifications and actions register
through `DaemonContext.routes`.

Shell: it only reads the daemon's live state and calls its `reload`. Every non-GET route —
ours and the handlers' — sits behind `Authorization: Bearer <API_TOKEN>` and refuses outright
when no token is configured. Errors are JSON in Prometheus's shape
(`{"status": "error", "errorType": ..., "error": ...}`). It must never echo a secret: settings
are not served, the datasource URL is shown without its password, and the token comparison is
constant-time.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from watchdog import __version__, am_api, console_api, prom_compat, query_proxy, slo_api
from watchdog.actions.http import SELF_AUTHENTICATED
from watchdog.app.evaluation import RuleError
from watchdog.app.health import BUILTIN_GROUP, DATASOURCE_DOWN
from watchdog.app.rules import ReloadReport
from watchdog.engine import GroupRuntime, RuleRuntime
from watchdog.gocompat import format_float, rfc3339
from watchdog.handlers import DaemonContext
from watchdog.logs import redact  # error text may quote a URL with its password
from watchdog.metrics import Metrics
from watchdog.pause import active as pause_active
from watchdog.pause import notice as pause_notice
from watchdog.rulesdir import FileStatus, RuleSet
from watchdog.schema import SecretStr
from watchdog.settings import Settings
from watchdog.state import Alert
from watchdog.status_page import static_asset, status_page, wants_json
from watchdog.webinput import MAX_BODY_BYTES, BadInput, bearer_token, parse_time

log = structlog.get_logger("watchdog.http")

class Daemon(Protocol):
    """What the HTTP API reads from and asks of the daemon (`watchdog.daemon.Daemon`)."""

    settings: Settings
    ctx: DaemonContext
    plugins: dict[str, str]
    started_at: float | None
    datasource_url: str
    metrics: Metrics

    @property
    def clock(self) -> Callable[[], float]: ...
    @property
    def forwarder(self) -> query_proxy.Forwarder | None: ...
    @property
    def handlers(self) -> Sequence[object]: ...
    @property
    def runtimes(self) -> dict[str, GroupRuntime]: ...
    @property
    def rules(self) -> RuleSet: ...
    @property
    def rules_loaded(self) -> bool: ...
    @property
    def last_reload(self) -> ReloadReport | None: ...
    @property
    def builtin_alerts(self) -> Mapping[str, Alert]: ...
    @property
    def scheduler(self) -> Any: ...
    @property
    def datasource_up(self) -> bool | None: ...
    @property
    def datasource_failures(self) -> int: ...
    @property
    def datasource_error(self) -> str | None: ...
    @property
    def datasource_down_since(self) -> float | None: ...
    def interval(self, rt: GroupRuntime) -> float: ...
    def alerts(self) -> list[Alert]: ...
    def readiness(self) -> tuple[bool, str]: ...
    def healthy(self) -> bool: ...
    def recent_errors(self) -> list[RuleError]: ...
    def replica_status(self) -> tuple[list[dict[str, object]], dict[str, str | None]]: ...
    async def reload(self, trigger: str = "manual") -> ReloadReport: ...


DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HEALTHZ_DOWN = "not running: the scheduler is stopped"

_ERROR_TYPES = {400: "bad_data", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 413: "bad_data", 415: "bad_data", 422: "bad_data",
                503: "unavailable"}


def api_error(status: int, message: str, error_type: str | None = None,
              headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"status": "error", "errorType": error_type or _ERROR_TYPES.get(status, "internal"),
         "error": message}, status=status, headers=headers)


def success(data: Any, status: int = 200, warnings: list[str] | None = None) -> web.Response:
    body: dict[str, Any] = {"status": "success", "data": data}
    if warnings:
        body["warnings"] = warnings
    return web.json_response(body, status=status)


def go_float(v: float | None) -> str:
    """A sample value as Prometheus's API writes it (Go's FormatFloat(v, 'e', -1, 64))."""
    return "NaN" if v is None else format_float(v, "e", -1)


# ---- middlewares ---------------------------------------------------------------------------------


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400 or (e.content_type or "").endswith("json"):
            raise
        if e.status == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif e.status == 405:
            message = f"method {request.method} is not allowed on {request.path}"
        else:
            message = e.text or e.reason
            message = message.removeprefix(f"{e.status}: ")
        return api_error(e.status, message, headers={k: v for k, v in e.headers.items()
                                                     if k.lower() in ("allow",
                                                                      "www-authenticate")})
    except BadInput as e:  # any handler's bad input: its status and one line, never a 500
        return api_error(e.status, str(e))
    except Exception:
        log.exception("HTTP handler failed", method=request.method, path=request.path)
        return api_error(500, "internal error; see the watchdog log", "internal")


def _token_matches(given: bytes, *tokens: SecretStr | None) -> bool:
    # constant-time, and on bytes: a header may carry bytes that are not UTF-8
    return any(hmac.compare_digest(given, t.get_secret_value().encode())
               for t in tokens if t is not None and t.get_secret_value())


def _needs_read_token(path: str) -> bool:
    # The probes, /metrics and the status page itself carry no API data and must stay reachable
    # by kubelets and scrapers that send no token; the page's script sends the token it is given.
    return path.startswith("/api/")


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[DAEMON].settings
    write_token, read_token = settings.api_token, settings.api_read_token
    if (request.method, request.path) in SELF_AUTHENTICATED:
        return await handler(request)  # writes nothing; checks the read token itself
    if request.method in READ_METHODS or query_proxy.is_read(request.method, request.path):
        if request.method == "OPTIONS" or not _needs_read_token(request.path):
            return await handler(request)
        if read_token is None or not read_token.get_secret_value():
            if not (query_proxy.is_proxied(request.path)
                    and query_proxy.lends_credentials(settings)):
                return await handler(request)
            # open reads, but the query would go out with the watchdog's Prometheus
            # credentials: only a holder of the API token may borrow them
            if write_token is None or not write_token.get_secret_value():
                return api_error(403, "the query API forwards the watchdog's Prometheus "
                                      "credentials: set WATCHDOG_API_READ_TOKEN (or "
                                      "WATCHDOG_API_TOKEN) and send it as a bearer token")
            read_token = write_token
        given = bearer_token(request)
        if given is None:
            return api_error(401, "this endpoint needs 'Authorization: Bearer <API_READ_TOKEN>' "
                                  "(or the API token)",
                             headers={"WWW-Authenticate": 'Bearer realm="watchdog"'})
        if not _token_matches(given, read_token, write_token):
            return api_error(403, "invalid API token")
        return await handler(request)
    if write_token is None or not write_token.get_secret_value():
        return api_error(403, "write endpoints are disabled: no API token is configured "
                              "(set WATCHDOG_API_TOKEN)")
    given = bearer_token(request)
    if given is None:
        return api_error(401, "this endpoint needs 'Authorization: Bearer <API_TOKEN>'",
                         headers={"WWW-Authenticate": 'Bearer realm="watchdog"'})
    if not _token_matches(given, write_token):
        return api_error(403, "invalid API token")
    return await handler(request)


# ---- probes and metrics --------------------------------------------------------------------------


def _scheduler_check(d: Daemon) -> dict[str, Any]:
    if d.healthy():
        detail = ("running" if d.scheduler is not None
                  else "running; evaluations are driven by the caller (no scheduler)")
        return {"ok": True, "detail": detail}
    return {"ok": False, "detail": HEALTHZ_DOWN}


def _rules_check(d: Daemon) -> dict[str, Any]:
    if not d.rules_loaded:
        return {"ok": False, "detail": "rules are not loaded yet"}
    rules = sum(len(rt.rules) for rt in d.runtimes.values())
    files = d.rules.status.values()
    rejected = sorted(st.path for st in files if not st.ok)
    detail = (f"{_n(len(d.runtimes), 'group')}, {_n(rules, 'rule')} from "
              f"{_n(len(files) - len(rejected), 'file')} in {d.settings.rules_dir}")
    if rejected:
        detail += (f"; {len(rejected)} rejected (each keeps its last good version, if it had "
                   f"one): {', '.join(rejected)}")
    return {"ok": True, "detail": detail, "groups": len(d.runtimes), "rules": rules,
            "rejectedFiles": rejected}


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _prometheus_check(d: Daemon) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": d.datasource_up is True, "url": d.datasource_url}
    if d.datasource_up is None:
        out["detail"] = f"waiting for Prometheus at {d.datasource_url} to answer"
    elif d.datasource_up:
        out["detail"] = f"Prometheus at {d.datasource_url} answers"
    else:
        since = (f" since {rfc3339(d.datasource_down_since)}"
                 if d.datasource_down_since is not None else "")
        failed = (f"; {d.datasource_failures} consecutive evaluations failed{since}"
                  if d.datasource_failures else "")
        out["detail"] = f"not answering: {redact(d.datasource_error)}{failed}"
    return out


def health_checks(d: Daemon) -> dict[str, dict[str, Any]]:
    """Each check behind the probes, with `ok` and a human `detail`. `/readyz`'s status is
    `Daemon.readiness()` (rules loaded and Prometheus answering); `/healthz`'s is the scheduler
    alone, so an unreachable Prometheus never gets the watchdog restarted."""
    return {"rules": _rules_check(d), "prometheus": _prometheus_check(d),
            "scheduler": _scheduler_check(d)}


async def healthz(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    ok = d.healthy()
    return web.json_response({"status": "healthy" if ok else "unhealthy",
                              "checks": {"scheduler": _scheduler_check(d)},
                              "reason": "ok" if ok else HEALTHZ_DOWN},
                             status=200 if ok else 503)


async def readyz(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    ok, reason = d.readiness()
    return web.json_response({"status": "ready" if ok else "not ready",
                              "checks": health_checks(d), "reason": redact(reason)},
                             status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[DAEMON].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# ---- Prometheus-shaped API ----------------------------------------------------------------------


def alert_json(a: Alert) -> dict[str, Any]:
    out: dict[str, Any] = {
        "labels": dict(a.labels), "annotations": dict(a.annotations), "state": a.state,
        "activeAt": rfc3339(a.active_at), "value": go_float(a.value),
    }
    if a.keep_firing_since is not None:
        out["keepFiringSince"] = rfc3339(a.keep_firing_since)
    if a.fired_at is not None:
        out["firedAt"] = rfc3339(a.fired_at)  # ours: when this incident started firing
    return out


def _rule_state(alerts: list[Alert]) -> str:
    states = {a.state for a in alerts}
    return "firing" if "firing" in states else "pending" if "pending" in states else "inactive"


def rule_json(r: RuleRuntime, with_alerts: bool = True) -> dict[str, Any]:
    active = [a for a in r.alerts.values() if a.state != "inactive"]
    last = r.last
    out: dict[str, Any] = {
        "state": _rule_state(active), "name": r.rule.alert, "query": r.rule.expr,
        "duration": r.rule.for_, "keepFiringFor": r.rule.keep_firing_for,
        "labels": dict(r.rule.labels), "annotations": dict(r.rule.annotations),
        "health": "unknown" if last is None else "err" if last.error else "ok",
        "lastError": redact(last.error or "") if last is not None else "",
        "evaluationTime": last.duration if last is not None else 0.0,
        "lastEvaluation": rfc3339(last.at if last is not None else None),
        "type": "alerting",
        # ours, like vmalert's `updates`: the last evaluations answer "why did/didn't it fire?"
        "history": [{"at": rfc3339(h.at), "duration": h.duration, "samples": h.samples,
                     "hits": h.hits, "error": redact(h.error)} for h in reversed(r.history)],
    }
    if r.rule.threshold is not None:
        out["threshold"] = str(r.rule.threshold)
    if r.rule.severities is not None:
        out["severities"] = {k: str(v) for k, v in r.rule.severities.items()}
    if with_alerts:
        out["alerts"] = [alert_json(a) for a in sorted(active, key=lambda a: a.active_at)]
    return out


def group_json(d: Daemon, rt: GroupRuntime, rules: list[dict[str, Any]]) -> dict[str, Any]:
    out = {"name": rt.group.name, "file": rt.file, "rules": rules,
           "interval": d.interval(rt), "limit": rt.group.limit,
           "evaluationTime": rt.last_duration or 0.0, "lastEvaluation": rfc3339(rt.last_at)}
    source = generated_from(d.rules, rt)
    if source is not None:
        # ours: a group generated from an SLO says where the SLO is written, on the group and
        # on each of its rules (a client may list rules without their groups)
        out["source"] = source
        for r in rules:
            r["source"] = source
    return out


def generated_from(rs: RuleSet, rt: GroupRuntime) -> str | None:
    """`file:line` of the SLO a group was generated from; None for a group written out."""
    pf = rs.files.get(rt.file)
    line = pf.sources.get(rt.group.name) if pf is not None else None
    return None if line is None else f"{rt.file}:{line}"


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise web.HTTPBadRequest(text=f"{name}: expected true or false, got {value!r}")


async def rules(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    q = request.query
    kind = q.get("type", "")
    if kind not in ("", "alert", "record"):
        return api_error(400, f"type: expected 'alert' or 'record', got {kind!r}")
    names = set(q.getall("rule_name[]", []))
    groups_wanted = set(q.getall("rule_group[]", []))
    files_wanted = set(q.getall("file[]", []))
    with_alerts = not _flag(request, "exclude_alerts")
    out: list[dict[str, Any]] = []
    if kind == "record":
        return success({"groups": out})  # recording rules are skipped at load time
    for rt in d.runtimes.values():
        if (groups_wanted and rt.group.name not in groups_wanted) or (
                files_wanted and rt.file not in files_wanted):
            continue
        chosen = [rule_json(r, with_alerts) for r in rt.rules
                  if not names or r.rule.alert in names]
        if chosen or not names:
            out.append(group_json(d, rt, chosen))
    if ((not groups_wanted or BUILTIN_GROUP in groups_wanted) and not files_wanted
            and (not names or DATASOURCE_DOWN in names)):
        out.append(_builtin_group(d, with_alerts))
    return success({"groups": out})


def _builtin_group(d: Daemon, with_alerts: bool) -> dict[str, Any]:
    active = [a for a in d.builtin_alerts.values() if a.state != "inactive"]
    rule: dict[str, Any] = {
        "state": _rule_state(active), "name": DATASOURCE_DOWN,
        "query": f"<built-in: every query failed in {d.settings.datasource_down_after} "
                 "consecutive evaluations>",
        "duration": 0.0, "keepFiringFor": 0.0,
        "labels": {"severity": "critical", "datasource": d.datasource_url}, "annotations": {},
        "health": "ok", "lastError": "", "evaluationTime": 0.0,
        "lastEvaluation": rfc3339(None), "type": "alerting",
    }
    if with_alerts:
        rule["alerts"] = [alert_json(a) for a in active]
    return {"name": BUILTIN_GROUP, "file": "<built-in>", "rules": [rule],
            "interval": d.settings.evaluation_interval, "limit": 0, "evaluationTime": 0.0,
            "lastEvaluation": rfc3339(None)}


async def slos(request: web.Request) -> web.Response:
    """Each SLO with its error budget at `time` (default now): see `watchdog.slo_api`."""
    d = request.app[DAEMON]
    q = request.query
    at = parse_time(q["time"], "time") if "time" in q else d.clock()
    data = await slo_api.budgets(d.rules, d.ctx.source, at,
                                 concurrency=d.settings.evaluation_concurrency,
                                 service=q.get("service"), name=q.get("name"))
    return success(data)


async def alerts(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    active = sorted((a for a in d.alerts() if a.state != "inactive"),
                    key=lambda a: (a.active_at, a.rule))
    return success({"alerts": [alert_json(a) for a in active]})


async def status(request: web.Request) -> web.Response:
    d = request.app[DAEMON]
    ready, reason = d.readiness()
    files = []
    for st in sorted(d.rules.status.values(), key=lambda st: st.path):
        files.append({
            "path": st.path, "status": "loaded" if st.ok else "rejected",
            "runningPrevious": st.running_previous, "digest": st.digest,
            "errors": [str(p) for p in st.problems if not p.warning],
            "warnings": [str(p) for p in st.problems if p.warning],
            "problems": [{"file": p.file, "line": p.line, "message": p.message,
                          "warning": p.warning} for p in st.problems],
        })
    replicas, holders = d.replica_status()
    groups = [{
        "name": rt.group.name, "file": rt.file, "interval": d.interval(rt),
        "replica": holders.get(key),
        "rules": len(rt.rules), "lastEvaluation": rfc3339(rt.last_at),
        "evaluationTime": rt.last_duration, "lastError": redact(rt.last_error),
        "alerts": {s: sum(1 for a in rt.alerts() if a.state == s)
                   for s in ("pending", "firing")},
    } for key, rt in d.runtimes.items()]
    for r in replicas:
        last = r.get("lastSeen")
        r["lastSeen"] = rfc3339(last) if isinstance(last, float) else None
        started = r.get("startedAt")
        r["startedAt"] = rfc3339(started) if isinstance(started, float) else None
        keys = r.get("groups")
        r["groups"] = [runtime_name(d, k) for k in keys] if isinstance(keys, list) else []
    errors = [{"group": e.group, "file": e.file, "rule": e.rule, "error": redact(e.error),
               "since": rfc3339(e.since), "last": rfc3339(e.last), "count": e.count}
              for e in d.recent_errors()]
    paused = None
    if getattr(d.ctx, "storage", None) is not None:
        async with d.ctx.storage.transaction() as tx:
            p = await tx.pause.get()
        if pause_active(p, d.clock()):
            assert p is not None
            paused = {"until": rfc3339(p.until), "reason": p.reason, "by": p.by,
                      "since": rfc3339(p.at), "notice": pause_notice(p)}
    return success({
        "version": __version__, "startedAt": rfc3339(d.started_at),
        "actionsPaused": paused,
        "ready": ready, "readiness": redact(reason),
        "rulesDir": str(d.settings.rules_dir),
        "datasource": {"url": d.datasource_url, "up": d.datasource_up,
                       "consecutiveFailures": d.datasource_failures,
                       "downSince": (rfc3339(d.datasource_down_since)
                                     if d.datasource_down_since is not None else None),
                       "lastError": redact(d.datasource_error)},
        "files": files, "groups": groups, "lastErrors": errors,
        "lastReload": reload_json(d.last_reload) if d.last_reload is not None else None,
        "plugins": d.plugins,
        "replica": d.settings.replica_id, "replicas": replicas,
    })


def runtime_name(d: Any, key: str) -> str:
    """A lease name as the status shows it: the group's name (with its file when the name is
    not unique), or the role."""
    rt = d.runtimes.get(key)
    if rt is None:
        return key
    if sum(1 for o in d.runtimes.values() if o.group.name == rt.group.name) > 1:
        return f"{rt.file}:{rt.group.name}"
    return str(rt.group.name)


def reload_json(r: ReloadReport) -> dict[str, Any]:
    return {"trigger": r.trigger, "at": rfc3339(r.at), "ok": r.ok, "added": r.added,
            "removed": r.removed, "changed": r.changed, "unchanged": len(r.unchanged),
            "resolved": r.resolved, "error": r.error,
            "rejected": [{"path": st.path, "runningPrevious": st.running_previous,
                          "errors": [str(p) for p in st.problems if not p.warning]}
                         for st in r.rejected]}


async def reload(request: web.Request) -> web.Response:
    report = await request.app[DAEMON].reload("http")
    data = reload_json(report)
    if report.error is not None:
        return api_error(500, f"reload failed: {report.error}", "internal")
    if report.rejected:
        lines = [p for st in report.rejected for p in data_errors(st)]
        body = {"status": "error", "errorType": "bad_data",
                "error": (f"{len(report.rejected)} rule file(s) rejected; the rest reloaded and "
                          "each rejected file keeps its last good version, if it had one: "
                          + "; ".join(lines)), "data": data}
        return web.json_response(body, status=422)
    return success(data)


def data_errors(st: FileStatus) -> list[str]:
    return [str(p) for p in st.problems if not p.warning]


async def index(request: web.Request) -> web.Response:
    """The status page for browsers; the endpoint index for clients that ask for JSON only."""
    if not wants_json(request):
        return await status_page(request)
    return web.json_response({"name": "metrics-watchdog", "version": __version__, "endpoints": [
        "/status", "/healthz", "/readyz", "/metrics", "/api/v1/rules", "/api/v1/alerts",
        "/api/v1/slos", "/api/v1/status", "POST /-/reload"]})


def build_app(d: Daemon) -> web.Application:
    # aiohttp buffers at most this much of a body (413 beyond); every body we take is JSON
    # read through watchdog.webinput, which enforces the same bound
    app = web.Application(middlewares=[json_errors, require_token],
                          client_max_size=MAX_BODY_BYTES)
    app[DAEMON] = d
    app.router.add_get("/", index)
    app.router.add_get("/status", status_page)
    app.router.add_get("/static/{name}", static_asset)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/rules", rules)
    app.router.add_get("/api/v1/alerts", alerts)
    app.router.add_get("/api/v1/slos", slos)
    app.router.add_get("/api/v1/status", status)
    app.router.add_post("/-/reload", reload)
    app.router.add_put("/-/reload", reload)  # Prometheus accepts both
    app.add_routes(d.ctx.routes)
    app.add_routes(prom_compat.routes(d))  # /-/healthy, /-/ready, /api/v1/status/buildinfo
    app.add_routes(am_api.routes(d))  # Alertmanager's /api/v2 for amtool and Grafana
    app.add_routes(query_proxy.routes(d))  # Prometheus's query API, for Grafana and the console
    # the console's rule detail, action list and backtest
    app.add_routes(console_api.ConsoleApi(d, lambda: d.ctx.source, d.clock).routes())
    return app
