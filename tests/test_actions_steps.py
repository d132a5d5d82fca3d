"""The webhook, command and mqtt steps on their own: what they send, what counts as success, and
that alert data stays data and secrets stay hidden."""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from test_daemon_support import catch_all, serve

from watchdog.actions.expand import ExpandError, Subject, expand_env, shown_env
from watchdog.actions.steps import MAX_OUTPUT, StepEnv
from watchdog.actions.steps import command as command_step
from watchdog.actions.steps import mqtt as mqtt_step
from watchdog.actions.steps import webhook as webhook_step
from watchdog.actions.testing import RecordingMqtt
from watchdog.model import CommandStep, MqttStep, WebhookStep


class Hook:
    """A flag service that records what it gets and answers what it is told."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.status = 200
        self.delay = 0.0

    def app(self) -> web.Application:
        return catch_all(self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        self.calls.append({"method": request.method, "path": request.path_qs,
                           "headers": dict(request.headers), "body": body})
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.status, text=f"answer {self.status}")


@pytest.fixture
async def hook() -> AsyncIterator[tuple[Hook, str]]:
    h = Hook()
    async with serve(h.app()) as url:
        yield h, url


def subject(**labels: str) -> Subject:
    return Subject(action="flags-off", run_id="run-1", trigger="alert",
                   labels={"alertname": "HighErrorRate", **labels}, value=0.142,
                   rule="HighErrorRate", group="checkout", fingerprint="fp1",
                   incident_id="fp1@100.000", active_at=100.0)


# ---- expansion --------------------------------------------------------------------------

def test_env_expansion_and_secret_files(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    env = {"HOST": "flags.example", "TOKEN_FILE": str(secret)}
    assert expand_env("https://${HOST}/x?t=${TOKEN}", env) == "https://flags.example/x?t=s3cret"
    assert expand_env("literal $${HOST}", env) == "literal ${HOST}"
    assert shown_env("Bearer ${TOKEN}") == "Bearer ${TOKEN}"
    with pytest.raises(ExpandError, match=r"\$\{NOPE\} is not set"):
        expand_env("${NOPE}", env)


# ---- webhook ----------------------------------------------------------------------------

async def test_webhook_templated_json_headers_and_secrets(hook: tuple[Hook, str],
                                                          session: aiohttp.ClientSession,
                                                          tmp_path: Path) -> None:
    h, url = hook
    (tmp_path / "tok").write_text("s3cret")
    step = WebhookStep.model_validate({
        "url": "${FLAGS}/api/flags/{{ $labels.service }}-v2", "method": "PATCH",
        "headers": {"Authorization": "Bearer ${FLAGS_TOKEN}"},
        "json": {"enabled": False, "reason": "{{ $labels.alertname }} at {{ $value }}",
                 "nested": ["{{ $labels.service }}", 3]}})
    env = StepEnv(session=session,
                  environ={"FLAGS": url, "FLAGS_TOKEN_FILE": str(tmp_path / "tok")})
    result = await webhook_step.run(step, subject(service="checkout"), env)
    assert result.ok, result.detail
    [call] = h.calls
    assert call["method"] == "PATCH" and call["path"] == "/api/flags/checkout-v2"
    assert call["headers"]["Authorization"] == "Bearer s3cret"
    assert call["headers"]["Content-Type"] == "application/json"
    assert json.loads(call["body"]) == {"enabled": False, "reason": "HighErrorRate at 0.142",
                                        "nested": ["checkout", 3]}
    assert result.detail == "PATCH ${FLAGS}/api/flags/checkout-v2 -> HTTP 200"
    assert "s3cret" not in result.detail + result.output


async def test_webhook_label_values_cannot_pull_secrets(hook: tuple[Hook, str],
                                                        session: aiohttp.ClientSession) -> None:
    h, url = hook
    step = WebhookStep.model_validate({"url": url + "/hook", "body": "svc={{ $labels.service }}"})
    env = StepEnv(session=session, environ={"SECRET": "s3cret"})
    assert (await webhook_step.run(step, subject(service="${SECRET}"), env)).ok
    assert h.calls[0]["body"] == "svc=${SECRET}"


async def test_webhook_non_2xx_and_timeout_fail(hook: tuple[Hook, str],
                                                session: aiohttp.ClientSession) -> None:
    h, url = hook
    env = StepEnv(session=session, environ={})
    h.status = 503
    result = await webhook_step.run(WebhookStep(url=url + "/x"), subject(), env)
    assert not result.ok and "HTTP 503" in result.detail and "answer 503" in result.output
    h.status, h.delay = 200, 2.0
    t0 = time.perf_counter()
    slow = await webhook_step.run(WebhookStep.model_validate({"url": url, "timeout": "200ms"}),
                                  subject(), env)
    assert not slow.ok and "timed out after 200ms" in slow.detail
    assert time.perf_counter() - t0 < 1.5


async def test_webhook_unset_variable_fails_without_calling(hook: tuple[Hook, str],
                                                            session: aiohttp.ClientSession
                                                            ) -> None:
    h, url = hook
    result = await webhook_step.run(WebhookStep(url="${MISSING}/x"), subject(),
                                    StepEnv(session=session, environ={}))
    assert not result.ok and "${MISSING} is not set" in result.detail and h.calls == []
    bad = await webhook_step.run(WebhookStep(url=url, body="{{ nosuchfunc }}"), subject(),
                                 StepEnv(session=session, environ={}))
    assert not bad.ok and "template" in bad.detail and h.calls == []


# ---- command ----------------------------------------------------------------------------

PRINT_ARGS = ("import json, os, sys; "
              "print(json.dumps({'argv': sys.argv[1:], 'env': dict(os.environ)}))")


async def run_command(session: aiohttp.ClientSession, argv: list[str], labels: dict[str, str],
                      environ: dict[str, str] | None = None, **kw: Any
                      ) -> command_step.StepResult:
    step = CommandStep.model_validate({"argv": argv, **kw})
    env = StepEnv(session=session, environ=environ if environ is not None else
                  {"PATH": "/usr/bin:/bin", "WATCHDOG_API_TOKEN": "do-not-leak"})
    return await command_step.run(step, subject(**labels), env)


@pytest.mark.parametrize("evil", ['"; rm -rf / #', "--help", "$(touch /tmp/pwned)",
                                  "`id`", "a b\nc", "{{ $labels.service }}"])
async def test_label_values_pass_as_data_never_arguments(session: aiohttp.ClientSession,
                                                         evil: str) -> None:
    result = await run_command(session, [sys.executable, "-c", PRINT_ARGS, "--fixed",
                                         "{{ $labels.service }}"], {"service": evil})
    assert result.ok, result.detail + result.output
    doc = json.loads(result.output)
    # argv is exactly what was configured: never templated, never split, never a shell.
    assert doc["argv"] == ["--fixed", "{{ $labels.service }}"]
    env = doc["env"]
    assert env["WATCHDOG_LABEL_service"] == evil
    assert json.loads(env["WATCHDOG_ALERT_LABELS"])["service"] == evil
    assert env["WATCHDOG_ALERT_NAME"] == "HighErrorRate"
    assert env["WATCHDOG_ALERT_VALUE"] == "0.142"
    assert env["WATCHDOG_ALERT_STARTS_AT"] == "1970-01-01T00:01:40Z"
    assert env["WATCHDOG_RUN_ID"] == "run-1" and env["WATCHDOG_TRIGGER"] == "alert"
    # the daemon's own environment (API token ...) is not handed over
    assert "WATCHDOG_API_TOKEN" not in env
    assert not Path("/tmp/pwned").exists()


async def test_env_and_variables_in_argv_stay_one_argument(session: aiohttp.ClientSession
                                                           ) -> None:
    result = await run_command(session, [sys.executable, "-c", PRINT_ARGS, "${PROFILE}"], {},
                               environ={"PROFILE": "very conservative", "KEY": "k"},
                               env={"API_KEY": "${KEY}"})
    doc = json.loads(result.output)
    # one argument (split, it would read ["very", "<secret>"]), and, like every expanded
    # ${VAR}, redacted from the stored output; "k" is too short to be redacted
    assert doc["argv"] == ["<secret>"]
    assert doc["env"]["API_KEY"] == "k"


async def test_exit_codes_timeout_and_truncation(session: aiohttp.ClientSession) -> None:
    fail = await run_command(session, [sys.executable, "-c", "import sys; print('nope'); "
                                       "sys.exit(3)"], {})
    assert not fail.ok and "exit 3" in fail.detail and "nope" in fail.output
    t0 = time.perf_counter()
    slow = await run_command(session, [sys.executable, "-c", "import time; time.sleep(30)"],
                             {}, timeout="300ms")
    assert not slow.ok and "timed out after 300ms" in slow.detail
    assert time.perf_counter() - t0 < 5
    chatty = await run_command(session, [sys.executable, "-c",
                                         "print('START'); print('x' * 200000); print('END')"], {})
    assert chatty.ok
    assert len(chatty.output) < MAX_OUTPUT + 200
    assert chatty.output.startswith("START") and chatty.output.rstrip().endswith("END")
    missing = await run_command(session, ["/nonexistent/rollback.sh"], {})
    assert not missing.ok and "cannot start" in missing.detail


# ---- mqtt -------------------------------------------------------------------------------

async def test_mqtt_publishes_templated_message(session: aiohttp.ClientSession) -> None:
    mqtt = RecordingMqtt()
    env = StepEnv(session=session, environ={"PREFIX": "flags"}, mqtt=mqtt)
    step = MqttStep.model_validate({"topic": "${PREFIX}/{{ $labels.service }}-v2",
                                    "payload": "off", "qos": 1, "retain": True})
    result = await mqtt_step.run(step, subject(service="checkout"), env)
    assert result.ok
    assert mqtt.messages == [("flags/checkout-v2", "off", 1, True)]
    mqtt.fail = ConnectionError("broker gone")
    down = await mqtt_step.run(step, subject(service="checkout"), env)
    assert not down.ok and "broker gone" in down.detail
    none = await mqtt_step.run(step, subject(), StepEnv(session=session, environ={}))
    assert not none.ok and "WATCHDOG_MQTT_URL" in none.detail


def test_manual_subject_has_no_value() -> None:
    s = Subject(action="a", run_id="r", trigger="manual", labels={"service": "x"})
    assert math.isnan(s.template_data().value)
    env = command_step.alert_environment(s)
    assert env["WATCHDOG_ALERT_VALUE"] == "" and env["WATCHDOG_TRIGGER"] == "manual"
