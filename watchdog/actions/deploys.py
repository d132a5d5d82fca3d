"""Deploy markers: `POST /api/v1/deploys` (or the MQTT "deploy" command) captures the baselines of
`baseline: {deploy: true}` rules and opens a verification window — the runbooks' "30-minute
stability window" — at whose end a pass/fail summary is notified.

Shell: queries Prometheus, writes the store, emits `ActionEvent`s (kind "started" when the marker
is set, "succeeded" for a pass, "failed" for a fail; action "deploy"). It must not evaluate
rules: the captured values go to the engine through `deploy_baselines()`, which the daemon
passes into `evaluate.Context` on every tick.

Which series and alerts a marker concerns: those whose labels include the marker's `labels`, or
`{service: <service>}` when it gives none — the label the example rules and the runbooks use.
A later marker replaces the baseline of each series it captures; other series keep theirs.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import structlog

from watchdog.actions.store import ActionStore, DeployRow
from watchdog.actions.timing import Stopping, Waker
from watchdog.durations import format_duration
from watchdog.handlers import ActionEvent, DaemonContext
from watchdog.labels import fingerprint, format_labels, without_name
from watchdog.model import AlertingRule, Group
from watchdog.state import Event
from watchdog.storage import Tx

log = structlog.get_logger(__name__)

DEFAULT_WINDOW = 30 * 60.0  # USE-CASES: "watch a 30-minute stability window"
MAX_SUMMARY_LINES = 10  # a summary is a chat message, not a report


def concerns(labels: Mapping[str, str], match: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in match.items())


class DeployTracker:
    def __init__(self, ctx: DaemonContext, store: ActionStore, waker: Waker) -> None:
        self.ctx = ctx
        self.store = store
        self.waker = waker
        self.rules: list[tuple[Group, AlertingRule]] = []  # those with baseline: {deploy: true}
        self._baselines: dict[str, dict[str, float]] = {}
        self._open: dict[str, DeployRow] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def set_rules(self, rules: Sequence[tuple[Group, AlertingRule]]) -> None:
        self.rules = [(g, r) for g, r in rules if r.baseline is not None and r.baseline.deploy]

    def baselines(self) -> Mapping[str, Mapping[str, float]]:
        return self._baselines

    async def start(self) -> None:
        self._baselines = await self.store.baselines()
        for d in await self.store.deploys(status="open", limit=10_000):
            self._open[d.id] = d
            self._spawn(d)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, d: DeployRow) -> None:
        task = asyncio.create_task(self._window(d))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- marking ----------------------------------------------------------------------------

    async def mark(self, service: str, version: str, labels: Mapping[str, str],
                   window: float | None) -> dict[str, Any]:
        at = self.ctx.clock()
        match = dict(labels) or {"service": service}
        d = DeployRow(id=uuid.uuid4().hex, service=service, version=version, labels=match,
                      at=at, window_end=at + (DEFAULT_WINDOW if window is None else window),
                      status="open", summary="")
        captured, errors = await self._capture(match, at)
        # The marker and its baselines are stored before anyone is told about them.
        await self.store.insert_deploy(d, captured)
        for rule, fp, value, _ in captured:
            self._baselines.setdefault(rule, {})[fp] = value
        self._open[d.id] = d
        self._spawn(d)
        per_rule: dict[str, int] = {}
        for rule, *_ in captured:
            per_rule[rule] = per_rule.get(rule, 0) + 1
        detail = (f"deploy {service} {version}: baselines captured for {len(captured)} series; "
                  f"verifying for {format_duration(d.window_end - at)}")
        if errors:
            detail += f"; {len(errors)} rules could not be queried"
        log.info("deploy.marked", deploy_id=d.id, service=service, version=version,
                 series=len(captured), errors=errors)
        await self._emit("started", d, detail)
        return {"id": d.id, "service": service, "version": version, "labels": match, "at": at,
                "window_end": d.window_end, "baselines": per_rule, "errors": errors}

    async def _capture(self, match: Mapping[str, str], at: float
                       ) -> tuple[list[tuple[str, str, float, dict[str, str]]], dict[str, str]]:
        captured: list[tuple[str, str, float, dict[str, str]]] = []
        errors: dict[str, str] = {}
        for group, rule in self.rules:
            try:
                samples = await self.ctx.source.query(rule.expr, at - group.query_offset)
            except Exception as e:  # one failing rule must not lose the others' baselines
                errors[rule.alert] = str(e) or type(e).__name__
                continue
            for s in samples:
                labels = without_name(s.labels)
                if concerns(labels, match) and math.isfinite(s.value):
                    captured.append((rule.alert, fingerprint(labels), s.value, labels))
        return captured, errors

    # ---- the window -------------------------------------------------------------------------

    async def observe(self, tx: Tx, events: Sequence[Event]) -> None:
        """Inside the evaluation's transaction: alerts that fired within an open window."""
        for ev in events:
            if ev.kind != "firing":
                continue
            for d in list(self._open.values()):
                if d.at <= ev.at <= d.window_end and concerns(ev.alert.labels, d.labels):
                    await tx.deploys.record_alert(d.id, ev.alert.rule, ev.alert.fingerprint,
                                                  ev.alert.labels, ev.alert.value, ev.at)

    async def _window(self, d: DeployRow) -> None:
        try:
            await self.waker.sleep_until(d.window_end)
        except Stopping:
            return
        try:
            await self.close(d)
        except Exception:
            log.exception("deploy.close_failed", deploy_id=d.id)

    async def close(self, d: DeployRow) -> None:
        fired = await self.store.deploy_alerts(d.id)
        seen = {(rule, fingerprint(lb)) for rule, lb, _, _ in fired}
        for a in self.ctx.alerts.alerts():
            # Firing at the end counts even if it started before the marker: not stable.
            if a.state == "firing" and concerns(a.labels, d.labels) and \
                    (a.rule, fingerprint(a.labels)) not in seen:
                fired.append((a.rule, dict(a.labels), a.value, a.fired_at or a.active_at))
        window = format_duration(d.window_end - d.at)
        lines = [f"{rule}{format_labels({k: v for k, v in lb.items() if k != 'alertname'})}"
                 + ("" if v is None else f" = {v:.4g}") for rule, lb, v, _ in fired]
        comparison = await self._comparison(d)
        if fired:
            status = "failed"
            summary = (f"deploy {d.service} {d.version}: FAIL — {len(fired)} alerts fired in the "
                       f"{window} window: " + "; ".join(lines[:MAX_SUMMARY_LINES]))
        else:
            status = "passed"
            summary = f"deploy {d.service} {d.version}: PASS — no alerts in the {window} window"
        if comparison:
            summary += "; " + "; ".join(comparison[:MAX_SUMMARY_LINES])
        await self.store.finish_deploy(d.id, status, summary)
        self._open.pop(d.id, None)
        log.info("deploy.verified", deploy_id=d.id, status=status, summary=summary)
        await self._emit("succeeded" if status == "passed" else "failed", d, summary,
                         {"result": "pass" if status == "passed" else "fail",
                          "alerts": len(fired)})

    async def _comparison(self, d: DeployRow) -> list[str]:
        """Baseline at the marker against now, per captured series: "the week before and
        after" in small."""
        rows = await self.store.baselines_of(d.id)
        if not rows:
            return []
        exprs = {r.alert: (g, r) for g, r in self.rules}
        now = self.ctx.clock()
        current: dict[str, dict[str, float]] = {}
        out: list[str] = []
        for rule, labels, base in rows[:MAX_SUMMARY_LINES]:
            if rule not in current and rule in exprs:
                g, r = exprs[rule]
                try:
                    samples = await self.ctx.source.query(r.expr, now - g.query_offset)
                except Exception:
                    samples = []
                current[rule] = {fingerprint(without_name(s.labels)): s.value for s in samples}
            value = current.get(rule, {}).get(fingerprint(labels))
            change = ""
            if value is not None and base:
                change = f" ({(value - base) / abs(base):+.0%})"
            now_text = "n/a" if value is None else f"{value:.4g}"
            out.append(f"{rule}{format_labels(labels)} {base:.4g} → {now_text}{change}")
        return out

    async def _emit(self, kind: Literal["started", "succeeded", "failed"], d: DeployRow,
                    detail: str, extra: Mapping[str, Any] | None = None) -> None:
        event = ActionEvent(kind=kind, action="deploy", at=self.ctx.clock(),
                            labels={**d.labels, "service": d.service, "version": d.version},
                            detail=detail, run_id=f"deploy-{d.id}",
                            extra={"deploy_id": d.id, "service": d.service,
                                   "version": d.version, **(extra or {})})
        try:
            await self.ctx.emit_action_event(event)
        except Exception:
            log.exception("deploy.emit_failed", deploy_id=d.id)
