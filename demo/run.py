"""The demo story, end to end, on this machine:

a real Prometheus scrapes a demo service; `watchdog run` watches it with demo/rules; a "bad deploy"
turns two feature flags on and the error rate jumps; the watchdog fires, runs a staged rollback
against the service's flag API (newest feature first, then the release's main flag), the service
recovers and the alert resolves. Slack-style messages print in the terminal as they arrive.

    python -m demo.run [--exit]

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
from watchdog.promserver import PrometheusServer, find_binary, free_port

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


async def main(exit_at_end: bool) -> int:
    started = time.monotonic()
    for binary in ("prometheus", "promtool"):
        if find_binary(binary) is None:
            print(f"{binary} not found: run scripts/demo (it installs Debian's prometheus)")
            return 1
    shutil.rmtree(WORK, ignore_errors=True)
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
           "WATCHDOG_EXTERNAL_URL": prom.url, "WATCHDOG_LOG_FORMAT": "console",
           "WATCHDOG_LOG_LEVEL": "INFO", "WATCHDOG_RULES_POLL_INTERVAL": "2s",
           "DEMO_SERVICE_URL": f"http://127.0.0.1:{svc_port}",
           "DEMO_SECRETS": str(WORK / "secrets")}
    log = (WORK / "watchdog.log").open("w")
    daemon = subprocess.Popen([sys.executable, "-m", "watchdog", "run"], env=env, stdout=log,
                              stderr=subprocess.STDOUT, cwd=ROOT)
    api = f"http://127.0.0.1:{api_port}"
    say(f"watchdog run (pid {daemon.pid}) with demo/rules, evaluating every 2s; "
        f"log: {WORK / 'watchdog.log'}")
    ok = False
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 60
            while True:
                try:
                    async with session.get(f"{api}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass  # not listening yet
                if daemon.poll() is not None or time.monotonic() > deadline:
                    print((WORK / "watchdog.log").read_text()[-3000:])
                    raise SystemExit("the watchdog did not become ready")
                await asyncio.sleep(0.5)
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
                if seen_firing and state == "inactive" and not service.bad:
                    ok = True
                    break
            if ok:
                # the resolved message leaves after the route's group_interval
                for _ in range(20):
                    if any("RESOLVED" in render(m) for m in chat.messages):
                        break
                    await asyncio.sleep(1)
            if not ok:
                say("the story did not complete in time; see the log")
                print((WORK / "watchdog.log").read_text()[-4000:])
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
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
        await asyncio.to_thread(prom.stop)
        for runner in runners:
            await runner.cleanup()
    return 0 if ok else 1


def cli() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exit", action="store_true", help="stop everything at the end")
    args = ap.parse_args()
    return asyncio.run(main(args.exit))


if __name__ == "__main__":
    raise SystemExit(cli())
