"""The `kubernetes` step: `rollout_undo`, `scale` and `set_image` on a Deployment, each sending what
the matching kubectl command sends, so the API server, audit logs and admission webhooks see a
familiar request.

- `rollout_undo` follows kubectl's DeploymentRollbacker (kubectl/pkg/polymorphichelpers/
  rollback.go): get the Deployment; list the ReplicaSets its selector matches and that it
  controls; the target is the one with the second-highest `deployment.kubernetes.io/revision`
  (or `to_revision`); "no rollout history found" when there is none; a paused Deployment is
  refused; when the target's pod template already equals the Deployment's (ignoring the
  pod-template-hash label) nothing is sent ("skipped rollback"); otherwise one JSON patch that
  replaces `/spec/template` with the target's template (hash label removed) and
  `/metadata/annotations` with kubectl's merge of both objects' annotations.
- `scale`: a merge patch `{"spec":{"replicas":N}}` on the `scale` subresource (kubectl scale).
- `set_image`: the strategic merge patch kubectl set image computes for one container.

Shell: API calls through `watchdog.actions.kube`. The pure parts (`undo_target`, `undo_patch`,
`equal_ignore_hash`, `selector_string`) do no I/O so they can be checked on their own. It must
not retry a PATCH: a rollback that half-happened is reported, never repeated blindly.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from watchdog.actions.expand import Subject
from watchdog.actions.kube import KubeClient, KubeError
from watchdog.actions.steps import StepEnv, StepResult
from watchdog.model import KubernetesStep, RolloutUndo, Scale, SetImage

REVISION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"  # appsv1.DefaultDeploymentUniqueLabelKey
# kubectl's annotationsToSkip: kept from the Deployment, never copied from the ReplicaSet.
ANNOTATIONS_TO_SKIP = frozenset({
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
})


class UndoRefused(Exception):
    """kubectl would stop with this error, before sending anything."""


def selector_string(selector: Mapping[str, Any] | None) -> str:
    """metav1.LabelSelectorAsSelector(...).String(): requirements sorted by key."""
    if not selector:
        return ""
    reqs: list[tuple[str, str]] = []
    for k, v in (selector.get("matchLabels") or {}).items():
        reqs.append((k, f"{k}={v}"))
    for expr in selector.get("matchExpressions") or []:
        key, op = expr.get("key", ""), expr.get("operator", "")
        values = ",".join(sorted(expr.get("values") or []))
        text = {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})",
                "Exists": key, "DoesNotExist": f"!{key}"}.get(op)
        if text is None:
            raise UndoRefused(f"unsupported selector operator {op!r}")
        reqs.append((key, text))
    return ",".join(t for _, t in sorted(reqs, key=lambda r: r[0]))


def controlled_by(rs: Mapping[str, Any], deployment: Mapping[str, Any]) -> bool:
    uid = (deployment.get("metadata") or {}).get("uid")
    return any(ref.get("controller") and ref.get("uid") == uid
               for ref in (rs.get("metadata") or {}).get("ownerReferences") or [])


def revision(obj: Mapping[str, Any]) -> int | None:
    """deploymentutil.Revision: a missing annotation is revision 0; garbage is skipped."""
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(REVISION)
    if value is None:
        return 0
    try:
        return int(value)
    except ValueError:
        return None


def _semantic(value: Any) -> Any:
    # apimachinery's Semantic.DeepEqual treats nil and empty maps/slices alike, and a zero
    # struct serialises as {} or is omitted; dropping empty values makes JSON compare the same.
    if isinstance(value, dict):
        out = {k: _semantic(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_semantic(v) for v in value]
    return value


def _without_hash(template: Mapping[str, Any]) -> dict[str, Any]:
    t = copy.deepcopy(dict(template))
    meta = t.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("labels"), dict):
        meta["labels"].pop(HASH_LABEL, None)
        if not meta["labels"]:
            del meta["labels"]  # Go's omitempty on an emptied map
    return t


def equal_ignore_hash(t1: Mapping[str, Any], t2: Mapping[str, Any]) -> bool:
    return bool(_semantic(_without_hash(t1)) == _semantic(_without_hash(t2)))


def undo_target(deployment: Mapping[str, Any], replicasets: Sequence[Mapping[str, Any]],
                to_revision: int | None = None) -> Mapping[str, Any]:
    """kubectl's deploymentRevision: the ReplicaSet to roll back to."""
    name = (deployment.get("metadata") or {}).get("name", "")
    owned = [rs for rs in replicasets if controlled_by(rs, deployment)]
    latest: tuple[int, Mapping[str, Any] | None] = (-1, None)
    previous: tuple[int, Mapping[str, Any] | None] = (-1, None)
    for rs in owned:
        v = revision(rs)
        if v is None:
            continue
        if to_revision:
            if v == to_revision:
                return rs
            continue
        if latest[0] < v:
            previous, latest = latest, (v, rs)
        elif previous[0] < v:
            previous = (v, rs)
    if to_revision:
        raise UndoRefused(f"unable to find specified revision {to_revision} in history")
    if previous[1] is None:
        raise UndoRefused(f'no rollout history found for deployment "{name}"')
    return previous[1]


