"""The `watchdog` command line: argument parsing and exit codes, nothing else.

Each subcommand delegates to the module that holds its logic; heavy imports happen inside the
subcommand so `watchdog check` stays fast and `--help` works without a running loop.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from watchdog import __version__
from watchdog.durations import parse_duration


def parse_time(text: str) -> float:
    """Unix seconds or RFC 3339, as `promtool` and the Prometheus API accept (years 1-9999:
    `nan` or `1e400` is no time)."""
    from watchdog.webinput import BadInput
    from watchdog.webinput import parse_time as bounded_time

    try:
        return bounded_time(text, "time")
    except BadInput:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (Unix seconds or RFC 3339, e.g. 2026-11-22T10:00:00Z)"
        ) from None


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="watchdog",
        description="Watches a service after it ships: evaluates Prometheus-compatible rules, "
                    "rolls back bad deploys and tells people.")
    p.add_argument("--version", action="version", version=f"metrics-watchdog {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon", description="Run the daemon: poll "
                         "Prometheus, evaluate, act, notify, serve HTTP.")
    run.add_argument("--config", type=Path, help="YAML settings file (overrides env)")

    check = sub.add_parser("check", help="validate rule files offline",
                           description="Validate rule files or folders. Exit 0 when all are "
                                       "valid, 1 otherwise; one line per problem.")
    check.add_argument("paths", nargs="+", type=Path, metavar="PATH")

    rp = sub.add_parser("replay", help="evaluate rules over past data",
                        description="Evaluate the rules over past data with the engine of "
                                    "`run`; actions and notifications are only reported.")
    rp.add_argument("--rules", type=Path, required=True, help="rules folder or file")
    rp.add_argument("--prometheus-url", required=True)
    rp.add_argument("--start", type=parse_time, required=True, help="Unix seconds or RFC 3339")
    rp.add_argument("--end", type=parse_time, required=True, help="Unix seconds or RFC 3339")
    rp.add_argument("--step", type=_duration, default=None,
                    help="evaluation step (default: each group's interval)")
    rp.add_argument("--format", choices=("jsonl", "table"), default="jsonl")
    rp.add_argument("--timeout", type=_duration, default=60.0,
                    help="per-query timeout (default 60s)")

    t = sub.add_parser("test", help="run rule unit tests (promtool format)",
                       description="Run rule unit tests in promtool's format; output and exit "
                                   "code like `promtool test rules`. Needs the prometheus and "
                                   "promtool binaries (Debian package prometheus).")
    t.add_argument("files", nargs="+", type=Path, metavar="FILE")

    npv = sub.add_parser("notify-preview", help="show the Slack message a rule would send",
                         description="Print, for each alerting rule in RULEFILE (or folder), the "
                                     "Slack message its firing and resolved notifications would "
                                     "show, drawn in the terminal. Nothing is sent.")
    npv.add_argument("rulefile", type=Path, metavar="RULEFILE")
    npv.add_argument("--rule", help="only the rule with this alert name")
    npv.add_argument("--label", action="append", default=[], metavar="NAME=VALUE",
                     help="a sample label (repeatable)")
    npv.add_argument("--value", type=float, help="sample value (default: just past the threshold)")
    npv.add_argument("--state", choices=("firing", "resolved", "both"), default="both")
    npv.add_argument("--format", choices=("terminal", "json"), default="terminal")
    npv.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    npv.add_argument("--external-url", default="",
                     help="EXTERNAL_URL for links (default: $WATCHDOG_EXTERNAL_URL)")
    npv.add_argument("--dry-run", action="store_true",
                     help="as with DRY_RUN=true: actions would_run (also $WATCHDOG_DRY_RUN)")
    npv.add_argument("--paused-for", type=_duration, metavar="D",
                     help="as while actions are paused for D (maintenance mode)")
    npv.add_argument("--paused-reason", metavar="TEXT", help="the pause's reason")
    npv.add_argument("--paused-by", metavar="NAME", help="who paused")

    from watchdog.actions.client import add_action_parser
    from watchdog.actions.deploy_client import add_deploy_parser
    from watchdog.actions.pause_client import add_pause_parser
    from watchdog.incidents.client import add_incidents_parser
    from watchdog.remote import add_parsers as add_remote_parsers

    add_action_parser(sub)
    add_pause_parser(sub)
    add_deploy_parser(sub)
    add_incidents_parser(sub)
    add_remote_parsers(sub)  # silence add|query|expire, ack, runs
    return p


def cmd_check(paths: Sequence[Path]) -> int:
    from watchdog.rulesdir import discover, load

    missing = [p for p in paths if not p.exists()]
    for p in missing:
        print(f"{p}:0: no such file or directory")
    files = discover(p for p in paths if p.exists())
    if not files:
        # like promtool: nothing checked is not "all valid" (a typo'd folder in CI must fail)
        for p in paths:
            if p.exists():
                print(f"{p}:0: no rule files (*.yml, *.yaml) found")
        print("checked 0 files", file=sys.stderr)
        return 1
    rs = load(p for p in paths if p.exists())
    bad = 0
    for st in rs.status.values():
        for problem in st.problems:
            print(problem, file=sys.stderr if problem.warning else sys.stdout)
        bad += not st.ok
    print(f"checked {len(files)} file(s): {len(files) - bad} valid, {bad} invalid",
          file=sys.stderr)
    return 1 if bad or missing else 0


async def _replay(args: argparse.Namespace) -> int:
    import aiohttp

    from watchdog.evaluate import Context
    from watchdog.replay import replay, write_jsonl, write_table
    from watchdog.rulesdir import load
    from watchdog.source import PrometheusConfig, PrometheusSource

    rs = load([args.rules])
    for st in rs.rejected:
        for problem in st.problems:
            print(problem, file=sys.stderr)
    if rs.rejected:
        return 1
    if args.end < args.start:
        print("replay: --end is before --start", file=sys.stderr)
        return 2
    async with aiohttp.ClientSession() as session:
        src = PrometheusSource(session, PrometheusConfig(url=args.prometheus_url,
                                                         timeout=args.timeout))
        report = await replay(rs, src, args.start, args.end, args.step, 60.0,
                              Context(external_url=args.prometheus_url))
    (write_jsonl if args.format == "jsonl" else write_table)(report.lines, sys.stdout)
    for rule, err in report.errors.items():
        print(f"replay: {rule}: {err}", file=sys.stderr)
    return 1 if report.errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "check":
        return cmd_check(args.paths)
    if args.command == "replay":
        return asyncio.run(_replay(args))
    if args.command == "test":
        from watchdog.promtest import run_test_files

        return run_test_files(args.files)
    if args.command == "notify-preview":
        from watchdog.notify.preview import run_cli

        return run_cli(args)
    if args.command == "action":
        from watchdog.actions.client import main as action_main

        return action_main(args)
    if args.command == "pause":
        from watchdog.actions.pause_client import main as pause_main

        return pause_main(args)
    if args.command == "deploy":
        from watchdog.actions.deploy_client import main as deploy_main

        return deploy_main(args)
    if args.command == "incidents":
        from watchdog.incidents.client import main as incidents_main

        return incidents_main(args)
    if args.command in ("silence", "ack", "runs"):
        from watchdog.remote import main as remote_main

        return remote_main(args)
    if args.command == "run":
        from watchdog.daemon import run_daemon

        return int(run_daemon(args.config))
    parser.error(f"unknown command {args.command}")
    return 2
