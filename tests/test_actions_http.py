"""Manual triggers and deploy markers over HTTP, the MQTT command form, and the
`watchdog action run` client against a real (in-process) server."""

from __future__ import annotations

import argparse
import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from storage_support import on_events_tx, sqlite_storage
from test_daemon_support import recording_paths, serve

from watchdog.actions import client as action_client
from watchdog.actions import create_handler
from watchdog.actions.handler import ActionsHandler
from watchdog.actions.testing import RecordingSink, StaticAlerts, eventually, make_context
from watchdog.engine import GroupRuntime, tick
from watchdog.evaluate import Context
from watchdog.labels import fingerprint
from watchdog.rulesdir import build
from watchdog.schema import SecretStr
from watchdog.state import Alert
from watchdog.storage import Storage
from watchdog.testing import FakeSource, FixedClock, sample

T0 = 1_800_000_000.0

RULES = b"""
groups:
  - name: checkout
    rules:
      - alert: HighErrorRate
        expr: error_ratio
        threshold: "> 0.1"
        actions: [rollback, staged]
  - name: api
    rules:
      - alert: ApiLatencyRegressed
        expr: api_p95
        baseline: {deploy: true}
        threshold: "> 1.5"
actions:
  rollback:
    max_runs_per_hour: 2
    steps:
      - webhook: {url: "${HOOK}/flag", method: PATCH, json: {enabled: false}}
  staged:
    steps:
      - webhook: {url: "${HOOK}/stage1"}
      - wait: {for: 10m, until: resolved}
      - webhook: {url: "${HOOK}/stage2"}
"""


class Env:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.clock = FixedClock(T0)
        self.alerts = StaticAlerts()
        self.sink = RecordingSink()
        self.p95 = {"api": 0.2, "web": 0.5}
        self.source = FakeSource({"api_p95": lambda at: [
            sample(v, __name__="api_p95", service=s) for s, v in self.p95.items()]})
        self.h: ActionsHandler
        self.client: TestClient[Any, Any]
        self.url = ""
        self.auth: list[str | None] = []
        self.db: Storage


@pytest.fixture
async def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    e = Env()
    async with serve(recording_paths(e.calls)) as hook_url:
        monkeypatch.setenv("HOOK", hook_url)
        async with aiohttp.ClientSession() as session, \
                sqlite_storage(tmp_path / "state.db") as db:
            ctx = make_context(db, session, e.source, alerts=e.alerts, clock=e.clock,
                               sinks=[e.sink])
            ctx.rules = build({"r.yml": RULES})
            e.h = create_handler(ctx)
            await e.h.start()
            @web.middleware
            async def record_auth(request: web.Request, handler: Any) -> web.StreamResponse:
                e.auth.append(request.headers.get("Authorization"))
                return await handler(request)

            app = web.Application(middlewares=[record_auth])
            app.add_routes(ctx.routes)
            e.client = TestClient(TestServer(app, host="127.0.0.1"))
            await e.client.start_server()
            e.url = str(e.client.make_url("")).rstrip("/")
            e.db = db
            try:
                yield e
            finally:
                await e.client.close()
                await e.h.stop()


async def post(e: Env, path: str, body: Any) -> tuple[int, dict[str, Any], Any]:
    resp = await e.client.post(path, json=body) if not isinstance(body, bytes) else \
        await e.client.post(path, data=body)
    return resp.status, await resp.json(), resp.headers


async def test_manual_trigger_runs_and_is_visible(env: Env) -> None:
    status, doc, _ = await post(env, "/api/v1/actions/rollback/run",
                                {"labels": {"service": "checkout"}})
    assert status == 202 and doc["action"] == "rollback" and doc["dryRun"] is False
    await eventually(lambda: env.calls == ["/flag"])

    async def done() -> bool:
        r = await env.client.get(f"/api/v1/actions/runs/{doc['runID']}")
        return bool((await r.json())["data"]["status"] == "succeeded")
    await eventually(done)
    r = await env.client.get("/api/v1/actions/runs", params={"action": "rollback"})
    [run] = (await r.json())["data"]
    assert run["trigger"] == "manual" and run["labels"] == {"service": "checkout"}
    assert run["steps"][0]["status"] == "succeeded" and "HTTP 200" in run["steps"][0]["detail"]
    assert env.sink.kinds("rollback")[:2] == ["started", "succeeded"]


