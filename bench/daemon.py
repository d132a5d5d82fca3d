"""Benchmark: `watchdog run` beside vmalert and Prometheus's rule engine on the same rules.

    python bench/daemon.py [--rules 1000] [--per-group 50] [--interval 5] [--duration 60]
                           [--state-url URL] [--only NAME ...] [--json]

A Prometheus (Debian's `prometheus`) scrapes an in-process target with `--series` counters every
5s. `--rules` alerting rules (one in twenty true, with `for: 10s`) in groups of `--per-group` are
written once; then the watchdog and vmalert (Debian's `victoria-metrics`, pointed at an in-process
Alertmanager stand-in that drops everything) each run alone against that Prometheus for a warm-up
and `--duration` measured seconds.

Prometheus evaluates rules only against its own TSDB, so its rule engine is measured last, by
difference: two more Prometheus instances scrape the same target at the same interval, one with
the rules (evaluated every `--interval`) and one without, and both are measured over the same
window. Its CPU and memory figures are the with-rules instance minus the without-rules one — a
difference of two processes, so noisier than the others; its counts come from the with-rules
instance's own /metrics.

Printed for each, and as watchdog/vmalert and watchdog/prometheus ratios: resident memory, CPU
seconds per 1,000 rule evaluations, rule evaluations per second sustained, missed iterations,
and failed evaluations — CPU from /proc, counts from each one's own /metrics.

The watchdog keeps its state in a fresh SQLite file by default. `--state-url postgresql://...`
names a PostgreSQL server instead: the bench creates a throwaway database there (so it needs the
CREATEDB privilege), points `WATCHDOG_STATE_URL` at it and drops it at the end. The work the
server does for the watchdog is not in the watchdog's process, so when the server runs on this
machine the CPU of its backends serving that database (pids from pg_stat_activity, CPU from
/proc) is printed too, as its own row: the fair comparison with SQLite, which works in-process,
is the sum. The watchdog to run is `python -m watchdog` of the Python running this script, so
`/path/to/other/.venv/bin/python bench/daemon.py` measures another checkout (e.g. a release).

`--find-max` searches, for the watchdog and vmalert in turn, the most rules each sustains at
`--interval` with no missed iteration (doubling from `--rules`, then bisecting to 10%), each
probe `--warmup` + `--duration` seconds alone against the same Prometheus; `--shape pairs`
writes the rules as warning/critical pairs on one expression.

`--memory 0,1000,10000` measures memory instead: for each rule count the watchdog starts alone
against the same Prometheus (rules as above, every `--interval`), evaluates every rule twice,
and its VmRSS / VmHWM are read from /proc; then (up to `--trace-upto` rules) it starts once more
under `tracemalloc` (through `watchdog.cli.main`), and after the same two rounds reports the
Python heap, the modules loaded, whether the optional clients (Sentry, MQTT, SMTP, Kubernetes,
PostgreSQL) were imported, and the allocation sites holding the most. The slope per 1,000 rules
is printed from the first count above 0 to the last. vmalert's RSS at the same counts is printed
beside it (`--only watchdog` skips it). Run it with the Python of a production install (`pip
install .`, no dev tools) to measure what a deployment holds: in a `.[dev]` venv structlog also
imports `rich` (pulled in by import-linter), about 6 MiB more — the report says which it saw.

A benchmark script, not part of the package: it starts processes and servers on 127.0.0.1 only,
and must leave none behind (every child is stopped in `finally`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from watchdog.promserver import PrometheusServer, find_binary, free_port

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
CLK_TCK = os.sysconf("SC_CLK_TCK")
SCRAPE_INTERVAL = "5s"  # every Prometheus here scrapes the target this often
CONTENDERS = ("watchdog", "vmalert", "prometheus")
COLUMNS = {"watchdog": "watchdog", "vmalert": "vmalert", "prometheus": "prometheus rules"}


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


def write_rules(folder: Path, rules: int, per_group: int, series: int, files: int = 4,
                shape: str = "distinct") -> None:
    """`distinct`: every rule its own expression. `pairs`: rules come as warning/critical
    pairs on one expression with two thresholds, as rule files often write tiers."""
    groups: list[dict[str, Any]] = []
    for start in range(0, rules, per_group):
        rs = []
        for i in range(start, min(start + per_group, rules)):
            if shape == "pairs":
                hot = (i // 2) % 20 == 0
                shard, limit = (i // 2) % series, (0 if hot else 1e9 + i) if i % 2 == 0 \
                    else 2e9 + i
            else:
                hot = i % 20 == 0
                shard, limit = i % series, 0 if hot else 1e9 + i
            expr = (f'sum(rate(bench_requests_total{{shard="s{shard}",code="200"}}[1m]))'
                    f" > {limit:g}")
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
    # For Prometheus: each instance's own figures behind the differences above; for the
    # watchdog on PostgreSQL: the server backends' CPU in the window ("server_cpu_s").
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu_s / self.evaluations * 1000 if self.evaluations else float("nan")

    @property
    def per_second(self) -> float:
        return self.evaluations / self.seconds


def measure(name: str, argv: list[str], env: dict[str, str], metrics_url: str,
            counters: Callable[[str], tuple[float, float, float]], warmup: float,
            duration: float, log: Path, side: SideCpu | None = None) -> Result:
    with log.open("wb") as out:
        # In the log's folder: `python -m` puts the working directory first on sys.path, and a
        # checkout there would be imported instead of the interpreter's own watchdog.
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=log.parent)
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
        side0 = side.sample() if side else {}
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        ev0, err0, miss0 = counters(http_get(metrics_url))
        time.sleep(duration)
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        ev1, err1, miss1 = counters(http_get(metrics_url))
        side1 = side.sample() if side else {}
        rss, peak = rss_mib(proc.pid), rss_mib(proc.pid, "VmHWM")
        parts: dict[str, float] = {}
        if side is not None:
            # A backend that appeared in the window counts from 0; one that ended is lost.
            parts["server_cpu_s"] = sum(c - side0.get(pid, 0.0) for pid, c in side1.items())
            parts["server_backends"] = len(side1)
        return Result(name, rss, peak, cpu1 - cpu0, ev1 - ev0, err1 - err0, miss1 - miss0,
                      t1 - t0, parts)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- memory ------------------------------------------------------------------------------

# Runs the daemon in-process under tracemalloc; SIGUSR1 writes what it holds to $BENCH_MEM_OUT.
# Frames are attributed to the innermost watchdog/ frame when there is one, so "who keeps it"
# reads as our code, not as dict/list internals.
TRACE_PROBE = r"""
import json, os, signal, sys, tracemalloc
tracemalloc.start(6)
def dump(signum, frame):
    snap = tracemalloc.take_snapshot()
    sites = {}
    for st in snap.statistics("traceback"):
        frames = [f for f in st.traceback if "/watchdog/" in f.filename]
        f = frames[-1] if frames else st.traceback[-1]
        key = f"{f.filename.split('/watchdog/')[-1] if frames else f.filename}:{f.lineno}"
        sites[key] = sites.get(key, 0) + st.size
    optional = {m: m in sys.modules for m in ("sentry_sdk", "aiomqtt", "aiosmtplib",
                "kubernetes", "asyncpg", "rich", "numpy")}
    top = sorted(sites.items(), key=lambda kv: -kv[1])[:12]
    with open(os.environ["BENCH_MEM_OUT"], "w") as fh:
        json.dump({"traced": tracemalloc.get_traced_memory()[0], "modules": len(sys.modules),
                   "optional": optional, "top": top}, fh)
