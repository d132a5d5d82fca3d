"""Fake Slack, PagerDuty, webhook and Alertmanager-API servers: real in-process aiohttp servers on
127.0.0.1 that check the documented request shapes, record what they accepted, and can be told to
answer 429 with Retry-After, 5xx, a 4xx, or hang. Also `FakeTime`, a clock whose `sleep` moves
time forward at once, so backoff and rate limits run without waiting.

Test helpers only; nothing in the package imports this. They bind loopback ports only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

# ---- time --------------------------------------------------------------------------------


class FakeTime:
    """`clock()` reads it; `await sleep(d)` advances it by d and yields once to the loop."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- validators: the documented shapes -----------------------------------------------------

SLACK_BLOCK_TYPES = {"section", "header", "context", "divider", "actions", "image"}


def _text_obj(t: Any, where: str, limit: int, errors: list[str],
              kinds: tuple[str, ...] = ("mrkdwn", "plain_text")) -> None:
    if not isinstance(t, dict) or t.get("type") not in kinds:
        errors.append(f"{where}: text object must have type in {kinds}")
        return
    text = t.get("text")
    if not isinstance(text, str) or not text:
        errors.append(f"{where}: text must be a non-empty string")
    elif len(text) > limit:
        errors.append(f"{where}: text is {len(text)} chars, limit {limit}")


def validate_slack_blocks(blocks: Any, where: str, errors: list[str]) -> None:
    if not isinstance(blocks, list):
        errors.append(f"{where}: blocks must be a list")
        return
    if len(blocks) > 50:
        errors.append(f"{where}: {len(blocks)} blocks, limit 50")
    ids: set[str] = set()
    for i, b in enumerate(blocks):
        w = f"{where}[{i}]"
        if not isinstance(b, dict) or b.get("type") not in SLACK_BLOCK_TYPES:
            errors.append(f"{w}: unknown block type")
            continue
        if "block_id" in b:
            if b["block_id"] in ids or len(b["block_id"]) > 255:
                errors.append(f"{w}: bad block_id")
            ids.add(b["block_id"])
        t = b["type"]
        if t == "header":
            _text_obj(b.get("text"), f"{w}.text", 150, errors, ("plain_text",))
        elif t == "section":
            if "text" not in b and "fields" not in b:
                errors.append(f"{w}: section needs text or fields")
            if "text" in b:
                _text_obj(b["text"], f"{w}.text", 3000, errors)
            if "fields" in b:
                if not isinstance(b["fields"], list) or len(b["fields"]) > 10:
                    errors.append(f"{w}.fields: at most 10")
                else:
                    for j, f in enumerate(b["fields"]):
                        _text_obj(f, f"{w}.fields[{j}]", 2000, errors)
        elif t == "context":
            els = b.get("elements")
            if not isinstance(els, list) or not 1 <= len(els) <= 10:
                errors.append(f"{w}.elements: 1 to 10 elements")
            else:
                for j, e in enumerate(els):
                    _text_obj(e, f"{w}.elements[{j}]", 3000, errors)
        elif t == "actions":
            els = b.get("elements")
            if not isinstance(els, list) or not 1 <= len(els) <= 25:
                errors.append(f"{w}.elements: 1 to 25 elements")
            else:
                for j, e in enumerate(els):
                    if not isinstance(e, dict) or e.get("type") != "button":
                        errors.append(f"{w}.elements[{j}]: only buttons expected")
                        continue
                    _text_obj(e.get("text"), f"{w}.elements[{j}].text", 75, errors,
                              ("plain_text",))
                    url = e.get("url", "")
                    if not isinstance(url, str) or len(url) > 3000:
                        errors.append(f"{w}.elements[{j}].url: at most 3000 chars")


