"""The daemon's one MQTT connection (aiomqtt 2.x): the event stream, the retained status with its
last will, the `mqtt` receiver's and actions' publishes, and (with MQTT_COMMANDS) the command
topics.

- every alert and action event is published as JSON on `<prefix>/events/<alertname>`;
- `<prefix>/status` is retained: `online` once connected, `offline` on a clean stop and, through
  the broker's last will, when the connection dies;
- with `settings.mqtt_commands`, `<prefix>/commands/<name>` dispatches the JSON payload to
  `ctx.commands[name]` (the HTTP API's JSON) and answers on `<prefix>/responses/<name>`.

The client is created inside the running loop, and a reconnect loop re-enters `async with client`
with backoff, so the daemon keeps running while the broker is away; events published meanwhile
wait in a bounded queue (oldest dropped first). It must never block the caller on the broker:
`publish_event` only queues, and `publish` raises at once when disconnected (the outbox retries).
It must not log the URL's password.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import ssl
from collections import deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
import structlog

from watchdog.handlers import ActionEvent, DaemonContext
from watchdog.state import Event
from watchdog.webinput import parse_json

log = structlog.get_logger(__name__)

QUEUE_LIMIT = 10_000  # events kept while the broker is away (~a day of a busy rules folder)


class MqttUnavailable(ConnectionError):
    """Not connected to the broker right now."""


def topic_part(text: str) -> str:
    """A single topic level: MQTT wildcards and separators would change what it means."""
    out = "".join("_" if ch in "/+#\0" else ch for ch in text)
    return out or "_"


def _number(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) or math.isinf(v) else v


def event_json(e: Event | ActionEvent) -> tuple[str, dict[str, Any]]:
    """(topic level, document) for an event."""
    if isinstance(e, ActionEvent):
        name = e.labels.get("alertname") or e.rule or e.action
        return name, {"type": "action", "kind": e.kind, "at": e.at, "action": e.action,
                      "rule": e.rule, "labels": dict(e.labels), "step": e.step,
                      "detail": e.detail, "run_id": e.run_id}
    a = e.alert
    name = a.labels.get("alertname", a.rule)
    return name, {
        "type": "alert", "kind": e.kind, "at": e.at, "rule": a.rule, "group": a.group,
        "fingerprint": a.fingerprint, "incident": a.incident_id, "labels": dict(a.labels),
        "annotations": dict(a.annotations), "state": a.state, "value": _number(a.value),
        "severity": a.severity, "previous_severity": e.previous_severity,
        "threshold": a.threshold, "baseline": _number(a.baseline), "activeAt": a.active_at,
        "firedAt": a.fired_at, "resolvedAt": a.resolved_at,
    }


def parse_url(url: str) -> dict[str, Any]:
    """`mqtt://user:pass@host:1883` (or `mqtts://`, TLS) into aiomqtt.Client arguments."""
    u = urlsplit(url if "://" in url else f"mqtt://{url}")
    if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError("MQTT_URL must start with mqtt:// or mqtts://")
    tls = u.scheme in ("mqtts", "ssl")
    out: dict[str, Any] = {"hostname": u.hostname or "localhost",
                           "port": u.port or (8883 if tls else 1883)}
    if u.username:
        out["username"] = unquote(u.username)
    if u.password:
        out["password"] = unquote(u.password)
    if tls:
        out["tls_context"] = ssl.create_default_context()
    return out


def _consume_disconnect(client: aiomqtt.Client) -> None:
    """aiomqtt keeps the reason of an unexpected disconnect in a future that only its message
    iterator reads; when our publisher noticed first, nobody does, and asyncio would log "Future
    exception was never retrieved" at every broker restart. We already logged the loss."""
    fut = getattr(client, "_disconnected", None)
    if isinstance(fut, asyncio.Future) and fut.done() and not fut.cancelled():
        fut.exception()