signal.signal(signal.SIGUSR1, dump)
from watchdog.cli import main
sys.exit(main(["run"]))
"""


@dataclass
class MemoryPoint:
    rules: int
    rss_mib: float
    peak_mib: float
    vmalert_rss_mib: float | None = None
    traced_mib: float | None = None
    modules: int | None = None
    optional: dict[str, bool] = field(default_factory=dict)
    top: list[tuple[str, int]] = field(default_factory=list)


def wait_rounds(proc: subprocess.Popen[bytes], metrics_url: str, counters: Callable[
        [str], tuple[float, float, float]], want: float, log: Path, name: str,
        timeout: float = 300) -> None:
    """Until `proc` serves metrics and has done `want` rule evaluations."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            if counters(http_get(metrics_url, 2))[0] >= want:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not do {want:g} evaluations in {timeout:g}s; "
                               f"see {log}")
        time.sleep(0.5)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def memory_point(n: int, args: argparse.Namespace, tmp: Path, prom_url: str, series: int,
                 base_env: dict[str, str], state_url: str, sink_port: int) -> MemoryPoint:
    rules = tmp / f"rules-{n}"
    write_rules(rules, n, args.per_group, series, shape=args.shape)
    rounds = 2 * n
    point = MemoryPoint(n, 0.0, 0.0)
    for traced in (False, True) if n <= args.trace_upto else (False,):
        port = free_port()
        out = tmp / f"mem-{n}-{traced}.json"
        db = state_url if not state_url.startswith("sqlite") else \
            f"sqlite:///{tmp / f'mem-{n}-{traced}.db'}"
        env = {**base_env, "WATCHDOG_RULES_DIR": str(rules), "WATCHDOG_PROMETHEUS_URL": prom_url,
               "WATCHDOG_EVALUATION_INTERVAL": f"{args.interval:g}s",
               "WATCHDOG_HTTP_LISTEN": f"127.0.0.1:{port}", "WATCHDOG_STATE_URL": db,
               "WATCHDOG_LOG_LEVEL": "WARNING", "WATCHDOG_LOG_FORMAT": "json",
               "BENCH_MEM_OUT": str(out), "PYTHONOPTIMIZE": str(args.optimize)}
        argv = [sys.executable, "-c", TRACE_PROBE] if traced else \
            [sys.executable, "-m", "watchdog", "run"]
        log = tmp / f"mem-{n}-{traced}.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=tmp)
        started = time.monotonic()
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            wait_rounds(proc, url, watchdog_counters, rounds, log, "watchdog")
            print(f"  watchdog{' under tracemalloc' if traced else ''} at {n:,} rules: "
                  f"{rounds:,} evaluations after {time.monotonic() - started:.0f}s", flush=True)
            if n == 0:
                time.sleep(2 * args.interval)  # the built-in health group still ticks
            if traced:
                proc.send_signal(signal.SIGUSR1)
                deadline = time.monotonic() + 120
                while not out.exists() or not out.read_text().endswith("}"):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no tracemalloc report from the watchdog; see {log}")
                    time.sleep(0.5)
                got = json.loads(out.read_text())
                point.traced_mib = got["traced"] / 2**20
                point.modules = got["modules"]
                point.optional = got["optional"]
                point.top = [(k, v) for k, v in got["top"]]
            else:
                point.rss_mib, point.peak_mib = rss_mib(proc.pid), rss_mib(proc.pid, "VmHWM")
        finally:
            stop(proc)
    if "vmalert" in args.memory_peers:
        port = free_port()
        log = tmp / f"mem-{n}-vmalert.log"
        argv_vm = [find_binary("vmalert") or "vmalert", f"-datasource.url={prom_url}",
                   f"-rule={rules}/*.yml", f"-evaluationInterval={args.interval:g}s",
                   f"-notifier.url=http://127.0.0.1:{sink_port}",
                   f"-httpListenAddr=127.0.0.1:{port}", "-loggerLevel=WARN"]
        if n == 0:
            (rules / "empty.yml").write_text('{"groups": []}')
        with log.open("wb") as fh:
            proc = subprocess.Popen(argv_vm, env=base_env, stdout=fh, stderr=subprocess.STDOUT,
                                    cwd=tmp)
        try:
            wait_rounds(proc, f"http://127.0.0.1:{port}/metrics", vmalert_counters, rounds, log,
                        "vmalert")
            if n == 0:
                time.sleep(2 * args.interval)
            point.vmalert_rss_mib = rss_mib(proc.pid)
        finally:
            stop(proc)
    return point


