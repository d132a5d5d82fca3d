"""`watchdog deploy SERVICE VERSION [--window 30m] [--label k=v] [--on-fail ACTION] [--id ID]
[--wait]`: set a deploy marker on a running daemon (`POST /api/v1/deploys`) and, with `--wait`,
poll its verdict (`GET /api/v1/deploys/{id}`) until it is decided — the gate any CD pipeline can
run as a step: exit 0 on pass, 1 on fail, 2 when the verdict could not be had (bad arguments,
the daemon refused or could not be reached, `--wait-timeout` passed).

A thin client: the standard library only, no event loop. It must not decide a verdict itself
(only the daemon sees the alerts), and must never print the token.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from watchdog.daemon_http import request
from watchdog.durations import format_duration, parse_duration

DEFAULT_URL = "http://localhost:8080"
EXIT_PASS, EXIT_FAIL, EXIT_ERROR = 0, 1, 2


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected k=v, got {text!r}")
    return key, value


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return seconds


def add_deploy_parser(sub: Any) -> argparse.ArgumentParser:
    """Adds `deploy` to the `watchdog` subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "deploy", help="mark a deploy on a running daemon and (--wait) gate on its verdict",
        description="Set a deploy marker on a running watchdog: it captures the baselines of "
                    "`baseline: {deploy: true}` rules and watches the alerts concerning the "
                    "service for the window. Prints the marker's id. With --wait, polls the "
                    "verdict and exits 0 on pass, 1 on fail (2: no verdict could be had). "
                    "Needs the API token: --token-file, or WATCHDOG_API_TOKEN.")
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--window", type=_duration, metavar="D",
                   help="verification window (default: the daemon's, 30m)")
    p.add_argument("--label", "-l", dest="labels", action="append", type=_label, default=[],
                   metavar="K=V", help="the labels of the alerts this deploy concerns "
                                       "(repeatable; default service=SERVICE)")
    p.add_argument("--on-fail", dest="on_fail", action="append", default=[], metavar="ACTION",
                   help="an action of the rules folder to run if the verdict is fail "
                        "(repeatable, in order)")
    p.add_argument("--id", dest="deploy_id", metavar="ID",
                   help="choose the marker's id (a repeated call with the same id for the "
                        "same deploy answers the existing marker)")
    p.add_argument("--wait", action="store_true",
                   help="poll until the verdict: exit 0 on pass, 1 on fail")
    p.add_argument("--poll", type=_duration, default=5.0, metavar="D",
                   help="seconds between polls with --wait (default 5s)")
    p.add_argument("--wait-timeout", type=_duration, metavar="D",
                   help="give up (exit 2) after this long (default: the window plus 10m)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the daemon (default {DEFAULT_URL})")
    p.add_argument("--token-file", type=Path, help="file holding the API token")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    return p


def _token(token_file: Path | None) -> str | None:
    if token_file is not None:
        return token_file.read_text().strip()
    return os.environ.get("WATCHDOG_API_TOKEN") or None


def _reason(e: OSError) -> str:
    return str(getattr(e, "reason", None) or e)


def main(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr, *,
         sleep: Callable[[float], None] = time.sleep,
         monotonic: Callable[[], float] = time.monotonic) -> int:
    try:
        token = _token(args.token_file)
    except OSError as e:
        print(f"watchdog deploy: cannot read --token-file: {e.strerror}", file=err)
        return EXIT_ERROR
    base = args.url.rstrip("/")
    body: dict[str, Any] = {"service": args.service, "version": args.version,
                            "labels": dict(args.labels), "on_fail": list(args.on_fail)}
    if args.window is not None:
        body["window"] = format_duration(args.window)
    if args.deploy_id:
        body["id"] = args.deploy_id
    try:
        status, doc = request("POST", f"{base}/api/v1/deploys", body, token=token,
                              timeout=args.timeout)
    except OSError as e:
        print(f"watchdog deploy: cannot reach {args.url}: {_reason(e)}", file=err)
        return EXIT_ERROR
    if not 200 <= status < 300:
        print(f"watchdog deploy: HTTP {status}: {doc.get('error') or json.dumps(doc)}",
              file=err)
        return EXIT_ERROR
    deploy_id = str(doc.get("id"))
    # Flushed at once: a pipeline reads the id while --wait still polls.
    print(deploy_id, file=out, flush=True)
    window_end = float(doc.get("window_end") or 0.0)
    at = float(doc.get("at") or 0.0)
    print(f"deploy {args.service} {args.version}: verifying until window end "
          f"({format_duration(max(0.0, round(window_end - at)))}); verdict: "
          f"{base}/api/v1/deploys/{deploy_id}", file=err)
    if not args.wait:
        return EXIT_PASS
    limit = args.wait_timeout if args.wait_timeout is not None else (
        max(0.0, window_end - at) + 600.0)
    deadline = monotonic() + limit
    last_error = ""
    while True:
        try:
            status, doc = request("GET", f"{base}/api/v1/deploys/{quote(deploy_id, safe='')}",
                                  token=token, timeout=args.timeout)
        except OSError as e:  # the daemon restarting: keep polling until the deadline
            status, doc, last_error = 0, {}, f"cannot reach {args.url}: {_reason(e)}"
        if status == 200:
            verdict = doc.get("status")
            if verdict in ("pass", "fail"):
                print(f"{verdict}: {doc.get('summary', '')}", file=out)
                return EXIT_PASS if verdict == "pass" else EXIT_FAIL
        elif status in (401, 403, 404):
            print(f"watchdog deploy: HTTP {status}: {doc.get('error') or json.dumps(doc)}",
                  file=err)
            return EXIT_ERROR
        elif status:
            last_error = f"HTTP {status}: {doc.get('error') or json.dumps(doc)}"
        if monotonic() >= deadline:
            print(f"watchdog deploy: no verdict for {deploy_id} after "
                  f"{format_duration(round(limit))}" + (f" ({last_error})" if last_error else ""),
                  file=err)
            return EXIT_ERROR
        sleep(args.poll)