async def test_bad_input_gets_a_clear_4xx(env: Env) -> None:
    status, doc, _ = await post(env, "/api/v1/actions/nope/run", {"labels": {}})
    assert status == 404 and "no action named 'nope'" in doc["error"]
    status, doc, _ = await post(env, "/api/v1/actions/rollback/run", {"labels": {"a": 1}})
    assert status == 400 and "labels.a" in doc["error"]
    status, doc, _ = await post(env, "/api/v1/actions/rollback/run", {"lables": {}})
    assert status == 400 and "lables" in doc["error"]
    status, doc, _ = await post(env, "/api/v1/actions/rollback/run", b"{not json")
    assert status == 400 and "JSON" in doc["error"]
    status, doc, _ = await post(env, "/api/v1/deploys", {"version": "v2"})
    assert status == 400 and "service" in doc["error"]
    status, doc, _ = await post(env, "/api/v1/deploys", {"service": "api", "version": "v2",
                                                         "window": "soon"})
    assert status == 400 and "window" in doc["error"]
    assert env.calls == []


async def test_rate_limit_answers_429_with_retry_after_and_force_overrides(env: Env) -> None:
    for _ in range(2):
        assert (await post(env, "/api/v1/actions/rollback/run", {}))[0] == 202
    env.clock.advance(600)
    status, doc, headers = await post(env, "/api/v1/actions/rollback/run", {})
    assert status == 429 and "max_runs_per_hour 2" in doc["error"]
    assert headers["Retry-After"] == "3000"
    status, _, _ = await post(env, "/api/v1/actions/rollback/run", {"force": True})
    assert status == 202
    await eventually(lambda: env.calls == ["/flag"] * 3)


async def test_dry_run_request_executes_nothing(env: Env) -> None:
    status, doc, _ = await post(env, "/api/v1/actions/rollback/run", {"dry_run": True})
    assert status == 202 and doc["dryRun"] is True

    async def done() -> bool:
        return bool((await env.h.run(doc["runID"]))["status"] == "dry_run")
    await eventually(done)
    assert env.calls == []
    assert env.sink.kinds() == ["would_run", "would_run"]
    # trying it out does not use up the real budget (max_runs_per_hour: 2)
    assert (await post(env, "/api/v1/actions/rollback/run", {"dry_run": True}))[0] == 202
    assert (await post(env, "/api/v1/actions/rollback/run", {"dry_run": True}))[0] == 429
    for _ in range(2):
        assert (await post(env, "/api/v1/actions/rollback/run", {}))[0] == 202
    await eventually(lambda: env.calls == ["/flag"] * 2)


def firing(service: str) -> Alert:
    labels = {"alertname": "HighErrorRate", "service": service}
    return Alert(rule="HighErrorRate", group="checkout", fingerprint=fingerprint(labels),
                 labels=labels, annotations={}, state="firing", active_at=T0, value=0.3,
                 fired_at=T0)


@pytest.mark.parametrize("still_bad", [True, False])
async def test_manual_staged_run_judges_matching_firing_alerts(env: Env, still_bad: bool
                                                               ) -> None:
    env.alerts.set(firing("checkout" if still_bad else "search"))
    status, doc, _ = await post(env, "/api/v1/actions/staged/run",
                                {"labels": {"service": "checkout"}})
    assert status == 202
    await eventually(lambda: env.calls == ["/stage1"])

    async def waiting() -> bool:
        run = await env.h.run(doc["runID"])
        return len(run["steps"]) == 2
    await eventually(waiting)
    env.clock.advance(600)
    await on_events_tx(env.h, [], env.clock.now)  # a tick: the waker re-checks the clock
    want = "succeeded" if still_bad else "resolved"

    async def done() -> bool:
        return bool((await env.h.run(doc["runID"]))["status"] == want)
    await eventually(done)
    assert env.calls == (["/stage1", "/stage2"] if still_bad else ["/stage1"])


