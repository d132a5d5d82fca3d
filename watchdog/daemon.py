"""The daemon (`watchdog run`): the imperative shell around the evaluation engine.

It owns the process's lifetime and wires the parts together: settings and logging, the state
store, the shared aiohttp session and Prometheus source, one APScheduler job per rule group
(aligned to its interval like Prometheus's group offset, never overlapping, missed iterations
counted), hot reload of the rules folder (polling, SIGHUP, `POST /-/reload`), restart restore,
the built-in `WatchdogDatasourceDown` alert, the HTTP server, Sentry, and an orderly shutdown.
After each tick it persists the changed alert instances, then hands the events to every
`EventHandler` (notifications, actions) — persist first, so a crash never loses a transition a
handler saw.

What it must not do: decide anything about firing (that is `watchdog.state` via
`watchdog.engine.tick`), carry state by its own rules (that is `watchdog.reload`), or read the
wall clock for evaluation times (the injected `clock` gives every `at`; the scheduler's own
timers are the only thing on real time).

In tests: `async with Daemon(settings, clock=FixedClock(...), source=FakeSource(...),
handlers=[recorder], schedule=False) as d:` then `await d.evaluate(key)` / `d.evaluate_all()`
and `await d.reload("test")`; `d.http_url` is the HTTP API (listen on port 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import math
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import aiohttp
import structlog
import yaml
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from pydantic import ValidationError

from watchdog import __version__
from watchdog.engine import GroupRuntime, TickResult, tick
from watchdog.evaluate import Context, Hit, Outcome
from watchdog.gocompat import rfc3339
from watchdog.handlers import DaemonContext, EventHandler
from watchdog.labels import fingerprint
from watchdog.logs import configure as configure_logging
from watchdog.logs import redact_url
from watchdog.metrics import InstrumentedSource, Metrics
from watchdog.reload import carry_over, group_key, restore, restore_alerts, rule_sig
from watchdog.rulesdir import (
    FileStatus,
    RuleSet,
    build,
    digest_of,
    folder_digest,
    read_files,
)
from watchdog.settings import Settings
from watchdog.source import PrometheusConfig, PrometheusSource, Source
from watchdog.state import Alert, Event, step
from watchdog.store import GroupChanges, SqliteAlertStore, StoreError, open_db, sqlite_path

log = structlog.get_logger("watchdog.daemon")

DATASOURCE_DOWN = "WatchdogDatasourceDown"
BUILTIN_GROUP = "watchdog"
BUILTIN_KEY = "<builtin>;watchdog"  # cannot clash with a file path ("<" never starts one here)
BUILTIN_SIG = "builtin"
PLUGINS = ("watchdog.notify", "watchdog.actions")
POLL_JOB = "__poll_rules__"
HEARTBEAT_JOB = "__sentry_heartbeat__"
HEARTBEAT_EVERY = 60.0  # Sentry cron monitors have a one-minute resolution
SENTRY_MONITOR = "metrics-watchdog"
# An evaluation time is the group's slot at or before now; a job the loop starts a hair early
# (timer rounding) must still land on its own slot, not the previous one.
SLOT_EPSILON = 1e-3
MAX_ERRORS_SHOWN = 50


class StartupError(Exception):
    """Something in the settings prevents starting; the message names the setting."""


@runtime_checkable
class BaselineProvider(Protocol):
    """Optional extra of an `EventHandler` (the deploy-marker keeper): values captured at the
    last deploy, fed into `evaluate.Context.deploy_baselines` for `baseline: {deploy: true}`."""

    def deploy_baselines(self) -> Mapping[str, Mapping[str, float]]: ...


@dataclass
class RuleError:
    group: str
    file: str
    rule: str
    error: str
    since: float
    last: float
    count: int = 1


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


# ---- small pure helpers ------------------------------------------------------------------------


def parse_listen(text: str) -> tuple[str, int]:
    """`host:port`, `:port` or `[v6]:port` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise StartupError(f"WATCHDOG_HTTP_LISTEN: {text!r} is not host:port (e.g. 0.0.0.0:8080)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def group_offset(key: str, interval: float) -> float:
    """Where in its interval a group's slots fall: a stable hash of its key, so groups spread
    over the interval instead of all querying Prometheus at once (Prometheus does the same)."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return h / 2**64 * interval


def slot_at_or_before(t: float, interval: float, offset: float) -> float:
    t += SLOT_EPSILON
    return t - ((t - offset) % interval)


def prometheus_config(s: Settings) -> PrometheusConfig:
    return PrometheusConfig(
        url=s.prometheus_url, timeout=s.prometheus_timeout,
        bearer_token_file=s.prometheus_bearer_token_file,
        basic_auth_user=s.prometheus_basic_auth_user,
        basic_auth_password_file=s.prometheus_basic_auth_password_file,
        ca_file=s.prometheus_ca_file, insecure_skip_verify=s.prometheus_insecure_skip_verify)


# ---- the daemon ----------------------------------------------------------------------------------


class Daemon:
    """One running watchdog. Also the `AlertView` handed to handlers."""

    db: Any
    store: SqliteAlertStore
    source: InstrumentedSource
    ctx: DaemonContext

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time,
                 source: Source | None = None, handlers: Sequence[EventHandler] = (),
                 plugins: bool = True, install_signals: bool = False,
                 schedule: bool = True) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = Metrics()
        self.runtimes: dict[str, GroupRuntime] = {}
        self.rules = RuleSet()
        self.rules_loaded = False
        self.handlers: list[EventHandler] = []
        self.plugins: dict[str, str] = {}  # module -> "loaded" | "not installed" | "failed: ..."
        self.last_reload: ReloadReport | None = None
        self.rule_errors: dict[tuple[str, str], RuleError] = {}
        self.started_at: float | None = None
        self.http_url: str | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self.datasource_url = redact_url(getattr(source, "url", None) or settings.prometheus_url)
        self.datasource_up: bool | None = None
        self.datasource_failures = 0  # consecutive ticks in which every query failed
        self.datasource_error: str | None = None
        self.datasource_down_since: float | None = None
        self.builtin_alerts: dict[str, Alert] = {}
        self._source_override = source
        self._extra_handlers = list(handlers)
        self._plugins_enabled = plugins
        self._install_signals = install_signals
        self._schedule = schedule
        self._started_handlers: list[EventHandler] = []
        self._baselines: list[BaselineProvider] = []
        self._locks: dict[str, asyncio.Lock] = {}
        self._inflight: set[asyncio.Task[Any]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._last_slot: dict[str, float] = {}
        self._reload_lock = asyncio.Lock()
        self._builtin_lock = asyncio.Lock()
        self._digest: str | None = None
        self._saved_rule_digests: dict[str, str] = {}
        self._stop_requested = asyncio.Event()
        self._stopped = asyncio.Event()
        self._state = "new"
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._mqtt: Any = None
        self._sentry = False
        self._signals: list[signal.Signals] = []

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Daemon:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"daemon already {self._state}")
        self._state = "starting"
        try:
            await self._start()
        except BaseException:
            # e.g. the HTTP port is taken after the handlers started: stop what did start.
            for t in list(self._background):
                t.cancel()
            await self._stop_handlers(lambda share: 2.0 * share)
            await self._close()
            self._state = "stopped"
            self._stopped.set()
            raise
        self._state = "running"

    async def _start(self) -> None:
        s = self.settings
        self._init_sentry()
        try:
            self.db = await open_db(s.state_path)
        except StoreError as e:
            raise StartupError(str(e)) from None
        except (OSError, sqlite3.Error) as e:
            raise StartupError(f"WATCHDOG_STATE_URL: cannot open {s.state_path}: {e}") from None
        self.store = SqliteAlertStore(self.db)
        await self.store.init()
        self._session = aiohttp.ClientSession()
        inner = self._source_override or PrometheusSource(self._session, prometheus_config(s))
        self.source = InstrumentedSource(inner, self.metrics)
        self.ctx = DaemonContext(settings=s, db=self.db, session=self._session,
                                 source=self.source, alerts=self, clock=self.clock,
                                 registry=self.metrics.registry)
        self._register_state_metrics()
        await self._create_handlers()
        events = await self._load_rules_at_start()
        if self._mqtt is not None:
            await self._mqtt.start()
        for h in self.handlers:
            await h.start()
            self._started_handlers.append(h)
        self._baselines = [h for h in self.handlers if isinstance(h, BaselineProvider)]
        await self._rules_to_handlers()
        await self._dispatch(events, self.clock())
        await self._start_http()
        if self._install_signals:
            self._add_signal_handlers()
        self._spawn(self.probe_datasource())
        if self._schedule:
            self._start_scheduler()
        self.started_at = self.clock()
        log.info("watchdog started", version=__version__, http=self.http_url,
                 groups=len(self.runtimes), rules=sum(len(r.rules) for r in self.runtimes.values()),
                 prometheus=self.datasource_url, state=redact_url(s.state_path))

    def request_stop(self, reason: str = "requested") -> None:
        """Ask `serve()` to shut down (signal handlers call this)."""
        if not self._stop_requested.is_set():
            log.info("shutdown requested", reason=reason)
            self._stop_requested.set()

    async def serve(self) -> int:
        """Start, run until SIGTERM/SIGINT (or `request_stop`), stop. The exit code."""
        try:
            await self.start()
        except StartupError as e:
            log.error("cannot start", error=str(e))
            print(f"watchdog: {e}", file=sys.stderr)
            return 2
        await self._stop_requested.wait()
        await self.stop()
        return 0

    async def stop(self) -> None:
        """Stop scheduling, let in-flight evaluations finish (and persist), stop the handlers,
        close everything — within `shutdown_timeout`."""
        if self._state in ("stopping", "stopped"):
            await self._stopped.wait()
            return
        self._state = "stopping"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_timeout

        def left(share: float = 1.0) -> float:
            return max(0.05, (deadline - loop.time()) * share)

        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.pause()
        for t in list(self._background):
            t.cancel()
        me = asyncio.current_task()
        inflight = [t for t in self._inflight if t is not me]
        if inflight:
            _, pending = await asyncio.wait(inflight, timeout=left(0.5))
            for t in pending:
                log.warning("evaluation still running at shutdown; cancelled", task=t.get_name())
                t.cancel()
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        await self._stop_handlers(left)
        await self._close(left)
        self._state = "stopped"
        self._stopped.set()
        log.info("watchdog stopped")

    async def _stop_handlers(self, left: Callable[[float], float]) -> None:
        for h in reversed(self._started_handlers):
            try:
                await asyncio.wait_for(h.stop(), timeout=left(0.5))
            except Exception as e:
                log.error("handler did not stop cleanly", handler=type(h).__name__,
                          error=str(e) or type(e).__name__)
        self._started_handlers.clear()

    async def _close(self, left: Callable[[float], float] | None = None) -> None:
        budget = left or (lambda share: 2.0 * share)
        with contextlib.suppress(Exception):
            if self._mqtt is not None:
                await asyncio.wait_for(self._mqtt.stop(), timeout=budget(0.5))
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._runner.cleanup(), timeout=budget(0.5))
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if getattr(self, "db", None) is not None:
            with contextlib.suppress(Exception):
                await self.db.close()
            self.db = None
        self._remove_signal_handlers()
        if self._sentry:
            import sentry_sdk

            # The default (threaded) transport cannot be awaited: `flush_async` only works with
            # the experimental async transport, so flush in a worker thread.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(sentry_sdk.flush, min(2.0, budget(1.0)))

    # -- wiring ----------------------------------------------------------------------------------

    def _init_sentry(self) -> None:
        dsn = self.settings.sentry_dsn
        if dsn is None or not dsn.get_secret_value():
            return
        import sentry_sdk
        from sentry_sdk.integrations.asyncio import AsyncioIntegration

        # Inside the running loop, as AsyncioIntegration requires. Error-level log lines become
        # Sentry events through the default logging integration, tagged by `_sentry_tags`.
        sentry_sdk.init(dsn=dsn.get_secret_value(), release=f"metrics-watchdog@{__version__}",
                        integrations=[AsyncioIntegration()], send_default_pii=False)
        self._sentry = True

    @contextlib.contextmanager
    def _sentry_tags(self, **tags: str) -> Iterator[None]:
        if not self._sentry:
            yield
            return
        import sentry_sdk

        with sentry_sdk.new_scope() as scope:
            for k, v in tags.items():
                scope.set_tag(k, v)
            yield

    async def _create_handlers(self) -> None:
        if self.settings.mqtt_url:
            mod = self._plugin_module("watchdog.mqtt")
            bus_cls = getattr(mod, "MqttBus", None) if mod is not None else None
            if bus_cls is None:
                log.error("WATCHDOG_MQTT_URL is set but this build has no MQTT support")
            else:
                self._mqtt = bus_cls(self.ctx)
                self.ctx.mqtt = self._mqtt
        if self._plugins_enabled:
            for name in PLUGINS:
                mod = self._plugin_module(name)
                create = getattr(mod, "create_handler", None) if mod is not None else None
                if create is None:
                    self.plugins.setdefault(name, "not installed")
                    continue
                try:
                    self.handlers.append(create(self.ctx))
                    self.plugins[name] = "loaded"
                except Exception as e:
                    self.plugins[name] = f"failed: {e}"
                    log.exception("cannot create handler", module=name)
        self.handlers.extend(self._extra_handlers)

    def _plugin_module(self, name: str) -> Any:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                self.plugins[name] = "not installed"
                return None
            self.plugins[name] = f"failed: {e}"
            log.exception("cannot import plugin", module=name)
        except Exception as e:
            # A plugin broken at import must not take the evaluation loop down with it; it is
            # loud in the log (and Sentry) and on /api/v1/status.
            self.plugins[name] = f"failed: {e}"
            log.exception("cannot import plugin", module=name)
        return None

    async def _start_http(self) -> None:
        from watchdog.http_api import build_app

        host, port = parse_listen(self.settings.http_listen)
        self._runner = web.AppRunner(build_app(self), handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            raise StartupError(f"WATCHDOG_HTTP_LISTEN: cannot listen on "
                               f"{self.settings.http_listen}: {e.strerror or e}") from None
        bound = self._runner.addresses[0][1]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else (
            f"[{host}]" if ":" in host else host)
        self.http_url = f"http://{shown}:{bound}"

    def _add_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig, fn in ((signal.SIGTERM, lambda: self.request_stop("SIGTERM")),
                        (signal.SIGINT, lambda: self.request_stop("SIGINT")),
                        (signal.SIGHUP, lambda: self._spawn(self._reload_logged("sighup")))):
            loop.add_signal_handler(sig, fn)
            self._signals.append(sig)

    async def _reload_logged(self, trigger: str) -> None:
        try:
            await self.reload(trigger)
        except Exception:
            log.exception("reload failed", trigger=trigger)

    def _remove_signal_handlers(self) -> None:
        if not self._signals:
            return
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.remove_signal_handler(sig)
        self._signals.clear()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- scheduling ------------------------------------------------------------------------------

    def interval(self, rt: GroupRuntime) -> float:
        return rt.group.interval_or(self.settings.evaluation_interval)

    def _start_scheduler(self) -> None:
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self._sync_jobs()
        self.scheduler.add_job(self.poll_rules, IntervalTrigger(
            seconds=self.settings.rules_poll_interval, timezone=UTC), id=POLL_JOB,
            max_instances=1, coalesce=True, misfire_grace_time=None)
        if self._sentry:
            self.scheduler.add_job(self.heartbeat, IntervalTrigger(
                seconds=HEARTBEAT_EVERY, timezone=UTC), id=HEARTBEAT_JOB, max_instances=1,
                coalesce=True, next_run_time=datetime.now(UTC))
        self.scheduler.start()

    def _sync_jobs(self) -> None:
        """One job per group, at its interval; idempotent (called after every reload)."""
        sched = self.scheduler
        if sched is None:
            return
        for job in sched.get_jobs():
            if job.id in (POLL_JOB, HEARTBEAT_JOB):
                continue
            rt = self.runtimes.get(job.id)
            if rt is None or job.trigger.interval_length != self.interval(rt):
                job.remove()
        for key, rt in self.runtimes.items():
            if sched.get_job(key) is not None:
                continue
            interval = self.interval(rt)
            offset = group_offset(key, interval)
            first = slot_at_or_before(self.clock(), interval, offset) + interval
            sched.add_job(
                self._scheduled_tick, IntervalTrigger(
                    seconds=interval, start_date=datetime.fromtimestamp(first, UTC),
                    timezone=UTC),
                args=[key], id=key, name=f"evaluate {key}",
                # Never two evaluations of one group at once; a late start is run once (not
                # once per missed slot), and one later than half an interval (APScheduler
                # wants whole seconds) is skipped so the group gets back onto its slots.
                # Skipped slots are counted in `_scheduled_tick`.
                max_instances=1, coalesce=True,
                misfire_grace_time=max(1, math.ceil(interval / 2)))

    async def _scheduled_tick(self, key: str) -> None:
        rt = self.runtimes.get(key)
        if rt is None:
            return
        interval = self.interval(rt)
        at = slot_at_or_before(self.clock(), interval, group_offset(key, interval))
        last = self._last_slot.get(key)
        if last is not None:
            if at <= last:
                return  # this slot was evaluated already
            missed = round((at - last) / interval) - 1
            if missed > 0:
                self.metrics.missed_iterations.labels(rt.group.name).inc(missed)
                log.warning("missed evaluations: the previous one ran too long or the process "
                            "was too busy", group=rt.group.name, file=rt.file, missed=missed,
                            interval=interval)
        self._last_slot[key] = at
        await self.evaluate(key, at)

    async def poll_rules(self) -> bool:
        """The polling trigger: reload when the folder's content hash changed."""
        try:
            digest = await asyncio.to_thread(folder_digest, [self.settings.rules_dir])
            changed = digest != self._digest
            if changed:
                await self.reload("poll")
            if not self.runtimes or self.datasource_up is None:
                await self.probe_datasource()
            return changed
        except Exception:
            log.exception("rules poll failed")
            return False

    async def heartbeat(self) -> None:
        """Sentry cron check-in: OK while groups are evaluated on time and Prometheus answers,
        so a wedged or blind watchdog is reported through a second channel."""
        from sentry_sdk.crons import capture_checkin

        now = self.clock()
        late = [k for k, rt in self.runtimes.items()
                if rt.last_at is not None and now - rt.last_at > 3 * self.interval(rt)]
        ok = not late and self.datasource_up is not False
        capture_checkin(monitor_slug=SENTRY_MONITOR, status="ok" if ok else "error",
                        monitor_config={"schedule": {"type": "interval", "value": 1,
                                                     "unit": "minute"},
                                        "checkin_margin": 2, "max_runtime": 1})

    # -- evaluation ------------------------------------------------------------------------------

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def eval_context(self) -> Context:
        baselines: dict[str, Mapping[str, float]] = {}
        for p in self._baselines:
            try:
                baselines.update(p.deploy_baselines())
            except Exception:
                log.exception("deploy baselines unavailable", provider=type(p).__name__)
        return Context(external_url=self.settings.external_url,
                       external_labels=self.settings.external_labels,
                       deploy_baselines=baselines)

    async def evaluate_all(self, at: float | None = None) -> dict[str, TickResult | None]:
        """Evaluate every group once, concurrently (tests and the benchmark use this)."""
        keys = list(self.runtimes)
        results = await asyncio.gather(*(self.evaluate(k, at) for k in keys))
        return dict(zip(keys, results, strict=True))

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        """Mark the current task as work that shutdown waits for (evaluations, reloads)."""
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            yield
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def evaluate(self, key: str, at: float | None = None) -> TickResult | None:
        """One tick of group `key` at `at` (default: the clock): evaluate, persist, notify."""
        with self._tracked():
            async with self._lock(key):
                rt = self.runtimes.get(key)
                if rt is None or self._state == "stopped":
                    return None
                return await self._evaluate(rt, self.clock() if at is None else at)

    async def _evaluate(self, rt: GroupRuntime, at: float) -> TickResult | None:
        name = rt.group.name
        before = [r.alerts for r in rt.rules]  # step never mutates these dicts
        try:
            res = await tick(rt, at, self.source, self.eval_context(),
                             self.settings.evaluation_concurrency)
        except Exception:
            # A bug, not a failed query (those come back in res.errors).
            self.metrics.evaluation_failures.labels(name).inc(len(rt.rules))
            with self._sentry_tags(group=name):
                log.exception("evaluation crashed", group=name, file=rt.file)
            return None
        self._observe(rt, res, at)
        try:
            await self.store.save([self._changes(rt, before, at)])
        except Exception:
            with self._sentry_tags(group=name):
                log.exception("cannot persist alert state", group=name)
        events = list(res.events)
        events.extend(await self._datasource_health(res, at))
        await self._dispatch(events, at)
        return res

    def _changes(self, rt: GroupRuntime, before: Sequence[Mapping[str, Alert]], at: float
                 ) -> GroupChanges:
        c = GroupChanges(rt.key)
        for r, old in zip(rt.rules, before, strict=True):
            new = r.alerts
            if new is old:
                continue
            sig: str | None = None
            for fp, a in new.items():
                if old.get(fp) is not a:
                    sig = sig or rule_sig(r.rule)
                    c.upserts.append((r.key, sig, a))
            c.deletes.extend((r.key, fp) for fp in old if fp not in new)
        if c:
            c.at = at  # only written along with alert rows: a quiet group costs no write
        return c

    def _observe(self, rt: GroupRuntime, res: TickResult, at: float) -> None:
        m, name = self.metrics, rt.group.name
        m.evaluations.labels(name).inc(len(rt.rules))
        if res.errors:
            m.evaluation_failures.labels(name).inc(len(res.errors))
        m.evaluation_duration.labels(name).observe(res.duration)
        m.last_evaluation.labels(name).set(at)
        blind = res.queries > 0 and res.failed_queries == res.queries
        for r in rt.rules:
            k = (rt.key, r.key)
            err = res.errors.get(r.key)
            known = self.rule_errors.get(k)
            if err is None:
                if known is not None:
                    del self.rule_errors[k]
                    log.info("rule evaluates again", group=name, rule=r.key)
                continue
            if known is not None:
                known.last, known.error, known.count = at, err, known.count + 1
                continue
            self.rule_errors[k] = RuleError(name, rt.file, r.key, err, at, at)
            if blind:
                # Prometheus itself is failing: one line for the datasource, not one per rule.
                log.warning("rule evaluation failed", group=name, rule=r.key, error=err)
            else:
                with self._sentry_tags(group=name, rule=r.key):
                    log.error("rule evaluation failed", group=name, file=rt.file, rule=r.key,
                              error=err)

    async def _dispatch(self, events: Sequence[Event], at: float) -> None:
        if not events:
            return
        for e in events:
            a = e.alert
            log.info("alert", kind=e.kind, rule=a.rule, group=a.group,
                     fingerprint=a.fingerprint, incident=a.incident_id, active_at=a.active_at,
                     value=a.value, severity=a.severity, previous_severity=e.previous_severity,
                     labels=dict(a.labels))
        for h in self.handlers:
            try:
                await h.on_events(events, at)
            except Exception:
                with self._sentry_tags(handler=type(h).__name__):
                    log.exception("event handler failed", handler=type(h).__name__)

    # -- the blind watchdog ----------------------------------------------------------------------

    async def probe_datasource(self) -> None:
        """A cheap call that tells /readyz whether Prometheus answers before any tick has."""
        inner = self.source.inner
        try:
            if hasattr(inner, "buildinfo"):
                await inner.buildinfo()
            else:
                await inner.query("vector(1)", self.clock())
        except Exception as e:
            if self.datasource_up is not True:
                self.datasource_up = False
                self.datasource_error = str(e) or type(e).__name__
                self.metrics.datasource_up.set(0)
            return
        if self.datasource_up is None or not self.runtimes:
            self.datasource_up = True
            self.datasource_error = None
            self.metrics.datasource_up.set(1)

    async def _datasource_health(self, res: TickResult, at: float) -> list[Event]:
        if res.queries == 0:
            return []
        async with self._builtin_lock:
            if res.failed_queries < res.queries:
                if self.datasource_up is False:
                    log.info("Prometheus answers again", prometheus=self.datasource_url,
                             failed_evaluations=self.datasource_failures)
                self.datasource_up, self.datasource_error = True, None
                self.datasource_failures, self.datasource_down_since = 0, None
                self.metrics.datasource_up.set(1)
                if not self.builtin_alerts:
                    return []
                return await self._step_builtin(Outcome([]), at)
            self.datasource_failures += 1
            self.datasource_error = next(iter(res.errors.values()), "all queries failed")
            if self.datasource_down_since is None:
                self.datasource_down_since = at
            self.datasource_up = False
            self.metrics.datasource_up.set(0)
            if self.datasource_failures < self.settings.datasource_down_after:
                return []
            if self.datasource_failures == self.settings.datasource_down_after:
                log.error("Prometheus is not answering: no rule can fire or resolve",
                          prometheus=self.datasource_url, error=self.datasource_error,
                          failed_evaluations=self.datasource_failures)
            return await self._step_builtin(Outcome([self._down_hit()]), at)

    def _down_hit(self) -> Hit:
        labels = {"alertname": DATASOURCE_DOWN, "severity": "critical",
                  "datasource": self.datasource_url}
        annotations = {
            "summary": f"The watchdog cannot query Prometheus at {self.datasource_url}",
            "description": (f"{self.datasource_failures} consecutive evaluations failed since "
                            f"{rfc3339(self.datasource_down_since)}; alerts neither fire nor "
                            f"resolve meanwhile. Last error: {self.datasource_error}"),
        }
        return Hit(fingerprint(labels), labels, annotations, float(self.datasource_failures),
                   "critical")

    async def _step_builtin(self, outcome: Outcome, at: float) -> list[Event]:
        # The built-in rule goes through the same state machine as every other rule.
        before = self.builtin_alerts
        res = step(before, outcome, at, rule=DATASOURCE_DOWN, group=BUILTIN_GROUP, hold=0.0)
        self.builtin_alerts = res.alerts
        c = GroupChanges(BUILTIN_KEY, at=at)
        c.upserts = [(DATASOURCE_DOWN, BUILTIN_SIG, a) for fp, a in res.alerts.items()
                     if before.get(fp) is not a]
        c.deletes = [(DATASOURCE_DOWN, fp) for fp in before if fp not in res.alerts]
        if c:
            try:
                await self.store.save([c])
            except Exception:
                log.exception("cannot persist the datasource alert")
        return res.events

    # -- rules -----------------------------------------------------------------------------------

    def _read_rules(self) -> tuple[str, dict[str, bytes | OSError]]:
        raw = read_files([self.settings.rules_dir])
        return digest_of(raw), raw

    async def _load_rules_at_start(self) -> list[Event]:
        s = self.settings
        if not s.rules_dir.is_dir():
            raise StartupError(f"WATCHDOG_RULES_DIR: {s.rules_dir} is not a directory")
        digest, raw = await asyncio.to_thread(self._read_rules)
        saved = await self.store.load_rule_files()
        self._saved_rule_digests = {p: hashlib.sha256(c).hexdigest() for p, c in saved.items()}
        rs = await asyncio.to_thread(build, raw)
        if any(st.path in saved for st in rs.rejected):
            # A file broken while we were down: run its last good version from the store.
            last_good = await asyncio.to_thread(build, {p: c for p, c in saved.items()
                                                        if p in raw})
            rs = await asyncio.to_thread(build, raw, last_good)
        ts = self.clock()
        runtimes = {group_key(f, g): GroupRuntime.new(f, g) for f, g in rs.groups()}
        stored = await self.store.load()
        builtin = stored.pop(BUILTIN_KEY, None)
        restored = restore(runtimes, stored, ts, outage_tolerance=s.outage_tolerance,
                           grace_period=s.for_grace_period)
        events = list(restored.events)
        if builtin is not None and DATASOURCE_DOWN in builtin.rules:
            alerts, ev, _ = restore_alerts(
                builtin.rules[DATASOURCE_DOWN].alerts, hold=0.0, ts=ts,
                group_last_eval=builtin.last_eval_at, outage_tolerance=s.outage_tolerance,
                grace_period=s.for_grace_period)
            self.builtin_alerts = alerts
            events.extend(ev)
        await self.store.save(restored.changes)
        self.runtimes, self.rules, self.ctx.rules = runtimes, rs, rs
        self._digest, self.rules_loaded = digest, True
        await self._save_rule_files(raw, rs)
        self._log_problems(rs, "startup")
        n_restored = sum(len(r.alerts) for rt in runtimes.values() for r in rt.rules)
        if n_restored or events:
            log.info("alert state restored", alerts=n_restored, resolved=len(events))
        return events

    async def reload(self, trigger: str = "manual") -> ReloadReport:
        """Re-read the rules folder; start, stop and update groups; keep unchanged rules' state."""
        with self._tracked():
            return await self._reload(trigger)

    async def _reload(self, trigger: str) -> ReloadReport:
        async with self._reload_lock:
            at = self.clock()
            report = ReloadReport(trigger, at)
            if not self.settings.rules_dir.is_dir():
                # A vanished folder (a bad mount) must not read as "every rule was deleted".
                report.error = f"{self.settings.rules_dir} is not a directory; rules unchanged"
                log.error("reload failed", trigger=trigger, error=report.error)
                self.metrics.reloads.labels(trigger, "error").inc()
                self.last_reload = report
                return report
            digest, raw = await asyncio.to_thread(self._read_rules)
            # Parsing YAML and PromQL of changed files is CPU work: keep the loop (and the
            # evaluations on it) running meanwhile.
            rs = await asyncio.to_thread(build, raw, self.rules)
            groups = rs.groups()
            wanted = {group_key(f, g): g for f, g in groups}
            touched = sorted(k for k, rt in self.runtimes.items()
                             if k not in wanted or wanted[k] != rt.group)
            async with contextlib.AsyncExitStack() as stack:
                # Wait for in-flight ticks of the groups we replace, so none of their results
                # lands in a runtime that is gone.
                for k in touched:
                    await stack.enter_async_context(self._lock(k))
                carried = carry_over(self.runtimes, groups, at)
                try:
                    # Before the swap: cancelled or failed here, the old rules simply go on.
                    await self.store.save(carried.changes)
                except Exception:
                    log.exception("cannot persist reload changes")
                # From here to the end of the block nothing awaits: readers (HTTP, handlers,
                # the scheduler) see either the old rules or the new ones, never a mixture.
                gone = {k: self.runtimes[k].group.name for k in carried.removed}
                self.runtimes, self.rules, self.ctx.rules = carried.runtimes, rs, rs
                self._digest = digest
                for k in carried.removed:
                    self._last_slot.pop(k, None)
                    self._locks.pop(k, None)
                    self.rule_errors = {e: v for e, v in self.rule_errors.items() if e[0] != k}
                names = {rt.group.name for rt in self.runtimes.values()}
                for gname in set(gone.values()) - names:
                    self.metrics.forget_group(gname)
                self._sync_jobs()
            report.added, report.removed = carried.added, carried.removed
            report.changed, report.unchanged = carried.changed, carried.unchanged
            report.rejected, report.resolved = rs.rejected, len(carried.events)
            self.last_reload = report
            self.metrics.reloads.labels(trigger, "ok" if report.ok else "rejected").inc()
            await self._save_rule_files(raw, rs)
            self._log_problems(rs, trigger)
            log.info("rules reloaded", trigger=trigger, added=len(carried.added),
                     removed=len(carried.removed), changed=len(carried.changed),
                     rejected=len(rs.rejected), resolved=len(carried.events))
        await self._dispatch(carried.events, at)
        await self._rules_to_handlers()
        return report

    async def _rules_to_handlers(self) -> None:
        for h in self.handlers:
            try:
                await h.on_rules(self.rules)
            except Exception:
                log.exception("event handler rejected the rules", handler=type(h).__name__)

    async def _save_rule_files(self, raw: Mapping[str, bytes | OSError], rs: RuleSet) -> None:
        new: dict[str, tuple[str, bytes]] = {}
        for path, st in rs.status.items():
            data = raw.get(path)
            saved = self._saved_rule_digests.get(path)
            if st.ok and isinstance(data, bytes) and saved != st.digest:
                new[path] = (st.digest, data)
        gone = [p for p in self._saved_rule_digests if p not in raw]
        try:
            await self.store.save_rule_files(new, gone)
        except Exception:
            log.exception("cannot save the accepted rule files")
            return
        for p in gone:
            del self._saved_rule_digests[p]
        self._saved_rule_digests.update({p: d for p, (d, _) in new.items()})

    def _log_problems(self, rs: RuleSet, trigger: str) -> None:
        for st in rs.status.values():
            for p in st.problems:
                if p.warning:
                    log.warning("rule file warning", problem=str(p), file=p.file, line=p.line,
                                trigger=trigger)
                else:
                    log.error("rule file rejected", problem=str(p), file=p.file, line=p.line,
                              running_previous=st.running_previous, trigger=trigger)

    # -- AlertView ------------------------------------------------------------------------------

    def alerts(self) -> list[Alert]:
        out = [a for rt in self.runtimes.values() for r in rt.rules for a in r.alerts.values()]
        out.extend(self.builtin_alerts.values())
        return out

    def find(self, rule: str, fingerprint: str) -> Alert | None:
        for a in self.alerts():
            if a.rule == rule and a.fingerprint == fingerprint:
                return a
        return None

    # -- status ----------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        if not self.rules_loaded:
            return False, "rules are not loaded yet"
        if self.datasource_up is None:
            return False, f"waiting for Prometheus at {self.datasource_url} to answer"
        if not self.datasource_up:
            since = (f" since {rfc3339(self.datasource_down_since)}"
                     if self.datasource_down_since is not None else "")
            failed = (f"; {self.datasource_failures} consecutive evaluations failed{since}"
                      if self.datasource_failures else "")
            return False, (f"Prometheus at {self.datasource_url} is not answering: "
                           f"{self.datasource_error}{failed}")
        rules = sum(len(rt.rules) for rt in self.runtimes.values())
        return True, (f"ready: {len(self.runtimes)} groups, {rules} rules, Prometheus at "
                      f"{self.datasource_url} answers")

    def healthy(self) -> bool:
        if self._state != "running":
            return False
        if self._schedule:
            return self.scheduler is not None and self.scheduler.running
        return True

    def recent_errors(self) -> list[RuleError]:
        return sorted(self.rule_errors.values(), key=lambda e: e.last,
                      reverse=True)[:MAX_ERRORS_SHOWN]

    def _register_state_metrics(self) -> None:
        def alerts() -> Iterable[tuple[list[str], float]]:
            counts: dict[tuple[str, str], int] = {}
            for rt in self.runtimes.values():
                for r in rt.rules:
                    for state in ("pending", "firing"):
                        counts.setdefault((state, r.rule.alert), 0)
                    for a in r.alerts.values():
                        if a.state != "inactive":
                            counts[(a.state, r.rule.alert)] += 1
            for a in self.builtin_alerts.values():
                if a.state != "inactive":
                    counts[(a.state, a.rule)] = counts.get((a.state, a.rule), 0) + 1
            return [([s, r], float(n)) for (s, r), n in counts.items()]

        def files() -> Iterable[tuple[list[str], float]]:
            ok = sum(1 for st in self.rules.status.values() if st.ok)
            return [(["loaded"], float(ok)),
                    (["rejected"], float(len(self.rules.status) - ok))]

        self.metrics.add_state("watchdog_alerts", "Alert instances by state and rule.",
                               ["state", "rule"], alerts)
        self.metrics.add_state("watchdog_rule_files",
                               "Rule files by status (rejected ones keep their last good "
                               "version running, if they had one).", ["status"], files)


# ---- the command ---------------------------------------------------------------------------------

_SECRET_SETTINGS = frozenset({"api_token", "sentry_dsn"})


def settings_errors(e: ValidationError) -> list[str]:
    """One line per invalid setting, named as the operator sets it (WATCHDOG_*)."""
    out = []
    for err in e.errors():
        loc = [str(x) for x in err.get("loc", ())]
        name = loc[0] if loc else "?"
        where = f"WATCHDOG_{name.upper()}" + (f" ({'.'.join(loc[1:])})" if loc[1:] else "")
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if name in _SECRET_SETTINGS or "input" not in err:
            out.append(f"invalid setting {where}: {msg}")
        else:
            out.append(f"invalid setting {where}: {msg} (got {err['input']!r})")
    return out


def check_settings(s: Settings) -> None:
    """What pydantic cannot see on its own; raises StartupError naming the setting."""
    parse_listen(s.http_listen)
    try:
        sqlite_path(s.state_path)
    except StoreError as e:
        raise StartupError(str(e)) from None
    if not s.prometheus_url.startswith(("http://", "https://")):
        raise StartupError(f"WATCHDOG_PROMETHEUS_URL: {redact_url(s.prometheus_url)!r} is not "
                           "an http:// or https:// URL")
    for name in ("evaluation_interval", "rules_poll_interval", "prometheus_timeout",
                 "shutdown_timeout"):
        if getattr(s, name) <= 0:
            raise StartupError(f"WATCHDOG_{name.upper()}: must be positive")
    if not s.rules_dir.is_dir():
        raise StartupError(f"WATCHDOG_RULES_DIR: {s.rules_dir} is not a directory")


def load_settings(config: Path | None) -> Settings:
    try:
        settings = Settings.load(config)
    except ValidationError as e:
        raise StartupError("\n".join(settings_errors(e))) from None
    except (OSError, yaml.YAMLError, ValueError) as e:
        raise StartupError(f"--config {config}: {e}") from None
    check_settings(settings)
    return settings


def run_daemon(config: Path | None = None) -> int:
    """`watchdog run`: 0 after a clean shutdown, 2 when a setting prevents starting."""
    try:
        settings = load_settings(config)
    except StartupError as e:
        for line in str(e).splitlines():
            print(f"watchdog: {line}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    return asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> int:
    return await Daemon(settings, install_signals=True).serve()


@contextlib.asynccontextmanager
async def running(settings: Settings, **kwargs: Any) -> AsyncIterator[Daemon]:
    """`async with running(settings, clock=..., source=...) as d:` — a started daemon."""
    d = Daemon(settings, **kwargs)
    await d.start()
    try:
        yield d
    finally:
        await d.stop()
