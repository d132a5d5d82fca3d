"""The watchdog's own metrics (`/metrics`), in one `CollectorRegistry` per daemon.

Shell: prometheus-client objects plus `InstrumentedSource`, a `Source` wrapper that times every
query and counts failures. Names follow Prometheus's own rule-manager metrics where one exists.
Gauges that describe current state (alerts by state, rule files by status) are computed when
scraped from the daemon's live data, so they can never drift from it. Notifications and actions
register their counters in the same registry (`DaemonContext.registry`). This module must not
hold evaluation logic nor read the wall clock for anything but durations.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from watchdog.evaluate import Sample
from watchdog.source import Source

if TYPE_CHECKING:
    from watchdog.handlers import ActionEvent
    from watchdog.storage import Tx

# Evaluation of a group is dominated by Prometheus round-trips: milliseconds when healthy, the
# query timeout (10s default) when not. These buckets cover both ends.
EVAL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.evaluation_duration = Histogram(
            "watchdog_evaluation_duration_seconds",
            "Time one evaluation of a rule group took (all its queries and state updates).",
            ["group"], buckets=EVAL_BUCKETS, registry=r)
        self.evaluations = Counter(
            "watchdog_evaluations_total", "Rule evaluations (one per rule per group tick).",
            ["group"], registry=r)
        self.evaluation_failures = Counter(
            "watchdog_evaluation_failures_total",
            "Rule evaluations that failed (query error, limit exceeded...); state was kept.",
            ["group"], registry=r)
        self.missed_iterations = Counter(
            "watchdog_missed_iterations_total",
            "Scheduled group evaluations skipped because the previous one was still running "
            "or the process was too busy to start it in time.", ["group"], registry=r)
        self.last_evaluation = Gauge(
            "watchdog_rule_group_last_evaluation_timestamp_seconds",
            "Evaluation time of the group's last tick (Unix seconds).", ["group"], registry=r)
        self.query_duration = Histogram(
            "watchdog_query_duration_seconds", "Duration of one instant query to Prometheus.",
            buckets=EVAL_BUCKETS, registry=r)
        self.query_errors = Counter(
            "watchdog_query_errors_total", "Queries to Prometheus that failed.", registry=r)
        self.queries_batched = Counter(
            "watchdog_queries_batched_total",
            "Rule queries answered from a share of a batched query (rules that differ only in "
            "one label's value, asked as one); watchdog_query_duration_seconds_count counts the "
            "queries sent.", registry=r)
        self.datasource_up = Gauge(
            "watchdog_datasource_up",
            "1 while Prometheus answers queries, 0 after a tick in which every query failed.",
            registry=r)
        self.reloads = Counter(
            "watchdog_rule_reloads_total", "Rule folder reloads by trigger and result.",
            ["trigger", "result"], registry=r)

    def forget_group(self, group: str) -> None:
        """Drop the series of a group that no longer exists, so dashboards do not show it."""
        for metric in (self.evaluation_duration, self.evaluations, self.evaluation_failures,
                       self.missed_iterations, self.last_evaluation):
            with contextlib.suppress(KeyError):
                metric.remove(group)

    def add_state(self, name: str, help_text: str, labels: list[str],
                  read: Callable[[], Iterable[tuple[list[str], float]]]) -> None:
        """A gauge computed at scrape time by `read()`, which yields (label values, value)."""
        self.registry.register(_StateGauge(name, help_text, labels, read))


class _StateGauge(Collector):
    def __init__(self, name: str, help_text: str, labels: list[str],
                 read: Callable[[], Iterable[tuple[list[str], float]]]) -> None:
        self._name, self._help, self._labels, self._read = name, help_text, labels, read

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self._name, self._help, labels=self._labels)]

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self._name, self._help, labels=self._labels)
        for values, v in self._read():
            family.add_metric(values, v)
        return [family]


class ActionEventCounter:
    """Counts what the action subsystem reports (`ActionEventSink`): deploy markers and their
    verdicts by service, action runs by action and event. For Grafana annotations and change
    failure rates from Prometheus; the durable record is /api/v1/deploys and
    /api/v1/actions/runs. An event whose transaction is rolled back afterwards was still
    counted: these are for charts, not for accounting."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.deploys = Counter(
            "watchdog_deploys_total",
            "Deploy markers by service: started (a marker was set), succeeded (its verification "
            "window passed), failed.", ["service", "event"], registry=registry)
        self.actions = Counter(
            "watchdog_action_events_total",
            "Action runs by action and event: started, succeeded, failed, would_run, verified, "
            "not_helped.", ["action", "event"], registry=registry)

    async def on_action_event(self, event: ActionEvent, tx: Tx | None = None) -> None:
        if event.action == "deploy":
            service = str(event.extra.get("service") or event.labels.get("service", ""))
            self.deploys.labels(service=service, event=event.kind).inc()
        else:
            self.actions.labels(action=event.action, event=event.kind).inc()


class InstrumentedSource:
    """A `Source` that records each query's duration and failure, then defers to `inner`.

    Other methods (`query_range`, `buildinfo`, `url`) pass through untouched.
    """

    def __init__(self, inner: Source, metrics: Metrics) -> None:
        self.inner = inner
        self._metrics = metrics

    async def query(self, expr: str, at: float) -> list[Sample]:
        started = time.perf_counter()
        try:
            return await self.inner.query(expr, at)
        except Exception:
            self._metrics.query_errors.inc()
            raise
        finally:
            self._metrics.query_duration.observe(time.perf_counter() - started)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
