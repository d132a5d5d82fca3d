"""Fidelity of `watchdog test` and `watchdog check` against promtool on the community's suites.

    python bench/fidelity.py [--corpus DIR] [--only SUBSTRING] [--timeout S] [--json FILE]

Runs `promtool test rules` and `watchdog test` on every promtool test file below the corpus
(default: shared/corpus/promtool-suites), and `promtool check rules` beside `watchdog check` on
every rule file, then prints agreement counts: files' exit codes, alert checks and expression
checks, and both tools' wall time. A check's status is read from each tool's output: `pass`,
`fail` (listed as failing), or `error` (its test group stopped before reaching it, e.g. a rule
evaluation error). To attribute every check to its test group without guessing, a file with more
than one test group is also run one group at a time (a copy with absolute `rule_files` in a
temporary directory); exit codes and times are those of the whole file.

The measurement logic is importable (`measure_file`, `check_rules`): tests/test_fidelity.py uses it
to require agreement file by file. It only runs the two tools and compares their output; it must
not know anything about particular files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from watchdog.durations import parse_duration

# ("alert", "<group name>/alertname", eval seconds) | ("expr", expr, eval seconds)
Key = tuple[str, str, float]


def default_corpus() -> Path:
    here = Path(__file__).resolve().parent.parent
    for base in (here.parent / "shared", here / "shared", Path("/work/shared")):
        if (base / "corpus" / "promtool-suites").is_dir():
            return base / "corpus" / "promtool-suites"
    return here.parent / "shared" / "corpus" / "promtool-suites"


def top_level_keys(path: Path) -> set[str]:
    """Top-level keys of a YAML file, without constructing its values (never fails loudly)."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        text = path.read_text(encoding="utf-8", errors="replace")
        return {m.group(1) for m in re.finditer(r"^([a-z_]+):", text, re.M)}
    if not isinstance(node, yaml.MappingNode):
        return set()
    return {k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def find_files(corpus: Path) -> tuple[list[Path], list[Path]]:
    """(test files, rule files) below the corpus, sorted."""
    tests, rules = [], []
    for p in sorted(corpus.rglob("*")):
        if p.suffix not in (".yml", ".yaml") or not p.is_file():
            continue
        keys = top_level_keys(p)
        if "tests" in keys:
            tests.append(p)
        elif "groups" in keys:
            rules.append(p)
    return tests, rules


# ---- running the tools ----------------------------------------------------------------------

@dataclass
class Run:
    rc: int  # -1: timed out
    output: str
    seconds: float  # wall time
    cpu: float = 0.0  # user + system time of the tool and its children (Prometheus included)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(argv: Sequence[str], cwd: Path, timeout: float) -> Run:
    started, cpu = time.monotonic(), _children_cpu()
    try:
        p = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                           check=False)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return Run(-1, out + "\n<timed out>", time.monotonic() - started,
                   _children_cpu() - cpu)
    return Run(p.returncode, p.stdout + p.stderr, time.monotonic() - started,
               _children_cpu() - cpu)


def promtool_test(path: Path, timeout: float) -> Run:
    return run(["promtool", "test", "rules", path.name], path.parent, timeout)


def watchdog_test(path: Path, timeout: float) -> Run:
    return run([sys.executable, "-m", "watchdog", "test", path.name], path.parent, timeout)


# ---- checks in a test file and their status in an output ------------------------------------

def _scalar(node: yaml.Node | None) -> str:
    return node.value if isinstance(node, yaml.ScalarNode) else ""


