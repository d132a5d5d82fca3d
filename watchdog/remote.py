"""`watchdog silence add|query|expire`, `watchdog ack` and `watchdog runs`: a running daemon's
silences, acknowledgements and action runs from the command line, through its HTTP API, in the
manner of `amtool` (matchers as `name=value`, `name=~regex`, `name!=value`, `name!~regex`, a bare
first word meaning `alertname=`; `-q` for ids only; `-o json`).

A thin client: argument parsing and one HTTP request per call with the standard library, so it
starts fast and needs no event loop. The daemon is `--url`, else `$WATCHDOG_URL`, else
http://localhost:8080. Writes send the API token from `--token-file`, else `$WATCHDOG_API_TOKEN`;
reads send `--token-file`, else `$WATCHDOG_API_READ_TOKEN`, else `$WATCHDOG_API_TOKEN` (needed
only when the daemon has API_READ_TOKEN set). It must not open the state store itself (the
daemon owns it) and must never print a token.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from watchdog.durations import format_duration, parse_duration
from watchdog.webinput import BadInput, parse_time

DEFAULT_URL = "http://localhost:8080"


class Failed(Exception):
    """One line for stderr; the command exits 1."""


# ---- arguments ----------------------------------------------------------------------------------


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _time(text: str) -> float:
    try:
        return parse_time(text, "time")
    except BadInput:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (Unix seconds or RFC 3339, e.g. 2026-11-22T10:00:00Z)"
        ) from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None,
                   help=f"the daemon (default: $WATCHDOG_URL, else {DEFAULT_URL})")
    p.add_argument("--token-file", type=Path, help="file holding the API token")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")


def add_parsers(sub: Any) -> None:
    """Adds `silence`, `ack` and `runs` to the `watchdog` subparsers."""
    s: argparse.ArgumentParser = sub.add_parser(
        "silence", help="add, query and expire silences on a running daemon",
        description="Silences of a running watchdog, like amtool's: they mute the "
                    "notifications of the alerts they match until they end.")
    ssub = s.add_subparsers(dest="silence_command", metavar="SUBCOMMAND", required=True)
    add = ssub.add_parser("add", help="add a silence; prints its id",
                          description="Add a silence for the alerts matching every MATCHER "
                                      "(name=value, name=~regex, name!=value, name!~regex; a "
                                      "bare first word is alertname=WORD). Needs the API token.")
    add.add_argument("matchers", nargs="+", metavar="MATCHER")
    add.add_argument("-c", "--comment", required=True, help="why (required, as in amtool)")
    add.add_argument("-a", "--author", default=None, help="who (default: your user name)")
    add.add_argument("-d", "--duration", type=_duration, default=3600.0,
                     help="how long from now or --start (default 1h)")
    add.add_argument("--start", type=_time, default=None, help="when it starts (default now)")
    add.add_argument("--end", type=_time, default=None, help="when it ends (instead of -d)")
    _common(add)
    q = ssub.add_parser("query", help="list silences",
                        description="List the active (and pending) silences, or the expired "
                                    "ones; with MATCHERs, those having each of them.")
    q.add_argument("matchers", nargs="*", metavar="MATCHER")
    q.add_argument("--expired", action="store_true", help="the expired ones instead")
    q.add_argument("-q", "--quiet", action="store_true", help="ids only")
    q.add_argument("-o", "--output", choices=("table", "json"), default="table")
    _common(q)
    ex = ssub.add_parser("expire", help="end silences now",
                         description="End the silences with these ids now. Needs the API token.")
    ex.add_argument("ids", nargs="+", metavar="ID")
    _common(ex)

    a: argparse.ArgumentParser = sub.add_parser(
        "ack", help="acknowledge firing alerts on a running daemon",
        description="Acknowledge the firing alerts matching every MATCHER: their escalations "
                    "and repeats stop until they resolve. Needs the API token.")
    a.add_argument("matchers", nargs="+", metavar="MATCHER")
    a.add_argument("-c", "--comment", default="", help="a note for the others")
    a.add_argument("-a", "--author", default=None, help="who (default: your user name)")
    a.add_argument("-o", "--output", choices=("table", "json"), default="table")
    _common(a)

    r: argparse.ArgumentParser = sub.add_parser(
        "runs", help="list action runs of a running daemon",
        description="The action runs a running watchdog recorded, newest first.")
    r.add_argument("--action", help="only runs of this action")
    r.add_argument("--status", help="only runs with this status (running, succeeded, failed, "
                                    "...)")
    r.add_argument("--limit", type=int, default=50, help="at most N (default 50)")
    r.add_argument("-o", "--output", choices=("table", "json"), default="table")
    _common(r)


# ---- HTTP ---------------------------------------------------------------------------------------


def _token(args: argparse.Namespace, write: bool) -> str | None:
    if args.token_file is not None:
        try:
            return args.token_file.read_text().strip() or None
        except OSError as e:
            raise Failed(f"cannot read --token-file: {e.strerror}") from None
    names = ("WATCHDOG_API_TOKEN",) if write else ("WATCHDOG_API_READ_TOKEN",
                                                   "WATCHDOG_API_TOKEN")
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def call(args: argparse.Namespace, method: str, path: str, body: Any = None,
         params: Sequence[tuple[str, str]] = ()) -> Any:
    """One request; the JSON answer, or `Failed` naming the endpoint and the daemon's error."""
    base = (args.url or os.environ.get("WATCHDOG_URL") or DEFAULT_URL).rstrip("/")
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    token = _token(args, write=method != "GET")
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            message = json.loads(raw).get("error") or raw.decode("utf-8", "replace")
        except (ValueError, AttributeError):
            message = raw[:300].decode("utf-8", "replace") or str(e.reason)
        hint = ""
        if e.code == 401:
            hint = (" (give the API token: --token-file, or $WATCHDOG_API_TOKEN)" if method != "GET"
                    else " (give a token: --token-file, or $WATCHDOG_API_READ_TOKEN)")
        raise Failed(f"{method} {path}: HTTP {e.code}: {message}{hint}") from None
    except OSError as e:
        raise Failed(f"cannot reach {base}: {getattr(e, 'reason', None) or e}") from None
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        raise Failed(f"{method} {path}: not JSON: {raw[:120]!r}") from None


