"""The daemon (`watchdog run`): one process's lifetime, and the composition of its parts.

`Daemon` starts and stops things in order (storage, the HTTP session and Prometheus source,
the handlers, the rules, the HTTP server, signals, the scheduler) and exposes what the HTTP API
reads. The work itself is in `watchdog.app`: `scheduling` (when each group runs), `evaluation`
(tick → one transaction → handlers), `rules` (load, reload, restore), `health` (the datasource
and the built-in alert), `wiring` (which subsystems run), `live` (the running groups).

What it must not do: decide anything about firing (`watchdog.state` via `engine.tick`), carry
state by its own rules (`watchdog.reload`), or read the wall clock for evaluation times (the
injected `clock` gives every `at`).

In tests: `async with Daemon(settings, clock=FixedClock(...), source=FakeSource(...),
handlers=[recorder], schedule=False) as d:` then `await d.evaluate(key)` / `d.evaluate_all()`
and `await d.reload("test")`; `d.http_url` is the HTTP API (listen on port 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import structlog
import yaml
from aiohttp import web

from watchdog import __version__
from watchdog.app.evaluation import ALERTS_SIGNAL, Evaluator, Inflight, RuleError
from watchdog.app.health import BUILTIN_GROUP, BUILTIN_KEY, DATASOURCE_DOWN, DatasourceHealth
from watchdog.app.live import Live
from watchdog.app.replicas import Coordinator
from watchdog.app.rules import ReloadReport, RuleManager, RulesDirMissing
from watchdog.app.scheduling import GroupScheduler, group_offset, slot_at_or_before
from watchdog.app.wiring import wire
from watchdog.engine import GroupRuntime, TickResult
from watchdog.evaluate import Context
from watchdog.gocompat import rfc3339
from watchdog.handlers import LEADER, DaemonContext, EventHandler
from watchdog.http_api import build_app
from watchdog.logs import configure as configure_logging
from watchdog.logs import redact_url
from watchdog.metrics import ActionEventCounter, InstrumentedSource, Metrics
from watchdog.query_proxy import Forwarder
from watchdog.reload import mirror, restore, takeover
from watchdog.rulesdir import RuleSet
from watchdog.schema import ValidationError
from watchdog.settings import Settings, SettingsError
from watchdog.source import PrometheusConfig, PrometheusSource, Source
from watchdog.state import Alert
from watchdog.storage import Lease, Storage, StorageError, check_url, open_storage
from watchdog.storage.ports import Acquired

__all__ = ["BUILTIN_GROUP", "BUILTIN_KEY", "DATASOURCE_DOWN", "Daemon", "ReloadReport",
           "RuleError", "StartupError", "group_offset", "load_settings", "parse_listen",
           "rfc3339", "run_daemon", "running", "slot_at_or_before"]

log = structlog.get_logger("watchdog.daemon")

POLL_JOB = "__poll_rules__"
HEARTBEAT_JOB = "__sentry_heartbeat__"
HEARTBEAT_EVERY = 60.0  # Sentry cron monitors have a one-minute resolution
# How often a replica reads the state of the groups other replicas evaluate (shared store),
# at the latest: a decision with alert events signals the others (`ALERTS_SIGNAL`), who read
# it at once. The poll covers signals lost with a connection, and changes without events.
MIRROR_EVERY = 1.0
_UNSEEN = object()
SENTRY_MONITOR = "metrics-watchdog"


class StartupError(Exception):
    """Something in the settings prevents starting; the message names the setting."""


def parse_listen(text: str) -> tuple[str, int]:
    """`host:port`, `:port` or `[v6]:port` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise StartupError(f"WATCHDOG_HTTP_LISTEN: {text!r} is not host:port (e.g. 0.0.0.0:8080)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def prometheus_config(s: Settings) -> PrometheusConfig:
    return PrometheusConfig(
        url=s.prometheus_url, timeout=s.prometheus_timeout,
        bearer_token_file=s.prometheus_bearer_token_file,
        basic_auth_user=s.prometheus_basic_auth_user,
        basic_auth_password_file=s.prometheus_basic_auth_password_file,
        ca_file=s.prometheus_ca_file, insecure_skip_verify=s.prometheus_insecure_skip_verify)


class Daemon:
    """One running watchdog: its parts, started and stopped in order. Also the `AlertView`
    handed to handlers (through `Live`)."""

    storage: Storage
    source: InstrumentedSource
    ctx: DaemonContext
    evaluator: Evaluator
    rule_manager: RuleManager
    coordinator: Coordinator

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time,
                 source: Source | None = None, handlers: Sequence[EventHandler] = (),
                 plugins: bool = True, install_signals: bool = False,
                 schedule: bool = True) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = Metrics()
        self.datasource_url = redact_url(getattr(source, "url", None) or settings.prometheus_url)
        self.health = DatasourceHealth(self.datasource_url, settings.datasource_down_after)
        self.live = Live(self.health.runtime)
        self.inflight = Inflight()
        self.handlers: list[EventHandler] = []
        self.plugins: dict[str, str] = {}  # subsystem -> "loaded" | "failed: ..."
        self.started_at: float | None = None
        self.http_url: str | None = None
        self.groups = GroupScheduler(clock, self._scheduled, self._missed)
        self._source_override = source
        self._extra_handlers = list(handlers)
        self._plugins_enabled = plugins
        self._install_signals = install_signals
        self._schedule = schedule
        self._started_handlers: list[EventHandler] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._stop_requested = asyncio.Event()
        self._stopped = asyncio.Event()
        self._state = "new"
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._mqtt: Any = None
        self._sentry = False
        self._signals: list[signal.Signals] = []
        self._mirrored: dict[str, object] = {}  # group key -> stored version last mirrored
        self._mirror_due = asyncio.Event()  # another replica signalled a decision

    @property
    def forwarder(self) -> Forwarder | None:
        """Prometheus's query API for `watchdog.query_proxy` (None for a test's fake source)."""
        inner = getattr(self, "source", None)
        inner = getattr(inner, "inner", inner)
        return inner if callable(getattr(inner, "forward", None)) else None

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
            self.storage = await open_storage(s.state_path)
        except StorageError as e:
            raise StartupError(redact_url(str(e))) from None
        self._session = aiohttp.ClientSession()
        inner = self._source_override or PrometheusSource(self._session, prometheus_config(s))
        self.source = InstrumentedSource(inner, self.metrics)
        self.coordinator = Coordinator(
            self.storage, replica_id=s.replica_id, ttl=s.lease_ttl, names=self._lease_names,
            registry=self.metrics.registry, on_acquire=self._acquired,
            on_release=self._releasing, on_lost=self._lease_lost)
        shared = self.coordinator.shared
        try:
            # Before anything starts: the handlers take back at start the action runs and
            # deploy markers claimed under this replica id, which is safe only once no other
            # live process holds the id (a duplicate REPLICA_ID is refused here, having
            # started nothing).
            await self.coordinator.identify()
        except StorageError as e:
            raise StartupError(redact_url(str(e))) from None
        self.ctx = DaemonContext(settings=s, storage=self.storage, session=self._session,
                                 source=self.source, alerts=self.live, clock=self.clock,
                                 registry=self.metrics.registry, leases=self.coordinator)
        self._register_state_metrics()
        self.ctx.action_sinks.append(ActionEventCounter(self.metrics.registry))
        wired = wire(self.ctx, self._extra_handlers, subsystems=self._plugins_enabled)
        self.handlers, self._mqtt = wired.handlers, wired.mqtt
        self.plugins.update(wired.parts)
        self.evaluator = Evaluator(
            live=self.live, storage=self.storage, source=self.source, metrics=self.metrics,
            health=self.health, handlers=self.handlers,
            concurrency=s.evaluation_concurrency, external_url=s.external_url,
            external_labels=s.external_labels, sentry_tags=self._sentry_tags,
            inflight=self.inflight, leases=self.coordinator)
        self.rule_manager = RuleManager(
            rules_dir=s.rules_dir, live=self.live, storage=self.storage,
            evaluator=self.evaluator, metrics=self.metrics, handlers=self.handlers,
            clock=self.clock, outage_tolerance=s.outage_tolerance,
            grace_period=s.for_grace_period, inflight=self.inflight,
            on_groups=self._sync_jobs, on_rules=self._rules_to_handlers,
            held=(lambda k: self.coordinator.held(k) is not None) if shared else None)
        try:
            events = await self.rule_manager.load_at_start()
        except RulesDirMissing as e:
            raise StartupError(str(e)) from None
        self.ctx.rules = self.live.rules
        if self._mqtt is not None:
            await self._mqtt.start()
        for h in self.handlers:
            await h.start()
            self._started_handlers.append(h)
        await self._rules_to_handlers(self.live.rules)
        await self.evaluator.commit([], events, self.clock())
        try:
            await self.coordinator.start()
        except StorageError as e:
            raise StartupError(redact_url(str(e))) from None
        if shared:
            await self._listen()
            await self.refresh_mirror()
            self._spawn(self._mirror_loop())
        await self._start_http()
        if self._install_signals:
            self._add_signal_handlers()
        self._spawn(self.probe_datasource())
        if self._schedule:
            periodic: dict[str, tuple[float, Callable[[], Any], bool]] = {
                POLL_JOB: (s.rules_poll_interval, self.poll_rules, False)}
            if self._sentry:
                periodic[HEARTBEAT_JOB] = (HEARTBEAT_EVERY, self.heartbeat, True)
            self.groups.start(self._intervals(), periodic)
        self.started_at = self.clock()
        log.info("watchdog started", version=__version__, http=self.http_url,
                 replica=s.replica_id, shared=shared,
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

        self.groups.pause()
        for t in list(self._background):
            t.cancel()
        me = asyncio.current_task()
        inflight = [t for t in self.inflight.tasks if t is not me]
        if inflight:
            _, pending = await asyncio.wait(inflight, timeout=left(0.5))
            for t in pending:
                log.warning("evaluation still running at shutdown; cancelled", task=t.get_name())
                t.cancel()
        self.groups.shutdown()
        await self._stop_handlers(left)
        if hasattr(self, "coordinator"):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.coordinator.stop(), timeout=left(0.5))
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
        if hasattr(self, "evaluator"):
            self.evaluator.stopped = True
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
        if getattr(self, "storage", None) is not None:
            with contextlib.suppress(Exception):
                await self.storage.close()
            del self.storage
        self._remove_signal_handlers()
        if self._sentry:
            import sentry_sdk

            # The default (threaded) transport cannot be awaited: `flush_async` only works with
            # the experimental async transport, so flush in a worker thread.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(sentry_sdk.flush, min(2.0, budget(1.0)))

    # -- process plumbing ----------------------------------------------------------------------

    def _init_sentry(self) -> None:
        dsn = self.settings.sentry_dsn
        if dsn is None or not dsn.get_secret_value():
            return
        import sentry_sdk
        from sentry_sdk.integrations.asyncio import AsyncioIntegration

        # Inside the running loop, as AsyncioIntegration requires. Error-level log lines become
        # Sentry events through the default logging integration, tagged by `_sentry_tags`.
        sentry_sdk.init(dsn=dsn.get_secret_value(), release=f"metrics-watchdog@{__version__}",
                        integrations=[AsyncioIntegration()], send_default_pii=False,
                        # no `baggage` header (it holds the DSN's key) on our requests to others
                        trace_propagation_targets=[])
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

    async def _start_http(self) -> None:
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

    # -- scheduling --------------------------------------------------------------------------------

    def interval(self, rt: GroupRuntime) -> float:
        return rt.group.interval_or(self.settings.evaluation_interval)

    def _intervals(self) -> dict[str, float]:
        return {k: self.interval(rt) for k, rt in self.runtimes.items()}

    def _sync_jobs(self) -> None:
        for k in [k for k in self.groups.last_slot if k not in self.runtimes]:
            self.groups.forget(k)
        self.groups.sync(self._intervals())
        for k in [k for k in self._mirrored if k not in self.runtimes and k != BUILTIN_KEY]:
            del self._mirrored[k]
        if hasattr(self, "coordinator") and self.coordinator.shared:
            self._spawn(self._cycle_logged())  # new groups get their holders now

    # -- replicas (shared store) -------------------------------------------------------------

    def _lease_names(self) -> list[str]:
        return [*self.runtimes, BUILTIN_KEY, LEADER]

    def _runtime(self, key: str) -> GroupRuntime | None:
        return self.health.runtime if key == BUILTIN_KEY else self.runtimes.get(key)

    async def _cycle_logged(self) -> None:
        try:
            await self.coordinator.cycle()
        except Exception as e:
            log.error("replica cycle failed", error=f"{type(e).__name__}: {e}")

    async def _acquired(self, lease: Lease, got: Acquired) -> bool:
        """A lease this replica just took: a group's saved state becomes its runtime's (under
        the new lease's fence) before it is evaluated; the leader role goes to the handlers."""
        name = lease.name
        if name == LEADER:
            # The notifier starts from the store: first the other groups' current state
            # (this process may just have woken from a freeze with an old picture of them).
            await self.refresh_mirror()
            self._tell_handlers(name, lease)
            return True
        rt = self._runtime(name)
        if rt is None:
            return False
        async with self.evaluator.lock(name):
            async with self.storage.transaction() as tx:
                stored = (await tx.alerts.load([name])).get(name)
            at = self.clock()
            if got.restarted:
                # An earlier process of this replica held it: a restart, restored the way
                # Prometheus restores (the downtime does not count as pending time).
                restored = restore({name: rt}, {name: stored} if stored is not None else {},
                                   at, outage_tolerance=self.settings.outage_tolerance,
                                   grace_period=self.settings.for_grace_period)
            else:
                restored = takeover(rt, stored, at,
                                    outage_tolerance=self.settings.outage_tolerance)
            ok = await self.evaluator.commit(restored.changes, restored.events, at,
                                             group=rt.group.name, fences=[lease])
            self._mirrored.pop(name, None)
        if ok and got.prev_holder is not None:
            log.info("group taken over", group=rt.group.name, file=rt.file,
                     previous=got.prev_holder, alerts=len(rt.alerts()))
        return ok

    async def _releasing(self, names: Sequence[str]) -> None:
        """Leases about to go to another replica: in-flight evaluations finish first."""
        for name in names:
            if name == LEADER:
                self._tell_handlers(name, None)
                continue
            async with self.evaluator.lock(name):
                self._mirrored.pop(name, None)

    def _lease_lost(self, name: str) -> None:
        self._mirrored.pop(name, None)
        if name == LEADER:
            self._tell_handlers(name, None)

    def _tell_handlers(self, name: str, lease: Lease | None) -> None:
        for h in self.handlers:
            fn = getattr(h, "lease_changed", None)
            if fn is not None:
                try:
                    fn(name, lease)
                except Exception:
                    log.exception("handler failed on a lease change", handler=type(h).__name__)

    async def refresh_mirror(self) -> int:
        """The groups other replicas evaluate, as the store has them (only those whose
        stored version moved); the handlers hear of alerts that changed. How many groups were
        read."""
        async with self.storage.transaction() as tx:
            versions = await tx.alerts.versions()
        keys = [*self.runtimes, BUILTIN_KEY]
        stale = [k for k in keys if self.coordinator.held(k) is None
                 and self._mirrored.get(k, _UNSEEN) != versions.get(k)]
        if not stale:
            return 0
        async with self.storage.transaction() as tx:
            stored = await tx.alerts.load(stale)
        changed = []
        for k in stale:
            rt = self._runtime(k)
            if rt is None:
                continue
            async with self.evaluator.lock(k):
                if self.coordinator.held(k) is not None:
                    continue  # taken over meanwhile: its state is its own now
                changed += mirror(rt, stored.get(k))
                self._mirrored[k] = versions.get(k)
        if changed:
            for h in self.handlers:
                fn = getattr(h, "on_mirrored", None)
                if fn is not None:
                    try:
                        await fn(changed)
                    except Exception:
                        log.exception("handler failed on mirrored alerts",
                                      handler=type(h).__name__)
        return len(stale)

    async def _listen(self) -> None:
        try:
            await self.storage.coordination.listen(ALERTS_SIGNAL, self._signalled)
        except Exception as e:  # the poll still works; the next cycle tries again
            log.warning("cannot listen for the other replicas' decisions; polling",
                        error=f"{type(e).__name__}: {e}")

    def _signalled(self, replica: str) -> None:
        if replica != self.settings.replica_id:
            self._mirror_due.set()

    async def _mirror_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._mirror_due.wait(), MIRROR_EVERY)
            self._mirror_due.clear()
            try:
                await self._listen()
                await self.refresh_mirror()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.error("cannot read the other replicas' groups",
                          error=f"{type(e).__name__}: {e}")

    def replica_status(self) -> tuple[list[dict[str, object]], dict[str, str | None]]:
        """(`replicas` of /api/v1/status, group key -> the replica evaluating it)."""
        if not hasattr(self, "coordinator"):
            return [], {}
        return self.coordinator.status([*self.runtimes], self.clock())

    @property
    def scheduler(self) -> GroupScheduler | None:
        """The group scheduler once started (None before, or when the caller drives ticks)."""
        return self.groups if self.groups.started else None

    async def _scheduled(self, key: str, at: float) -> None:
        await self.evaluate(key, at)

    def _missed(self, key: str, missed: int) -> None:
        rt = self.runtimes.get(key)
        if rt is None:
            return
        self.metrics.missed_iterations.labels(rt.group.name).inc(missed)
        log.warning("missed evaluations: the previous one ran too long or the process was too "
                    "busy", group=rt.group.name, file=rt.file, missed=missed,
                    interval=self.interval(rt))

    async def poll_rules(self) -> bool:
        """The polling trigger: reload when the folder's content hash changed."""
        try:
            changed = await self.rule_manager.poll()
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

    # -- evaluation and rules (the parts do the work) ------------------------------------------

    def eval_context(self) -> Context:
        return self.evaluator.context()

    async def evaluate(self, key: str, at: float | None = None) -> TickResult | None:
        """One tick of group `key` at `at` (default: the clock): evaluate, persist, notify."""
        return await self.evaluator.evaluate(key, self.clock() if at is None else at)

    async def evaluate_all(self, at: float | None = None) -> dict[str, TickResult | None]:
        """Evaluate every group once, concurrently (tests and the benchmark use this)."""
        keys = list(self.runtimes)
        results = await asyncio.gather(*(self.evaluate(k, at) for k in keys))
        return dict(zip(keys, results, strict=True))

    async def reload(self, trigger: str = "manual") -> ReloadReport:
        """Re-read the rules folder; start, stop and update groups; keep unchanged rules' state."""
        report = await self.rule_manager.reload(trigger)
        self.ctx.rules = self.live.rules
        return report

    async def _rules_to_handlers(self, rules: RuleSet) -> None:
        self.ctx.rules = rules
        for h in self.handlers:
            try:
                await h.on_rules(rules)
            except Exception:
                log.exception("event handler rejected the rules", handler=type(h).__name__)

    async def probe_datasource(self) -> None:
        """A cheap call that tells /readyz whether Prometheus answers before any tick has."""
        inner = self.source.inner
        try:
            if hasattr(inner, "buildinfo"):
                await inner.buildinfo()
            else:
                await inner.query("vector(1)", self.clock())
        except Exception as e:
            self.health.probed(False, str(e) or type(e).__name__, bool(self.runtimes))
        else:
            self.health.probed(True, None, bool(self.runtimes))
        if self.health.up is not None:
            self.metrics.datasource_up.set(1 if self.health.up else 0)

    # -- what the HTTP API and the handlers read -------------------------------------------------

    @property
    def runtimes(self) -> dict[str, GroupRuntime]:
        return self.live.runtimes

    @property
    def rules(self) -> RuleSet:
        return self.live.rules

    @property
    def rules_loaded(self) -> bool:
        return self.live.rules_loaded

    @property
    def last_reload(self) -> ReloadReport | None:
        return self.rule_manager.last_reload if hasattr(self, "rule_manager") else None

    @property
    def builtin_alerts(self) -> Mapping[str, Alert]:
        return {a.fingerprint: a for a in self.health.runtime.alerts()}

    @property
    def datasource_up(self) -> bool | None:
        return self.health.up

    @property
    def datasource_failures(self) -> int:
        return self.health.failures

    @property
    def datasource_error(self) -> str | None:
        return self.health.error

    @property
    def datasource_down_since(self) -> float | None:
        return self.health.down_since

    def alerts(self) -> list[Alert]:
        return self.live.alerts()

    def find(self, rule: str, fingerprint: str) -> Alert | None:
        return self.live.find(rule, fingerprint)

    def recent_errors(self) -> list[RuleError]:
        return self.evaluator.recent_errors() if hasattr(self, "evaluator") else []

    def readiness(self) -> tuple[bool, str]:
        if not self.rules_loaded:
            return False, "rules are not loaded yet"
        ok, reason = self.health.readiness()
        if not ok:
            return False, reason or "Prometheus is not answering"
        rules = sum(len(rt.rules) for rt in self.runtimes.values())
        return True, (f"ready: {len(self.runtimes)} groups, {rules} rules, Prometheus at "
                      f"{self.datasource_url} answers")

    def healthy(self) -> bool:
        if self._state != "running":
            return False
        if self._schedule:
            return self.groups.running
        return True

    def _register_state_metrics(self) -> None:
        def alerts() -> Iterable[tuple[list[str], float]]:
            counts: dict[tuple[str, str], int] = {}
            for rt in [*self.runtimes.values(), self.health.runtime]:
                for r in rt.rules:
                    if rt is not self.health.runtime:
                        for state in ("pending", "firing"):
                            counts.setdefault((state, r.rule.alert), 0)
                    for a in r.alerts.values():
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

_SECRET_SETTINGS = frozenset({"api_token", "api_read_token", "sentry_dsn"})


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
    """What validation cannot see on its own; raises StartupError naming the setting."""
    parse_listen(s.http_listen)
    try:
        check_url(s.state_path)
    except StorageError as e:
        raise StartupError(redact_url(str(e))) from None
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
    except SettingsError as e:  # a ValueError too: before the --config clause
        raise StartupError(str(e)) from None
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
    for line in Settings.unknown(config):
        log.warning(line)
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