def _get(node: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


def _seconds(text: str) -> float:
    try:
        return parse_duration(text or "0")
    except ValueError:
        return -1.0


def group_checks(group: yaml.Node) -> list[Key]:
    out: list[Key] = []
    name = _scalar(_get(group, "name"))
    for kind, section, name_key in (("alert", "alert_rule_test", "alertname"),
                                    ("expr", "promql_expr_test", "expr")):
        items = _get(group, section)
        for item in items.value if isinstance(items, yaml.SequenceNode) else []:
            what = _scalar(_get(item, name_key))
            out.append((kind, f"{name}/{what}" if kind == "alert" else what,
                        _seconds(_scalar(_get(item, "eval_time")))))
    return out


_ALERT_FAIL = re.compile(r"^    alertname: (.*), time: (\S*), ?$")
_EXPR_FAIL = re.compile(r'^    expr: ("(?:[^"\\]|\\.)*"), time: ([^,\s]*),(?: err: .*)?$')


def _go_unquote(q: str) -> str:
    try:
        return str(json.loads(re.sub(r"\\x([0-9a-fA-F]{2})", r"\\u00\1", q)))
    except ValueError:
        return q[1:-1]


@dataclass
class Failures:
    failed: Counter[Key] = field(default_factory=Counter)
    other: bool = False  # an error that is not a check (load error, rule error, crash)


def parse_output(r: Run) -> Failures:
    f = Failures()
    if r.rc == 0:
        return f
    if r.rc < 0 or "FAILED:" not in r.output:
        f.other = True
        return f
    body = r.output.split("FAILED:", 1)[1]
    group = ""
    for line in body.splitlines():
        if line.startswith("    name: ") and line.endswith(","):
            group = line[len("    name: "):-1]
            continue
        if not line.strip() or line.startswith("        "):
            continue
        if m := _ALERT_FAIL.match(line):
            f.failed[("alert", f"{group}/{m.group(1)}", _seconds(m.group(2)))] += 1
            group = ""
        elif m := _EXPR_FAIL.match(line):
            f.failed[("expr", _go_unquote(m.group(1)), _seconds(m.group(2)))] += 1
        elif line.startswith("Unit Testing:"):
            continue
        else:
            f.other = True
    return f


def statuses(checks: Sequence[Key], f: Failures) -> list[str]:
    left = Counter(f.failed)
    out = []
    for k in checks:
        if left[k] > 0:
            left[k] -= 1
            out.append("fail")
        else:
            out.append("error" if f.other else "pass")
    return out


# ---- one file -------------------------------------------------------------------------------

@dataclass
class FileResult:
    file: str
    promtool_rc: int
    watchdog_rc: int
    promtool_seconds: float
    watchdog_seconds: float
    promtool_cpu: float = 0.0
    watchdog_cpu: float = 0.0
    alert_checks: int = 0
    alert_agree: int = 0
    expr_checks: int = 0
    expr_agree: int = 0
    disagreements: list[str] = field(default_factory=list)
    promtool_output: str = ""
    watchdog_output: str = ""

    @property
    def agrees(self) -> bool:
        return (self.promtool_rc == self.watchdog_rc and self.alert_agree == self.alert_checks
                and self.expr_agree == self.expr_checks)


def _split_groups(path: Path, tmp: Path) -> Iterator[tuple[Path, list[Key]]]:
    """Per test group: a copy of the file holding only that group, and its checks."""
    root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    tests = _get(root, "tests")
    if not isinstance(root, yaml.MappingNode) or not isinstance(tests, yaml.SequenceNode):
        return
    files = _get(root, "rule_files")
    if isinstance(files, yaml.SequenceNode):
        for item in files.value:
            if isinstance(item, yaml.ScalarNode) and not Path(item.value).is_absolute():
                item.value = str(path.parent / item.value)
                item.style = '"'
    groups = list(tests.value)
    for i, g in enumerate(groups):
        tests.value = [g]
        one = tmp / f"{path.stem}.group{i}{path.suffix}"
        one.write_text(yaml.serialize(root, Dumper=yaml.SafeDumper), encoding="utf-8")
        yield one, group_checks(g)
    tests.value = groups


def measure_file(path: Path, timeout: float = 600) -> FileResult:
    whole_p, whole_w = promtool_test(path, timeout), watchdog_test(path, timeout)
    res = FileResult(str(path), whole_p.rc, whole_w.rc, whole_p.seconds, whole_w.seconds,
                     whole_p.cpu, whole_w.cpu,
                     promtool_output=whole_p.output, watchdog_output=whole_w.output)
    if whole_p.rc != whole_w.rc:
        res.disagreements.append(f"exit code: promtool {whole_p.rc}, watchdog {whole_w.rc}")
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return res
    tests = _get(root, "tests")
    groups = tests.value if isinstance(tests, yaml.SequenceNode) else []
    with tempfile.TemporaryDirectory(prefix="fidelity-") as d:
        if len(groups) <= 1 or not (parse_output(whole_p).other or
                                    parse_output(whole_w).other):
            per_group = [(whole_p, whole_w, [c for g in groups for c in group_checks(g)])]
        else:
            per_group = [(promtool_test(one, timeout), watchdog_test(one, timeout), checks)
                         for one, checks in _split_groups(path, Path(d))]
        for gi, (p, w, checks) in enumerate(per_group):
            sp, sw = statuses(checks, parse_output(p)), statuses(checks, parse_output(w))
            for (kind, name, at), a, b in zip(checks, sp, sw, strict=True):
                if kind == "alert":
                    res.alert_checks += 1
                    res.alert_agree += a == b
                else:
                    res.expr_checks += 1
                    res.expr_agree += a == b
                if a != b:
                    res.disagreements.append(
                        f"group {gi}: {kind} {name!r} at {at:g}s: promtool {a}, watchdog {b}")
    return res


# ---- promtool's verdicts, recorded --------------------------------------------------------

def promtool_version() -> str:
    p = subprocess.run(["promtool", "--version"], capture_output=True, text=True, check=False)
    return (p.stdout or p.stderr).splitlines()[0] if (p.stdout or p.stderr) else "unknown"


def inputs_digest(corpus: Path, test_file: Path) -> str:
    """A digest of everything a test file's verdict depends on: the YAML files of its suite."""
    suite = corpus / test_file.relative_to(corpus).parts[0]
    h = hashlib.sha256()
    for f in sorted(suite.rglob("*")):
        if f.suffix in (".yml", ".yaml") and f.is_file():
            h.update(str(f.relative_to(corpus)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def record_oracle(corpus: Path, out: Path, timeout: float, only: str = "") -> None:
    """promtool's exit code and output for every test file (whose path contains `only`), with
    what they depend on; entries for other files already in `out` are kept."""
    version = promtool_version()
    tests, _ = find_files(corpus)
    entries: dict[str, Any] = {}
    if out.exists():
        old = json.loads(out.read_text())
        if old.get("promtool") == version:
            entries = old["files"]
    for t in (t for t in tests if only in str(t)):
        r = promtool_test(t, timeout)
        if r.rc < 0:
            raise SystemExit(f"{t}: promtool timed out after {timeout:g}s; try a longer --timeout")
        entries[str(t.relative_to(corpus))] = {
            "inputs_sha256": inputs_digest(corpus, t), "rc": r.rc, "output": r.output,
            "cpu_seconds": round(r.cpu, 1)}
        print(f"{t.relative_to(corpus)}: rc {r.rc}, {r.cpu:.1f}s cpu", flush=True)
    out.write_text(json.dumps({"promtool": version, "files": entries}, indent=1,
                              sort_keys=True) + "\n")


def check_rules(path: Path, timeout: float = 120) -> tuple[Run, Run]:
    return (run(["promtool", "check", "rules", str(path)], path.parent, timeout),
            run([sys.executable, "-m", "watchdog", "check", str(path)], path.parent, timeout))


# ---- report ---------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=default_corpus())
    ap.add_argument("--only", default="", help="only files whose path contains this")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per tool run")
    ap.add_argument("--json", type=Path, help="write every result here")
    ap.add_argument("-v", "--verbose", action="store_true", help="print disagreements")
    ap.add_argument("--record-oracle", type=Path, metavar="FILE",
                    help="only record promtool's verdicts into FILE (for the test suite)")
    args = ap.parse_args(argv)
    if args.record_oracle:
        record_oracle(args.corpus, args.record_oracle, args.timeout, args.only)
        return 0
    tests, rules = find_files(args.corpus)
    tests = [t for t in tests if args.only in str(t)]
    rules = [r for r in rules if args.only in str(r)]
    results: list[FileResult] = []
    for t in tests:
        r = measure_file(t, args.timeout)
        results.append(r)
        print(f"{'ok  ' if r.agrees else 'DIFF'} {t.relative_to(args.corpus)}: "
              f"rc {r.promtool_rc}/{r.watchdog_rc}, alerts {r.alert_agree}/{r.alert_checks}, "
              f"exprs {r.expr_agree}/{r.expr_checks}, "
              f"wall {r.promtool_seconds:.1f}s/{r.watchdog_seconds:.1f}s, "
              f"cpu {r.promtool_cpu:.1f}s/{r.watchdog_cpu:.1f}s", flush=True)
        if args.verbose:
            for d in r.disagreements:
                print(f"       {d}")
    check_agree = 0
    check_rows: list[dict[str, Any]] = []
    for f in rules:
        p, w = check_rules(f)
        ok = (p.rc == 0) == (w.rc == 0)
        check_agree += ok
        check_rows.append({"file": str(f), "promtool_rc": p.rc, "watchdog_rc": w.rc,
                           "promtool": p.output, "watchdog": w.output})
        if not ok or args.verbose:
            print(f"{'ok  ' if ok else 'DIFF'} check {f.relative_to(args.corpus)}: "
                  f"rc {p.rc}/{w.rc}")
    n = len(results)
    print()
    print(f"test files, exit codes agree: {sum(r.promtool_rc == r.watchdog_rc for r in results)}"
          f"/{n}; files agreeing on everything: {sum(r.agrees for r in results)}/{n}")
    print(f"alert checks agree: {sum(r.alert_agree for r in results)}/"
          f"{sum(r.alert_checks for r in results)}")
    print(f"expr checks agree: {sum(r.expr_agree for r in results)}/"
          f"{sum(r.expr_checks for r in results)}")
    print(f"check rules agree: {check_agree}/{len(rules)}")
    print(f"wall time, test files: promtool {sum(r.promtool_seconds for r in results):.1f}s, "
          f"watchdog {sum(r.watchdog_seconds for r in results):.1f}s; cpu time (with "
          f"children): promtool {sum(r.promtool_cpu for r in results):.1f}s, "
          f"watchdog {sum(r.watchdog_cpu for r in results):.1f}s")
    if args.json:
        args.json.write_text(json.dumps({"tests": [asdict(r) for r in results],
                                         "check": check_rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
