"""How long `watchdog replay` takes for 100 rules over 24 h at a 1m step, against a backfilled
Prometheus, beside the floor — the bare `query_range` calls for the same expressions through a
raw aiohttp loop — and beside a peer, vmalert's own `-replay` mode on the same rules written as
plain Prometheus rules (`threshold: "> t"` becomes `expr > t`), all in the same run.

    python bench/replay.py [--rules 100] [--hours 24] [--runs 3]

Prints one line per measurement and the ratios replay / floor and replay / vmalert. Needs the
prometheus and promtool binaries; vmalert (Debian victoria-metrics) is optional.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import yaml

from watchdog.promserver import PrometheusServer, backfill
from watchdog.series import Series

SERVICES = 10


def make_series(hours: int, rng: random.Random) -> list[Series]:
    out: list[Series] = []
    points = hours * 60 + 60  # an hour of history before the range for the 5m windows
    for s in range(SERVICES):
        for code in ("200", "500"):
            total = 0.0
            samples = []
            for i in range(points):
                base = 50 if code == "200" else rng.choice([0.5, 1, 2, 8])
                total += base * 60 * rng.uniform(0.8, 1.2)
                samples.append((i * 60.0, round(total, 3)))
            out.append(Series({"__name__": "http_requests_total", "service": f"s{s}",
                               "code": code}, samples))
        samples = [(i * 60.0, round(rng.uniform(0, 800), 1)) for i in range(points)]
        out.append(Series({"__name__": "queue_depth", "service": f"s{s}"}, samples))
    return out


def make_rules(n: int) -> str:
    rules = []
    for i in range(n):
        s = f"s{i % SERVICES}"
        kind = i % 4
        if kind == 0:
            expr = (f'sum(rate(http_requests_total{{service="{s}",code="500"}}[5m])) / '
                    f'sum(rate(http_requests_total{{service="{s}"}}[5m]))')
            rule = {"alert": f"ErrorRate{i}", "expr": expr, "threshold": f"> {0.01 + i / 1000}",
                    "for": "5m"}
        elif kind == 1:
            rule = {"alert": f"Queue{i}", "expr": f'queue_depth{{service="{s}"}} > {400 + i}',
                    "for": "2m"}
        elif kind == 2:
            rule = {"alert": f"QueueTier{i}", "expr": f'max(queue_depth{{service="{s}"}})',
                    "severities": {"warning": f"> {300 + i}", "critical": f"> {600 + i}"},
                    "for": "1m"}
        else:
            rule = {"alert": f"Traffic{i}",
                    "expr": f'sum(rate(http_requests_total{{service="{s}"}}[5m]))',
                    "threshold": f"< {48 + i % 5}", "for": "10m", "keep_firing_for": "5m"}
        rules.append(rule)
    groups = [{"name": f"g{k}", "interval": "1m", "rules": rules[k::10]} for k in range(10)]
    return yaml.safe_dump({"groups": groups}, sort_keys=False)


async def floor(url: str, exprs: list[str], start: float, end: float) -> float:
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(16)
    async with aiohttp.ClientSession() as session:
        async def one(expr: str) -> None:
            async with sem, session.post(f"{url}/api/v1/query_range", data={
                    "query": expr, "start": str(start), "end": str(end), "step": "60"}) as r:
                await r.read()
        await asyncio.gather(*(one(e) for e in exprs))
    return time.perf_counter() - t0


def plain_rules(text: str) -> str:
    """The same rules as vmalert understands them: our extensions rewritten as PromQL."""
    doc = yaml.safe_load(text)
    for g in doc["groups"]:
        for r in g["rules"]:
            if "threshold" in r:
                r["expr"] = f"({r['expr']}) {r.pop('threshold')}"
            if "severities" in r:
                tiers = r.pop("severities")
                r["expr"] = f"({r['expr']}) {tiers['warning']}"
            # Debian's vmalert (1.79) predates keep_firing_for; it changes no query cost
            r.pop("keep_firing_for", None)
    return yaml.safe_dump(doc, sort_keys=False)


class _Sink(http.server.BaseHTTPRequestHandler):
    """vmalert's replay writes its ALERTS series by remote write: accept and drop them."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def vmalert_replay(binary: str, url: str, rules: Path, start: float, end: float) -> float:
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    iso = "%Y-%m-%dT%H:%M:%SZ"
    t0 = time.perf_counter()
    subprocess.run([binary, f"-rule={rules}", f"-datasource.url={url}",
                    f"-remoteWrite.url=http://127.0.0.1:{sink.server_port}",
                    f"-replay.timeFrom={time.strftime(iso, time.gmtime(start))}",
                    f"-replay.timeTo={time.strftime(iso, time.gmtime(end))}",
                    "-replay.rulesDelay=0s", "-replay.maxDatapointsPerQuery=10000",
                    "-replay.disableProgressBar", "-loggerLevel=ERROR"],
                   capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - t0
    sink.shutdown()
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rules", type=int, default=100)
    ap.add_argument("--hours", type=int, default=24)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        rules_text = make_rules(args.rules)
        (tmpd / "rules").mkdir()
        (tmpd / "rules" / "bench.yml").write_text(rules_text)
        backfill(make_series(args.hours, rng), tmpd / "tsdb")
        start, end = 3600.0, 3600.0 + args.hours * 3600.0
        exprs = sorted({r["expr"] for g in yaml.safe_load(rules_text)["groups"]
                        for r in g["rules"]})
        (tmpd / "plain.yml").write_text(plain_rules(rules_text))
        vmalert = shutil.which("vmalert")
        with PrometheusServer(tmpd / "tsdb") as prom:
            replay_times, floor_times, peer_times = [], [], []
            lines = 0
            for _ in range(args.runs):
                if vmalert:
                    peer_times.append(vmalert_replay(vmalert, prom.url, tmpd / "plain.yml",
                                                     start, end))
                floor_times.append(asyncio.run(floor(prom.url, exprs, start, end)))
                t0 = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, "-m", "watchdog", "replay", "--rules", str(tmpd / "rules"),
                     "--prometheus-url", prom.url, "--start", str(start), "--end", str(end),
                     "--step", "1m"], capture_output=True, text=True, check=True)
                replay_times.append(time.perf_counter() - t0)
                lines = proc.stdout.count("\n")
    steps = args.hours * 60 + 1
    r, f = statistics.median(replay_times), statistics.median(floor_times)
    print(f"replay: {args.rules} rules x {steps} steps ({args.hours}h at 1m) = "
          f"{args.rules * steps:,} rule evaluations, {lines:,} output lines")
    print(f"watchdog replay (CLI, incl. startup): median {r:.2f}s of {args.runs} runs "
          f"({args.rules * steps / r:,.0f} rule evaluations/s)")
    print(f"floor, bare query_range x {len(exprs)} expressions (aiohttp): median {f:.2f}s")
    if peer_times:
        p = statistics.median(peer_times)
        print(f"vmalert -replay on the same rules as plain PromQL: median {p:.2f}s")
    print(f"ratio replay/floor: {r / f:.1f}x")
    if peer_times:
        print(f"ratio replay/vmalert: {r / p:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