def report_memory(points: list[MemoryPoint], args: argparse.Namespace) -> None:
    print()
    print(f"memory: rules in groups of {args.per_group} every {args.interval:g}s, each count "
          f"after two evaluations of every rule; {os.cpu_count()} CPUs")
    print(f"(watchdog: {args.watchdog_source}; Python {sys.executable}, "
          f"PYTHONOPTIMIZE={args.optimize})")
    print(f"{'rules':>7} {'RSS MiB':>9} {'peak MiB':>9} {'vmalert RSS':>12} {'ratio':>7} "
          f"{'py heap MiB':>12} {'modules':>8}")
    for p in points:
        vm = f"{p.vmalert_rss_mib:.1f}" if p.vmalert_rss_mib is not None else "—"
        r = ratio(p.rss_mib, p.vmalert_rss_mib) if p.vmalert_rss_mib else "—"
        heap = f"{p.traced_mib:.1f}" if p.traced_mib is not None else "—"
        print(f"{p.rules:>7,} {p.rss_mib:>9.1f} {p.peak_mib:>9.1f} {vm:>12} {r:>7} {heap:>12} "
              f"{p.modules if p.modules is not None else '—':>8}")
    counted = [p for p in points if p.rules > 0]
    if len(counted) >= 2:
        a, b = counted[0], counted[-1]
        per_k = (b.rss_mib - a.rss_mib) / (b.rules - a.rules) * 1000
        line = f"slope {a.rules:,} -> {b.rules:,} rules: RSS {per_k:+.2f} MiB per 1,000 rules"
        if a.traced_mib is not None and b.traced_mib is not None:
            heap_k = (b.traced_mib - a.traced_mib) / (b.rules - a.rules) * 1000
            line += f", Python heap {heap_k:+.2f} MiB per 1,000 rules"
        if a.vmalert_rss_mib and b.vmalert_rss_mib:
            vm_k = (b.vmalert_rss_mib - a.vmalert_rss_mib) / (b.rules - a.rules) * 1000
            line += f"; vmalert {vm_k:+.2f} MiB per 1,000"
        print(line)
    for p in points:
        loaded = [m for m, yes in p.optional.items() if yes]
        print(f"at {p.rules:,} rules, optional modules loaded: {', '.join(loaded) or 'none'}")
    if points and points[-1].top:
        print(f"largest Python allocation sites at {points[-1].rules:,} rules (MiB):")
        for site, size in points[-1].top:
            print(f"  {size / 2**20:7.2f}  {site}")


