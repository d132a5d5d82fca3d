"""Benchmark: `watchdog run` as 1, 2 and 3 replicas on one PostgreSQL, at a rule count one
process cannot hold on this machine, beside vmalert on the same Prometheus.

    python bench/ha.py [--state-url postgresql://postgres@127.0.0.1:5432/postgres]
                       [--start 1000] [--factor 1.5] [--max-rules 12000] [--rules N]
                       [--replicas 1 2 3] [--per-group 50] [--interval 5]
                       [--warmup 15] [--duration 45] [--probe-warmup 10] [--probe 15]

1. **The count.** One `watchdog run` on a fresh database evaluates `--start` rules, then
   `--factor` times more, ... (each step `--probe-warmup` + `--probe` seconds), until a step
   misses iterations or sustains less than 90% of the evaluations the rules ask for
   (rules / interval per second). That count is printed; `--rules N` skips the search.
2. **The replicas.** At that count, for each of `--replicas`: a fresh database, N processes
   with `WATCHDOG_REPLICA_ID=bench-1..N` and one `WATCHDOG_STATE_URL`, started together; the
   bench waits until every replica sees all N live and the leases held add up to every group
   plus the two roles (`~leader`, `<builtin>`), warms up, then measures `--duration` seconds.
3. **The peer.** vmalert (Debian's `victoria-metrics`) on the same rules and Prometheus,
   measured the same way (bench/daemon.py's `measure`).

Counts (evaluations, missed iterations, failures, lease moves) come from each replica's own
`/metrics` (`watchdog_*`), summed over the replicas; CPU from /proc for each replica's pid
(the watchdog's registry carries no `process_*` collector) and, as its own row, the CPU of the
PostgreSQL backends serving the database (the server runs on this machine).

A benchmark script, not part of the package: it starts processes and servers on 127.0.0.1 only,
creates and drops its databases (CREATEDB needed), and leaves no child behind.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from daemon import (  # bench/daemon.py, next to this file (on sys.path when run as a script)
    Blackhole,
    Result,
    SideCpu,
    cpu_seconds,
    http_get,
    measure,
    metric_sum,
    pg,
    rss_mib,
    serve,
    target_handler,
    vmalert_counters,
    wait_for_data,
    watchdog_source,
    with_database,
    write_rules,
)

from watchdog.promserver import PrometheusServer, find_binary, free_port

SCRAPE_INTERVAL = "5s"
ROLES = 2  # the `~leader` and `<builtin>` leases, beside one per group


@dataclass
class Run:
    """N replicas over one measured window."""

    replicas: int
    rules: int
    seconds: float
    cpu_s: float
    server_cpu_s: float
    evaluations: float
    missed: float
    failures: float
    lease_moves: float
    leases_lost: float
    settle_s: float | None  # None: the leases never spread over the replicas
    rss_mib: list[float] = field(default_factory=list)
    leases: list[float] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.evaluations / self.seconds

    def per_1000(self, cpu: float) -> float:
        return cpu / self.evaluations * 1000 if self.evaluations else float("nan")


def counters(text: str) -> dict[str, float]:
    return {
        "evaluations": metric_sum(text, "watchdog_evaluations_total"),
        "missed": metric_sum(text, "watchdog_missed_iterations_total"),
        "failures": metric_sum(text, "watchdog_evaluation_failures_total"),
        "moves": metric_sum(text, "watchdog_lease_acquired_total"),
        "lost": metric_sum(text, 'watchdog_lease_lost_total{reason="lost"}'),
        "held": metric_sum(text, "watchdog_leases_held"),
        "live": metric_sum(text, "watchdog_replicas_live"),
    }


def fresh_database(admin_url: str) -> tuple[str, str]:
    name = f"watchdog_bench_ha_{secrets.token_hex(4)}"
    pg(admin_url, f'CREATE DATABASE "{name}"')
    return name, with_database(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    pg(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_replicas(n: int, rules_dir: Path, groups: int, rules: int, args: argparse.Namespace,
                 prom_url: str, tmp: Path, warmup: float, duration: float) -> Run:
    """Start n replicas on a fresh database, wait for the leases to settle, measure."""
    database, state_url = fresh_database(args.state_url)
    side = SideCpu(args.state_url, database)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
    procs: list[tuple[subprocess.Popen[bytes], str]] = []
    try:
        for i in range(1, n + 1):
            port = free_port()
            env = {**base_env, "WATCHDOG_RULES_DIR": str(rules_dir),
                   "WATCHDOG_PROMETHEUS_URL": prom_url,
                   "WATCHDOG_EVALUATION_INTERVAL": f"{args.interval:g}s",
                   "WATCHDOG_HTTP_LISTEN": f"127.0.0.1:{port}",
                   "WATCHDOG_STATE_URL": state_url, "WATCHDOG_REPLICA_ID": f"bench-{i}",
                   "WATCHDOG_LEASE_TTL": f"{args.lease_ttl:g}s",
                   "WATCHDOG_LOG_LEVEL": "WARNING", "WATCHDOG_LOG_FORMAT": "json"}
            log = tmp / f"watchdog-{rules}-{n}-{i}.log"
            with log.open("wb") as out:
                # cwd: the log's folder, so `python -m` imports the interpreter's watchdog.
                proc = subprocess.Popen([sys.executable, "-m", "watchdog", "run"], env=env,
                                        stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
            procs.append((proc, f"http://127.0.0.1:{port}/metrics"))
        t_start = time.monotonic()
        deadline = t_start + 90
        settle: float | None = None
        # Settled: every replica answers and sees n live, every lease is held, and they are
        # spread: each replica holds at least half its share (rendezvous hashing gives each
        # about total/n). A replica too busy to renew loses its leases and another takes them
        # all, so under overload they may never spread: after 90 s the run is measured anyway
        # and says so.
        while True:
            for proc, _ in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a replica exited {proc.returncode}; logs in {tmp}")
            try:
                seen = [counters(http_get(url, 5)) for _, url in procs]
            except OSError:
                seen = []
            now = time.monotonic()
            if seen and all(s["live"] == n for s in seen) \
                    and sum(s["held"] for s in seen) == groups + ROLES \
                    and min(s["held"] for s in seen) >= (groups + ROLES) / n / 2:
                settle = now - t_start
                break
            if now > deadline:
                if not seen:
                    raise RuntimeError(f"{n} replicas did not answer in 90s; logs in {tmp}")
                break
            time.sleep(0.5)
        print(f"  {n} replica(s): " + (f"settled {settle:.1f}s after start" if settle is not None
                                       else "leases NOT settled and spread 90s after start")
              + f" (leases {[int(s['held']) for s in seen]}), warming up {warmup:g}s, measuring "
              f"{duration:g}s", flush=True)
        time.sleep(warmup)
        side0 = side.sample()
        cpu0 = sum(cpu_seconds(p.pid) for p, _ in procs)
        c0 = [counters(http_get(url)) for _, url in procs]
        t0 = time.monotonic()
        time.sleep(duration)
        cpu1 = sum(cpu_seconds(p.pid) for p, _ in procs)
        c1 = [counters(http_get(url)) for _, url in procs]
        t1 = time.monotonic()
        side1 = side.sample()

        def delta(key: str) -> float:
            return sum(b[key] - a[key] for a, b in zip(c0, c1, strict=True))

        return Run(n, rules, t1 - t0, cpu1 - cpu0,
                   sum(c - side0.get(pid, 0.0) for pid, c in side1.items()),
                   delta("evaluations"), delta("missed"), delta("failures"), delta("moves"),
                   delta("lost"), settle, [rss_mib(p.pid) for p, _ in procs],
                   [c["held"] for c in c1])
    finally:
        for proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        drop_database(args.state_url, database)


def holds(run: Run, interval: float) -> bool:
    """Whether the configuration keeps up: no missed iteration, ≥ 90% of the asked rate."""
    return run.missed == 0 and run.per_second >= 0.9 * run.rules / interval


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--state-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                   help="a PostgreSQL server to create throwaway databases on")
    p.add_argument("--start", type=int, default=2000, help="first rule count of the search")
    p.add_argument("--factor", type=float, default=1.4, help="rule count growth per step")
    p.add_argument("--max-rules", type=int, default=12000)
    p.add_argument("--rules", type=int, default=0, help="skip the search, use this count")
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--per-group", type=int, default=50)
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--series", type=int, default=100)
    p.add_argument("--lease-ttl", type=float, default=15.0)
    p.add_argument("--warmup", type=float, default=15.0)
    p.add_argument("--duration", type=float, default=45.0)
    p.add_argument("--probe-warmup", type=float, default=10.0)
    p.add_argument("--probe", type=float, default=15.0)
    p.add_argument("--no-vmalert", action="store_true")
    args = p.parse_args(argv)
    if args.warmup + args.duration > 60 or args.probe_warmup + args.probe > 60:
        print("keep each configuration within 60 s (warm-up + measured)", file=sys.stderr)
        return 2
    for binary in ("prometheus", "vmalert"):
        if find_binary(binary) is None:
            print(f"{binary} not found: apt-get install prometheus victoria-metrics",
                  file=sys.stderr)
            return 2

    tmp = Path(tempfile.mkdtemp(prefix="watchdog-bench-ha-"))
    target = serve(target_handler(args.series))
    sink = serve(Blackhole)
    target_addr = f"127.0.0.1:{target.server_address[1]}"
    prom = PrometheusServer.scraping([target_addr], SCRAPE_INTERVAL, tsdb_dir=tmp / "tsdb")
    try:
        prom.start()
        print(f"Prometheus at {prom.url}; waiting for the first scrapes...", flush=True)
        wait_for_data(prom.url)
        version = json.loads(http_get(f"{prom.url}/api/v1/status/buildinfo"))["data"]["version"]
        load = os.getloadavg()
        print(f"watchdog: {watchdog_source(tmp)}; Prometheus {version}; {os.cpu_count()} CPUs; "
              f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}", flush=True)

        def rules_for(count: int) -> tuple[Path, int]:
            folder = tmp / f"rules-{count}"
            write_rules(folder, count, args.per_group, args.series)
            return folder, -(-count // args.per_group)

        # 1. the rule count one process cannot hold
        count = args.rules
        if not count:
            print("\n1. One replica, stepping up the rule count until it misses iterations:")
            step = args.start
            while True:
                folder, groups = rules_for(step)
                run = run_replicas(1, folder, groups, step, args, prom.url, tmp,
                                   args.probe_warmup, args.probe)
                print(f"  {step:6d} rules: {run.per_second:8.1f} evaluations/s of "
                      f"{step / args.interval:.0f} asked, {run.missed:.0f} missed iterations, "
                      f"CPU {run.cpu_s / run.seconds:.2f} cores", flush=True)
                if not holds(run, args.interval):
                    count = step
                    break
                if step >= args.max_rules:
                    print(f"  one replica held {step} rules: raise --max-rules")
                    return 1
                step = min(args.max_rules, int(step * args.factor) // args.per_group
                           * args.per_group)
        print(f"\nRule count one process cannot hold here: {count} "
              f"({-(-count // args.per_group)} groups of {args.per_group}, every "
              f"{args.interval:g}s: {count / args.interval:.0f} evaluations/s asked)", flush=True)

        # 2. the replicas at that count
        folder, groups = rules_for(count)
        print(f"\n2. {count} rules, 1..{max(args.replicas)} replicas on one PostgreSQL:")
        runs = [run_replicas(n, folder, groups, count, args, prom.url, tmp, args.warmup,
                             args.duration) for n in args.replicas]

        # 3. vmalert on the same rules and Prometheus
        vm: Result | None = None
        if not args.no_vmalert:
            print(f"\n3. vmalert, {count} rules:")
            port = free_port()
            argv_vm = [find_binary("vmalert") or "vmalert", f"-datasource.url={prom.url}",
                       f"-rule={folder}/*.yml", f"-evaluationInterval={args.interval:g}s",
                       f"-notifier.url=http://127.0.0.1:{sink.server_address[1]}",
                       f"-httpListenAddr=127.0.0.1:{port}", "-loggerLevel=WARN"]
            base_env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
            vm = measure("vmalert", argv_vm, base_env, f"http://127.0.0.1:{port}/metrics",
                         vmalert_counters, args.warmup, args.duration, tmp / "vmalert.log")
    finally:
        prom.stop()
        target.shutdown()
        sink.shutdown()

    asked = count / args.interval
    one = runs[0] if runs and runs[0].replicas == 1 else None
    print(f"\n{count} rules in groups of {args.per_group} every {args.interval:g}s "
          f"({asked:.0f} evaluations/s asked), {args.duration:g}s measured after "
          f"{args.warmup:g}s warm-up; LEASE_TTL {args.lease_ttl:g}s; load average now "
          f"{os.getloadavg()[0]:.1f}")
    head = (f"{'':12} {'evals/s':>9} {'of asked':>9} {'missed':>7} {'failed':>7} "
            f"{'CPU s/1k':>9} {'+PG s/1k':>9} {'cores':>6} {'moves':>6} {'lost':>5} "
            f"{'leases':>12} {'vs 1 (evals/s)':>15}")
    print(head)
    for r in runs:
        print(f"{str(r.replicas) + ' replica' + ('s' if r.replicas > 1 else ''):12} "
              f"{r.per_second:9.1f} {r.per_second / asked:9.0%} {r.missed:7.0f} "
              f"{r.failures:7.0f} {r.per_1000(r.cpu_s):9.3f} "
              f"{r.per_1000(r.cpu_s + r.server_cpu_s):9.3f} {r.cpu_s / r.seconds:6.2f} "
              f"{r.lease_moves:6.0f} {r.leases_lost:5.0f} "
              f"{'/'.join(f'{h:.0f}' for h in r.leases):>12} "
              f"{(f'{r.per_second / one.per_second:.2f}×' if one else '—'):>15}")
    if vm is not None:
        print(f"{'vmalert':12} {vm.per_second:9.1f} {vm.per_second / asked:9.0%} "
              f"{vm.missed:7.0f} {vm.errors:7.0f} {vm.cpu_per_1000:9.3f} {'':>9} "
              f"{vm.cpu_s / vm.seconds:6.2f} {'':>6} {'':>5} {'':>12} "
              f"{(f'{vm.per_second / one.per_second:.2f}×' if one else '—'):>15}")
        for r in runs:
            print(f"({r.replicas} replica(s): CPU per 1,000 evaluations "
                  f"{r.per_1000(r.cpu_s) / vm.cpu_per_1000:.2f}× vmalert's, "
                  f"{r.per_1000(r.cpu_s + r.server_cpu_s) / vm.cpu_per_1000:.2f}× with the "
                  f"PostgreSQL backends; evaluations/s {r.per_second / vm.per_second:.2f}× "
                  "vmalert's)")
    print("(CPU s/1k: the replicas' CPU seconds per 1,000 rule evaluations; +PG: with the "
          "PostgreSQL backends serving the database; cores: the replicas' CPU s per second; "
          "moves: leases taken in the window (0 = settled); lost: leases that expired under "
          "their holder (too busy to renew) in the window; leases: held per replica at the end, "
          "roles included; RSS MiB per replica: "
          f"{[[round(m) for m in r.rss_mib] for r in runs]})")
    for r in runs:
        if r.settle_s is None:
            print(f"({r.replicas} replicas: the leases had not settled and spread 90 s after "
                  "start — measured anyway)")
    print(f"(logs in {tmp})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