def validate_slack(body: Any) -> list[str]:
    """Slack incoming webhook: `text` (the notification fallback) and/or `blocks`/`attachments`."""
    errors: list[str] = []
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    if not any(k in body for k in ("text", "blocks", "attachments")):
        errors.append("needs text, blocks or attachments")
    if "text" in body and (not isinstance(body["text"], str) or len(body["text"]) > 40000):
        errors.append("text must be a string of at most 40,000 chars")
    if ("blocks" in body or "attachments" in body) and not body.get("text"):
        errors.append("text is required as the notification fallback when using blocks")
    if "blocks" in body:
        validate_slack_blocks(body["blocks"], "blocks", errors)
    for i, att in enumerate(body.get("attachments", [])):
        if not isinstance(att, dict):
            errors.append(f"attachments[{i}] must be an object")
            continue
        color = att.get("color")
        if color is not None and not re.fullmatch(r"#[0-9A-Fa-f]{6}|good|warning|danger",
                                                  str(color)):
            errors.append(f"attachments[{i}].color: bad colour {color!r}")
        if "blocks" in att:
            validate_slack_blocks(att["blocks"], f"attachments[{i}].blocks", errors)
    return errors


PD_SEVERITIES = {"critical", "error", "warning", "info"}


def _iso(ts: Any) -> bool:
    try:
        datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
        return True
    except ValueError:
        return False


def validate_pagerduty(body: Any) -> list[str]:
    """Events API v2 (developer.pagerduty.com/docs/events-api-v2/trigger-events)."""
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    errors: list[str] = []
    if not isinstance(body.get("routing_key"), str) or len(body["routing_key"]) != 32:
        errors.append("routing_key must be a 32-character string")
    action = body.get("event_action")
    if action not in ("trigger", "acknowledge", "resolve"):
        errors.append("event_action must be trigger, acknowledge or resolve")
    dk = body.get("dedup_key")
    if dk is not None and (not isinstance(dk, str) or not dk or len(dk) > 255):
        errors.append("dedup_key must be a string of 1 to 255 chars")
    if action in ("acknowledge", "resolve") and not dk:
        errors.append("dedup_key is required to acknowledge or resolve")
    if action == "trigger":
        p = body.get("payload")
        if not isinstance(p, dict):
            return [*errors, "payload is required for trigger"]
        s = p.get("summary")
        if not isinstance(s, str) or not s or len(s) > 1024:
            errors.append("payload.summary must be 1 to 1024 chars")
        if not isinstance(p.get("source"), str) or not p["source"]:
            errors.append("payload.source is required")
        if p.get("severity") not in PD_SEVERITIES:
            errors.append(f"payload.severity must be one of {sorted(PD_SEVERITIES)}")
        if "timestamp" in p and not _iso(p["timestamp"]):
            errors.append("payload.timestamp must be ISO 8601")
        if "custom_details" in p and not isinstance(p["custom_details"], dict):
            errors.append("payload.custom_details must be an object")
        for k in ("component", "group", "class"):
            if k in p and not isinstance(p[k], str):
                errors.append(f"payload.{k} must be a string")
    for i, link in enumerate(body.get("links", [])):
        if not isinstance(link, dict) or not isinstance(link.get("href"), str):
            errors.append(f"links[{i}].href is required")
    return errors


def validate_pd_change(body: Any) -> list[str]:
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    errors = []
    if not isinstance(body.get("routing_key"), str) or len(body["routing_key"]) != 32:
        errors.append("routing_key must be a 32-character string")
    p = body.get("payload")
    if not isinstance(p, dict) or not isinstance(p.get("summary"), str) or not p["summary"]:
        errors.append("payload.summary is required")
    elif len(p["summary"]) > 1024:
        errors.append("payload.summary too long")
    return errors


