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

from watchdog.model import (
    Action,
    AlertingRule,
    Group,
    InhibitRule,
    Receiver,
    Route,
    RuleFileModel,
)
from watchdog.rulefile import ParsedFile, Problem, parse_rule_file

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
            out[str(f)] = f.read_bytes()
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


def build(raw: Mapping[str, bytes | OSError], previous: RuleSet | None = None) -> RuleSet:
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
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            parsed[name] = ParsedFile(name, None, [Problem(name, 1, f"not UTF-8: {e}")])
            continue
        parsed[name] = parse_rule_file(text, name)

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
    for name, pf in parsed.items():
        if pf.ok and pf.model is not None and not extra[name]:
            extra[name].extend(_reference_problems(pf, known_actions, known_receivers))

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


def _reference_problems(pf: ParsedFile, actions: set[str], receivers: set[str]
                        ) -> list[Problem]:
    assert pf.model is not None
    out: list[Problem] = []
    for gi, g in enumerate(pf.model.groups):
        for ri, r in enumerate(g.rules):
            if not isinstance(r, AlertingRule):
                continue
            for ai, a in enumerate(r.actions):
                if a not in actions:
                    line = pf.line_of(("groups", gi, "rules", ri, "actions", ai))
                    out.append(Problem(pf.name, line,
                                       f"rule {r.alert!r} refers to undefined action {a!r}"))
    for i, route in enumerate(pf.model.routes):
        for j, recv in enumerate(route.receivers):
            if recv not in receivers:
                out.append(Problem(pf.name, pf.line_of(("routes", i, "receivers", j)),
                                   f"route refers to undefined receiver {recv!r}"))
        for k, esc in enumerate(route.escalate):
            for j, recv in enumerate(esc.receivers):
                if recv not in receivers:
                    out.append(Problem(
                        pf.name, pf.line_of(("routes", i, "escalate", k, "receivers", j)),
                        f"escalation refers to undefined receiver {recv!r}"))
    return out
