"""The demo story, end to end, on this machine:

a real Prometheus scrapes a demo service; `watchdog run` watches it with demo/rules; a "bad deploy"
turns two feature flags on and the error rate jumps; the watchdog fires, runs a staged rollback
against the service's flag API (newest feature first, then the release's main flag), the service
recovers and the alert resolves. Slack-style messages print in the terminal as they arrive.

    python -m demo.run [--exit] [--state-url URL] [--restart]

State goes to `--state-url` (default: $WATCHDOG_STATE_URL, else a SQLite file under .demo/), so
the same story runs on PostgreSQL; the story needs a store without state from an earlier run (the
action's cooldown would hold the rollback back), and the demo refuses a used one up front.
`--restart` restarts the watchdog on the same state while the rollback is under way and checks
that nothing is lost or repeated: the alert is still firing with the same incident, one firing
message in the chat, each rollback step done once, one run.

Not part of the product; it drives the product from outside, as a user would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from demo.chat import ChatReceiver, render
from demo.service import DemoService
from watchdog.logs import redact_url
from watchdog.promserver import PrometheusServer, find_binary, free_port
from watchdog.storage import StorageError, open_storage

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
TIMEOUT = 240.0


def say(msg: str) -> None:
    print(f"\033[1m==> {msg}\033[0m", flush=True)


def note(msg: str) -> None:
    print(f"    {msg}", flush=True)


async def serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=3)) as r:
            return await r.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def error_rate(session: aiohttp.ClientSession, prom: str) -> float | None:
    q = ('sum(rate(http_requests_total{service="checkout",code="500"}[20s])) / '
         'sum(rate(http_requests_total{service="checkout"}[20s]))')
    doc = await get_json(session, f"{prom}/api/v1/query?query={aiohttp.helpers.quote(q)}")
    try:
        return float(doc["data"]["result"][0]["value"][1])
    except (TypeError, KeyError, IndexError, ValueError):
        return None


async def alert_state(session: aiohttp.ClientSession, api: str) -> str:
    doc = await get_json(session, f"{api}/api/v1/alerts")
    try:
        states = [a["state"] for a in doc["data"]["alerts"]
                  if a["labels"].get("alertname") == "CheckoutErrorRate"]
    except (TypeError, KeyError):
        return "?"
    return "firing" if "firing" in states else ("pending" if "pending" in states else "inactive")


async def used_state(url: str) -> str | None:
    """Why the store at `url` cannot hold the story (it has state from an earlier run), or None.
    Opening it creates the schema, as the watchdog would."""
    try:
        store = await open_storage(url)
    except (StorageError, OSError) as e:
        return f"cannot open it: {e}"
    try:
        async with store.transaction() as tx:
            found = {"alert groups": len(await tx.alerts.load()),
                     "action runs": len(await tx.runs.list(limit=1)),
                     "deploy markers": len(await tx.deploys.list(limit=1))}
    finally:
        await store.close()
    used = [name for name, n in found.items() if n]
    return f"it holds {', '.join(used)} from an earlier run" if used else None


async def wait_ready(session: aiohttp.ClientSession, api: str, daemon: subprocess.Popen[bytes],
                     log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            async with session.get(f"{api}/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass  # not listening yet
        if daemon.poll() is not None or time.monotonic() > deadline:
            print(log_path.read_text()[-3000:])
            raise SystemExit("the watchdog did not become ready")
        await asyncio.sleep(0.5)


def stop_watchdog(daemon: subprocess.Popen[bytes]) -> None:
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(10)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


Kept = tuple[tuple[str, str] | None, list[tuple[str, str]]]


async def incident(session: aiohttp.ClientSession, api: str) -> Kept:
    """What a restart must keep: the firing CheckoutErrorRate alert's (activeAt, firedAt) — None
    unless exactly one is firing — and the staged-rollback runs' (id, incident)."""
    doc = await get_json(session, f"{api}/api/v1/alerts")
    alerts = [(a["activeAt"], a.get("firedAt")) for a in (doc or {}).get("data", {})
              .get("alerts", []) if a["labels"].get("alertname") == "CheckoutErrorRate"
              and a["state"] == "firing"]
    doc = await get_json(session, f"{api}/api/v1/actions/runs?action=staged-rollback")
    runs = sorted((r["id"], r["incident"]) for r in (doc or {}).get("data", []))
    return (alerts[0] if len(alerts) == 1 else None), runs


