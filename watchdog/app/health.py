"""Is Prometheus answering? The datasource's health as the evaluations see it, the cheap probe
that answers `/readyz` before any tick has, and the built-in `WatchdogDatasourceDown` alert.

The built-in alert is an ordinary alerting rule in a group of its own, evaluated by the same
`engine.tick` as every rule file's group: its "query" is answered by `HealthSource` from the
failure count instead of by Prometheus. So it has the same state machine, persistence, restore
and notifications as any alert, and no second code path.

Must not: decide anything about other rules, or read the clock (callers pass `at`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from watchdog.engine import GroupRuntime, TickResult, tick
from watchdog.evaluate import Context, Sample
from watchdog.gocompat import rfc3339
from watchdog.model import Group

log = structlog.get_logger("watchdog.health")

DATASOURCE_DOWN = "WatchdogDatasourceDown"
BUILTIN_GROUP = "watchdog"
BUILTIN_FILE = "<builtin>"  # cannot clash with a file path ("<" never starts one here)
BUILTIN_KEY = f"{BUILTIN_FILE};{BUILTIN_GROUP}"
_EXPR = "watchdog_datasource_failed_evaluations"


def builtin_group() -> Group:
    return Group.model_validate({"name": BUILTIN_GROUP, "rules": [{
        "alert": DATASOURCE_DOWN, "expr": _EXPR,
        "labels": {"severity": "critical"},
        "annotations": {
            "summary": "The watchdog cannot query Prometheus at {{ $labels.datasource }}",
            "description": "{{ $value }} consecutive evaluations failed; alerts neither fire "
                           "nor resolve meanwhile. The last error is on /readyz and "
                           "/api/v1/status.",
        }}]})


@dataclass
class DatasourceHealth:
    """What the evaluations say about Prometheus, and the built-in alert's runtime."""

    url: str  # already redacted
    down_after: int  # consecutive all-failed evaluations before the alert fires
    up: bool | None = None
    failures: int = 0  # consecutive evaluations in which every query failed
    error: str | None = None
    down_since: float | None = None
    runtime: GroupRuntime = field(
        default_factory=lambda: GroupRuntime.new(BUILTIN_FILE, builtin_group()))

    # ---- what each evaluation tells -----------------------------------------------------------

    def observe(self, res: TickResult, at: float) -> bool:
        """Take one group's tick into account; True when the built-in alert must be stepped
        (the datasource went down for long enough, or came back while the alert is active)."""
        if res.queries == 0:
            return False
        if res.failed_queries < res.queries:
            if self.up is False:
                log.info("Prometheus answers again", prometheus=self.url,
                         failed_evaluations=self.failures)
            self.up, self.error = True, None
            self.failures, self.down_since = 0, None
            return bool(self.runtime.alerts())
        self.failures += 1
        self.error = next(iter(res.errors.values()), "all queries failed")
        if self.down_since is None:
            self.down_since = at
        self.up = False
        if self.failures < self.down_after:
            return False
        if self.failures == self.down_after:
            log.error("Prometheus is not answering: no rule can fire or resolve",
                      prometheus=self.url, error=self.error, failed_evaluations=self.failures)
        return True

    async def step(self, at: float, ctx: Context) -> TickResult:
        """Evaluate the built-in rule through `engine.tick`; the caller commits its changes
        like any group's, and then applies them."""
        return await tick(self.runtime, at, HealthSource(self), ctx, apply=False)

    def probed(self, ok: bool, error: str | None, have_rules: bool) -> None:
        """The probe's answer counts only until evaluations say more."""
        if not ok:
            if self.up is not True:
                self.up, self.error = False, error
            return
        if self.up is None or not have_rules:
            self.up, self.error = True, None

    def readiness(self) -> tuple[bool, str | None]:
        if self.up is None:
            return False, f"waiting for Prometheus at {self.url} to answer"
        if not self.up:
            since = (f" since {rfc3339(self.down_since)}"
                     if self.down_since is not None else "")
            failed = (f"; {self.failures} consecutive evaluations failed{since}"
                      if self.failures else "")
            return False, f"Prometheus at {self.url} is not answering: {self.error}{failed}"
        return True, None


class HealthSource:
    """A `Source` that answers the built-in rule's one query from `DatasourceHealth`: one
    sample while the datasource has been down `down_after` evaluations, none otherwise."""

    def __init__(self, health: DatasourceHealth) -> None:
        self.health = health

    async def query(self, expr: str, at: float) -> list[Sample]:
        h = self.health
        if expr != _EXPR or h.up is not False or h.failures < h.down_after:
            return []
        return [Sample({"datasource": h.url}, float(h.failures))]
