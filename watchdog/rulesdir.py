"""The rules folder: every `*.yml`/`*.yaml` below a directory, loaded into one `RuleSet`.

Shell: reads files. Per-file validation is `watchdog.rulefile`'s; here are the checks that need the
whole folder (action and receiver names unique across it, references to actions and receivers
resolve) and the reload rule: a file that fails is rejected whole, and its last good version, if
any, keeps running. Group names are unique per file, as in Prometheus, which keys groups by
(file, name); real rule folders reuse group names across files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchdog.model import (
    Action,
    Group,
    InhibitRule,
    Receiver,
    Route,
    RuleFileModel,
)
from watchdog.rulefile import MAX_FILE_BYTES, ParsedFile, Path_, Problem, parse_rule_file

SUFFIXES = (".yml", ".yaml")


@dataclass(frozen=True)
class FileStatus:
    path: str
    digest: str
    ok: bool
    problems: tuple[Problem, ...]
    running_previous: bool = False  # rejected now, its last good version still runs


@dataclass
class RuleSet:
    files: dict[str, ParsedFile] = field(default_factory=dict)  # accepted (possibly previous)
    status: dict[str, FileStatus] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)  # of the accepted versions

    def groups(self) -> list[tuple[str, Group]]:
        return [(name, g) for name, pf in sorted(self.files.items())
                if pf.model is not None for g in pf.model.groups]

    @property
    def actions(self) -> dict[str, Action]:
        return {k: v for pf in self._models() for k, v in pf.actions.items()}

    @property
    def receivers(self) -> dict[str, Receiver]:
        return {r.name: r for pf in self._models() for r in pf.receivers}

    @property
    def routes(self) -> list[Route]:
        return [r for pf in self._models() for r in pf.routes]

    @property
    def inhibit_rules(self) -> list[InhibitRule]:
        return [r for pf in self._models() for r in pf.inhibit_rules]

    def _models(self) -> list[RuleFileModel]:
        return [pf.model for _, pf in sorted(self.files.items()) if pf.model is not None]

    @property
    def problems(self) -> list[Problem]:
        return [p for st in self.status.values() for p in st.problems]

    @property
    def rejected(self) -> list[FileStatus]:
        return [st for st in self.status.values() if not st.ok]


def discover(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*")
                              if f.suffix in SUFFIXES and f.is_file()
                              and not any(part.startswith(".") for part in f.relative_to(p).parts)))
        else:
            out.append(p)
    return out


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_files(paths: Iterable[Path]) -> dict[str, bytes | OSError]:
    out: dict[str, bytes | OSError] = {}
    for f in discover(paths):
        try:
            with f.open("rb") as fh:
                # One byte past the limit is enough to refuse it: a 10 GB file in the folder
                # costs 4 MB, not 10 GB.
                out[str(f)] = fh.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            out[str(f)] = e
    return out


def folder_digest(paths: Iterable[Path]) -> str:
    """A hash over names and contents: cheap change detection for the reload poller."""
    return digest_of(read_files(paths))


def digest_of(raw: Mapping[str, bytes | OSError]) -> str:
    """`folder_digest` of files already read (so a reload reads the folder once)."""
    h = hashlib.sha256()
    for name, data in sorted(raw.items()):
        h.update(name.encode() + b"\0")
        h.update(data if isinstance(data, bytes) else str(data).encode())
    return h.hexdigest()


def load(paths: Iterable[Path], previous: RuleSet | None = None) -> RuleSet:
    """Load the folder; keep the last good version of a file that now fails."""
    raw = read_files(paths)
    return build(raw, previous)


def _parse(name: str, data: bytes) -> ParsedFile:
    """One file's bytes, checked. Never raises: a file that broke the checker itself must not
    stop the folder from loading (the reload would freeze on it), so it is rejected with a
    message like any other bad file."""
    if len(data) > MAX_FILE_BYTES:
        return ParsedFile(name, None, [Problem(
            name, 1, f"file too large: more than {MAX_FILE_BYTES:,} bytes (the limit; split it "
                     "into several files)")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return ParsedFile(name, None, [Problem(
            name, line, f"not UTF-8: byte 0x{data[e.start]:02x} ({e.reason})")])
    try:
        return parse_rule_file(text, name)
    except Exception as e:  # a bug of ours, never the author's: say so, keep the rest loading
        return ParsedFile(name, None, [Problem(
            name, 1, f"internal error while checking this file ({type(e).__name__}: {e}); "
                     "please report it")])


def build(raw: Mapping[str, bytes | OSError], previous: RuleSet | None = None) -> RuleSet:
    """The folder's rule set from its files' contents. Never raises, whatever the contents."""
    parsed: dict[str, ParsedFile] = {}
    digests: dict[str, str] = {}
    for name, data in sorted(raw.items()):
        if isinstance(data, OSError):
            parsed[name] = ParsedFile(name, None, [Problem(name, 1,
                                                           f"cannot read: {data.strerror}")])
            digests[name] = ""
            continue
        digests[name] = _digest(data)
        if previous is not None and previous.digests.get(name) == digests[name]:
            parsed[name] = previous.files[name]  # unchanged: skip re-parsing
            continue
        parsed[name] = _parse(name, data)

    # Cross-file checks run over the files that passed on their own, in name order, so the
    # first definition wins and the later file is the one rejected.
    extra: dict[str, list[Problem]] = {n: [] for n in parsed}
    action_owner: dict[str, str] = {}
    receiver_owner: dict[str, str] = {}
    for name, pf in parsed.items():
        if not pf.ok or pf.model is None:
            continue
        for a in pf.model.actions:
            if a in action_owner:
                extra[name].append(Problem(name, pf.line_of(("actions", a)),
                                           f"action {a!r} is already defined in {action_owner[a]}"))
        for i, r in enumerate(pf.model.receivers):
            if r.name in receiver_owner and receiver_owner[r.name] != name:
                extra[name].append(Problem(
                    name, pf.line_of(("receivers", i, "name")),
                    f"receiver {r.name!r} is already defined in {receiver_owner[r.name]}"))
        if not extra[name]:
            for a in pf.model.actions:
                action_owner.setdefault(a, name)
            for r in pf.model.receivers:
                receiver_owner.setdefault(r.name, name)

    # Names defined by files we keep running (new good versions, or previous good ones).
    def keeps(name: str) -> ParsedFile | None:
        pf = parsed[name]
        if pf.ok and not extra[name]:
            return pf
        if previous is not None and name in previous.files:
            return previous.files[name]
        return None

    known_actions = set(action_owner)
    known_receivers = set(receiver_owner)
    for name in parsed:
        kept = keeps(name)
        if kept is not None and kept is not parsed[name] and kept.model is not None:
            known_actions.update(kept.model.actions)
            known_receivers.update(r.name for r in kept.model.receivers)
    clashing = {name for name, problems in extra.items() if problems}
    for name, pf in parsed.items():
        if pf.ok and pf.model is not None and name not in clashing:
            extra[name].extend(_reference_problems(pf, known_actions, known_receivers))

    # A file rejected on its own gets the cross-file checks too, so that `watchdog check` says
    # everything wrong with it in one run. Its references are checked against every name
    # defined anywhere in the folder: a name defined only in another broken file is that
    # file's problem, not a second one here.
    defined_actions = known_actions.union(*(_actions_of(pf.data) for pf in parsed.values()))
    defined_receivers = known_receivers.union(*(_receivers_of(pf.data)
                                                for pf in parsed.values()))
    for name, pf in parsed.items():
        if pf.ok:
            if name in clashing:  # rejected for a name another file defines: references too
                extra[name].extend(_reference_problems(pf, defined_actions, defined_receivers))
            continue
        for a in _actions_of(pf.data):
            if action_owner.get(a, name) != name:
                extra[name].append(Problem(name, pf.line_of(("actions", a)),
                                           f"action {a!r} is already defined in {action_owner[a]}"))
        for i, r in _items(pf.data.get("receivers") if isinstance(pf.data, dict) else None):
            rname = r.get("name") if isinstance(r, dict) else None
            if isinstance(rname, str) and receiver_owner.get(rname, name) != name:
                extra[name].append(Problem(
                    name, pf.line_of(("receivers", i, "name")),
                    f"receiver {rname!r} is already defined in {receiver_owner[rname]}"))
        extra[name].extend(_reference_problems(pf, defined_actions, defined_receivers))

    rs = RuleSet()
    for name, pf in parsed.items():
        problems = tuple(sorted(pf.problems + extra[name], key=lambda p: p.line))
        ok = pf.ok and not extra[name]
        if ok:
            rs.files[name] = pf
            rs.digests[name] = digests[name]
            rs.status[name] = FileStatus(name, digests[name], True, problems)
        else:
            prev_ok = previous is not None and name in previous.files
            if prev_ok:
                assert previous is not None
                rs.files[name] = previous.files[name]
                rs.digests[name] = previous.digests[name]
            rs.status[name] = FileStatus(name, digests[name], False, problems, prev_ok)
    return rs


def _items(value: object) -> list[tuple[int, Any]]:
    return list(enumerate(value)) if isinstance(value, list) else []


def _actions_of(data: object) -> set[str]:
    actions = data.get("actions") if isinstance(data, dict) else None
    return {a for a in actions if isinstance(a, str)} if isinstance(actions, dict) else set()


def _receivers_of(data: object) -> set[str]:
    receivers = data.get("receivers") if isinstance(data, dict) else None
    return {r["name"] for _, r in _items(receivers)
            if isinstance(r, dict) and isinstance(r.get("name"), str)}


def _rule_action_refs(rule: dict[Any, Any], rpath: Path_) -> list[tuple[Path_, str]]:
    """Every action name a rule refers to, with where: `actions` as a list or a map by tier,
    and `on_resolved`."""
    out: list[tuple[Path_, str]] = []
    acts = rule.get("actions")
    if isinstance(acts, dict):
        for tier, names in acts.items():
            out += [((*rpath, "actions", tier, i), a) for i, a in _items(names)
                    if isinstance(a, str)]
    else:
        out += [((*rpath, "actions", i), a) for i, a in _items(acts) if isinstance(a, str)]
    out += [((*rpath, "on_resolved", i), a) for i, a in _items(rule.get("on_resolved"))
            if isinstance(a, str)]
    return out


def _reference_problems(pf: ParsedFile, actions: set[str], receivers: set[str]
                        ) -> list[Problem]:
    """Names a file uses that nothing defines, read from the document as loaded (so a file
    that failed its own checks is checked as well)."""
    data = pf.data if isinstance(pf.data, dict) else {}
    out: list[Problem] = []
    for gi, g in _items(data.get("groups")):
        for ri, r in _items(g.get("rules") if isinstance(g, dict) else None):
            if not isinstance(r, dict) or ("record" in r and "alert" not in r):
                continue
            rpath: Path_ = ("groups", gi, "rules", ri)
            for path, a in _rule_action_refs(r, rpath):
                if a not in actions:
                    out.append(Problem(pf.name, pf.line_of(path),
                                       f"rule {r.get('alert')!r} refers to undefined action "
                                       f"{a!r}"))
    for aname, spec in (data.get("actions") or {}).items() if isinstance(
            data.get("actions"), dict) else ():
        for key in ("on_not_helped", "on_failure"):
            esc = spec.get(key) if isinstance(spec, dict) else None
            nxt = esc.get("action") if isinstance(esc, dict) else None
            if isinstance(nxt, str) and nxt not in actions:
                out.append(Problem(pf.name, pf.line_of(("actions", aname, key, "action")),
                                   f"action {aname!r}: {key} refers to undefined action "
                                   f"{nxt!r}"))
    for i, route in _items(data.get("routes")):
        if not isinstance(route, dict):
            continue
        for j, recv in _items(route.get("receivers")):
            if isinstance(recv, str) and recv not in receivers:
                out.append(Problem(pf.name, pf.line_of(("routes", i, "receivers", j)),
                                   f"route refers to undefined receiver {recv!r}"))
        for k, esc in _items(route.get("escalate")):
            for j, recv in _items(esc.get("receivers") if isinstance(esc, dict) else None):
                if isinstance(recv, str) and recv not in receivers:
                    out.append(Problem(
                        pf.name, pf.line_of(("routes", i, "escalate", k, "receivers", j)),
                        f"escalation refers to undefined receiver {recv!r}"))
    return out
