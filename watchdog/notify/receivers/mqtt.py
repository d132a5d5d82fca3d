"""MQTT receiver: the notification as JSON (the webhook v4 document) on a configured topic, with
the receiver's QoS and retain flag, through the daemon's one MQTT connection (`ctx.mqtt`).

It must not open its own connection: `watchdog.mqtt.MqttBus` owns the client, its reconnects and
its last will. While the broker is away `publish` raises and the outbox retries.
"""

from __future__ import annotations

import json

from watchdog.model import MqttReceiverConfig
from watchdog.notify.message import Notification
from watchdog.notify.receivers import DeliveryError, SendContext
from watchdog.notify.receivers.webhook import render


class MqttNotifier:
    integration = "mqtt"

    def __init__(self, cfg: MqttReceiverConfig) -> None:
        self.cfg = cfg

    async def send(self, n: Notification, ctx: SendContext) -> None:
        if ctx.mqtt is None:
            # Retryable: MQTT may be configured but the bus not connected yet at startup.
            raise DeliveryError("MQTT is not connected (is WATCHDOG_MQTT_URL set?)",
                                retryable=True)
        await ctx.pace()
        try:
            await ctx.mqtt.publish(self.cfg.topic, json.dumps(render(n)), qos=self.cfg.qos,
                                   retain=self.cfg.retain)
        except Exception as e:
            raise DeliveryError(f"MQTT publish failed: {type(e).__name__}",
                                retryable=True) from None