def undo_patch(deployment: Mapping[str, Any], target: Mapping[str, Any]) -> list[dict[str, Any]]:
    """kubectl's getDeploymentPatch, with its annotation merge."""
    template = _without_hash((target.get("spec") or {}).get("template") or {})
    dep_ann = (deployment.get("metadata") or {}).get("annotations") or {}
    rs_ann = (target.get("metadata") or {}).get("annotations") or {}
    annotations = {k: v for k, v in dep_ann.items() if k in ANNOTATIONS_TO_SKIP}
    annotations.update({k: v for k, v in rs_ann.items() if k not in ANNOTATIONS_TO_SKIP})
    return [
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "replace", "path": "/metadata/annotations", "value": annotations},
    ]


async def rollout_undo(client: KubeClient, cfg: RolloutUndo) -> StepResult:
    what = f"rollout undo deployment/{cfg.deployment} -n {cfg.namespace}"
    deployment = await client.get_deployment(cfg.namespace, cfg.deployment)
    selector = selector_string((deployment.get("spec") or {}).get("selector"))
    replicasets = await client.list_replicasets(cfg.namespace, selector)
    try:
        target = undo_target(deployment, replicasets, cfg.to_revision)
    except UndoRefused as e:
        return StepResult(False, f"{what}: {e}")
    spec = deployment.get("spec") or {}
    if spec.get("paused"):
        return StepResult(False, f"{what}: you cannot rollback a paused deployment; resume it "
                                 f"first with 'kubectl rollout resume deployment/"
                                 f"{cfg.deployment}' and try again")
    rev = revision(target)
    if equal_ignore_hash((target.get("spec") or {}).get("template") or {},
                         spec.get("template") or {}):
        return StepResult(True, f"{what}: skipped rollback (current template already matches "
                                f"revision {rev})")
    patch = undo_patch(deployment, target)
    await client.patch_deployment(cfg.namespace, cfg.deployment, patch, KubeClient.JSON_PATCH)
    return StepResult(True, f"{what}: rolled back to revision {rev}")


async def scale(client: KubeClient, cfg: Scale) -> StepResult:
    what = f"scale deployment/{cfg.deployment} -n {cfg.namespace} --replicas={cfg.replicas}"
    await client.patch_deployment(cfg.namespace, cfg.deployment,
                                  {"spec": {"replicas": cfg.replicas}}, KubeClient.MERGE_PATCH,
                                  subresource="scale")
    return StepResult(True, f"{what}: scaled")


async def set_image(client: KubeClient, cfg: SetImage) -> StepResult:
    what = (f"set image deployment/{cfg.deployment} {cfg.container}={cfg.image} "
            f"-n {cfg.namespace}")
    deployment = await client.get_deployment(cfg.namespace, cfg.deployment)
    pod = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    for field in ("containers", "initContainers"):
        containers = pod.get(field) or []
        for c in containers:
            if c.get("name") != cfg.container:
                continue
            if c.get("image") == cfg.image:
                return StepResult(True, f"{what}: image already set")
            # What kubectl's two-way strategic merge patch comes to for one changed image.
            patch = {"spec": {"template": {"spec": {
                f"$setElementOrder/{field}": [{"name": x.get("name")} for x in containers],
                field: [{"image": cfg.image, "name": cfg.container}],
            }}}}
            await client.patch_deployment(cfg.namespace, cfg.deployment, patch,
                                          KubeClient.STRATEGIC_MERGE_PATCH)
            return StepResult(True, f"{what}: image updated")
    return StepResult(False, f"{what}: unable to find container named {cfg.container!r}")


async def run(step: KubernetesStep, subject: Subject, env: StepEnv) -> StepResult:
    del subject  # the target is configuration, never taken from alert labels
    if env.kube is None:
        return StepResult(False, "kubernetes is not configured")
    try:
        client = env.kube()
        if step.rollout_undo is not None:
            return await rollout_undo(client, step.rollout_undo)
        if step.scale is not None:
            return await scale(client, step.scale)
        assert step.set_image is not None
        return await set_image(client, step.set_image)
    except (KubeError, UndoRefused) as e:
        return StepResult(False, str(e))