# ---- the most rules each keeps up with ------------------------------------------------------


def sustained(r: Result, rules: int, interval: float) -> bool:
    """Every iteration on time: none missed, none failed, and the evaluations the rule count
    asks for (a tool that falls behind without counting misses shows it here)."""
    return r.missed == 0 and r.errors == 0 and r.evaluations >= 0.97 * rules * r.seconds / interval


def find_max(name: str, probe: Callable[[int], Result], args: argparse.Namespace
             ) -> list[tuple[int, Result | None]]:
    """Double the rule count from --rules while `probe` sustains it, then halve the gap to
    the first count it did not until it is under 10%; returns every probe made."""
    tried: list[tuple[int, Result | None]] = []

    def ok(n: int) -> bool:
        try:
            r = probe(n)
        except RuntimeError as e:  # did not come up in time, or exited: not sustained
            print(f"  {name} at {n:,} rules: {str(e).splitlines()[0]} -> not", flush=True)
            tried.append((n, None))
            return False
        tried.append((n, r))
        good = sustained(r, n, args.interval)
        print(f"  {name} at {n:,} rules: {r.evaluations / r.seconds:,.0f} evaluations/s of "
              f"{n / args.interval:,.0f}, missed {r.missed:.0f}, failed {r.errors:.0f}, CPU "
              f"{r.cpu_s / r.seconds:.0%} of a core -> {'sustained' if good else 'not'}",
              flush=True)
        return good

    lo, hi = 0, args.rules
    while ok(hi):
        lo, hi = hi, hi * 2
        if hi > args.max_rules:
            return tried
    while hi - lo > max(args.per_group, lo // 10):
        mid = (lo + hi) // 2 // args.per_group * args.per_group or args.per_group
        if mid in (lo, hi):
            break
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return tried


def report_max(found: dict[str, list[tuple[int, Result | None]]], args: argparse.Namespace
               ) -> None:
    print()
    print(f"most rules sustained every {args.interval:g}s (0 missed iterations, 0 failed, "
          f"all evaluations done over {args.duration:g}s after {args.warmup:g}s warm-up), "
          f"rules shaped {args.shape!r} in groups of {args.per_group}; {os.cpu_count()} CPUs:")
    best: dict[str, int] = {}
    for name, tried in found.items():
        good = [n for n, r in tried if r is not None and sustained(r, n, args.interval)]
        best[name] = max(good, default=0)
        bad = [n for n, _ in tried if n not in good]
        at = next((r for n, r in tried if n == best[name]), None)
        extra = f", CPU s per 1,000 evaluations there {at.cpu_per_1000:.3f}" if at else ""
        print(f"  {name:10} {best[name]:>7,} rules (first not sustained: "
              f"{min(bad) if bad else 'none up to --max-rules'}){extra}")
    if "watchdog" in best and "vmalert" in best and best["vmalert"]:
        print(f"  ratio watchdog/vmalert: {best['watchdog'] / best['vmalert']:.2f}x")


# ---- PostgreSQL ------------------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    return urlsplit(url)._replace(path="/" + name).geturl()


def pg(url: str, sql: str) -> list[Any]:
    """One statement on `url` (asyncpg, imported here: SQLite runs need no driver)."""
    import asyncpg  # type: ignore[import-untyped,unused-ignore]

    async def run() -> list[Any]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(run())


class SideCpu:
    """CPU seconds of the PostgreSQL backends serving `database`, by pid, read from /proc
    (so only for a server on this machine whose processes this user can read)."""

    def __init__(self, admin_url: str, database: str) -> None:
        self.admin_url, self.database = admin_url, database

    def sample(self) -> dict[int, float]:
        rows = pg(self.admin_url, "SELECT pid FROM pg_stat_activity WHERE datname = "
                                  f"'{self.database}' AND pid <> pg_backend_pid()")
        out: dict[int, float] = {}
        for row in rows:
            with contextlib.suppress(OSError):  # ended meanwhile, or not on this machine
                out[row["pid"]] = cpu_seconds(row["pid"])
        return out


def wait_for_data(prom_url: str, timeout: float = 60) -> None:
    """Until the Prometheus at `prom_url` has two scrapes of the target (a rate to compute)."""
    deadline = time.monotonic() + timeout
    query = f"{prom_url}/api/v1/query?query=count(rate(bench_requests_total%5B1m%5D))"
    while True:
        body = json.loads(http_get(query))
        if body["data"]["result"]:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"Prometheus at {prom_url} never had two scrapes of the target")
        time.sleep(1)


