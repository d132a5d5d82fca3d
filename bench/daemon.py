"""Benchmark: `watchdog run` beside vmalert on the same rules against the same real Prometheus.

    python bench/daemon.py [--rules 1000] [--per-group 50] [--interval 5] [--duration 60]

A Prometheus (Debian's `prometheus`) scrapes an in-process target with `--series` counters every
5s. `--rules` alerting rules (one in twenty true, with `for: 10s`) in groups of `--per-group` are
written once; then the watchdog and vmalert (Debian's `victoria-metrics`, pointed at an in-process
Alertmanager stand-in that drops everything) each run alone for a warm-up and `--duration`
measured seconds. Printed for each, and as watchdog/vmalert ratios: resident memory, CPU seconds
per 1,000 rule evaluations, rule evaluations per second sustained, missed iterations, and failed
evaluations — CPU from /proc, counts from each one's own /metrics.

A benchmark script, not part of the package: it starts processes and servers on 127.0.0.1 only,
and must leave none behind (every child is stopped in `finally`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from watchdog.promserver import PrometheusServer, find_binary, free_port

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def http_get(url: str, timeout: float = 5.0) -> str:
    with _opener.open(url, timeout=timeout) as r:
        return str(r.read().decode())


def metric_sum(text: str, name: str) -> float:
    """Sum of every sample of `name` in Prometheus text format (any labels)."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})?\s+(\S+)")
    total = 0.0
    for line in text.splitlines():
        m = pattern.match(line)
        if m:
            total += float(m.group(1))
    return total


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


# ---- in-process servers ----------------------------------------------------------------------


def serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def target_handler(series: int) -> type[BaseHTTPRequestHandler]:
    started = time.time()

    class Target(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            age = time.time() - started
            lines = ["# TYPE bench_requests_total counter"]
            for i in range(series):
                lines.append(f'bench_requests_total{{shard="s{i}",code="200"}} {age * (i + 1):.3f}')
                lines.append(f'bench_requests_total{{shard="s{i}",code="500"}} {age * 0.01:.3f}')
            body = ("\n".join(lines) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return Target


class Blackhole(BaseHTTPRequestHandler):
    """Alertmanager's POST /api/v2/alerts, answered 200 and forgotten (this vmalert has no
    -notifier.blackhole; it refuses to start without a notifier)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


# ---- the rules ----------------------------------------------------------------------


def write_rules(folder: Path, rules: int, per_group: int, series: int, files: int = 4) -> None:
    groups: list[dict[str, Any]] = []
    for start in range(0, rules, per_group):
        rs = []
        for i in range(start, min(start + per_group, rules)):
            hot = i % 20 == 0
            expr = (f'sum(rate(bench_requests_total{{shard="s{i % series}",code="200"}}[1m]))'
                    f" > {0 if hot else 1e9 + i:g}")
            rule: dict[str, Any] = {"alert": f"Bench{i:04d}", "expr": expr,
                                    "labels": {"severity": "warning", "bench": str(i)},
                                    "annotations": {"summary": "rate is {{ $value }}"}}
            if hot:
                rule["for"] = "10s"
            rs.append(rule)
        groups.append({"name": f"bench-{start // per_group:03d}", "rules": rs})
    folder.mkdir(parents=True, exist_ok=True)
    chunk = -(-len(groups) // files)
    for n in range(files):
        part = groups[n * chunk:(n + 1) * chunk]
        if part:
            # JSON is YAML; both tools read it.
            (folder / f"bench-{n}.yml").write_text(json.dumps({"groups": part}, indent=1))


# ---- one contender ----------------------------------------------------------------------


@dataclass
class Result:
    name: str
    rss_mib: float
    peak_rss_mib: float
    cpu_s: float
    evaluations: float
    errors: float
    missed: float
    seconds: float

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu_s / self.evaluations * 1000 if self.evaluations else float("nan")

    @property
    def per_second(self) -> float:
        return self.evaluations / self.seconds


def measure(name: str, argv: list[str], env: dict[str, str], metrics_url: str,
            counters: Callable[[str], tuple[float, float, float]], warmup: float,
            duration: float, log: Path) -> Result:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                http_get(metrics_url, 1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not come up; see {log}") from None
                time.sleep(0.2)
        print(f"  {name}: up, warming up {warmup:g}s, then measuring {duration:g}s", flush=True)
        time.sleep(warmup)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        ev0, err0, miss0 = counters(http_get(metrics_url))
        time.sleep(duration)
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        ev1, err1, miss1 = counters(http_get(metrics_url))
        rss, peak = rss_mib(proc.pid), rss_mib(proc.pid, "VmHWM")
        return Result(name, rss, peak, cpu1 - cpu0, ev1 - ev0, err1 - err0, miss1 - miss0,
                      t1 - t0)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def watchdog_counters(text: str) -> tuple[float, float, float]:
    return (metric_sum(text, "watchdog_evaluations_total"),
            metric_sum(text, "watchdog_evaluation_failures_total"),
            metric_sum(text, "watchdog_missed_iterations_total"))


def vmalert_counters(text: str) -> tuple[float, float, float]:
    return (metric_sum(text, "vmalert_execution_total"),
            metric_sum(text, "vmalert_execution_errors_total"),
            metric_sum(text, "vmalert_iteration_missed_total"))


def ratio(a: float, b: float) -> str:
    if b == 0:
        return "—" if a == 0 else "∞"
    return f"{a / b:.2f}×"


def report(results: list[Result], args: argparse.Namespace, prom_version: str) -> None:
    w, v = results
    print()
    print(f"{args.rules} rules in groups of {args.per_group}, every {args.interval:g}s, "
          f"{args.duration:g}s measured after {args.warmup:g}s warm-up; Prometheus "
          f"{prom_version}; {os.cpu_count()} CPUs")
    rows = [
        ("RSS at the end (MiB)", w.rss_mib, v.rss_mib, "{:.1f}"),
        ("peak RSS (MiB)", w.peak_rss_mib, v.peak_rss_mib, "{:.1f}"),
        ("CPU s per 1,000 rule evaluations", w.cpu_per_1000, v.cpu_per_1000, "{:.3f}"),
        ("rule evaluations/s sustained", w.per_second, v.per_second, "{:.1f}"),
        ("missed iterations", w.missed, v.missed, "{:.0f}"),
        ("failed rule evaluations", w.errors, v.errors, "{:.0f}"),
        ("CPU s in the window", w.cpu_s, v.cpu_s, "{:.2f}"),
    ]
    print(f"{'':34} {'watchdog':>12} {'vmalert':>12} {'watchdog/vmalert':>17}")
    for label, a, b, fmt in rows:
        print(f"{label:34} {fmt.format(a):>12} {fmt.format(b):>12} {ratio(a, b):>17}")
    expected = args.rules / args.interval
    print(f"(expected evaluations/s at this load: {expected:.1f})")
    if args.json:
        print(json.dumps({r.name: {**r.__dict__, "cpu_per_1000": r.cpu_per_1000,
                                   "per_second": r.per_second} for r in results}, indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rules", type=int, default=1000)
    p.add_argument("--per-group", type=int, default=50)
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=12.0)
    p.add_argument("--series", type=int, default=100)
    p.add_argument("--json", action="store_true", help="also print the figures as JSON")
    p.add_argument("--only", choices=("watchdog", "vmalert"), help="run one contender")
    args = p.parse_args(argv)
    for binary in ("prometheus", "vmalert"):
        if find_binary(binary) is None:
            print(f"{binary} not found: apt-get install prometheus victoria-metrics",
                  file=sys.stderr)
            return 2

    tmp = Path(tempfile.mkdtemp(prefix="watchdog-bench-"))
    target = serve(target_handler(args.series))
    sink = serve(Blackhole)
    prom = PrometheusServer.scraping([f"127.0.0.1:{target.server_address[1]}"], "5s",
                                     tsdb_dir=tmp / "tsdb")
    results: list[Result] = []
    try:
        prom.start()
        print(f"Prometheus at {prom.url}; waiting for the first scrapes...", flush=True)
        deadline = time.monotonic() + 60
        query = f"{prom.url}/api/v1/query?query=count(rate(bench_requests_total%5B1m%5D))"
        while True:
            body = json.loads(http_get(query))
            if body["data"]["result"]:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("Prometheus never had two scrapes of the target")
            time.sleep(1)
        version = json.loads(http_get(f"{prom.url}/api/v1/status/buildinfo"))["data"]["version"]
        rules = tmp / "rules"
        write_rules(rules, args.rules, args.per_group, args.series)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}

        if args.only in (None, "watchdog"):
            port = free_port()
            env = {**base_env, "WATCHDOG_RULES_DIR": str(rules),
                   "WATCHDOG_PROMETHEUS_URL": prom.url,
                   "WATCHDOG_EVALUATION_INTERVAL": f"{args.interval:g}s",
                   "WATCHDOG_HTTP_LISTEN": f"127.0.0.1:{port}",
                   "WATCHDOG_STATE_URL": f"sqlite:///{tmp / 'watchdog.db'}",
                   "WATCHDOG_LOG_LEVEL": "WARNING", "WATCHDOG_LOG_FORMAT": "json"}
            results.append(measure(
                "watchdog", [sys.executable, "-m", "watchdog", "run"], env,
                f"http://127.0.0.1:{port}/metrics", watchdog_counters, args.warmup,
                args.duration, tmp / "watchdog.log"))
        if args.only in (None, "vmalert"):
            port = free_port()
            argv_vm = [find_binary("vmalert") or "vmalert", f"-datasource.url={prom.url}",
                       f"-rule={rules}/*.yml", f"-evaluationInterval={args.interval:g}s",
                       f"-notifier.url=http://127.0.0.1:{sink.server_address[1]}",
                       f"-httpListenAddr=127.0.0.1:{port}", "-loggerLevel=WARN"]
            results.append(measure("vmalert", argv_vm, base_env,
                                   f"http://127.0.0.1:{port}/metrics", vmalert_counters,
                                   args.warmup, args.duration, tmp / "vmalert.log"))
    finally:
        prom.stop()
        target.shutdown()
        sink.shutdown()
    if len(results) == 2:
        report(results, args, version)
    else:
        for r in results:
            print(r, f"cpu/1000={r.cpu_per_1000:.3f} per_s={r.per_second:.1f}")
    print(f"(logs and data in {tmp})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