async def main(exit_at_end: bool, state_url: str | None = None, restart: bool = False) -> int:
    started = time.monotonic()
    for binary in ("prometheus", "promtool"):
        if find_binary(binary) is None:
            print(f"{binary} not found: run scripts/demo (it installs Debian's prometheus)")
            return 1
    shutil.rmtree(WORK, ignore_errors=True)
    if state_url:
        problem = await used_state(state_url)
        if problem is not None:
            print(f"the demo needs a store without state, and {redact_url(state_url)}: {problem}"
                  "; give it an empty database (e.g. createdb watchdog_demo_2) or leave "
                  "--state-url and WATCHDOG_STATE_URL unset for a fresh SQLite file")
            return 1
    (WORK / "secrets").mkdir(parents=True)

    service = DemoService()
    chat = ChatReceiver()
    svc_port, chat_port, api_port = free_port(), free_port(), free_port()
    runners = [await serve(service.app(), svc_port), await serve(chat.app(), chat_port)]
    say(f"demo service on http://127.0.0.1:{svc_port} (checkout, 40 requests/s, flags at /flags)")
    (WORK / "secrets" / "slack").write_text(
        f"http://127.0.0.1:{chat_port}/services/T000/B000/demo\n")
    say(f"local chat receiver on :{chat_port} standing in for Slack")

    prom = PrometheusServer.scraping([f"127.0.0.1:{svc_port}"], scrape_interval="1s",
                                     tsdb_dir=WORK / "prometheus")
    await asyncio.to_thread(prom.start)
    say(f"Prometheus on {prom.url}, scraping the service every second")

    token = secrets.token_hex(16)
    env = {**os.environ,
           "WATCHDOG_PROMETHEUS_URL": prom.url, "WATCHDOG_RULES_DIR": str(ROOT / "demo/rules"),
           "WATCHDOG_EVALUATION_INTERVAL": "2s", "WATCHDOG_HTTP_LISTEN": f"127.0.0.1:{api_port}",
           "WATCHDOG_DATA_DIR": str(WORK / "data"), "WATCHDOG_API_TOKEN": token,
           "WATCHDOG_STATE_URL": state_url or f"sqlite:///{WORK / 'data' / 'watchdog.db'}",
           "WATCHDOG_EXTERNAL_URL": prom.url, "WATCHDOG_LOG_FORMAT": "console",
           "WATCHDOG_LOG_LEVEL": "INFO", "WATCHDOG_RULES_POLL_INTERVAL": "2s",
           "DEMO_SERVICE_URL": f"http://127.0.0.1:{svc_port}",
           "DEMO_SECRETS": str(WORK / "secrets")}
    log_path = WORK / "watchdog.log"
    log = log_path.open("w")

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "watchdog", "run"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=ROOT)

    daemon = start()
    api = f"http://127.0.0.1:{api_port}"
    say(f"watchdog run (pid {daemon.pid}) with demo/rules, evaluating every 2s; "
        f"log: {log_path}")
    note(f"state: {redact_url(env['WATCHDOG_STATE_URL'])}")
    ok = False
    restarted: Kept | None = None
    broken = False
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, api, daemon, log_path)
            note("watchdog ready: rules loaded, Prometheus answering")
            for _ in range(8):
                await asyncio.sleep(1)
            note(f"healthy baseline: error rate {await error_rate(session, prom.url) or 0:.1%}")

            say("deploying release 2.0: flags checkout-v2 and recommendations-v3 on")
            service.flags.update({"checkout-v2": True, "recommendations-v3": True})
            async with session.post(f"{api}/api/v1/deploys", json={
                    "service": "checkout", "version": "2.0", "labels": {"service": "checkout"}},
                    headers={"Authorization": f"Bearer {token}"}) as r:
                note(f"deploy marker sent to the watchdog (HTTP {r.status})")

            seen_firing = False
            last = ""
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:
                await asyncio.sleep(2)
                rate = await error_rate(session, prom.url)
                state = await alert_state(session, api)
                flags = " ".join(f"{k}={'on' if v else 'off'}" for k, v in service.flags.items())
                shown = rate if rate is not None else 0.0
                line = f"error rate {shown:6.1%} | alert {state:8} | {flags}"
                if line != last:
                    note(line)
                    last = line
                seen_firing |= state == "firing"
                if restart and restarted is None and state == "firing" \
                        and ("recommendations-v3", False) in service.flag_changes:
                    # Mid-rollback: the first stage ran, the run waits to see if it helped.
                    restarted = await incident(session, api)
                    say(f"restarting the watchdog on the same state (SIGTERM pid {daemon.pid}, "
                        "then a new process) while the rollback is under way")
                    stop_watchdog(daemon)
                    daemon = start()
                    await wait_ready(session, api, daemon, log_path)
                    after = await incident(session, api)
                    if after != restarted or after[0] is None or len(after[1]) != 1:
                        say(f"the restart lost or changed state: before {restarted}, "
                            f"after {after}")
                        broken = True
                        break
                    note(f"watchdog pid {daemon.pid} ready: alert still firing since "
                         f"{after[0][1]}, same incident {after[1][0][1]}, same run")
                if seen_firing and state == "inactive" and not service.bad:
                    ok = True
                    break
            if ok:
                # the resolved message leaves after the route's group_interval
                for _ in range(20):
                    if any("RESOLVED" in render(m) for m in chat.messages):
                        break
                    await asyncio.sleep(1)
            if ok and restart:
                problem = await repeated(session, api, chat, service, restarted)
                if problem:
                    say(f"after the restart: {problem}")
                    ok, broken = False, True
                else:
                    note("after the restart: one firing message, each rollback step done once, "
                         "one run for the incident")
            if not ok:
                if not broken:
                    say("the story did not complete in time; see the log")
                print(log_path.read_text()[-4000:])
            else:
                say(f"recovered: alert fired, staged rollback ran "
                    f"({', '.join(f'{n} off' for n, v in service.flag_changes if not v)}), "
                    f"alert resolved — {time.monotonic() - started:.0f}s in all")
                note(f"chat messages received: {len(chat.messages)}")
            say("where to look")
            note(f"alerts:   {api}/api/v1/alerts")
            note(f"status:   {api}/api/v1/status")
            note(f"metrics:  {api}/metrics")
            note(f"rules:    {api}/api/v1/rules")
            note(f"log:      {WORK / 'watchdog.log'}")
            note(f"Prometheus: {prom.url}")
            if not exit_at_end and ok:
                say("still running: Ctrl-C to stop (stops by itself in 2 minutes)")
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                loop.add_signal_handler(signal.SIGINT, stop.set)
                loop.add_signal_handler(signal.SIGTERM, stop.set)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 120)
    finally:
        stop_watchdog(daemon)
        log.close()
        await asyncio.to_thread(prom.stop)
        for runner in runners:
            await runner.cleanup()
    return 0 if ok else 1


