"""`watchdog test` and `watchdog check` agree with promtool on the community's own suites.

Every test file of shared/corpus/promtool-suites (promtool's fixtures, the docs example,
kubernetes-mixin, the etcd mixin, Thanos) goes through our `run_test_file`; its exit code, the
checks it reports as failing and whether it stopped on another error (a load error, a rule
evaluation error) must be promtool 2.42's, file by file, so that a class of fidelity that
regresses fails here. promtool's verdicts come from tests/data/promtool-suites-oracle.json
(recorded by `python bench/fidelity.py --record-oracle`) when the installed promtool and the
suite's files are the ones recorded — the kubernetes-mixin file alone costs promtool two CPU
minutes — and from running promtool otherwise. Every rule file goes through `watchdog check`
beside `promtool check rules`. bench/fidelity.py prints the same comparison check by check.

Without the corpus these tests fail when the CI environment variable is set, else skip.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from watchdog.promtest import run_test_file
from watchdog.rulesdir import load

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("WATCHDOG_PROMTOOL_SUITES",
                             ROOT.parent / "shared/corpus/promtool-suites"))
ORACLE = Path(__file__).parent / "data" / "promtool-suites-oracle.json"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fidelity_bench", ROOT / "bench/fidelity.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fidelity_bench"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bench = _bench()
TESTS, RULES = bench.find_files(CORPUS) if CORPUS.is_dir() else ([], [])


def _require_corpus() -> None:
    if not CORPUS.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"the promtool suites are missing: {CORPUS}")
        pytest.skip(f"no corpus at {CORPUS}")


@pytest.fixture(scope="module")
def oracle() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ORACLE.read_text())
    if data["promtool"] != bench.promtool_version():
        data["files"] = {}  # another promtool: ask it
    return data


def test_corpus_is_there() -> None:
    _require_corpus()
    assert len(TESTS) >= 20 and len(RULES) >= 10


@pytest.mark.parametrize("path", TESTS, ids=[str(p.relative_to(CORPUS)) for p in TESTS])
async def test_watchdog_test_agrees_with_promtool(path: Path, oracle: dict[str, Any],
                                                  prometheus_binary: str,
                                                  promtool_binary: str) -> None:
    rel = str(path.relative_to(CORPUS))
    entry = oracle["files"].get(rel)
    if entry is not None and entry["inputs_sha256"] == bench.inputs_digest(CORPUS, path):
        theirs = bench.Run(entry["rc"], entry["output"], 0.0)
    else:
        theirs = bench.promtool_test(path, 600)
    passed, errors = await run_test_file(path)
    text = f"Unit Testing:  {path.name}\n" + (
        "  SUCCESS\n" if passed else "  FAILED:\n" + "\n\n".join(errors) + "\n")
    ours = bench.Run(0 if passed else 1, text, 0.0)
    p, w = bench.parse_output(theirs), bench.parse_output(ours)
    assert (ours.rc, dict(w.failed), w.other) == (theirs.rc, dict(p.failed), p.other), (
        f"promtool:\n{theirs.output}\nwatchdog:\n{text}")


@pytest.mark.parametrize("path", RULES, ids=[str(p.relative_to(CORPUS)) for p in RULES])
def test_watchdog_check_agrees_with_promtool(path: Path, promtool_binary: str) -> None:
    theirs = bench.run([promtool_binary, "check", "rules", str(path)], path.parent, 120)
    rs = load([path])
    problems = [str(p) for p in rs.problems if not p.warning]
    assert (not rs.rejected) == (theirs.rc == 0), (theirs.output, problems)