class MqttBus:
    def __init__(self, ctx: DaemonContext, *, reconnect_interval: float = 1.0,
                 max_reconnect_interval: float = 30.0, keepalive: int = 30,
                 publish_timeout: float = 10.0, identifier: str | None = None) -> None:
        if not ctx.settings.mqtt_url:
            raise ValueError("MqttBus needs settings.mqtt_url")
        self.ctx = ctx
        self.prefix = ctx.settings.mqtt_prefix.rstrip("/")
        self.commands_enabled = ctx.settings.mqtt_commands
        self._args = parse_url(ctx.settings.mqtt_url)
        self.reconnect_interval = reconnect_interval
        self.max_reconnect_interval = max_reconnect_interval
        self.keepalive = keepalive
        self.publish_timeout = publish_timeout
        self.identifier = identifier
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._queue: deque[tuple[str, bytes]] = deque(maxlen=QUEUE_LIMIT)
        self._queued = asyncio.Event()
        self._connected = asyncio.Event()
        self._command_tasks: set[asyncio.Task[None]] = set()
        self.connects = 0  # how many times a connection was established (tests, status)

    @property
    def status_topic(self) -> str:
        return f"{self.prefix}/status"

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mqtt-bus")

    async def stop(self) -> None:
        client = self._client
        if client is not None:
            # A clean DISCONNECT does not fire the last will, so say `offline` ourselves.
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await client.publish(self.status_topic, "offline", qos=1, retain=True,
                                     timeout=2.0)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for t in list(self._command_tasks):
            t.cancel()

    async def publish(self, topic: str, payload: bytes | str, qos: int = 0,
                      retain: bool = False) -> None:
        client = self._client
        if client is None:
            raise MqttUnavailable("not connected to the MQTT broker")
        try:
            await client.publish(topic, payload, qos=qos, retain=retain,
                                 timeout=self.publish_timeout)
        except aiomqtt.MqttError as e:
            raise MqttUnavailable(f"MQTT publish failed: {type(e).__name__}") from None

    def publish_event(self, e: Event | ActionEvent) -> None:
        name, doc = event_json(e)
        self._queue.append((f"{self.prefix}/events/{topic_part(name)}",
                            json.dumps(doc, separators=(",", ":")).encode()))
        self._queued.set()

    # ---- the connection loop ------------------------------------------------------------

    def _client_for_loop(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            **self._args, identifier=self.identifier, keepalive=self.keepalive,
            will=aiomqtt.Will(self.status_topic, "offline", qos=1, retain=True))

    async def _run(self) -> None:
        delay = self.reconnect_interval
        client = self._client_for_loop()  # created here: aiomqtt needs the running loop
        while True:
            try:
                async with client:
                    self._client = client
                    self._connected.set()
                    self.connects += 1
                    delay = self.reconnect_interval
                    log.info("mqtt connected", host=self._args["hostname"],
                             port=self._args["port"])
                    await client.publish(self.status_topic, "online", qos=1, retain=True,
                                         timeout=self.publish_timeout)
                    if self.commands_enabled:
                        await client.subscribe(f"{self.prefix}/commands/#", qos=1)
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._send_events(client))
                        tg.create_task(self._receive(client))
            except* aiomqtt.MqttError as eg:
                log.warning("mqtt connection lost; reconnecting",
                            error=type(eg.exceptions[0]).__name__, retry_in=delay)
            except* Exception as eg:
                log.error("mqtt bus error; reconnecting",
                          error=type(eg.exceptions[0]).__name__, retry_in=delay)
            finally:
                self._client = None
                self._connected.clear()
                _consume_disconnect(client)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_reconnect_interval)

    async def _send_events(self, client: aiomqtt.Client) -> None:
        while True:
            while self._queue:
                topic, payload = self._queue[0]
                await client.publish(topic, payload, qos=1, timeout=self.publish_timeout)
                # Only dropped once the broker took it: a lost connection keeps it queued.
                if self._queue and self._queue[0] == (topic, payload):
                    self._queue.popleft()
            self._queued.clear()
            await self._queued.wait()

    async def _receive(self, client: aiomqtt.Client) -> None:
        base = f"{self.prefix}/commands/"
        async for message in client.messages:
            topic = str(message.topic)
            if not topic.startswith(base):
                continue
            t = asyncio.create_task(self._command(client, topic[len(base):], message.payload))
            self._command_tasks.add(t)
            t.add_done_callback(self._command_tasks.discard)

    async def _command(self, client: aiomqtt.Client, name: str, payload: Any) -> None:
        reply: dict[str, Any]
        body: Any = None
        try:
            raw = payload if isinstance(payload, bytes | bytearray) else str(payload).encode()
            # the HTTP API's bounded reader: deep nesting, huge numbers, NaN -> an error reply
            body = parse_json(bytes(raw)) if raw.strip() else {}
            fn = self.ctx.commands.get(name)
            if fn is None:
                raise ValueError(f"unknown command {name!r}; known: "
                                 f"{', '.join(sorted(self.ctx.commands)) or 'none'}")
            if not isinstance(body, Mapping):
                raise ValueError("the payload must be a JSON object")
            reply = {"ok": True, "result": await fn(body)}
        except (ValueError, LookupError) as e:
            reply = {"ok": False, "error": str(e)}
        except Exception as e:
            log.exception("mqtt command failed", command=name)
            reply = {"ok": False, "error": f"internal error: {type(e).__name__}"}
        if isinstance(body, Mapping) and "request_id" in body:
            reply["request_id"] = body["request_id"]
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            await client.publish(f"{self.prefix}/responses/{topic_part(name)}",
                                 json.dumps(reply, default=str), qos=1,
                                 timeout=self.publish_timeout)