def rule_prometheus(target: str, tsdb_dir: Path, rules: Path | None,
                    interval: float) -> PrometheusServer:
    """A Prometheus scraping `target` like the data one, evaluating `rules` if given."""
    server = PrometheusServer.scraping([target], SCRAPE_INTERVAL, tsdb_dir=tsdb_dir)
    config = json.loads(server.config)
    config["global"]["evaluation_interval"] = f"{interval:g}s"
    if rules is not None:
        config["rule_files"] = [f"{rules}/*.yml"]
    server.config = json.dumps(config, indent=2)  # JSON is YAML
    return server


def measure_prometheus(target: str, tmp: Path, rules: Path, interval: float, warmup: float,
                       duration: float) -> Result:
    """Prometheus's rule engine, by difference of an instance with the rules and one without,
    both scraping the same target and measured over the same window."""
    with_rules = rule_prometheus(target, tmp / "tsdb-with-rules", rules, interval)
    without = rule_prometheus(target, tmp / "tsdb-without-rules", None, interval)
    try:
        with_rules.start()
        without.start()
        for server in (with_rules, without):
            wait_for_data(server.url)
        pid_w, pid_o = with_rules.pid, without.pid
        if pid_w is None or pid_o is None:
            raise RuntimeError("a Prometheus for the rule-engine measurement exited")
        metrics_url = f"{with_rules.url}/metrics"
        print(f"  prometheus: with rules at {with_rules.url}, without at {without.url}; up, "
              f"warming up {warmup:g}s, then measuring {duration:g}s", flush=True)
        time.sleep(warmup)
        cpu_w0, cpu_o0, t0 = cpu_seconds(pid_w), cpu_seconds(pid_o), time.monotonic()
        ev0, err0, miss0 = prometheus_counters(http_get(metrics_url))
        time.sleep(duration)
        cpu_w1, cpu_o1, t1 = cpu_seconds(pid_w), cpu_seconds(pid_o), time.monotonic()
        ev1, err1, miss1 = prometheus_counters(http_get(metrics_url))
        parts = {
            "with_rules_cpu_s": cpu_w1 - cpu_w0, "without_rules_cpu_s": cpu_o1 - cpu_o0,
            "with_rules_rss_mib": rss_mib(pid_w), "without_rules_rss_mib": rss_mib(pid_o),
            "with_rules_peak_rss_mib": rss_mib(pid_w, "VmHWM"),
            "without_rules_peak_rss_mib": rss_mib(pid_o, "VmHWM"),
        }
        return Result(
            "prometheus",
            parts["with_rules_rss_mib"] - parts["without_rules_rss_mib"],
            parts["with_rules_peak_rss_mib"] - parts["without_rules_peak_rss_mib"],
            parts["with_rules_cpu_s"] - parts["without_rules_cpu_s"],
            ev1 - ev0, err1 - err0, miss1 - miss0, t1 - t0, parts)
    finally:
        with_rules.stop()
        without.stop()