async def test_mqtt_command_form(env: Env) -> None:
    out = await env.h.run_action_command({"action": "rollback", "request_id": 7,
                                                  "labels": {"service": "x"}})
    assert out["action"] == "rollback" and out["runID"]
    with pytest.raises(ValueError, match="expected"):  # what the MQTT dispatcher answers
        await env.h.run_action_command({"labels": {}})
    deployed = await env.h.deploy({"service": "api", "version": "v9"})
    assert deployed["baselines"] == {"ApiLatencyRegressed": 1}
    await eventually(lambda: env.calls == ["/flag"])


async def test_deploy_captures_baselines_and_reports_the_window(env: Env, tmp_path: Path
                                                                ) -> None:
    status, doc, _ = await post(env, "/api/v1/deploys", {"service": "api", "version": "v2"})
    assert status == 201
    assert doc["labels"] == {"service": "api"} and doc["baselines"] == {"ApiLatencyRegressed": 1}
    assert doc["window_end"] == T0 + 1800
    fp = fingerprint({"service": "api"})
    assert env.h.deploy_baselines() == {"ApiLatencyRegressed": {fp: 0.2}}
    # the engine uses it: p95 doubles after the deploy -> ratio 2.0 > 1.5
    rs = build({"r.yml": RULES})
    rt = next(GroupRuntime.new(f, g) for f, g in rs.groups() if g.name == "api")
    env.p95["api"] = 0.4
    env.clock.advance(60)
    res = await tick(rt, env.clock.now, env.source,
                     Context(deploy_baselines=env.h.deploy_baselines()))
    [fired] = [e for e in res.events if e.kind == "firing"]
    assert fired.alert.labels["service"] == "api" and fired.alert.compared == 2.0
    await on_events_tx(env.h, res.events, env.clock.now)
    # The verdict is decided as the alert fires, in the evaluation's transaction: a page.
    [failed] = [e for e in env.sink.events if e.action == "deploy" and e.kind == "failed"]
    assert failed.page and failed.extra["result"] == "fail"
    assert failed.labels["alertname"] == "DeployVerificationFailed"
    assert failed.labels["deploy_id"] == doc["id"]
    assert ('FAIL — ApiLatencyRegressed{service="api"} = 0.4 (baseline 0.2, +100%) fired 1m '
            "into the 30m window") in failed.detail
    r = await env.client.get(f"/api/v1/deploys/{doc['id']}")
    verdict = await r.json()
    assert verdict["status"] == "fail" and verdict["decided_at"] == T0 + 60
    assert [a["rule"] for a in verdict["alerts"]] == ["ApiLatencyRegressed"]
    assert verdict["baselines"] == {"ApiLatencyRegressed": [{"labels": {"service": "api"},
                                                             "value": 0.2}]}
    # a marker for another service, in the same window, sees none of it
    status, _, _ = await post(env, "/api/v1/deploys",
                                  {"service": "web", "version": "v7", "window": "20m"})
    assert status == 201
    env.clock.advance(1800)
    await on_events_tx(env.h, [], env.clock.now)
    await eventually(lambda: len([e for e in env.sink.events if e.action == "deploy"]) == 4)
    by_service = {e.labels["service"]: e for e in env.sink.events
                  if e.action == "deploy" and e.kind != "started"}
    assert by_service["api"] is failed  # decided once: the window's end changes nothing
    assert by_service["web"].kind == "succeeded" and "PASS" in by_service["web"].detail
    assert not by_service["web"].page
    r = await env.client.get("/api/v1/deploys")
    assert {d["service"]: (d["status"], d["verdict"]) for d in (await r.json())["data"]} == \
        {"api": ("failed", "fail"), "web": ("passed", "pass")}


async def test_baselines_survive_a_restart(env: Env) -> None:
    await post(env, "/api/v1/deploys", {"service": "api", "version": "v2"})
    await env.h.stop()
    ctx = make_context(env.db, env.h.ctx.session, env.source, clock=env.clock)
    again = ActionsHandler(ctx)
    await again.start()
    assert again.deploy_baselines() == env.h.deploy_baselines()
    await again.stop()
    await env.h.start()


# ---- the command-line client ----------------------------------------------------------------

def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="watchdog")
    sub = p.add_subparsers(dest="command")
    action_client.add_action_parser(sub)
    return p.parse_args(argv)