def validate_webhook_v4(body: Any) -> list[str]:
    """Alertmanager's webhook message (prometheus/alertmanager notify/webhook)."""
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    errors = []
    if body.get("version") != "4":
        errors.append('version must be "4"')
    for k, t in (("groupKey", str), ("status", str), ("receiver", str), ("groupLabels", dict),
                 ("commonLabels", dict), ("commonAnnotations", dict), ("externalURL", str),
                 ("alerts", list), ("truncatedAlerts", int)):
        if not isinstance(body.get(k), t):
            errors.append(f"{k} must be a {t.__name__}")
    if body.get("status") not in ("firing", "resolved"):
        errors.append("status must be firing or resolved")
    for i, a in enumerate(body.get("alerts", [])):
        for k, t in (("status", str), ("labels", dict), ("annotations", dict),
                     ("startsAt", str), ("endsAt", str), ("generatorURL", str),
                     ("fingerprint", str)):
            if not isinstance(a.get(k), t):
                errors.append(f"alerts[{i}].{k} must be a {t.__name__}")
        for k in ("startsAt", "endsAt"):
            if isinstance(a.get(k), str) and not _iso(a[k]) and a[k] != "0001-01-01T00:00:00Z":
                errors.append(f"alerts[{i}].{k} is not RFC 3339")
    return errors


def validate_am_alerts(body: Any) -> list[str]:
    """Alertmanager API v2 `postableAlerts`."""
    if not isinstance(body, list):
        return ["body must be a JSON list"]
    errors = []
    for i, a in enumerate(body):
        if not isinstance(a, dict) or not isinstance(a.get("labels"), dict) or not a["labels"]:
            errors.append(f"[{i}].labels is required")
            continue
        for k in ("startsAt", "endsAt"):
            if k in a and not _iso(a[k]):
                errors.append(f"[{i}].{k} is not RFC 3339")
    return errors


# ---- the server ----------------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    hang: bool = False  # accept the request, then never answer (until the server closes)
    accept: bool = False  # with a non-2xx status or hang: still record the request as accepted


OK = Reply()
HANG = Reply(hang=True)


def status(code: int, body: str = "", **headers: str) -> Reply:
    return Reply(code, {k.replace("_", "-"): v for k, v in headers.items()}, body)