def watchdog_counters(text: str) -> tuple[float, float, float]:
    return (metric_sum(text, "watchdog_evaluations_total"),
            metric_sum(text, "watchdog_evaluation_failures_total"),
            metric_sum(text, "watchdog_missed_iterations_total"))


def vmalert_counters(text: str) -> tuple[float, float, float]:
    return (metric_sum(text, "vmalert_execution_total"),
            metric_sum(text, "vmalert_execution_errors_total"),
            metric_sum(text, "vmalert_iteration_missed_total"))


def prometheus_counters(text: str) -> tuple[float, float, float]:
    return (metric_sum(text, "prometheus_rule_evaluations_total"),
            metric_sum(text, "prometheus_rule_evaluation_failures_total"),
            metric_sum(text, "prometheus_rule_group_iterations_missed_total"))


def watchdog_source(cwd: Path) -> str:
    """Which watchdog `python -m watchdog` runs in `cwd`: its folder and, in a git checkout, the
    commit — so a table can say which release it measured."""
    folder = subprocess.run(
        [sys.executable, "-c", "import pathlib, watchdog; "
         "print(pathlib.Path(watchdog.__file__).parent)"],
        cwd=cwd, capture_output=True, text=True, check=False).stdout.strip()
    if not folder:
        return "not importable"
    commit = subprocess.run(["git", "-C", folder, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    return folder + (f" at {commit}" if commit else "")


def ratio(a: float, b: float) -> str:
    if b == 0:
        return "—" if a == 0 else "∞"
    return f"{a / b:.2f}×"


def report(results: list[Result], args: argparse.Namespace, prom_version: str) -> None:
    by_name = {r.name: r for r in results}
    names = [n for n in CONTENDERS if n in by_name]
    peers = [n for n in names if n != "watchdog"] if "watchdog" in by_name else []
    print()
    print(f"{args.rules} rules in groups of {args.per_group}, every {args.interval:g}s, "
          f"{args.duration:g}s measured after {args.warmup:g}s warm-up; Prometheus "
          f"{prom_version}; {os.cpu_count()} CPUs")
    rows: list[tuple[str, Callable[[Result], float], str]] = [
        ("RSS at the end (MiB)", lambda r: r.rss_mib, "{:.1f}"),
        ("peak RSS (MiB)", lambda r: r.peak_rss_mib, "{:.1f}"),
        ("CPU s per 1,000 rule evaluations", lambda r: r.cpu_per_1000, "{:.3f}"),
        ("rule evaluations/s sustained", lambda r: r.per_second, "{:.1f}"),
        ("missed iterations", lambda r: r.missed, "{:.0f}"),
        ("failed rule evaluations", lambda r: r.errors, "{:.0f}"),
        ("CPU s in the window", lambda r: r.cpu_s, "{:.2f}"),
    ]
    header = f"{'':34}" + "".join(f" {COLUMNS[n]:>16}" for n in names)
    header += "".join(f" {'watchdog/' + n:>19}" for n in peers)
    print(header)
    for label, get, fmt in rows:
        line = f"{label:34}" + "".join(f" {fmt.format(get(by_name[n])):>16}" for n in names)
        line += "".join(f" {ratio(get(by_name['watchdog']), get(by_name[n])):>19}"
                        for n in peers)
        print(line)
    expected = args.rules / args.interval
    print(f"(expected evaluations/s at this load: {expected:.1f})")
    print(f"(watchdog: {args.watchdog_source}; state: {args.shown_state_url})")
    if "watchdog" in by_name and "server_cpu_s" in by_name["watchdog"].parts:
        w = by_name["watchdog"]
        server = w.parts["server_cpu_s"]
        per_1000 = server / w.evaluations * 1000 if w.evaluations else float("nan")
        both = (w.cpu_s + server) / w.evaluations * 1000 if w.evaluations else float("nan")
        line = (f"(PostgreSQL backends serving the watchdog ({w.parts['server_backends']:.0f} at "
                f"the end): CPU {server:.2f}s in the window, {per_1000:.3f}s per 1,000 rule "
                f"evaluations; watchdog + backends {both:.3f}s per 1,000")
        if "vmalert" in by_name:
            line += f", {ratio(both, by_name['vmalert'].cpu_per_1000)} vmalert"
        print(line + ")")
    if "prometheus" in by_name:
        parts = by_name["prometheus"].parts
        print("(prometheus rules: its CPU and RSS figures are a DIFFERENCE of two Prometheus "
              "instances over the same window — one evaluating the rules against its own TSDB, "
              "one identical without them — so they are noisier than the other columns; "
              "its counts are the with-rules instance's own /metrics. It includes running the "
              "PromQL, which watchdog and vmalert leave to the data Prometheus, not counted)")
        print(f"(  with rules:    CPU {parts['with_rules_cpu_s']:.2f}s, "
              f"RSS {parts['with_rules_rss_mib']:.1f} MiB, "
              f"peak {parts['with_rules_peak_rss_mib']:.1f} MiB)")
        print(f"(  without rules: CPU {parts['without_rules_cpu_s']:.2f}s, "
              f"RSS {parts['without_rules_rss_mib']:.1f} MiB, "
              f"peak {parts['without_rules_peak_rss_mib']:.1f} MiB)")
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
    p.add_argument("--shape", choices=("distinct", "pairs"), default="distinct",
                   help="distinct: each rule its own expression; pairs: warning/critical pairs "
                        "on one expression")
    p.add_argument("--find-max", action="store_true",
                   help="find the most rules each tool sustains at --interval, from --rules up")
    p.add_argument("--max-rules", type=int, default=64000)
    p.add_argument("--trace-upto", type=int, default=1000,
                   help="with --memory: run under tracemalloc too up to this many rules (it "
                        "slows the daemon several times over)")
    p.add_argument("--optimize", type=int, choices=(0, 1, 2), default=2,
                   help="PYTHONOPTIMIZE of the watchdog in --memory (default 2, as the "
                        "container image runs it: no docstrings)")
    p.add_argument("--memory", default="",
                   help="comma-separated rule counts (e.g. 0,1000,10000): measure memory at "
                        "each instead of CPU")
    p.add_argument("--only", choices=CONTENDERS, action="append",
                   help="run this contender (repeat for several; default: all)")
    p.add_argument("--state-url", default="",
                   help="the watchdog's state: empty for a fresh SQLite file, or "
                        "postgresql://user@host:port/db of a server to create a throwaway "
                        "database on")
    args = p.parse_args(argv)
    only = set(args.only or CONTENDERS)
    for binary in ("prometheus", "vmalert"):
        if find_binary(binary) is None:
            print(f"{binary} not found: apt-get install prometheus victoria-metrics",
                  file=sys.stderr)
            return 2

    tmp = Path(tempfile.mkdtemp(prefix="watchdog-bench-"))
    side: SideCpu | None = None
    pg_admin = ""
    if args.state_url.startswith(("postgresql://", "postgres://")):
        pg_admin = args.state_url
        database = f"watchdog_bench_{secrets.token_hex(4)}"
        pg(pg_admin, f'CREATE DATABASE "{database}"')
        state_url = with_database(pg_admin, database)
        side = SideCpu(pg_admin, database)
    elif args.state_url:
        state_url = args.state_url
    else:
        state_url = f"sqlite:///{tmp / 'watchdog.db'}"
    parts = urlsplit(state_url)
    args.shown_state_url = (parts._replace(netloc=parts.netloc.replace(
        f":{parts.password}@", ":***@")).geturl() if parts.password else state_url)
    args.watchdog_source = watchdog_source(tmp)
    target = serve(target_handler(args.series))
    sink = serve(Blackhole)
    target_addr = f"127.0.0.1:{target.server_address[1]}"
    prom = PrometheusServer.scraping([target_addr], SCRAPE_INTERVAL, tsdb_dir=tmp / "tsdb")
    results: list[Result] = []
    try:
        prom.start()
        print(f"Prometheus at {prom.url}; waiting for the first scrapes...", flush=True)
        wait_for_data(prom.url)
        version = json.loads(http_get(f"{prom.url}/api/v1/status/buildinfo"))["data"]["version"]
        rules = tmp / "rules"
        write_rules(rules, args.rules, args.per_group, args.series, shape=args.shape)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
        if args.memory:
            args.memory_peers = only - {"watchdog", "prometheus"}
            points = [memory_point(int(n), args, tmp, prom.url, args.series, base_env,
                                   state_url, sink.server_address[1])
                      for n in args.memory.split(",")]
            report_memory(points, args)
            return 0

        def run_watchdog(rules: Path, db: str, log: Path) -> Result:
            port = free_port()
            env = {**base_env, "WATCHDOG_RULES_DIR": str(rules),
                   "WATCHDOG_PROMETHEUS_URL": prom.url,
                   "WATCHDOG_EVALUATION_INTERVAL": f"{args.interval:g}s",
                   "WATCHDOG_HTTP_LISTEN": f"127.0.0.1:{port}",
                   "WATCHDOG_STATE_URL": db,
                   "WATCHDOG_LOG_LEVEL": "WARNING", "WATCHDOG_LOG_FORMAT": "json"}
            return measure("watchdog", [sys.executable, "-m", "watchdog", "run"], env,
                           f"http://127.0.0.1:{port}/metrics", watchdog_counters, args.warmup,
                           args.duration, log, side)

        def run_vmalert(rules: Path, log: Path) -> Result:
            port = free_port()
            argv_vm = [find_binary("vmalert") or "vmalert", f"-datasource.url={prom.url}",
                       f"-rule={rules}/*.yml", f"-evaluationInterval={args.interval:g}s",
                       f"-notifier.url=http://127.0.0.1:{sink.server_address[1]}",
                       f"-httpListenAddr=127.0.0.1:{port}", "-loggerLevel=WARN"]
            return measure("vmalert", argv_vm, base_env, f"http://127.0.0.1:{port}/metrics",
                           vmalert_counters, args.warmup, args.duration, log)

        if args.find_max:
            found = {}
            for name in ("watchdog", "vmalert"):
                if name not in only:
                    continue

                def probe(n: int, name: str = name) -> Result:
                    folder = tmp / f"scale-{name}-{n}"
                    write_rules(folder, n, args.per_group, args.series, shape=args.shape)
                    if name == "watchdog":
                        db = state_url if not state_url.startswith("sqlite") else \
                            f"sqlite:///{tmp / f'scale-{n}.db'}"
                        return run_watchdog(folder, db, tmp / f"scale-{name}-{n}.log")
                    return run_vmalert(folder, tmp / f"scale-{name}-{n}.log")

                found[name] = find_max(name, probe, args)
            report_max(found, args)
            return 0

        if "watchdog" in only:
            results.append(run_watchdog(rules, state_url, tmp / "watchdog.log"))
        if "vmalert" in only:
            results.append(run_vmalert(rules, tmp / "vmalert.log"))
        if "prometheus" in only:
            results.append(measure_prometheus(target_addr, tmp, rules, args.interval,
                                              args.warmup, args.duration))
    finally:
        prom.stop()
        target.shutdown()
        sink.shutdown()
        if side is not None:
            pg(pg_admin, f'DROP DATABASE IF EXISTS "{side.database}" WITH (FORCE)')
    report(results, args, version)
    print(f"(logs and data in {tmp})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