async def repeated(session: aiohttp.ClientSession, api: str, chat: ChatReceiver,
                   service: DemoService, before: Kept | None) -> str | None:
    """What a restart repeated or lost, seen from outside: messages, flag calls and runs."""
    if before is None:
        return "the alert never fired with the first rollback stage done, so no restart happened"
    firing = [m for m in chat.messages if "🔴 FIRING · CheckoutErrorRate" in render(m)]
    expected = [("recommendations-v3", False), ("checkout-v2", False)]
    doc = await get_json(session, f"{api}/api/v1/actions/runs?action=staged-rollback")
    runs = [(r["id"], r["incident"], r["status"]) for r in (doc or {}).get("data", [])]
    if len(firing) != 1:
        return f"{len(firing)} firing messages instead of one"
    if service.flag_changes != expected:
        return f"the service's flags were changed {service.flag_changes}, expected {expected}"
    if [r[:2] for r in runs] != before[1] or runs[0][2] != "succeeded":
        return f"the runs are {runs}, expected the one run {before[1]}, succeeded"
    return None


def cli() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exit", action="store_true", help="stop everything at the end")
    ap.add_argument("--state-url", default=os.environ.get("WATCHDOG_STATE_URL") or None,
                    help="the watchdog's STATE_URL, e.g. postgresql://user@host:5432/emptydb "
                         "(default: $WATCHDOG_STATE_URL, else a fresh SQLite file in .demo/)")
    ap.add_argument("--restart", action="store_true",
                    help="restart the watchdog mid-rollback and check nothing is lost or "
                         "repeated")
    args = ap.parse_args()
    return asyncio.run(main(args.exit, args.state_url, args.restart))


if __name__ == "__main__":
    raise SystemExit(cli())