class FakeChat:
    """One server with the endpoints of several services:

    - `POST /slack/{path}` — Slack incoming webhook (answers `ok`, or 400 `invalid_blocks`);
    - `POST /v2/enqueue`, `POST /v2/change/enqueue` — PagerDuty Events API v2 (202 JSON);
      PagerDuty's dedup is modelled: `incidents` maps dedup_key to open/resolved, `pages`
      counts the triggers that opened a new incident;
    - `POST /hook/{name}` — an Alertmanager-webhook (v4) receiver;
    - `POST /api/v2/alerts` — Alertmanager's alert API.

    `then(kind, *replies)` scripts the next answers of one kind ("slack", "pagerduty",
    "webhook", "alertmanager"); without a script every valid request gets a success.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock = clock
        self.accepted: dict[str, list[Any]] = {k: [] for k in
                                               ("slack", "pagerduty", "pd_change", "webhook",
                                                "alertmanager")}
        self.paths: dict[str, list[str]] = {k: [] for k in self.accepted}
        self.times: dict[str, list[float]] = {k: [] for k in self.accepted}
        self.requests: Counter[str] = Counter()
        self.rejected: list[tuple[str, list[str]]] = []
        self.script: dict[str, deque[Reply]] = {}
        self.incidents: dict[str, str] = {}
        self.pages = 0
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def then(self, kind: str, *replies: Reply) -> None:
        self.script.setdefault(kind, deque()).extend(replies)

    async def start(self) -> FakeChat:
        app = web.Application()
        app.router.add_post("/slack/{path:.*}", self._slack)
        app.router.add_post("/v2/enqueue", self._pd)
        app.router.add_post("/v2/change/enqueue", self._pd_change)
        app.router.add_post("/hook/{name}", self._webhook)
        app.router.add_post("/api/v2/alerts", self._am)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, kind: str, request: web.Request,
                      validate: Callable[[Any], list[str]],
                      ok: Callable[[Any], web.Response],
                      bad: Callable[[list[str]], web.Response],
                      on_accept: Callable[[Any], None] | None = None) -> web.Response:
        self.requests[kind] += 1
        try:
            body = json.loads(await request.read())
        except ValueError:
            self.rejected.append((kind, ["body is not JSON"]))
            return bad(["body is not JSON"])
        errors = validate(body)
        if errors:
            self.rejected.append((kind, errors))
            return bad(errors)
        script = self.script.get(kind)
        reply = script.popleft() if script else OK
        if (200 <= reply.status < 300 and not reply.hang) or reply.accept:
            self._accept(kind, request, body, on_accept)
        if reply.hang:
            await self._release.wait()
            raise web.HTTPServiceUnavailable()
        if 200 <= reply.status < 300:
            return ok(body)
        return web.Response(status=reply.status, text=reply.body, headers=reply.headers)

    def _accept(self, kind: str, request: web.Request, body: Any,
                on_accept: Callable[[Any], None] | None) -> None:
        self.accepted[kind].append(body)
        self.paths[kind].append(request.path)
        self.times[kind].append(self.clock() if self.clock else asyncio.get_running_loop().time())
        if on_accept is not None:
            on_accept(body)

    async def _slack(self, request: web.Request) -> web.Response:
        return await self._handle(
            "slack", request, validate_slack, lambda b: web.Response(text="ok"),
            lambda e: web.Response(status=400, text="invalid_blocks"))

    def _pd_dedup(self, body: Any) -> None:
        key, action = body.get("dedup_key"), body["event_action"]
        if action == "trigger":
            if self.incidents.get(key) != "open":
                self.pages += 1
            self.incidents[key] = "open"
        elif action == "resolve" and key in self.incidents:
            self.incidents[key] = "resolved"

    async def _pd(self, request: web.Request) -> web.Response:
        return await self._handle(
            "pagerduty", request, validate_pagerduty,
            lambda b: web.json_response({"status": "success", "message": "Event processed",
                                         "dedup_key": b.get("dedup_key") or "generated"},
                                        status=202),
            lambda e: web.json_response({"status": "invalid event",
                                         "message": "Event object is invalid", "errors": e},
                                        status=400),
            self._pd_dedup)

    async def _pd_change(self, request: web.Request) -> web.Response:
        return await self._handle(
            "pd_change", request, validate_pd_change,
            lambda b: web.json_response({"status": "success", "message": "Change event "
                                         "processed"}, status=202),
            lambda e: web.json_response({"status": "invalid event", "errors": e}, status=400))

    async def _webhook(self, request: web.Request) -> web.Response:
        return await self._handle(
            "webhook", request, validate_webhook_v4, lambda b: web.Response(text="ok"),
            lambda e: web.json_response({"errors": e}, status=400))

    async def _am(self, request: web.Request) -> web.Response:
        return await self._handle(
            "alertmanager", request, validate_am_alerts, lambda b: web.json_response({}),
            lambda e: web.json_response({"code": 400, "message": "; ".join(e)}, status=400))


# ---- a notification harness: handler + fakes + SQLite, on FakeTime -------------------------

class AlertBoard:
    """A minimal `AlertView`: what the engine would report."""

    def __init__(self) -> None:
        self.by_fp: dict[str, Any] = {}

    def alerts(self) -> list[Any]:
        return list(self.by_fp.values())

    def find(self, rule: str, fingerprint: str) -> Any:
        a = self.by_fp.get(fingerprint)
        return a if a is not None and a.rule == rule else None


def make_alert(name: str = "HighErrorRate", *, at: float, severity: str | None = "critical",
               value: float = 0.17, for_: float = 300.0, annotations: dict[str, str] | None = None,
               threshold: str | None = "> 0.1", **labels: str) -> Any:
    from watchdog.labels import fingerprint
    from watchdog.state import Alert

    lab = {"alertname": name, **labels}
    if severity:
        lab["severity"] = severity
    ann = annotations if annotations is not None else {
        "summary": f"{name} on {labels.get('service', 'checkout')}",
        "runbook_url": "https://runbooks.example/high-error-rate",
    }
    return Alert(rule=name, group="checkout", fingerprint=fingerprint(lab), labels=lab,
                 annotations=ann, state="firing", active_at=at - for_, value=value,
                 fired_at=at, severity=severity, threshold=threshold)


class Harness:
    """One NotifyHandler wired like the daemon wires it, with fake servers and a FakeTime."""

    def __init__(self, storage: Any, session: Any, clock: FakeTime, chat: FakeChat,
                 rules_yaml: str, leases: Any = None, **kwargs: Any) -> None:
        from prometheus_client import CollectorRegistry

        from watchdog.handlers import DaemonContext, SoloLeases
        from watchdog.notify.handler import NotifyHandler
        from watchdog.settings import Settings
        from watchdog.testing import FakeSource

        self.storage, self.session, self.clock, self.chat = storage, session, clock, chat
        self.board = AlertBoard()
        self.registry = CollectorRegistry()
        settings = Settings(external_url="http://watchdog.example",
                            prometheus_url="http://prometheus.example:9090",
                            evaluation_interval=30.0, resend_delay=60.0)
        self.ctx = DaemonContext(settings=settings, storage=storage, session=session,
                                 source=FakeSource(), alerts=self.board, clock=clock,
                                 registry=self.registry, leases=leases or SoloLeases())
        kwargs.setdefault("tick", None)
        kwargs.setdefault("sleep", clock.sleep)
        kwargs.setdefault("timeout", 2.0)
        self.handler = NotifyHandler(self.ctx, **kwargs)
        self.ctx.commands.update(self.handler.commands())
        self.rules_yaml = rules_yaml

    async def start(self) -> Harness:
        await self.handler.start()
        await self.set_rules(self.rules_yaml)
        return self

    async def set_rules(self, text: str) -> None:
        from watchdog.rulesdir import build

        rs = build({"rules.yml": text.replace("CHAT", self.chat.url).encode()})
        assert not rs.problems, rs.problems
        self.ctx.rules = rs
        await self.handler.on_rules(rs)

    async def events(self, *events: Any) -> None:
        for e in events:
            if e.kind in ("firing", "escalated", "deescalated", "resolved"):
                self.board.by_fp[e.alert.fingerprint] = e.alert
        async with self.storage.transaction() as tx:
            await self.handler.on_events(tx, list(events), self.clock())

    async def fire(self, *alerts: Any) -> None:
        from watchdog.state import Event

        await self.events(*(Event("firing", self.clock(), a) for a in alerts))

    async def resolve(self, *alerts: Any) -> list[Any]:
        from dataclasses import replace

        from watchdog.state import Event

        done = [replace(a, state="inactive", resolved_at=self.clock(), value=None)
                for a in alerts]
        await self.events(*(Event("resolved", self.clock(), a) for a in done))
        return done

    async def tick(self, seconds: float = 0.0) -> None:
        """Let time pass, flush, and wait for delivery."""
        self.clock.advance(seconds)
        await self.handler.flush(self.clock())
        await self.drain()

    async def drain(self) -> None:
        assert await self.handler.outbox.drain(5.0), "outbox did not drain"

    async def stop(self) -> None:
        await self.handler.stop()

    def metric(self, name: str, **labels: str) -> float:
        v = self.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v


@contextlib.asynccontextmanager
async def running_harness(tmp_path: Path, chat: FakeChat, rules_yaml: str,
                          **kwargs: Any) -> AsyncIterator[Harness]:
    """A started Harness on a fresh FakeTime (which `chat` is switched to) over
    `tmp_path/w.db`; stopped after the block, which then checks `chat` rejected nothing."""
    import aiohttp

    from watchdog.storage import open_storage

    clock = FakeTime()
    chat.clock = clock
    storage = await open_storage(f"sqlite:///{tmp_path / 'w.db'}")
    try:
        async with aiohttp.ClientSession() as s:
            harness = await Harness(storage, s, clock, chat, rules_yaml, **kwargs).start()
            yield harness
            await harness.stop()
    finally:
        await storage.close()
    assert chat.rejected == [], chat.rejected
