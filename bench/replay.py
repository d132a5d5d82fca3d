"""How long `watchdog replay` takes over 24 h at a 1m step, against a backfilled Prometheus,
beside the floor — the bare `query_range` calls for the same expressions through a raw aiohttp
loop — and beside a peer, vmalert's own `-replay` mode on the same rules written as plain
Prometheus rules (`threshold: "> t"` becomes `expr > t`), all in the same run.

    python bench/replay.py [--workload realistic|small] [--rules N] [--hours 24] [--runs 3]

Workloads:

* `realistic` (default): 50 services, each with request counters by status code and a latency
  histogram (8 buckets, _sum, _count), a daily traffic curve and a few incidents (error bursts,
  latency regressions, traffic drops) at random times; 10 rules per service (500 in all) of the
  kinds real rule files hold — error ratio with `for`, error ratio in warning/critical tiers,
  p95 and p99 from the histogram, p95 against an hour earlier (`baseline: {offset: 1h}`), mean
  latency, a traffic floor guarded by `when`, a plain Prometheus rule with `keep_firing_for`,
  an error budget burn rate over two windows, and a per-instance 5xx count. Backfilled with
  `promtool tsdb create-blocks-from openmetrics`.
* `small`: the earlier 100-rule, 10-service set (`--rules` changes its size).

vmalert runs with `-datasource.queryStep=1m`, the replay's step: by default it queries every 5m
whatever the group interval, evaluating a fifth of the steps (an earlier version of this bench
compared against that).

Prints, per tool, the median wall time of `--runs` runs and the CPU seconds of the tool's own
process (and of Prometheus while it served it, from /proc), and the ratios replay / floor and
replay / vmalert for wall and CPU. Needs the prometheus and promtool binaries; vmalert (Debian
victoria-metrics) is optional.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import math
import os
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
CLK_TCK = os.sysconf("SC_CLK_TCK")
LE = ("0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "+Inf")
REALISTIC_SERVICES = 50


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


def _lognormal_cdf(x: float, median: float, sigma: float = 0.6) -> float:
    return 0.5 * (1 + math.erf(math.log(x / median) / (sigma * math.sqrt(2))))


def realistic_series(hours: int, rng: random.Random) -> list[Series]:
    """Counters per minute for REALISTIC_SERVICES services: requests by code, a latency
    histogram; a daily curve; incidents at random times (5xx bursts, slow periods, drops)."""
    out: list[Series] = []
    points = hours * 60 + 120  # two hours before the range: 5m windows and the 1h baseline
    for s in range(REALISTIC_SERVICES):
        svc = f"svc{s:02d}"
        rps = rng.uniform(5, 200)
        err = rng.uniform(0.001, 0.01)
        median = rng.uniform(0.02, 0.12)  # p95 below 0.5s and p99 below 1s unless slow
        incidents = []
        for _ in range(rng.randint(1, 4)):
            start = rng.randrange(points)
            kind = rng.choice(["err", "slow", "drop"])
            incidents.append((start, start + rng.randint(3, 60), kind))
        totals = {"200": 0.0, "404": 0.0, "500": 0.0, "503": 0.0}
        buckets = dict.fromkeys(LE, 0.0)
        lat_sum = 0.0
        rows: dict[str, list[tuple[float, float]]] = {}
        for i in range(points):
            kinds = {k for a, b, k in incidents if a <= i < b}
            daily = 1 + 0.5 * math.sin(2 * math.pi * (i % 1440) / 1440)
            n = rps * 60 * daily * rng.uniform(0.9, 1.1) * (0.1 if "drop" in kinds else 1)
            e = min(0.9, err * (rng.uniform(10, 30) if "err" in kinds else rng.uniform(0.5, 1.5)))
            m = median * (rng.uniform(3, 6) if "slow" in kinds else rng.uniform(0.9, 1.1))
            totals["500"] += n * e * 0.7
            totals["503"] += n * e * 0.3
            totals["404"] += n * 0.01
            totals["200"] += n * (1 - e - 0.01)
            for le in LE:
                buckets[le] += n if le == "+Inf" else n * _lognormal_cdf(float(le), m)
            lat_sum += n * m * 1.2
            t = i * 60.0
            for code, v in totals.items():
                rows.setdefault(f"code={code}", []).append((t, round(v, 3)))
            for le, v in buckets.items():
                rows.setdefault(f"le={le}", []).append((t, round(v, 3)))
            rows.setdefault("sum", []).append((t, round(lat_sum, 3)))
            rows.setdefault("count", []).append((t, round(buckets["+Inf"], 3)))
        base = {"service": svc, "instance": f"{svc}-0:8080", "job": "api"}
        for key, samples in rows.items():
            kind, _, val = key.partition("=")
            if kind == "code":
                out.append(Series({"__name__": "http_requests_total", **base, "code": val},
                                  samples))
            elif kind == "le":
                out.append(Series({"__name__": "http_request_duration_seconds_bucket", **base,
                                   "le": val}, samples))
            else:
                out.append(Series({"__name__": f"http_request_duration_seconds_{kind}", **base},
                                  samples))
    return out


def realistic_rules() -> tuple[str, str]:
    """Ten rules per service, as the watchdog reads them and as vmalert does (our extensions
    written out as PromQL: tiers as the lower tier, the baseline with `offset` on each
    selector, the guard with `and`)."""
    ours: list[dict[str, object]] = []
    peer: list[dict[str, object]] = []

    def both(rule: dict[str, object], plain_expr: str) -> None:
        ours.append(rule)
        p = {k: v for k, v in rule.items() if k not in (
            "threshold", "severities", "baseline", "when", "keep_firing_for")}
        p["expr"] = plain_expr
        peer.append(p)

    for s in range(REALISTIC_SERVICES):
        svc = f"svc{s:02d}"
        sel = f'service="{svc}"'

        def ratio(window: str, off: str = "", sel: str = sel) -> str:
            return (f'sum(rate(http_requests_total{{{sel},code=~"5.."}}[{window}]{off})) / '
                    f'sum(rate(http_requests_total{{{sel}}}[{window}]{off}))')

        def quantile(q: str, off: str = "", sel: str = sel) -> str:
            return (f"histogram_quantile({q}, sum by (le) (rate("
                    f"http_request_duration_seconds_bucket{{{sel}}}[5m]{off})))")

        traffic = f"sum(rate(http_requests_total{{{sel}}}[5m]))"
        mean = (f"sum(rate(http_request_duration_seconds_sum{{{sel}}}[5m])) / "
                f"sum(rate(http_request_duration_seconds_count{{{sel}}}[5m]))")
        labels = {"service": svc, "team": f"team{s % 7}"}
        both({"alert": "ErrorRatio", "expr": ratio("5m"), "threshold": "> 0.05", "for": "5m",
              "labels": {**labels, "severity": "page"},
              "annotations": {"summary": "{{ $value | humanizePercentage }} errors"}},
             f"({ratio('5m')}) > 0.05")
        both({"alert": "ErrorRatioTiers", "expr": ratio("5m"),
              "severities": {"warning": "> 0.02", "critical": "> 0.1"}, "for": "2m",
              "labels": labels}, f"({ratio('5m')}) > 0.02")
        both({"alert": "LatencyP95", "expr": quantile("0.95"), "threshold": "> 0.5",
              "for": "10m", "labels": labels,
              "annotations": {"summary": "p95 {{ $value | humanizeDuration }}"}},
             f"({quantile('0.95')}) > 0.5")
        both({"alert": "LatencyP99Tiers", "expr": quantile("0.99"),
              "severities": {"warning": "> 1", "critical": "> 2.5"}, "for": "5m",
              "labels": labels}, f"({quantile('0.99')}) > 1")
        both({"alert": "LatencyVsHourAgo", "expr": quantile("0.95"),
              "baseline": {"offset": "1h", "compare": "ratio"}, "threshold": "> 2",
              "for": "10m", "labels": labels},
             f"({quantile('0.95')}) / ({quantile('0.95', ' offset 1h')}) > 2")
        both({"alert": "MeanLatency", "expr": mean, "threshold": "> 0.4", "for": "5m",
              "labels": labels}, f"({mean}) > 0.4")
        both({"alert": "TrafficDrop", "expr": traffic, "threshold": "< 3", "for": "5m",
              "when": f"{traffic} > 0", "labels": labels},
             f"({traffic}) < 3 and ({traffic}) > 0")
        both({"alert": "ErrorsPlain", "expr": f"({ratio('1m')}) > 0.1", "for": "2m",
              "keep_firing_for": "5m", "labels": labels}, f"({ratio('1m')}) > 0.1")
        both({"alert": "BurnRate", "expr": f"({ratio('5m')}) > 14.4 * 0.001 and "
              f"({ratio('1h')}) > 14.4 * 0.001", "for": "2m", "labels": labels},
             f"({ratio('5m')}) > 14.4 * 0.001 and ({ratio('1h')}) > 14.4 * 0.001")
        both({"alert": "Instance5xx", "expr": f'sum by (instance) (increase(http_requests_total'
              f'{{{sel},code="500"}}[5m])) > 500', "for": "1m", "labels": labels},
             f'sum by (instance) (increase(http_requests_total{{{sel},code="500"}}[5m])) > 500')
    n = len(ours) // 10

    def doc(rules: list[dict[str, object]]) -> str:
        groups = [{"name": f"svc{k:02d}", "interval": "1m", "rules": rules[k * 10:(k + 1) * 10]}
                  for k in range(n)]
        return yaml.safe_dump({"groups": groups}, sort_keys=False)

    return doc(ours), doc(peer)


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


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


class Timed:
    """Wall time, the child's own CPU (RUSAGE_CHILDREN) and Prometheus's CPU over one run."""

    def __init__(self, prom_pid: int | None) -> None:
        self.prom_pid = prom_pid

    def __enter__(self) -> Timed:
        self.t0 = time.perf_counter()
        ru = os.times()
        self.c0 = ru.children_user + ru.children_system
        self.p0 = proc_cpu(self.prom_pid) if self.prom_pid else 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        ru = os.times()
        self.cpu = ru.children_user + ru.children_system - self.c0
        self.prom_cpu = (proc_cpu(self.prom_pid) if self.prom_pid else 0.0) - self.p0


def vmalert_replay(binary: str, url: str, rules: Path, start: float, end: float,
                   prom_pid: int | None) -> Timed:
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    iso = "%Y-%m-%dT%H:%M:%SZ"
    with Timed(prom_pid) as timed:
        subprocess.run([binary, f"-rule={rules}", f"-datasource.url={url}",
                        f"-remoteWrite.url=http://127.0.0.1:{sink.server_port}",
                        f"-replay.timeFrom={time.strftime(iso, time.gmtime(start))}",
                        f"-replay.timeTo={time.strftime(iso, time.gmtime(end))}",
                        "-replay.rulesDelay=0s", "-replay.maxDatapointsPerQuery=10000",
                        # vmalert queries at -datasource.queryStep (5m unless told), not at the
                        # group interval: at 5m it would judge one step in five of what the
                        # watchdog judges. Same resolution for both: every minute.
                        "-datasource.queryStep=1m",
                        "-replay.disableProgressBar", "-loggerLevel=ERROR"],
                       capture_output=True, text=True, check=True)
    sink.shutdown()
    return timed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workload", choices=("realistic", "small"), default="realistic")
    ap.add_argument("--rules", type=int, default=100, help="rules of the small workload")
    ap.add_argument("--hours", type=int, default=24)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the data folder, print its path")
    args = ap.parse_args()
    rng = random.Random(7)
    tmp = tempfile.mkdtemp(prefix="watchdog-replay-bench-")
    try:
        return run(args, rng, Path(tmp))
    finally:
        if args.keep:
            print(f"(data in {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, rng: random.Random, tmpd: Path) -> int:
    if args.workload == "realistic":
        rules_text, plain_text = realistic_rules()
        series = realistic_series(args.hours, rng)
        start = 7200.0
    else:
        rules_text = make_rules(args.rules)
        plain_text = plain_rules(rules_text)
        series = make_series(args.hours, rng)
        start = 3600.0
    end = start + args.hours * 3600.0
    (tmpd / "rules").mkdir()
    (tmpd / "rules" / "bench.yml").write_text(rules_text)
    (tmpd / "plain.yml").write_text(plain_text)
    rules = [r for g in yaml.safe_load(rules_text)["groups"] for r in g["rules"]]
    t0 = time.perf_counter()
    samples = sum(len(s.samples) for s in series)
    backfill(series, tmpd / "tsdb", timeout=1800)
    del series
    print(f"backfilled {samples:,} samples in {time.perf_counter() - t0:.0f}s", flush=True)
    exprs = sorted({r["expr"] for r in rules})
    vmalert = shutil.which("vmalert")
    ours: list[Timed] = []
    peer: list[Timed] = []
    floors: list[float] = []
    lines = 0
    with PrometheusServer(tmpd / "tsdb") as prom:
        for n in range(args.runs):
            if vmalert:
                peer.append(vmalert_replay(vmalert, prom.url, tmpd / "plain.yml", start, end,
                                           prom.pid))
            floors.append(asyncio.run(floor(prom.url, exprs, start, end)))
            with Timed(prom.pid) as timed:
                proc = subprocess.run(
                    [sys.executable, "-m", "watchdog", "replay", "--rules", str(tmpd / "rules"),
                     "--prometheus-url", prom.url, "--start", str(start), "--end", str(end),
                     "--step", "1m"], capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                return 1
            ours.append(timed)
            lines = proc.stdout.count("\n")
            line = f"  run {n + 1}: watchdog {timed.wall:.2f}s wall, {timed.cpu:.2f}s CPU"
            if vmalert:
                line += f"; vmalert {peer[-1].wall:.2f}s wall, {peer[-1].cpu:.2f}s CPU"
            print(line + f"; floor {floors[-1]:.2f}s", flush=True)
    steps = args.hours * 60 + 1
    med = statistics.median
    r, f = med(t.wall for t in ours), med(floors)
    print(f"replay ({args.workload}): {len(rules)} rules x {steps} steps ({args.hours}h at 1m) "
          f"= {len(rules) * steps:,} rule evaluations, {len(exprs)} distinct expressions, "
          f"{lines:,} output lines; {os.cpu_count()} CPUs")
    print(f"watchdog replay (CLI, incl. startup): median {r:.2f}s wall, "
          f"{med(t.cpu for t in ours):.2f}s CPU, Prometheus {med(t.prom_cpu for t in ours):.2f}s "
          f"CPU, of {args.runs} runs ({len(rules) * steps / r:,.0f} rule evaluations/s)")
    print(f"floor, bare query_range x {len(exprs)} expressions (aiohttp): median {f:.2f}s")
    if peer:
        p = med(t.wall for t in peer)
        print(f"vmalert -replay on the same rules as plain PromQL: median {p:.2f}s wall, "
              f"{med(t.cpu for t in peer):.2f}s CPU, Prometheus "
              f"{med(t.prom_cpu for t in peer):.2f}s CPU")
    print(f"ratio replay/floor: {r / f:.2f}x")
    if peer:
        walls = [a.wall / b.wall for a, b in zip(ours, peer, strict=True)]
        cpus = [a.cpu / b.cpu for a, b in zip(ours, peer, strict=True)]
        totals = [(a.cpu + a.prom_cpu) / (b.cpu + b.prom_cpu)
                  for a, b in zip(ours, peer, strict=True)]
        print(f"ratio replay/vmalert, wall: median {med(walls):.2f}x "
              f"(per run {', '.join(f'{x:.2f}' for x in walls)})")
        print(f"ratio replay/vmalert, CPU of the tool: median {med(cpus):.2f}x "
              f"(per run {', '.join(f'{x:.2f}' for x in cpus)})")
        print(f"ratio replay/vmalert, CPU of the tool + Prometheus: median {med(totals):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
