"""The MQTT bus against a real Mosquitto (started here on a free loopback port, never the system
one): events on `<prefix>/events/<alertname>`, the retained status and its last will, commands in
and responses out, and a broker restart that the bus survives without losing queued events."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from fakes_chat import FakeChat, FakeTime, Harness, free_port, make_alert
from storage_support import sqlite_storage

from watchdog.handlers import ActionEvent, DaemonContext
from watchdog.mqtt import MqttBus, MqttUnavailable, event_json, parse_url, topic_part
from watchdog.settings import Settings
from watchdog.state import Event

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
needs_broker = pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto (Debian package "
                                  "mosquitto; scripts/setup)")


class Broker:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        (workdir / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {workdir}/\n"
            # Started as root, mosquitto would switch to the `mosquitto` user and could not
            # write its persistence file here; as anyone else this line changes nothing.
            f"user {getpass.getuser()}\n")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.dir / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import socket
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # saves the persistence file
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


def bus_ctx(url: str, commands: bool = True, **kw: Any) -> DaemonContext:
    settings = Settings(mqtt_url=url, mqtt_commands=commands, mqtt_prefix="watchdog")
    return DaemonContext(settings=settings, storage=None, session=None, source=None,  # type: ignore[arg-type]
                         alerts=None, clock=time.time, registry=None, **kw)  # type: ignore[arg-type]


class Subscriber:
    """A test client that collects everything under `watchdog/#`."""

    def __init__(self, port: int, identifier: str = "test-sub") -> None:
        self.client = aiomqtt.Client("127.0.0.1", port, identifier=identifier,
                                     clean_session=False)
        self.messages: list[tuple[str, bytes, bool]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Subscriber:
        await self.client.__aenter__()
        await self.client.subscribe("watchdog/#", qos=1)
        self._task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(aiomqtt.MqttError):
            await self.client.__aexit__(None, None, None)

    async def _collect(self) -> None:
        try:
            async for m in self.client.messages:
                payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                self.messages.append((str(m.topic), payload, bool(m.retain)))
        except aiomqtt.MqttError:
            pass

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in self.messages if t == topic]

    async def wait(self, topic: str, count: int = 1, timeout: float = 10.0) -> list[bytes]:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.on(topic)) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no message on {topic}; got {self.messages}")
            await asyncio.sleep(0.02)
        return self.on(topic)


def test_url_and_topic_helpers() -> None:
    assert parse_url("mqtt://u:p%40ss@broker:1884") == {
        "hostname": "broker", "port": 1884, "username": "u", "password": "p@ss"}
    assert parse_url("mqtts://broker")["port"] == 8883
    with pytest.raises(ValueError):
        parse_url("http://broker")
    assert topic_part("a/b+c#") == "a_b_c_"
    a = make_alert(at=1.0, service="checkout")
    name, doc = event_json(Event("firing", 1.0, a))
    assert name == "HighErrorRate" and doc["kind"] == "firing" and doc["value"] == 0.17
    name, doc = event_json(ActionEvent("started", "rollback", 2.0, {"alertname": "X"}))
    assert name == "X" and doc["type"] == "action"


async def test_publish_without_a_broker_raises_and_the_bus_keeps_trying() -> None:
    bus = MqttBus(bus_ctx(f"mqtt://127.0.0.1:{free_port()}"), reconnect_interval=0.05,
                  max_reconnect_interval=0.1)
    await bus.start()
    try:
        await asyncio.sleep(0.2)
        assert not bus.connected
        with pytest.raises(MqttUnavailable):
            await bus.publish("x", "y")
        bus.publish_event(Event("firing", 1.0, make_alert(at=1.0)))  # queued, never blocks
    finally:
        await bus.stop()


@needs_broker
async def test_events_status_and_commands_through_a_real_broker(
        tmp_path: Path, broker: Broker) -> None:
    chat = await FakeChat().start()
    clock = FakeTime()
    try:
        async with sqlite_storage(tmp_path / "w.db") as db, \
                aiohttp.ClientSession() as s, Subscriber(broker.port) as sub:
            h = Harness(db, s, clock, chat, "receivers: []\n")
            await h.start()
            bus = MqttBus(replace(h.ctx, settings=Settings(
                mqtt_url=broker.url, mqtt_commands=True, mqtt_prefix="watchdog")),
                reconnect_interval=0.05)
            h.ctx.mqtt = bus
            await bus.start()
            try:
                assert await bus.wait_connected(5)
                assert (await sub.wait("watchdog/status"))[-1] == b"online"
                a = make_alert(at=clock(), service="checkout")
                await h.fire(a)
                [raw] = await sub.wait("watchdog/events/HighErrorRate")
                doc = json.loads(raw)
                assert doc["kind"] == "firing" and doc["labels"]["service"] == "checkout"
                assert doc["fingerprint"] == a.fingerprint

                await sub.client.publish("watchdog/commands/silence", json.dumps({
                    "matchers": [{"name": "service", "value": "checkout"}],
                    "endsAt": clock() + 3600, "request_id": "r1"}), qos=1)
                [reply] = await sub.wait("watchdog/responses/silence")
                body = json.loads(reply)
                assert body["ok"] is True and body["request_id"] == "r1"
                assert body["result"]["silenceID"] in h.handler.silences.silences

                await sub.client.publish("watchdog/commands/silence", b"{not json", qos=1)
                await sub.client.publish("watchdog/commands/nope", b"{}", qos=1)
                replies = await sub.wait("watchdog/responses/silence", 2)
                assert json.loads(replies[1])["ok"] is False
                [bad] = await sub.wait("watchdog/responses/nope")
                assert "unknown command 'nope'" in json.loads(bad)["error"]

                # the mqtt receiver publishes through the same connection
                await bus.publish("watchdog/alerts", b"x", qos=1, retain=False)
                await sub.wait("watchdog/alerts")
            finally:
                await bus.stop()
                await h.stop()
            assert (await sub.wait("watchdog/status", 2))[-1] == b"offline"
    finally:
        await chat.close()


@needs_broker
async def test_bus_survives_a_broker_restart(broker: Broker) -> None:
    bus = MqttBus(bus_ctx(broker.url), reconnect_interval=0.05, max_reconnect_interval=0.2)
    async with Subscriber(broker.port):
        pass  # registers the persistent session, so the broker keeps our messages meanwhile
    await bus.start()
    try:
        assert await bus.wait_connected(5)
        broker.stop()
        # paho notices the closed socket on its next read or keepalive check: bounded wait
        for _ in range(1000):
            if not bus.connected:
                break
            await asyncio.sleep(0.01)
        assert not bus.connected
        bus.publish_event(Event("firing", 1.0, make_alert("WhileDown", at=1.0)))
        await asyncio.sleep(0.3)  # the bus retries against nothing, and keeps running
        broker.start()
        for _ in range(500):
            if bus.connects >= 2:
                break
            await asyncio.sleep(0.01)
        assert bus.connects >= 2
        async with Subscriber(broker.port) as sub:
            [raw] = await sub.wait("watchdog/events/WhileDown")  # queued, then delivered
            assert json.loads(raw)["rule"] == "WhileDown"
            assert (await sub.wait("watchdog/status"))[-1] == b"online"
            bus.publish_event(Event("firing", 2.0, make_alert("AfterRestart", at=2.0)))
            await sub.wait("watchdog/events/AfterRestart")
    finally:
        await bus.stop()


@needs_broker
async def test_last_will_says_offline_when_the_connection_dies(broker: Broker) -> None:
    bus = MqttBus(bus_ctx(broker.url, commands=False), reconnect_interval=0.05)
    await bus.start()
    try:
        assert await bus.wait_connected(5)
        async with Subscriber(broker.port, identifier="will-watcher") as sub:
            assert (await sub.wait("watchdog/status"))[-1] == b"online"
            # Cut the TCP connection without an MQTT DISCONNECT, as a crash would.
            client = bus._client
            assert client is not None
            sock = client._client.socket()
            import socket
            sock.shutdown(socket.SHUT_RDWR)
            statuses = await sub.wait("watchdog/status", 3)
            assert statuses[1:3] == [b"offline", b"online"]  # the will, then the reconnect
    finally:
        await bus.stop()
