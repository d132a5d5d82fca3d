"""`watchdog action run NAME --label k=v [--url URL] [--token-file F]`: trigger an action on a
running daemon through its HTTP API (`POST /api/v1/actions/{name}/run`).

A thin client: argument parsing and one HTTP request with the standard library, so the command
starts fast and needs no event loop. It must not run the action itself (only the daemon holds
the interlocks and the run history), and must never print the token.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from watchdog.daemon_http import request

DEFAULT_URL = "http://localhost:8080"


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected k=v, got {text!r}")
    return key, value


def add_action_parser(sub: Any) -> argparse.ArgumentParser:
    """Adds `action` (with its `run` subcommand) to the `watchdog` subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "action", help="trigger actions on a running daemon",
        description="Trigger an action on a running watchdog daemon over its HTTP API.")
    asub = p.add_subparsers(dest="action_command", metavar="SUBCOMMAND", required=True)
    run = asub.add_parser(
        "run", help="run an action now",
        description="Run action NAME now, for the given labels. The daemon's interlocks apply "
                    "(max_runs_per_hour unless --force) and so does its DRY_RUN. Needs the "
                    "API token: --token-file, or WATCHDOG_API_TOKEN in the environment.")
    run.add_argument("name", metavar="NAME")
    run.add_argument("--label", "-l", dest="labels", action="append", type=_label, default=[],
                     metavar="K=V", help="a label of the alert this is for (repeatable)")
    run.add_argument("--url", default=DEFAULT_URL, help=f"the daemon (default {DEFAULT_URL})")
    run.add_argument("--token-file", type=Path, help="file holding the API token")
    run.add_argument("--dry-run", action="store_true", help="report would_run, change nothing")
    run.add_argument("--force", action="store_true", help="run even past max_runs_per_hour")
    run.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    return p


def _token(token_file: Path | None) -> str | None:
    if token_file is not None:
        return token_file.read_text().strip()
    return os.environ.get("WATCHDOG_API_TOKEN") or None


def run_action(name: str, labels: dict[str, str], *, url: str = DEFAULT_URL,
               token: str | None = None, dry_run: bool = False, force: bool = False,
               timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    """POST the trigger; (HTTP status, JSON answer). Raises OSError when nobody answers."""
    body = {"labels": labels, "dry_run": dry_run, "force": force}
    return request("POST", f"{url.rstrip('/')}/api/v1/actions/{quote(name, safe='')}/run", body,
                   token=token, timeout=timeout)


def main(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    if args.action_command != "run":
        print(f"watchdog action: unknown subcommand {args.action_command}", file=err)
        return 2
    try:
        token = _token(args.token_file)
    except OSError as e:
        print(f"watchdog action run: cannot read --token-file: {e.strerror}", file=err)
        return 2
    try:
        status, doc = run_action(args.name, dict(args.labels), url=args.url, token=token,
                                 dry_run=args.dry_run, force=args.force, timeout=args.timeout)
    except OSError as e:
        reason = getattr(e, "reason", None) or e
        print(f"watchdog action run: cannot reach {args.url}: {reason}", file=err)
        return 1
    if 200 <= status < 300:
        dry = " (dry run)" if doc.get("dryRun") else ""
        print(f"started {args.name}{dry}: run {doc.get('runID')}", file=out)
        print(f"follow it: {args.url.rstrip('/')}/api/v1/actions/runs/{doc.get('runID')}",
              file=out)
        return 0
    message = doc.get("error") or json.dumps(doc)
    if doc.get("retryAfter"):
        message += f" (retry after {doc['retryAfter']}s)"
    print(f"watchdog action run: HTTP {status}: {message}", file=err)
    return 1
