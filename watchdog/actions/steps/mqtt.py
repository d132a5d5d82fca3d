"""The `mqtt` step: publish one message (topic, payload, QoS, retain) — e.g. a retained "off" on
a flag topic that devices or services subscribe to. Topic and payload are templated with the
alert after `${VAR}` expansion.

Shell: publishes through the daemon's MQTT connection (`DaemonContext.mqtt`, aiomqtt). It must
not open a connection of its own: one client per daemon keeps the broker's view (client id,
last will) simple, and a step without a configured broker fails clearly instead.
"""

from __future__ import annotations

from watchdog.actions.expand import ExpandError, Subject, expand, shown
from watchdog.actions.steps import StepEnv, StepResult
from watchdog.model import MqttStep


async def run(step: MqttStep, subject: Subject, env: StepEnv) -> StepResult:
    data = subject.template_data(env.external_url)
    retained = ", retained" if step.retain else ""
    what = f"publish to {shown(step.topic, data)} (qos {step.qos}{retained})"
    if env.mqtt is None:
        return StepResult(False, f"{what}: MQTT is not configured (set WATCHDOG_MQTT_URL)")
    try:
        topic = expand(step.topic, data, env.environ)
        payload = expand(step.payload, data, env.environ)
    except ExpandError as e:
        return StepResult(False, f"{what}: {e}")
    try:
        await env.mqtt.publish(topic, payload, qos=step.qos, retain=step.retain)
    except Exception as e:  # the publisher raises whatever its client raises when it cannot
        return StepResult(False, f"{what}: {type(e).__name__}: {e}", retryable=True)
    return StepResult(True, what, f"{what}: {len(payload.encode())} bytes")
