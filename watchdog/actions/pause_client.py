"""`watchdog pause [--until T | --for 2h] --reason TEXT` / `watchdog pause --off` /
`watchdog pause --status`: maintenance mode of a running daemon through its HTTP API
(`POST`, `DELETE`, `GET /api/v1/pause`).

A thin client like `watchdog action run`: standard-library HTTP, no event loop. It must not
write the store itself (the daemon owns it, and other replicas read the same record) and must
never print the token.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any, TextIO

from watchdog.actions.client import DEFAULT_URL, _token
from watchdog.daemon_http import Answer, request


def add_pause_parser(sub: Any) -> argparse.ArgumentParser:
    from pathlib import Path

    p: argparse.ArgumentParser = sub.add_parser(
        "pause", help="pause actions on a running daemon (maintenance mode)",
        description="Pause every action of a running watchdog until a time: while paused each "
                    "step is a logged would_run, alerts and notifications go on, and every "
                    "message says 'actions paused until … by … (reason)'. The pause is kept in "
                    "the daemon's store and ends by itself. --off ends it now. Needs the API "
                    "token: --token-file, or WATCHDOG_API_TOKEN in the environment.")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--until", metavar="T", help="end time: RFC 3339 or Unix seconds")
    when.add_argument("--for", dest="for_", metavar="D", help="how long, e.g. 2h (default 1h)")
    when.add_argument("--off", action="store_true", help="end the pause now")
    when.add_argument("--status", action="store_true", help="show whether actions are paused")
    p.add_argument("--reason", help="why (required to pause)")
    p.add_argument("--by", help="who (default: your user name)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the daemon (default {DEFAULT_URL})")
    p.add_argument("--token-file", type=Path, help="file holding the API token")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    return p


def pause(method: str, url: str, body: dict[str, Any] | None, token: str | None,
          timeout: float) -> Answer:
    """(HTTP status, JSON answer) of /api/v1/pause; raises OSError when nobody answers."""
    return request(method, f"{url.rstrip('/')}/api/v1/pause", body, token=token, timeout=timeout)


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def main(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        token = _token(args.token_file)
    except OSError as e:
        print(f"watchdog pause: cannot read --token-file: {e.strerror}", file=err)
        return 2
    if args.status:
        method, body = "GET", None
    elif args.off:
        method, body = "DELETE", None
    else:
        if not args.reason or not args.reason.strip():
            print("watchdog pause: --reason is required (it is shown in every message)",
                  file=err)
            return 2
        body = {"reason": args.reason, "by": args.by or _who()}
        if args.until is not None:
            body["until"] = args.until
        else:
            body["for"] = args.for_ or "1h"
        method = "POST"
    try:
        status, doc = pause(method, args.url, body, token, args.timeout)
    except OSError as e:
        reason = getattr(e, "reason", None) or e
        print(f"watchdog pause: cannot reach {args.url}: {reason}", file=err)
        return 1
    if not 200 <= status < 300:
        print(f"watchdog pause: HTTP {status}: {doc.get('error') or json.dumps(doc)}", file=err)
        return 1
    data = doc.get("data") or {}
    if data.get("paused"):
        print(data.get("notice") or "actions paused", file=out)
    elif args.off:
        print("actions resumed" if data.get("resumed") else "actions were not paused", file=out)
    else:
        print("actions are not paused", file=out)
    return 0
