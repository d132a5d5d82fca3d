"""Benchmark: detection latency — from a threshold crossing on a live service to the firing
notification's arrival — for `watchdog run` and vmalert watching the same crossings.

    python bench/latency.py [--intervals 1 5] [--crossings 4] [--rounds 5] [--background N]
                            [--vmalert-unaligned] [--vmalert-arg=-flag=value ...]
                            [--state-url postgresql://... [--replicas 2]] [--json] [--keep]

The service is an HTTP `/metrics` served by this script with one gauge, `target_value`. A real
Prometheus (Debian's `prometheus`) scrapes it every evaluation interval (scrape interval =
evaluation interval: a faster scrape would hide the evaluation's share, a slower one would make
the scrape dominate). Two rules on it, in one group:

    - alert: LatencyNow   expr: target_value > 10                 (no `for`)
    - alert: LatencyFor   expr: target_value > 10   for: <interval>

run at the same time, on the same Prometheus, by
- `watchdog run` (this checkout's, `python -m watchdog` of the Python running the script), state
  in a fresh SQLite file, with two receivers on one route: `alertmanager` (POST /api/v2/alerts,
  the protocol vmalert speaks; not held by `group_wait`: it follows Prometheus's sender) and
  `webhook` (Alertmanager's webhook JSON) with `group_wait: 0s` (the default 30s would hold a
  new group's first message), `group_by: [alertname]`;
- vmalert (Debian's `victoria-metrics`, `watchdog.promserver.find_binary`), its
  `-notifier.url` at a stand-in Alertmanager of this script, every other flag at its default
  (`--vmalert-arg` adds flags). By default vmalert sends each query with its `time` truncated
  to the evaluation interval (`-datasource.queryTimeAlignment`), so a sample scraped between
  that boundary and vmalert's evaluation is seen one interval later; `--vmalert-unaligned`
  runs a second vmalert with `-datasource.queryTimeAlignment=false` beside it, to tell that
  choice from the rest.

`--state-url postgresql://...` keeps the watchdog's state in a throwaway database on that server
(created and dropped per round; CREATEDB needed) instead of SQLite; with `--replicas 2` (or
more) the watchdog runs as that many replicas on it, with replica ids chosen so that the
latency group is evaluated by one replica and notified by another (the holder of `~leader`,
checked on `/api/v1/status`): the firing crosses from one process to the other through the
store, the path every group not evaluated by the notifier takes.

`--background N` gives every tool N more rules (groups of 50 at the same interval, on 100
counters the target also serves, never firing): the crossing's group then shares the process
with other evaluations, as on a real deployment.

A crossing: the gauge goes from 0 to 20 at a moment the script records (monotonic and wall
clock); the script waits until every (tool, receiver, rule) has received its firing
notification, sets the gauge back to 0, waits until neither tool has an active alert, and waits
a random fraction of an interval so the crossings fall anywhere in the scrape cycle. Each
round starts a fresh target (on a new port, so Prometheus scrapes it at a new offset), a fresh
Prometheus and fresh tools (vmalert picks a new start offset; the watchdog's offset is a hash of
the group name, so the relative phase is new too) and does `--crossings` crossings; `--rounds`
rounds per interval. Measured per crossing:

- crossing → notification: the first POST whose body holds the rule's alert as firing, with a
  `startsAt` after the crossing, as it arrives at the stand-in (the headline figure);
- crossing → scrape: the timestamp of the first sample above 10 Prometheus stored (read back
  from `target_value[...]` at the end of the round) — the same for both tools;
- scrape → evaluation: the time of the evaluation that fired, from the notification's
  `startsAt` (the watchdog's is the alert's activeAt, as Prometheus's: + `for` for LatencyFor;
  vmalert's is the evaluation that fired);
- evaluation → notification: the rest — the query, the decision, persisting it (the watchdog
  commits before it sends), and the delivery.
For the watchdog the JSON log also gives when the firing was decided (the `alert` line,
written inside the evaluation's transaction), splitting the last part into evaluation →
decision → notification.

Printed per interval and rule: median, p90 and max of crossing → notification per tool and
receiver, the breakdown's medians, and the ratio watchdog/vmalert of the medians (one run:
both tools see the same crossings). The scrape → evaluation part is the phase of the tool's
evaluation slots against Prometheus's scrape: uniform over an interval for any scheduler that
does not know when the scrapes happen, so it dominates the spread; only many rounds average it.

A benchmark script, not part of the package: it starts processes and servers on 127.0.0.1
only, and leaves none behind (every child is stopped in `finally`).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from watchdog.promserver import PrometheusServer, find_binary, free_port

THRESHOLD = 10.0
HIGH = 20.0
RULES = ("LatencyNow", "LatencyFor")

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 5.0) -> str:
    with _opener.open(url, timeout=timeout) as r:
        return str(r.read().decode())


def parse_time(text: str) -> float:
    """RFC 3339 (Go's, with up to nanoseconds and `Z`) to Unix seconds."""
    text = text.replace("Z", "+00:00")
    if "." in text:
        head, rest = text.split(".", 1)
        digits = "".join(itertools.takewhile(str.isdigit, rest))
        tz = rest[len(digits):]
        text = f"{head}.{digits[:6]:0<6}{tz}"
    return datetime.fromisoformat(text).timestamp()


# ---- the live service and the stand-in receivers ------------------------------------------


class Gauge:
    """The value the target serves; `set` records when it changed (monotonic, wall)."""

    def __init__(self) -> None:
        self.value = 0.0
        self.lock = threading.Lock()

    def set(self, value: float) -> tuple[float, float]:
        with self.lock:
            self.value = value
            return time.monotonic(), time.time()


def target_handler(gauge: Gauge, series: int) -> type[BaseHTTPRequestHandler]:
    started = time.time()

    class Target(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with gauge.lock:
                v = gauge.value
            lines = ["# TYPE target_value gauge", f"target_value {v:g}"]
            if series:  # what the background rules read
                age = time.time() - started
                lines.append("# TYPE bench_requests_total counter")
                lines += [f'bench_requests_total{{shard="s{i}"}} {age * (i + 1):.3f}'
                          for i in range(series)]
            body = ("\n".join(lines) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return Target


@dataclass
class Arrival:
    mono: float
    wall: float
    path: str
    body: Any


class Inbox:
    """Every POST a stand-in received, with its arrival time, in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrivals: list[Arrival] = []
        self.changed = threading.Condition(self.lock)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        inbox = self

        class Receiver(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                mono, wall = time.monotonic(), time.time()
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    body = None
                with inbox.changed:
                    inbox.arrivals.append(Arrival(mono, wall, self.path, body))
                    inbox.changed.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Receiver

    def since(self, index: int) -> list[Arrival]:
        with self.lock:
            return self.arrivals[index:]

    def __len__(self) -> int:
        with self.lock:
            return len(self.arrivals)


def firing_in(arrival: Arrival) -> Iterator[tuple[str, float]]:
    """(alertname, startsAt) of each firing alert a POST carries: Alertmanager's API v2 (a
    list; firing = endsAt still ahead) or its webhook JSON (`alerts[].status`)."""
    body = arrival.body
    if isinstance(body, list):  # POST /api/v2/alerts
        for a in body:
            ends = a.get("endsAt")
            if ends and parse_time(ends) <= arrival.wall:
                continue  # resolved
            yield a.get("labels", {}).get("alertname", ""), parse_time(a["startsAt"])
    elif isinstance(body, dict) and isinstance(body.get("alerts"), list):
        for a in body["alerts"]:
            if a.get("status") == "firing":
                yield a.get("labels", {}).get("alertname", ""), parse_time(a["startsAt"])


def serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def url_of(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


# ---- the rules ----------------------------------------------------------------------------


def write_rules(folder: Path, interval: float, am_url: str, hook_url: str,
                background: int, series: int) -> list[Path]:
    """The Prometheus rule files both tools read, and the watchdog's receivers beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "rules.yml"]
    if background:
        groups = [{"name": f"background-{g:03d}", "rules": [
            {"alert": f"Background{i:05d}",
             "expr": f'sum(rate(bench_requests_total{{shard="s{i % series}"}}[1m])) > {1e9 + i:g}'}
            for i in range(g * 50, min(g * 50 + 50, background))]}
            for g in range(-(-background // 50))]
        paths.append(folder / "background.yml")
        paths[-1].write_text(json.dumps({"groups": groups}, indent=1))
    expr = f"target_value > {THRESHOLD:g}"
    rules = {"groups": [{"name": "latency", "rules": [
        {"alert": "LatencyNow", "expr": expr, "labels": {"bench": "latency"}},
        {"alert": "LatencyFor", "expr": expr, "for": f"{interval:g}s",
         "labels": {"bench": "latency"}},
    ]}]}
    paths[0].write_text(json.dumps(rules, indent=1))  # JSON is YAML; both tools read it
    notify = {
        "receivers": [{"name": "am", "alertmanager": {"url": am_url}},
                      {"name": "hook", "webhook": {"url": hook_url}}],
        # group_wait 0s: send a new group's first message at the evaluation that fired (the
        # default, 30s, gathers alerts into one message first). The alertmanager receiver is
        # not held by group_wait at all (it re-sends like Prometheus's notifier).
        "routes": [{"receivers": ["am", "hook"], "group_by": ["alertname"],
                    "group_wait": "0s"}],
    }
    (folder / "notify" / "receivers.yml").parent.mkdir(exist_ok=True)
    (folder / "notify" / "receivers.yml").write_text(json.dumps(notify, indent=1))
    return paths


# ---- one round ----------------------------------------------------------------------------


@dataclass
class Crossing:
    interval: float
    round: int
    index: int
    mono: float
    wall: float
    scrape: float | None = None  # Prometheus's timestamp of the first sample above
    # (tool, receiver, rule) -> arrival (monotonic), and the firing evaluation's time (wall)
    arrival: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, float] = field(default_factory=dict)
    starts: dict[str, float] = field(default_factory=dict)  # startsAt as sent
    decided: dict[str, float] = field(default_factory=dict)  # watchdog: the `alert` log line


def key(tool: str, receiver: str, rule: str) -> str:
    return f"{tool}/{receiver}/{rule}"


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until(check: Any, timeout: float, what: str, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll)


def active_alerts(url: str) -> int:
    data = json.loads(http_get(f"{url}/api/v1/alerts", 2))["data"]
    return len(data.get("alerts") or [])


def watchdog_decisions(log_path: Path) -> list[tuple[str, float]]:
    """(rule, wall time) of every `alert` log line of kind firing (JSON log format)."""
    out = []
    with contextlib.suppress(FileNotFoundError), log_path.open() as f:
        for line in f:
            if '"firing"' not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == "alert" and rec.get("kind") == "firing":
                out.append((rec["rule"], parse_time(rec["timestamp"])))
    return out


def peers_of(args: argparse.Namespace) -> dict[str, list[str]]:
    """The vmalert instances to run, with their extra flags."""
    peers = {"vmalert": list(args.vmalert_arg)}
    if args.vmalert_unaligned:
        peers["vmalert-unaligned"] = [*args.vmalert_arg, "-datasource.queryTimeAlignment=false"]
    return peers


def channels_of(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(tool, receiver) pairs whose firing notification each crossing waits for."""
    return [("watchdog", "alertmanager"), ("watchdog", "webhook"),
            *((name, "alertmanager") for name in peers_of(args))]


def pg(url: str, sql: str) -> None:
    """One statement on `url` (asyncpg, imported here: a SQLite run needs no driver)."""
    import asyncio

    import asyncpg  # type: ignore[import-untyped,unused-ignore]

    async def run() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def with_database(url: str, name: str) -> str:
    return urlsplit(url)._replace(path="/" + name).geturl()


def replica_ids(n: int, group_key: str) -> list[str]:
    """n replica ids under which the latency group falls to a replica that is not the
    notifier (the `~leader` lease), so that its firing crosses from one replica to another
    (rendezvous hashing, as `watchdog.app.replicas` does it)."""
    from watchdog.app.replicas import owner
    from watchdog.handlers import LEADER

    if n == 1:
        return ["bench-1"]
    for k in range(1000):
        ids = [f"bench-{k}-{i}" for i in range(1, n + 1)]
        if owner(group_key, ids) != owner(LEADER, ids):
            return ids
    raise RuntimeError("no replica ids put the group and the notifier apart")


def holders(status: dict[str, Any]) -> dict[str, str]:
    """Lease name (group name, `~leader`) -> the replica holding it, from /api/v1/status."""
    return {name: r["id"] for r in status["data"]["replicas"] if r.get("live")
            for name in r.get("groups") or []}


def run_round(interval: float, rnd: int, args: argparse.Namespace, tmp: Path
              ) -> list[Crossing]:
    gauge = Gauge()
    series = 100 if args.background else 0
    target = serve(target_handler(gauge, series))
    peers = peers_of(args)
    inboxes = {name: Inbox() for name in ("watchdog", *peers)}
    stand_ins = {name: serve(box.handler()) for name, box in inboxes.items()}
    base = tmp / f"i{interval:g}-r{rnd}"
    base.mkdir()
    rules = write_rules(base / "rules", interval, url_of(stand_ins["watchdog"]),
                        url_of(stand_ins["watchdog"]) + "/hook", args.background, series)
    prom = PrometheusServer.scraping([f"127.0.0.1:{target.server_address[1]}"],
                                     f"{interval:g}s", tsdb_dir=base / "tsdb")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    crossings: list[Crossing] = []
    database = f"watchdog_bench_latency_{os.getpid()}_{rnd}" if args.state_url else None
    try:
        if database:
            pg(args.state_url, f'CREATE DATABASE "{database}"')
        prom.start()
        wait_until(lambda: json.loads(http_get(f"{prom.url}/api/v1/query?query=target_value"))
                   ["data"]["result"], 30, "Prometheus's first scrape")
        urls = {name: f"http://127.0.0.1:{free_port()}" for name in inboxes}
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
        env.update({"WATCHDOG_RULES_DIR": str(base / "rules"),
                    "WATCHDOG_PROMETHEUS_URL": prom.url,
                    "WATCHDOG_EVALUATION_INTERVAL": f"{interval:g}s",
                    "WATCHDOG_STATE_URL": f"sqlite:///{base / 'watchdog.db'}",
                    "WATCHDOG_LOG_FORMAT": "json", "WATCHDOG_LOG_LEVEL": "INFO"})
        group_key = f"{rules[0]};latency"
        ids = replica_ids(args.replicas, group_key)
        wd_urls = {ids[0]: urls["watchdog"]}
        wd_urls.update({r: f"http://127.0.0.1:{free_port()}" for r in ids[1:]})
        wd_logs = [base / f"watchdog-{r}.log" for r in ids]
        for (replica, url), log_path in zip(wd_urls.items(), wd_logs, strict=True):
            if database:
                env.update({"WATCHDOG_STATE_URL": with_database(args.state_url, database),
                            "WATCHDOG_REPLICA_ID": replica})
            env["WATCHDOG_HTTP_LISTEN"] = url.removeprefix("http://")
            with log_path.open("wb") as out:
                # cwd: the round's folder, so `python -m` imports the interpreter's watchdog.
                procs[replica if len(ids) > 1 else "watchdog"] = subprocess.Popen(
                    [sys.executable, "-m", "watchdog", "run"], env=dict(env), stdout=out,
                    stderr=subprocess.STDOUT, cwd=base)
        for name, extra in peers.items():
            argv = [find_binary("vmalert") or "vmalert", f"-datasource.url={prom.url}",
                    *(f"-rule={r}" for r in rules), f"-evaluationInterval={interval:g}s",
                    f"-notifier.url={url_of(stand_ins[name])}",
                    f"-httpListenAddr={urls[name].removeprefix('http://')}",
                    "-loggerLevel=WARN", *extra]
            with (base / f"{name}.log").open("wb") as out:
                procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                               cwd=base)

        def alive() -> None:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited {proc.returncode}; logs in {base}")

        def ready() -> bool:
            alive()
            for url in wd_urls.values():
                with _opener.open(f"{url}/readyz", timeout=2) as r:
                    if r.status != 200:
                        return False
            return all("OK" in http_get(f"{urls[name]}/health", 2) for name in peers)

        def quiet() -> bool:
            return all(active_alerts(url) == 0
                       for url in [*wd_urls.values(), *(urls[name] for name in peers)])

        wait_until(ready, 60, "the watchdog and vmalert to be ready", poll=0.2)
        if len(ids) > 1:
            from watchdog.app.replicas import owner
            from watchdog.handlers import LEADER

            want = {"latency": owner(group_key, ids), LEADER: owner(LEADER, ids)}

            def settled() -> bool:
                alive()
                seen = holders(json.loads(http_get(f"{urls['watchdog']}/api/v1/status")))
                return all(seen.get(name) == r for name, r in want.items())

            wait_until(settled, 90, f"the leases to settle as {want}", poll=0.5)
            print(f"    {len(ids)} replicas: the group on {want['latency']}, the notifier "
                  f"(~leader) on {want[LEADER]}", flush=True)
        time.sleep(2 * interval)  # every tool has evaluated; vmalert is past its start delay
        wait_until(quiet, 30, "no active alerts at the start")

        expect = {key(t, r, rule) for t, r in channels_of(args) for rule in RULES}
        for i in range(args.crossings):
            # Low for at least one scrape, then up at any point of the scrape cycle.
            time.sleep(interval + random.uniform(0, interval))
            marks = {tool: len(box) for tool, box in inboxes.items()}
            mono, wall = gauge.set(HIGH)
            c = Crossing(interval, rnd, i, mono, wall)
            crossings.append(c)
            deadline = mono + 5 * interval + args.timeout
            # Every firing notification of this crossing, as the stand-ins received them.
            while True:
                alive()
                for tool, box in inboxes.items():
                    for a in box.since(marks[tool]):
                        receiver = "webhook" if a.path.startswith("/hook") else "alertmanager"
                        for rule, starts in firing_in(a):
                            k = key(tool, receiver, rule)
                            if k in expect and k not in c.arrival and starts >= wall - 0.5:
                                c.arrival[k] = a.mono
                                c.starts[k] = starts
                                # The watchdog's startsAt is the alert's activeAt, as
                                # Prometheus's; vmalert's is when it started firing.
                                c.evaluation[k] = starts + (
                                    interval if rule == "LatencyFor" and tool == "watchdog"
                                    else 0.0)
                if expect <= c.arrival.keys() or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            missing = sorted(expect - c.arrival.keys())
            got = " ".join(f"{k.replace('/alertmanager', '/am')}={c.arrival[k] - mono:.3f}"
                           for k in sorted(c.arrival))
            print(f"    {interval:g}s round {rnd} crossing {i + 1}: {got}"
                  + (f"  MISSING {missing}" if missing else ""), flush=True)
            gauge.set(0.0)
            wait_until(quiet, 5 * interval + args.timeout, "the alerts to resolve")

        # Prometheus's own sample timestamps: the first scrape above the threshold after
        # each crossing.
        span = int(time.time() - crossings[0].wall) + 10 if crossings else 60
        res = json.loads(http_get(f"{prom.url}/api/v1/query?query=target_value[{span}s]"))
        samples = [(float(t), float(v)) for r in res["data"]["result"] for t, v in r["values"]]
        for c in crossings:
            after = [t for t, v in samples if v > THRESHOLD and t >= c.wall - 0.05]
            c.scrape = min(after) if after else None
        for rule, at in (d for log_path in wd_logs for d in watchdog_decisions(log_path)):
            for c in reversed(crossings):
                if at >= c.wall:
                    for receiver in ("alertmanager", "webhook"):
                        c.decided.setdefault(key("watchdog", receiver, rule), at)
                    break
        return crossings
    finally:
        for proc in procs.values():
            stop(proc)
        if database:
            pg(args.state_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        prom.stop()
        for server in (target, *stand_ins.values()):
            server.shutdown()
            server.server_close()


# ---- the report ---------------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (q = 0.5 median, 0.9 p90); nan for none."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def ms(v: float, width: int = 7) -> str:
    return f"{'—':>{width}}" if math.isnan(v) else f"{v * 1000:{width}.0f}"


def report(interval: float, crossings: list[Crossing], channels: list[tuple[str, str]]
           ) -> dict[str, Any]:
    out: dict[str, Any] = {"interval": interval, "crossings": len(crossings), "rules": {}}
    rounds = len({c.round for c in crossings})
    print(f"\nInterval {interval:g}s (scrape {interval:g}s): {len(crossings)} crossings in "
          f"{rounds} round(s); milliseconds, crossing → firing notification, then the medians "
          "of its parts")
    print(f"  {'rule / tool, receiver':34} {'n':>3} {'median':>7} {'p90':>7} {'max':>7} |"
          f" {'cross→scrape':>12} {'scrape→eval':>11} {'eval→notif':>10} |"
          f" {'eval→decided':>12} {'decided→notif':>13}")
    for rule in RULES:
        print(f"  {rule}" + (f" (for: {interval:g}s)" if rule == "LatencyFor" else " (no for)"))
        rows: dict[str, dict[str, Any]] = {}
        for tool, receiver in channels:
            k = key(tool, receiver, rule)
            have = [c for c in crossings if k in c.arrival]
            total = [c.arrival[k] - c.mono for c in have]
            scraped = [c for c in have if c.scrape is not None]
            # arrival on the wall clock: the crossing's wall time + the monotonic elapsed time
            arrived = {id(c): c.wall + (c.arrival[k] - c.mono) for c in have}
            row: dict[str, Any] = {
                "n": len(have), "median": quantile(total, 0.5), "p90": quantile(total, 0.9),
                "max": max(total) if total else math.nan,
                "crossing_to_scrape": quantile([c.scrape - c.wall for c in scraped
                                                if c.scrape is not None], 0.5),
                "scrape_to_evaluation": quantile([c.evaluation[k] - c.scrape for c in scraped
                                                  if c.scrape is not None], 0.5),
                "evaluation_to_notification": quantile(
                    [arrived[id(c)] - c.evaluation[k] for c in have], 0.5),
                "evaluation_to_decision": quantile(
                    [c.decided[k] - c.evaluation[k] for c in have if k in c.decided], 0.5),
                "decision_to_notification": quantile(
                    [arrived[id(c)] - c.decided[k] for c in have if k in c.decided], 0.5),
                "samples": total}
            rows[f"{tool}/{receiver}"] = row
            print(f"    {tool + ', ' + receiver:32} {len(have):3d} {ms(row['median'])} "
                  f"{ms(row['p90'])} {ms(row['max'])} | {ms(row['crossing_to_scrape'], 12)} "
                  f"{ms(row['scrape_to_evaluation'], 11)} "
                  f"{ms(row['evaluation_to_notification'], 10)} | "
                  f"{ms(row['evaluation_to_decision'], 12)} "
                  f"{ms(row['decision_to_notification'], 13)}")
        wd = rows["watchdog/alertmanager"]
        for peer in [t for t, _ in channels if t != "watchdog"]:
            theirs = rows[f"{peer}/alertmanager"]
            for name in ("watchdog/alertmanager", "watchdog/webhook"):
                rows[name][f"median_ratio_to_{peer}"] = rows[name]["median"] / theirs["median"]
            print(f"    watchdog/{peer}, medians: {wd[f'median_ratio_to_{peer}']:.2f}× "
                  f"(alertmanager receiver), "
                  f"{rows['watchdog/webhook'][f'median_ratio_to_{peer}']:.2f}× (webhook); "
                  f"evaluation → notification {ms(wd['evaluation_to_notification'], 1)} ms vs "
                  f"{ms(theirs['evaluation_to_notification'], 1)} ms")
        out["rules"][rule] = rows
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--intervals", type=float, nargs="+", default=[1.0, 5.0],
                   help="evaluation (= scrape) intervals in seconds")
    p.add_argument("--crossings", type=int, default=4, help="crossings per round")
    p.add_argument("--rounds", type=int, default=5,
                   help="rounds per interval, each with fresh processes (a new scrape phase)")
    p.add_argument("--timeout", type=float, default=20.0,
                   help="seconds beyond 5 intervals to wait for a notification or a resolve")
    p.add_argument("--background", type=int, default=0,
                   help="more rules for every tool (groups of 50, never firing, on 100 "
                   "counters): the crossing measured on a busier daemon")
    p.add_argument("--state-url", default="",
                   help="a PostgreSQL server: the watchdog's state in a throwaway database on "
                   "it (CREATEDB needed) instead of SQLite")
    p.add_argument("--replicas", type=int, default=1,
                   help="watchdog replicas on --state-url; with 2 or more, the group is "
                   "evaluated by one replica and notified by another (the ~leader)")
    p.add_argument("--vmalert-arg", action="append", default=[],
                   help="an extra vmalert flag, e.g. --vmalert-arg=-rule.resendDelay=0s")
    p.add_argument("--vmalert-unaligned", action="store_true",
                   help="also run a vmalert with -datasource.queryTimeAlignment=false")
    p.add_argument("--json", action="store_true", help="also print every figure as JSON")
    p.add_argument("--keep", action="store_true", help="keep the logs and data (else removed)")
    args = p.parse_args(argv)
    if args.replicas > 1 and not args.state_url.startswith("postgres"):
        print("--replicas needs --state-url postgresql://...", file=sys.stderr)
        return 2
    for binary in ("prometheus", "vmalert"):
        if find_binary(binary) is None:
            print(f"{binary} not found: apt-get install prometheus victoria-metrics",
                  file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="watchdog-bench-latency-"))
    load = os.getloadavg()
    print(f"watchdog: {sys.executable} -m watchdog; vmalert: {find_binary('vmalert')} "
          f"{' '.join(args.vmalert_arg)}; {os.cpu_count()} CPUs; load average {load[0]:.1f} "
          f"{load[1]:.1f} {load[2]:.1f}; {args.background} background rules; watchdog state: "
          f"{'PostgreSQL, ' + str(args.replicas) + ' replica(s)' if args.state_url else 'SQLite'};"
          f" files in {tmp}",
          flush=True)
    results: list[tuple[float, list[Crossing]]] = []
    try:
        for interval in args.intervals:
            crossings: list[Crossing] = []
            results.append((interval, crossings))
            for rnd in range(1, args.rounds + 1):
                print(f"  interval {interval:g}s, round {rnd}:", flush=True)
                crossings += run_round(interval, rnd, args, tmp)
    finally:
        for interval, crossings in results:
            if not crossings:
                continue
            summary = report(interval, crossings, channels_of(args))
            if args.json:
                summary["raw"] = [asdict(c) for c in crossings]
                print(json.dumps(summary, default=str))
        load = os.getloadavg()
        print(f"\n(load average now {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}. cross→scrape: "
              "Prometheus's timestamp of the first sample above; scrape→eval: the firing "
              "evaluation's time (startsAt; the watchdog's + for); eval→decided: to the "
              "watchdog's `alert` log line, written in the evaluation's transaction)")
        if args.keep:
            print(f"(logs and data in {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
