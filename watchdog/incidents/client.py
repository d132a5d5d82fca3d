"""`watchdog incidents [--rule R] [--state open|resolved] [--since T] [--limit N] [--json]`:
the incident history of a running daemon, read through its HTTP API (`GET /api/v1/incidents`),
as a table or as the API's JSON — like `amtool alert query` against Alertmanager.

A thin client: argument parsing and one HTTP request with the standard library, so the command
starts fast and needs no event loop. It must not open the state store itself (the daemon owns it:
SQLite allows one process per file), and must never print the token.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from watchdog.daemon_http import request
from watchdog.durations import format_duration, parse_duration
from watchdog.webinput import BadInput, parse_time

DEFAULT_URL = "http://localhost:8080"
HIDDEN_LABELS = frozenset({"alertname", "severity"})


def _since(text: str) -> float:
    """A time (Unix seconds, RFC 3339) or a duration back from now (`24h`, `7d`)."""
    try:
        return parse_time(text, "--since")
    except BadInput:
        pass
    try:
        return time.time() - parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time or duration: {text!r} (e.g. 24h, 7d, 1800000000 or "
            "2026-11-22T10:00:00Z)") from None


def add_incidents_parser(sub: Any) -> argparse.ArgumentParser:
    """Adds `incidents` to the `watchdog` subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "incidents", help="list incidents of a running daemon",
        description="List the incidents a running watchdog recorded (newest first), from its "
                    "HTTP API: one alert instance each, from activation to resolution, with "
                    "its ack, actions and notifications.")
    p.add_argument("--rule", help="only this alerting rule")
    p.add_argument("--state", choices=("open", "resolved"), help="only open or resolved ones")
    p.add_argument("--since", type=_since, metavar="T",
                   help="only incidents open at any moment since T: a time (Unix seconds or "
                        "RFC 3339) or a duration back from now (24h, 7d)")
    p.add_argument("--limit", type=int, default=100, help="at most N (default 100)")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.add_argument("--url", default=DEFAULT_URL, help=f"the daemon (default {DEFAULT_URL})")
    p.add_argument("--token-file", type=Path,
                   help="file holding the token to send when the daemon has API_READ_TOKEN set "
                        "(default: $WATCHDOG_API_READ_TOKEN, else $WATCHDOG_API_TOKEN)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    return p


def fetch(url: str, *, rule: str | None = None, state: str | None = None,
          since: float | None = None, limit: int = 100, token: str | None = None,
          timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    """GET the incidents; (HTTP status, JSON answer). Raises OSError when nobody answers."""
    params: dict[str, str] = {"limit": str(limit)}
    if rule:
        params["rule"] = rule
    if state:
        params["state"] = state
    if since is not None:
        params["since"] = repr(since)
    return request("GET", f"{url.rstrip('/')}/api/v1/incidents?{urllib.parse.urlencode(params)}",
                   token=token, timeout=timeout)


def _when(text: str | None) -> str:
    if not text:
        return "-"
    t = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S")


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in HIDDEN_LABELS)


def rows(incidents: list[dict[str, Any]]) -> list[list[str]]:
    out = [["STARTED (UTC)", "STATE", "SEVERITY", "RULE", "FIRING FOR", "ACK", "ACTIONS",
            "NOTIFIED", "LABELS"]]
    for i in incidents:
        took = i.get("durationSeconds")
        duration = "never fired" if took is None else format_duration(float(round(took)))
        ack = i.get("ack")
        actions = ",".join(f"{a['name']}:{a['status']}" for a in i.get("actions", []))
        out.append([_when(i.get("activeAt")), str(i.get("state", "")),
                    str(i.get("severity") or "-"), str(i.get("rule", "")), duration,
                    (ack.get("by") or "yes") if ack else "-", actions or "-",
                    str(i.get("notifications", 0)), _labels(i.get("labels", {}))])
    return out


def table(incidents: list[dict[str, Any]]) -> str:
    lines = rows(incidents)
    widths = [max(len(r[c]) for r in lines) for c in range(len(lines[0]) - 1)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(r, widths, strict=False)),
                                r[-1]]).rstrip() for r in lines)


def main(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    if args.limit < 1:
        print("watchdog incidents: --limit must be at least 1", file=err)
        return 2
    try:
        token = (args.token_file.read_text().strip() if args.token_file is not None
                 else os.environ.get("WATCHDOG_API_READ_TOKEN")
                 or os.environ.get("WATCHDOG_API_TOKEN") or None)
    except OSError as e:
        print(f"watchdog incidents: cannot read --token-file: {e.strerror}", file=err)
        return 2
    try:
        status, doc = fetch(args.url, rule=args.rule, state=args.state, since=args.since,
                            limit=args.limit, token=token, timeout=args.timeout)
    except OSError as e:
        reason = getattr(e, "reason", None) or e
        print(f"watchdog incidents: cannot reach {args.url}: {reason}", file=err)
        return 1
    if status != 200 or doc.get("status") != "success":
        message = doc.get("error") or json.dumps(doc)
        print(f"watchdog incidents: HTTP {status}: {message}", file=err)
        return 1
    data: list[dict[str, Any]] = doc.get("data", [])
    if args.json:
        json.dump(data, out, indent=2, ensure_ascii=False)
        out.write("\n")
    elif not data:
        print("no incidents", file=out)
    else:
        print(table(data), file=out)
    return 0
