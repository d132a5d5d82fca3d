"""`watchdog notify-preview RULEFILE`: what Slack would show for each alerting rule, before any
incident — the Block Kit message of `receivers.slack.render`, drawn in the terminal (colour bar,
bold header, two-column fields, buttons with their URLs), or the raw JSON with `--format json`.

Sample data stands in for a real series: labels from the expression's `name="value"` matchers,
the group's and rule's labels and `--label`; a value just past the threshold (or `--value`);
annotations expanded by the same template engine the daemon uses. Nothing is sent, nothing
queried; the only I/O is reading the rule file and printing. Rendering must stay a pure function
of the Slack JSON, so what you see is what the receiver would post. A rule's actions show as the
daemon would list them: by tier when they are a map, as `would_run` for a dry-run rule (or with
`--dry-run` / `WATCHDOG_DRY_RUN`), and with `--paused-for` as during maintenance mode, with the
"actions paused until … by … (reason)" line every message then carries.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from watchdog.labels import fingerprint
from watchdog.model import AlertingRule, Comparison, Group
from watchdog.notify.message import ActionNote, Notification, alert_doc, generator_url
from watchdog.notify.receivers.slack import render
from watchdog.state import Alert

_MATCHER = re.compile(r'(?<![!=~])\b([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"')
EXAMPLE_DURATION = 23 * 60.0  # how long the sample incident lasted, for the resolved message


def sample_labels(expr: str) -> dict[str, str]:
    """Equality matchers of the expression (`service="checkout"`): the labels a result series
    most likely keeps, so the preview shows realistic values instead of empty templates."""
    return {k: v for k, v in _MATCHER.findall(expr) if k != "__name__"}


def sample_value(rule: AlertingRule) -> tuple[float, str | None, str | None]:
    """(value, severity, threshold text) just past the strongest tier or the threshold."""
    cmp: Comparison | None = rule.threshold
    severity = None
    if rule.severities:
        severity, cmp = rule.ranked_tiers()[0]
    if cmp is None:
        return 1.0, severity, None
    n = cmp.number
    step = abs(n) * 0.5 if n else 1.0
    value = {">": n + step, ">=": n + step, "<": n - step, "<=": n - step,
             "==": n, "!=": n + step}[cmp.op]
    return value, severity, str(cmp)


def sample_alert(rule: AlertingRule, group: Group, *, now: float, extra: dict[str, str],
                 value: float | None, external_url: str) -> Alert:
    from watchdog.gotmpl import TemplateData, expand

    v, severity, threshold = sample_value(rule)
    if value is not None:
        v = value
    base_labels = {**sample_labels(rule.expr), **extra}
    baseline = compared = None
    if rule.baseline is not None:
        compared = v
        baseline = 0.2
        v = baseline * compared if rule.baseline.compare == "ratio" else baseline + compared
    data = TemplateData(labels=dict(base_labels), value=v, external_labels={},
                        external_url=external_url)

    def safe(text: str) -> str:
        try:
            return expand(text, data)
        except Exception as e:  # show the author the error in place of the text
            return f"⚠ template error: {e}"

    labels = dict(base_labels)
    for k, t in {**group.labels, **rule.labels}.items():
        labels[k] = safe(t)
    labels["alertname"] = rule.alert
    if severity is not None:
        labels["severity"] = severity
    labels.update(extra)
    annotations = {k: safe(t) for k, t in rule.annotations.items()}
    fired = now - 60.0
    return Alert(rule=rule.alert, group=group.name, fingerprint=fingerprint(labels),
                 labels=labels, annotations=annotations, state="firing",
                 active_at=fired - rule.for_, value=v, fired_at=fired,
                 severity=severity or labels.get("severity"), threshold=threshold,
                 baseline=baseline, compared=compared)


def action_notes(rule: AlertingRule, *, now: float, dry_run: bool = False,
                 paused: str | None = None) -> tuple[ActionNote, ...]:
    """What the sample firing alert's message lists under "what the watchdog did": the rule's
    actions — by tier, lowest first, when they are a map (the sample is at the highest tier,
    which it reached through the lower ones) — as started, or as would_run when the rule is a
    dry run, DRY_RUN is set or actions are paused."""
    items: list[tuple[str | None, str]]
    if isinstance(rule.actions, dict):
        order = [t for t, _ in reversed(rule.ranked_tiers())]
        items = [(t, n) for t in order for n in rule.actions.get(t, [])]
    else:
        items = [(None, n) for n in rule.actions]
    kind = "would_run" if dry_run or paused else "started"
    notes = []
    for tier, name in items:
        why = paused or ("dry run" if dry_run else "")
        detail = "; ".join(x for x in (f"{tier} tier" if tier else "", why) if x)
        notes.append(ActionNote(action=name, kind=kind, at=now - 55.0, detail=detail))
    return tuple(notes)


def notifications(rule: AlertingRule, group: Group, *, now: float, extra: dict[str, str],
                  value: float | None, external_url: str, state: str,
                  dry_run: bool = False, paused: str | None = None) -> list[Notification]:
    a = sample_alert(rule, group, now=now, extra=extra, value=value, external_url=external_url)
    url = generator_url(external_url, rule.expr)
    notes = action_notes(rule, now=now, dry_run=dry_run or rule.dry_run, paused=paused)
    out = []
    if state in ("firing", "both"):
        out.append(Notification(kind="firing", receiver="preview", group_key="preview",
                                created_at=now, group_labels={"alertname": rule.alert},
                                alerts=(alert_doc(a, generator=url, actions=notes),),
                                external_url=external_url, paused=paused))
    if state in ("resolved", "both"):
        done = replace(a, state="inactive", resolved_at=(a.fired_at or now) + EXAMPLE_DURATION,
                       value=None)
        recovery = tuple(
            ActionNote(action=name, kind="would_run" if rule.dry_run or dry_run or paused
                       else "started", at=(a.fired_at or now) + EXAMPLE_DURATION,
                       detail="; ".join(x for x in ("on_resolved", paused or "") if x))
            for name in rule.on_resolved)
        out.append(Notification(kind="resolved", receiver="preview", group_key="preview",
                                created_at=now, group_labels={"alertname": rule.alert},
                                alerts=(alert_doc(done, generator=url, actions=recovery),),
                                external_url=external_url, paused=paused))
    return out


# ---- terminal rendering of Block Kit ---------------------------------------------------------

class Style:
    def __init__(self, color: bool) -> None:
        self.color = color

    def sgr(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color and text else text

    def bold(self, t: str) -> str:
        return self.sgr("1", t)

    def dim(self, t: str) -> str:
        return self.sgr("2", t)

    def link(self, t: str) -> str:
        return self.sgr("4;34", t)

    def bar(self, hex_colour: str) -> str:
        if not self.color:
            return "│ "
        r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
        return f"\x1b[38;2;{r};{g};{b}m▌\x1b[0m "


def mrkdwn(text: str, st: Style) -> str:
    """Slack mrkdwn to terminal text: *bold*, `code`, <url|text>, entities."""
    text = re.sub(r"<([^|>]+)\|([^>]+)>", lambda m: st.link(m.group(2)) + st.dim(
        f" ({m.group(1)})"), text)
    text = re.sub(r"\*([^*\n]+)\*", lambda m: st.bold(m.group(1)), text)
    text = re.sub(r"`([^`\n]+)`", lambda m: st.sgr("36", m.group(1)), text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def visible_len(s: str) -> int:
    return len(_ANSI.sub("", s))


def wrap(text: str, width: int) -> list[str]:
    out: list[str] = []
    for para in text.split("\n"):
        if visible_len(para) <= width:
            out.append(para)
        else:  # wrapping coloured text exactly is not worth it: wrap the plain text
            out.extend(textwrap.wrap(_ANSI.sub("", para), width) or [""])
    return out


def draw(body: dict[str, Any], st: Style, width: int = 80) -> str:
    lines: list[str] = []
    inner = max(20, width - 2)
    for att in body.get("attachments", []):
        bar = st.bar(att.get("color", "#8A8F98"))
        for block in att.get("blocks", []):
            kind = block.get("type")
            if kind == "header":
                lines.append(st.bold(block["text"]["text"]))
                lines.append("")
            elif kind == "section":
                if "text" in block:
                    lines.extend(wrap(mrkdwn(block["text"]["text"], st), inner))
                fields = [mrkdwn(f["text"], st).split("\n", 1) for f in block.get("fields", [])]
                col = (inner - 2) // 2
                for i in range(0, len(fields), 2):
                    pair = fields[i:i + 2]
                    heads = [p[0] for p in pair]
                    vals = [p[1] if len(p) > 1 else "" for p in pair]
                    for row in (heads, vals):
                        cells = [wrap(c, col) for c in row]
                        for parts in itertools.zip_longest(*cells, fillvalue=""):
                            lines.append("  ".join(c + " " * (col - visible_len(c))
                                                   for c in parts).rstrip())
                lines.append("")
            elif kind == "context":
                for e in block.get("elements", []):
                    lines.extend(st.dim(x) for x in wrap(mrkdwn(e["text"], st), inner))
            elif kind == "divider":
                lines.append(st.dim("─" * min(inner, 40)))
            elif kind == "actions":
                buttons = block.get("elements", [])
                lines.append("  ".join(st.bold(f"[ {b['text']['text']} ]") for b in buttons))
                lines.extend(st.dim(f"  {b['text']['text']}: {b.get('url', '')}")
                             for b in buttons)
                lines.append("")
        while lines and lines[-1] == "":
            lines.pop()
        lines = [bar + line for line in lines]
    return "\n".join(lines)


def run(path: Path, *, rule: str | None = None, labels: Sequence[str] = (),
        value: float | None = None, state: str = "both", fmt: str = "terminal",
        color: str = "auto", external_url: str = "", out: TextIO | None = None,
        now: float | None = None, dry_run: bool = False, paused_for: float | None = None,
        paused_reason: str = "", paused_by: str = "") -> int:
    import time

    from watchdog.pause import notice
    from watchdog.rulefile import parse_rule_file
    from watchdog.rulesdir import discover

    out = out or sys.stdout
    # Each file on its own: a rule file may name actions and receivers defined elsewhere in
    # the folder, which does not change what its message looks like.
    groups: list[Group] = []
    for f in discover([path]):
        try:
            pf = parse_rule_file(f.read_text(encoding="utf-8"), str(f))
        except OSError as e:
            print(f"{f}:0: cannot read: {e.strerror}", file=sys.stderr)
            return 1
        if not pf.ok or pf.model is None:
            for problem in pf.problems:
                print(problem, file=sys.stderr)
            return 1
        groups.extend(pf.model.groups)
    extra: dict[str, str] = {}
    for item in labels:
        k, sep, v = item.partition("=")
        if not sep or not k:
            print(f"notify-preview: --label {item!r}: expected NAME=VALUE", file=sys.stderr)
            return 2
        extra[k.strip()] = v.strip().strip('"')
    use_color = color == "always" or (color == "auto" and out.isatty()
                                      and "NO_COLOR" not in os.environ)
    st = Style(use_color)
    width = min(100, shutil.get_terminal_size((80, 24)).columns)
    at = time.time() if now is None else now
    paused = None
    if paused_for is not None:
        paused = notice(_Pause(at + paused_for, paused_reason, paused_by))
    shown = 0
    for group in groups:
        for r in group.alerting_rules:
            if rule is not None and r.alert != rule:
                continue
            for n in notifications(r, group, now=at, extra=extra, value=value,
                                   external_url=external_url, state=state, dry_run=dry_run,
                                   paused=paused):
                body = render(n, at)
                shown += 1
                if fmt == "json":
                    print(json.dumps(body, ensure_ascii=False), file=out)
                    continue
                title = f" {r.alert} ({group.name}) — {n.status} "
                print(st.dim("─" * 3 + title + "─" * max(3, width - 3 - len(title))), file=out)
                print(draw(body, st, width), file=out)
                print(file=out)
    if shown == 0:
        what = f"no alerting rule named {rule!r}" if rule else "no alerting rules"
        print(f"notify-preview: {what} in {path}", file=sys.stderr)
        return 1
    return 0


@dataclass(frozen=True)
class _Pause:
    until: float
    reason: str
    by: str


def run_cli(args: argparse.Namespace) -> int:
    """Entry point for `watchdog notify-preview` (arguments defined in watchdog.cli)."""
    dry = os.environ.get("WATCHDOG_DRY_RUN", "").strip().lower() in ("1", "true", "yes", "on")
    return run(args.rulefile, rule=args.rule, labels=args.label, value=args.value,
               state=args.state, fmt=args.format, color=args.color,
               external_url=args.external_url or os.environ.get("WATCHDOG_EXTERNAL_URL", ""),
               dry_run=dry or args.dry_run, paused_for=args.paused_for,
               paused_reason=args.paused_reason or "", paused_by=args.paused_by or "")