def test_cli_arguments() -> None:
    a = parse(["action", "run", "rollback", "--label", "service=checkout", "-l", "q=a=b",
               "--token-file", "/t", "--url", "http://x:1"])
    assert a.command == "action" and a.action_command == "run" and a.name == "rollback"
    assert dict(a.labels) == {"service": "checkout", "q": "a=b"}
    with pytest.raises(SystemExit):
        parse(["action", "run", "rollback", "--label", "novalue"])


async def test_client_triggers_a_running_daemon(env: Env, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    args = parse(["action", "run", "rollback", "-l", "service=checkout", "--url", env.url,
                  "--token-file", str(token)])
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(action_client.main, args, out, err)
    assert code == 0, err.getvalue()
    assert out.getvalue().startswith("started rollback: run ")
    assert f"{env.url}/api/v1/actions/runs/" in out.getvalue()
    await eventually(lambda: env.calls == ["/flag"])
    assert env.auth[-1] == "Bearer t0ken"  # the daemon checks it; the client must send it
    missing = parse(["action", "run", "nope", "--url", env.url])
    err = io.StringIO()
    assert await asyncio.to_thread(action_client.main, missing, io.StringIO(), err) == 1
    assert "HTTP 404: no action named 'nope'" in err.getvalue()
    down = parse(["action", "run", "x", "--url", "http://127.0.0.1:9", "--timeout", "2"])
    err = io.StringIO()
    assert await asyncio.to_thread(action_client.main, down, io.StringIO(), err) == 1
    assert "cannot reach" in err.getvalue()


async def _fire_api(env: Env, p95: float = 0.4) -> None:
    """An evaluation of the api group in which ApiLatencyRegressed fires (p95 doubled)."""
    rs = build({"r.yml": RULES})
    rt = next(GroupRuntime.new(f, g) for f, g in rs.groups() if g.name == "api")
    env.p95["api"] = p95
    env.clock.advance(60)
    res = await tick(rt, env.clock.now, env.source,
                     Context(deploy_baselines=env.h.deploy_baselines()))
    await on_events_tx(env.h, res.events, env.clock.now)


async def test_a_client_chosen_id_makes_the_marker_idempotent(env: Env) -> None:
    body = {"id": "api-v2.1", "service": "api", "version": "v2.1"}
    status, first, _ = await post(env, "/api/v1/deploys", body)
    assert status == 201 and first["id"] == "api-v2.1" and first["status"] == "open"
    status, again, _ = await post(env, "/api/v1/deploys", body)
    assert status == 200 and again["id"] == "api-v2.1" and again["at"] == first["at"]
    assert len((await (await env.client.get("/api/v1/deploys")).json())["data"]) == 1
    status, doc, _ = await post(env, "/api/v1/deploys", {**body, "version": "v3"})
    assert status == 409 and "exists for api v2.1" in doc["error"]
    status, doc, _ = await post(env, "/api/v1/deploys", {**body, "id": "../etc"})
    assert status == 400 and "id:" in doc["error"]


async def test_on_fail_names_actions_of_the_rules_folder(env: Env) -> None:
    status, doc, _ = await post(env, "/api/v1/deploys", {"service": "api", "version": "v2",
                                                         "on_fail": ["rollback", "nope"]})
    assert status == 422 and "on_fail: no action named 'nope'" in doc["error"]
    assert (await (await env.client.get("/api/v1/deploys")).json())["data"] == []


async def test_a_fail_runs_on_fail_in_the_verdicts_transaction(env: Env) -> None:
    status, doc, _ = await post(env, "/api/v1/deploys", {"service": "api", "version": "v2",
                                                         "on_fail": ["rollback"]})
    assert status == 201 and doc["on_fail"] == ["rollback"]
    await _fire_api(env)
    await eventually(lambda: env.calls == ["/flag"])
    runs = await env.h.runs(action="rollback")
    assert [(r["trigger"], r["labels"]["deploy_id"]) for r in runs] == [("manual", doc["id"])]
    verdict = await env.h.verdict(doc["id"])
    assert verdict["status"] == "fail"
    assert f"on_fail: rollback: run {runs[0]['id']}" in verdict["summary"]
    # The page and the run's announcement were recorded with the verdict.
    kinds = [(e.action, e.kind, e.page) for e in env.sink.events]
    assert ("deploy", "failed", True) in kinds and ("rollback", "started", False) in kinds


async def test_a_verdict_rolled_back_is_decided_again(env: Env) -> None:
    """A failure while recording what the verdict causes rolls the verdict back: the marker
    stays open and the next evaluation decides (and tells) it again."""
    _, doc, _ = await post(env, "/api/v1/deploys", {"service": "api", "version": "v2"})
    env.sink.fail_next = True
    with pytest.raises(RuntimeError):
        await _fire_api(env)
    assert (await env.h.verdict(doc["id"]))["status"] == "open"
    assert [e.kind for e in env.sink.events if e.action == "deploy"] == ["started"]
    # The alert is still firing at the window's end: the verdict is fail after all.
    env.alerts.set(Alert(rule="ApiLatencyRegressed", group="api",
                         fingerprint=fingerprint({"service": "api"}),
                         labels={"alertname": "ApiLatencyRegressed", "service": "api"},
                         annotations={}, state="firing", active_at=T0 + 60, value=0.4,
                         fired_at=T0 + 60))
    env.clock.advance(1800)
    await on_events_tx(env.h, [], env.clock.now)

    async def decided() -> bool:
        return bool((await env.h.verdict(doc["id"]))["status"] == "fail")
    await eventually(decided)
    assert [e.kind for e in env.sink.events if e.action == "deploy"] == ["started", "failed"]


async def test_the_gates(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    _, bad, _ = await post(env, "/api/v1/deploys", {"service": "api", "version": "v2"})
    _, good, _ = await post(env, "/api/v1/deploys", {"service": "web", "version": "v7",
                                                     "window": "5m"})
    r = await env.client.get(f"/api/v1/deploys/{good['id']}/gate")
    assert r.status == 409 and (await r.json())["status"] == "open"
    await _fire_api(env)
    env.clock.advance(600)
    await on_events_tx(env.h, [], env.clock.now)

    async def passed() -> bool:
        return bool((await env.h.verdict(good["id"]))["status"] == "pass")
    await eventually(passed)
    assert (await env.client.get(f"/api/v1/deploys/{good['id']}/gate")).status == 200
    assert (await env.client.get(f"/api/v1/deploys/{bad['id']}/gate")).status == 412
    assert (await env.client.get(f"/api/v1/deploys/{bad['id']}/gate?want=fail")).status == 200
    assert (await env.client.get("/api/v1/deploys/nope/gate")).status == 404
    assert (await env.client.get(f"/api/v1/deploys/{bad['id']}/gate?want=x")).status == 400
    # Flagger's webhook: the newest marker of metadata.service, else of the canary's name.
    flagger = {"name": "web", "namespace": "prod", "phase": "Progressing", "metadata": {}}
    assert (await post(env, "/api/v1/deploys/gate", flagger))[0] == 200
    status, doc, _ = await post(env, "/api/v1/deploys/gate",
                                {**flagger, "metadata": {"service": "api"}})
    assert status == 412 and doc["status"] == "fail" and "FAIL" in doc["summary"]
    assert (await post(env, "/api/v1/deploys/gate",
                       {**flagger, "metadata": {"service": "api", "want": "fail"}}))[0] == 200
    assert (await post(env, "/api/v1/deploys/gate",
                       {**flagger, "metadata": {"deploy_id": good["id"]}}))[0] == 200
    status, doc, _ = await post(env, "/api/v1/deploys/gate", {**flagger, "name": "nothing"})
    assert status == 404 and "no deploy marker for service 'nothing'" in doc["error"]
    assert (await post(env, "/api/v1/deploys/gate", {"phase": "x"}))[0] == 400
    # With API_READ_TOKEN set, Flagger shows it in its metadata (it sends no headers).
    monkeypatch.setattr(env.h.ctx.settings, "api_read_token", SecretStr("r3ad"))
    status, doc, _ = await post(env, "/api/v1/deploys/gate", flagger)
    assert status == 401 and "metadata.token" in doc["error"] and "r3ad" not in str(doc)
    assert (await post(env, "/api/v1/deploys/gate",
                       {**flagger, "metadata": {"token": "wrong"}}))[0] == 401
    assert (await post(env, "/api/v1/deploys/gate",
                       {**flagger, "metadata": {"token": "r3ad"}}))[0] == 200