# ---- matchers -----------------------------------------------------------------------------------


def matchers(texts: Sequence[str]) -> list[dict[str, Any]]:
    """amtool's matcher arguments as the API's `[{name, value, isRegex, isEqual}]`."""
    from watchdog.am_api import MatcherError, parse_matcher

    out = []
    for i, text in enumerate(texts):
        if i == 0 and not any(op in text for op in ("=", "!", "~")):
            text = f"alertname={text}"  # amtool: a bare first word is the alert's name
        try:
            out.append(parse_matcher(text).to_json())
        except MatcherError as e:
            raise Failed(f"{text!r}: {e}") from None
    return out


def _shown(m: dict[str, Any]) -> str:
    from watchdog.am_api import AmMatcher

    return str(AmMatcher.from_json(m))


def _when(value: Any) -> str:
    if isinstance(value, int | float):
        t = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, str) and value:
        t = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    else:
        return "-"
    return t.strftime("%Y-%m-%d %H:%M:%S")


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(r, widths, strict=False)),
                                r[-1]]).rstrip() for r in rows)


# ---- commands -----------------------------------------------------------------------------------


def silence_add(args: argparse.Namespace, out: TextIO) -> int:
    start = args.start if args.start is not None else time.time()
    end = args.end if args.end is not None else start + args.duration
    body = {"matchers": matchers(args.matchers), "startsAt": start, "endsAt": end,
            "createdBy": args.author or getpass.getuser(), "comment": args.comment}
    doc = call(args, "POST", "/api/v1/silences", body)
    print(doc.get("silenceID", ""), file=out)
    return 0


def silence_query(args: argparse.Namespace, out: TextIO) -> int:
    wanted = matchers(args.matchers) if args.matchers else []
    data = call(args, "GET", "/api/v1/silences").get("data", [])
    chosen = [s for s in data
              if (s.get("status", {}).get("state") == "expired") == args.expired
              and all(w in s.get("matchers", []) for w in wanted)]
    if args.quiet:
        for s in chosen:
            print(s["id"], file=out)
    elif args.output == "json":
        json.dump(chosen, out, indent=2, ensure_ascii=False)
        out.write("\n")
    elif chosen:
        rows = [["ID", "MATCHERS", "ENDS (UTC)", "CREATED BY", "COMMENT"]]
        rows += [[s["id"], " ".join(_shown(m) for m in s.get("matchers", [])),
                  _when(s.get("endsAt")), s.get("createdBy", ""), s.get("comment", "")]
                 for s in chosen]
        print(table(rows), file=out)
    return 0


def silence_expire(args: argparse.Namespace, out: TextIO) -> int:
    for sid in args.ids:
        call(args, "DELETE", f"/api/v1/silences/{urllib.parse.quote(sid, safe='')}")
    return 0


def ack(args: argparse.Namespace, out: TextIO) -> int:
    body = {"matchers": matchers(args.matchers),
            "createdBy": args.author or getpass.getuser(), "comment": args.comment}
    doc = call(args, "POST", "/api/v1/acks", body)
    acked = doc.get("acknowledged", [])
    if args.output == "json":
        json.dump(doc, out, indent=2, ensure_ascii=False)
        out.write("\n")
    elif not acked:
        print("no firing alert matches", file=out)
    else:
        print(f"acknowledged {len(acked)} alert(s):", file=out)
        for a in acked:
            labels = ",".join(f"{k}={v}" for k, v in sorted(a.get("labels", {}).items()))
            print(f"  {labels}", file=out)
    return 0


def runs(args: argparse.Namespace, out: TextIO) -> int:
    if args.limit < 1:
        raise Failed("--limit must be at least 1")
    params = [("limit", str(args.limit))]
    params += [(k, v) for k, v in (("action", args.action), ("status", args.status)) if v]
    data = call(args, "GET", "/api/v1/actions/runs", params=params).get("data", [])
    if args.output == "json":
        json.dump(data, out, indent=2, ensure_ascii=False)
        out.write("\n")
        return 0
    if not data:
        print("no action runs", file=out)
        return 0
    rows = [["STARTED (UTC)", "ACTION", "STATUS", "TOOK", "TRIGGER", "ID", "LABELS"]]
    for r in data:
        created, finished = r.get("createdAt"), r.get("finishedAt")
        took = (format_duration(float(round(finished - created)))
                if isinstance(created, int | float) and isinstance(finished, int | float)
                else "-")
        status = str(r.get("status", "")) + (" (dry run)" if r.get("dryRun") else "")
        labels = ",".join(f"{k}={v}" for k, v in sorted((r.get("labels") or {}).items())
                          if k != "alertname")
        rows.append([_when(created), str(r.get("action", "")), status, took,
                     str(r.get("trigger") or "-"), str(r.get("id", "")), labels or "-"])
    print(table(rows), file=out)
    return 0


COMMANDS = {("silence", "add"): silence_add, ("silence", "query"): silence_query,
            ("silence", "expire"): silence_expire, ("ack", None): ack, ("runs", None): runs}


def main(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    key = (args.command, getattr(args, "silence_command", None))
    name = " ".join(k for k in key if k)
    try:
        return COMMANDS[key](args, out)
    except Failed as e:
        print(f"watchdog {name}: {e}", file=err)
        return 1
