"""scripts/lint-deploy.sh's rules for the HA overlay (deploy/overlays/ha): the overlay renders
with the built-in renderer exactly as the committed files say and passes, and each way of
breaking what several replicas on PostgreSQL need is refused with its own line — while the
SQLite base is still held to one replica with Recreate.

The checks are the Python embedded in the script (extracted here, as the script writes it to
a temporary file), run on rendered and then mutated manifests; no cluster, no kubectl.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "lint-deploy.sh"


@pytest.fixture(scope="module")
def checks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = SCRIPT.read_text()
    m = re.search(r"cat >\"\$TMP/lint_deploy.py\" <<'PY'\n(.*?)\nPY\n", text, re.S)
    assert m, "the embedded checks were not found in scripts/lint-deploy.sh"
    path = tmp_path_factory.mktemp("lint") / "lint_deploy.py"
    path.write_text(m.group(1))
    return path


def run(checks: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(checks), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)


def render(checks: Path, folder: str, out: Path) -> list[dict[str, Any]]:
    r = run(checks, "render", folder, str(out))
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(out.read_text()) if d]


def policy(checks: Path, docs: list[dict[str, Any]], tmp_path: Path) -> list[str]:
    path = tmp_path / "mutated.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    r = run(checks, "policy", "mutated", str(path))
    fails = [line for line in r.stderr.splitlines() if line.startswith("FAIL:")]
    assert (r.returncode != 0) == bool(fails), r.stderr
    return fails


def deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "Deployment")


def env(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    c = deployment(docs)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e for e in c["env"]}


def test_the_overlay_renders_as_an_ha_deployment_and_passes(checks: Path,
                                                            tmp_path: Path) -> None:
    docs = render(checks, "deploy/overlays/ha", tmp_path / "ha.yaml")
    kinds = sorted(d["kind"] for d in docs)
    assert "PodDisruptionBudget" in kinds and "PersistentVolumeClaim" not in kinds
    dep = deployment(docs)
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate",
                                       "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    e = env(docs)
    assert e["WATCHDOG_STATE_URL"] == {"name": "WATCHDOG_STATE_URL", "valueFrom": {
        "secretKeyRef": {"name": "metrics-watchdog-postgres", "key": "state-url"}}}
    assert e["WATCHDOG_REPLICA_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "WATCHDOG_LEASE_TTL" in e
    pod = dep["spec"]["template"]["spec"]
    assert "state" not in {v["name"] for v in pod["volumes"]}
    assert "/var/lib/watchdog" not in {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert policy(checks, docs, tmp_path) == []


def _set_env(name: str, value: dict[str, Any]) -> Callable[[list[dict[str, Any]]], None]:
    def f(docs: list[dict[str, Any]]) -> None:
        c = deployment(docs)["spec"]["template"]["spec"]["containers"][0]
        c["env"] = [e for e in c["env"] if e["name"] != name] + ([{"name": name, **value}]
                                                                  if value else [])
    return f


def _spec(**kv: Any) -> Callable[[list[dict[str, Any]]], None]:
    def f(docs: list[dict[str, Any]]) -> None:
        deployment(docs)["spec"].update(kv)
    return f


def _pdb(docs: list[dict[str, Any]], **spec: Any) -> None:
    pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    pdb["spec"] = {"selector": pdb["spec"]["selector"], **spec}


MUTATIONS: dict[str, tuple[Callable[[list[dict[str, Any]]], None], str]] = {
    "one replica": (_spec(replicas=1), "at least 2 replicas"),
    "Recreate": (_spec(strategy={"type": "Recreate"}), "strategy must be RollingUpdate"),
    "maxUnavailable 1": (_spec(strategy={"type": "RollingUpdate", "rollingUpdate": {
        "maxUnavailable": 1, "maxSurge": 1}}), "maxUnavailable must be 0"),
    "no PDB": (lambda docs: docs.remove(next(d for d in docs
                                             if d["kind"] == "PodDisruptionBudget")),
               "no PodDisruptionBudget selects its Pods"),
    "PDB blocks drains": (lambda docs: _pdb(docs, minAvailable=2), "minAvailable must be"),
    "PDB maxUnavailable 0": (lambda docs: _pdb(docs, maxUnavailable=0), "blocks every drain"),
    "state URL literal": (_set_env("WATCHDOG_STATE_URL", {
        "value": "postgresql://watchdog:pw@db:5432/watchdog"}), "must come from a secretKeyRef"),
    "state URL SQLite": (_set_env("WATCHDOG_STATE_URL", {
        "value": "sqlite:////var/lib/watchdog/state.db"}), "need PostgreSQL, not SQLite"),
    "replica id a literal": (_set_env("WATCHDOG_REPLICA_ID", {"value": "r1"}),
                             "WATCHDOG_REPLICA_ID must be the Pod's name"),
    "no lease TTL": (_set_env("WATCHDOG_LEASE_TTL", {}), "WATCHDOG_LEASE_TTL not set"),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_each_broken_ha_rule_is_refused(checks: Path, tmp_path: Path, name: str) -> None:
    docs = render(checks, "deploy/overlays/ha", tmp_path / "ha.yaml")
    mutate, expected = MUTATIONS[name]
    mutated = copy.deepcopy(docs)
    mutate(mutated)
    fails = policy(checks, mutated, tmp_path)
    assert any(expected in f for f in fails), fails


def test_the_sqlite_base_keeps_one_replica_and_recreate(checks: Path, tmp_path: Path) -> None:
    docs = render(checks, "deploy/base", tmp_path / "base.yaml")
    assert policy(checks, docs, tmp_path) == []
    two = copy.deepcopy(docs)
    deployment(two)["spec"]["replicas"] = 2  # two writers on one SQLite file
    fails = policy(checks, two, tmp_path)
    assert any("need PostgreSQL, not SQLite" in f for f in fails), fails
    rolling = copy.deepcopy(docs)
    deployment(rolling)["spec"]["strategy"] = {"type": "RollingUpdate"}
    assert any("strategy must be Recreate" in f for f in policy(checks, rolling, tmp_path))
