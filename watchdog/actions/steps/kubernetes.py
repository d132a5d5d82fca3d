"""The `kubernetes` step: `rollout_undo`, `scale` and `set_image` on a Deployment, `rollout_abort`
and `rollout_undo` of an Argo Rollouts `Rollout`, and `canary_rollback` of a Flagger `Canary`,
each sending what the matching command sends, so the API server, audit logs and admission
webhooks see a familiar request.

- `rollout_undo` of a Deployment follows kubectl's DeploymentRollbacker (kubectl/pkg/
  polymorphichelpers/rollback.go): get the Deployment; list the ReplicaSets its selector matches
  and that it controls; the target is the one with the second-highest
  `deployment.kubernetes.io/revision` (or `to_revision`); "no rollout history found" when there
  is none; a paused Deployment is refused; when the target's pod template already equals the
  Deployment's (ignoring the pod-template-hash label) nothing is sent ("skipped rollback");
  otherwise one JSON patch that replaces `/spec/template` with the target's template (hash label
  removed) and `/metadata/annotations` with kubectl's merge of both objects' annotations.
- `rollout_undo` of a Rollout is `kubectl argo rollouts undo` (pkg/kubectl-argo-rollouts/cmd/
  undo): the same search over `rollout.argoproj.io/revision` and the
  `rollouts-pod-template-hash` label, and one JSON patch replacing `/spec/template` only. Its
  guard after promotion (argo-rollouts#1978): a Rollout whose stable ReplicaSet is its current one
  (fully promoted) and that has been Completed/Healthy for longer than `stable_for_at_most`
  (default 1h) is refused — undoing a release that has been live that long is a person's call.
- `rollout_abort` is `kubectl argo rollouts abort`: the merge patch `{"status":{"abort":true}}`
  on the `status` subresource, and on the Rollout itself when the API has no such subresource
  (404), as the plugin does. A fully promoted Rollout has nothing to abort: nothing is sent.
- `canary_rollback` is `kubectl flagger rollback`: `{"name","namespace"}` POSTed to the canary's
  flagger-loadtester at `/rollback/open`, here through the API server's Service proxy, which
  Flagger's `rollback` webhook (`/rollback/check`) then sees. Refused unless the Canary is in
  analysis (Progressing, Waiting, WaitingPromotion — the phases Flagger runs rollback hooks in;
  after promotion there is nothing for Flagger to roll back, flagger#616) and has a `rollback`
  webhook pointing at that load tester.
- `scale`: a merge patch `{"spec":{"replicas":N}}` on the `scale` subresource (kubectl scale).
- `set_image`: the strategic merge patch kubectl set image computes for one container.

Shell: API calls through `watchdog.actions.kube`. The pure parts (`undo_target`, `undo_patch`,
`equal_ignore_hash`, `selector_string`, `promoted_since`, `rollback_hook`) do no I/O so they can
be checked on their own. Retrying is the runner's (`retry:`); a retried `rollout_undo` is safe
because the first try's target is pinned (`memo`) for the later ones, which send nothing when
the object already has that template — recomputing "the previous revision" after an undo that
took effect but whose answer was lost would pick the bad version again (undo the undo).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from watchdog.actions.expand import Subject
from watchdog.actions.kube import KubeClient, KubeError
from watchdog.actions.steps import StepEnv, StepResult, parse_retry_after
from watchdog.durations import format_duration
from watchdog.model import (
    CanaryRollback,
    KubernetesStep,
    RolloutAbort,
    RolloutUndo,
    Scale,
    SetImage,
)

REVISION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"  # appsv1.DefaultDeploymentUniqueLabelKey
ARGO_REVISION = "rollout.argoproj.io/revision"
ARGO_HASH_LABEL = "rollouts-pod-template-hash"  # v1alpha1.DefaultRolloutUniqueLabelKey
# The phases in which Flagger runs rollback hooks (pkg/controller/scheduler.go).
FLAGGER_ROLLBACK_PHASES = frozenset({"Progressing", "Waiting", "WaitingPromotion"})
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


def revision(obj: Mapping[str, Any], key: str = REVISION) -> int | None:
    """deploymentutil.Revision: a missing annotation is revision 0; garbage is skipped."""
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(key)
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


def _without_hash(template: Mapping[str, Any], label: str = HASH_LABEL) -> dict[str, Any]:
    t = copy.deepcopy(dict(template))
    meta = t.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("labels"), dict):
        meta["labels"].pop(label, None)
        if not meta["labels"]:
            del meta["labels"]  # Go's omitempty on an emptied map
    return t


def equal_ignore_hash(t1: Mapping[str, Any], t2: Mapping[str, Any],
                      label: str = HASH_LABEL) -> bool:
    return bool(_semantic(_without_hash(t1, label)) == _semantic(_without_hash(t2, label)))


def undo_target(deployment: Mapping[str, Any], replicasets: Sequence[Mapping[str, Any]],
                to_revision: int | None = None, *, key: str = REVISION,
                kind: str = "deployment") -> Mapping[str, Any]:
    """kubectl's deploymentRevision (and the Argo plugin's rolloutRevision, with its
    annotation `key`): the ReplicaSet to roll back to."""
    name = (deployment.get("metadata") or {}).get("name", "")
    owned = [rs for rs in replicasets if controlled_by(rs, deployment)]
    latest: tuple[int, Mapping[str, Any] | None] = (-1, None)
    previous: tuple[int, Mapping[str, Any] | None] = (-1, None)
    for rs in owned:
        v = revision(rs, key)
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
        if kind == "rollout":
            raise UndoRefused(f'no revision found for rollout "{name}"')
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


def _rfc3339(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def promoted_since(rollout: Mapping[str, Any]) -> tuple[bool, float | None]:
    """Is the Rollout fully promoted (its stable ReplicaSet is the current pod template's, and
    it is not aborted), and since when (the last transition of its `Completed` condition, else
    of `Healthy`, when True)?"""
    status = rollout.get("status") or {}
    stable, current = status.get("stableRS"), status.get("currentPodHash")
    if not stable or stable != current or status.get("abort"):
        return False, None
    conditions = {c.get("type"): c for c in status.get("conditions") or []
                  if isinstance(c, dict)}
    for kind in ("Completed", "Healthy"):
        c = conditions.get(kind)
        if c is not None and c.get("status") == "True":
            return True, _rfc3339(c.get("lastTransitionTime"))
    return True, None


def undo_guard(rollout: Mapping[str, Any], limit: float, now: float) -> str | None:
    """Why an undo of this Rollout is refused, or None."""
    promoted, since = promoted_since(rollout)
    if not promoted or limit <= 0 or since is None or now - since <= limit:
        return None
    return (f"refused: fully promoted and stable for {format_duration(round(now - since))} "
            f"(longer than stable_for_at_most {format_duration(limit)}); undoing it now would "
            "roll back a release that has been live that long — do it by hand if you mean it")


async def argo_rollout_undo(client: KubeClient, cfg: RolloutUndo, now: float,
                            memo: dict[str, Any] | None = None) -> StepResult:
    assert cfg.rollout is not None
    what = f"argo rollouts undo {cfg.rollout} -n {cfg.namespace}"
    rollout = await client.get(client.rollout_path(cfg.namespace, cfg.rollout))
    refused = undo_guard(rollout, cfg.stable_for_at_most, now)
    if refused is not None:
        return StepResult(False, f"{what}: {refused}")
    memo = {} if memo is None else memo
    if "target" in memo:
        target = memo["target"]
    else:
        selector = selector_string((rollout.get("spec") or {}).get("selector"))
        replicasets = await client.list_replicasets(cfg.namespace, selector)
        try:
            target = undo_target(rollout, replicasets, cfg.to_revision, key=ARGO_REVISION,
                                 kind="rollout")
        except UndoRefused as e:
            return StepResult(False, f"{what}: {e}")
        memo["target"] = target
    rev = revision(target, ARGO_REVISION)
    template = (target.get("spec") or {}).get("template") or {}
    if equal_ignore_hash(template, (rollout.get("spec") or {}).get("template") or {},
                         ARGO_HASH_LABEL):
        return StepResult(True, f"{what}: skipped rollback (current template already matches "
                                f"revision {rev})")
    patch = [{"op": "replace", "path": "/spec/template",
              "value": _without_hash(template, ARGO_HASH_LABEL)}]
    await client.patch(client.rollout_path(cfg.namespace, cfg.rollout), patch,
                       KubeClient.JSON_PATCH)
    return StepResult(True, f"{what}: rolled back to revision {rev}")


ABORT_PATCH = {"status": {"abort": True}}


async def rollout_abort(client: KubeClient, cfg: RolloutAbort) -> StepResult:
    what = f"argo rollouts abort {cfg.rollout} -n {cfg.namespace}"
    rollout = await client.get(client.rollout_path(cfg.namespace, cfg.rollout))
    promoted, _ = promoted_since(rollout)
    if promoted:
        return StepResult(True, f"{what}: skipped (fully promoted: no update in progress to "
                                "abort)")
    if (rollout.get("status") or {}).get("abort"):
        return StepResult(True, f"{what}: already aborted")
    try:
        await client.patch(client.rollout_path(cfg.namespace, cfg.rollout, "status"),
                           ABORT_PATCH, KubeClient.MERGE_PATCH)
    except KubeError as e:
        if e.status != 404:
            raise
        await client.patch(client.rollout_path(cfg.namespace, cfg.rollout), ABORT_PATCH,
                           KubeClient.MERGE_PATCH)
    return StepResult(True, f"{what}: aborted")


def rollback_hook(canary: Mapping[str, Any], service: str) -> Mapping[str, Any] | None:
    """The Canary's `rollback` webhook that asks `service` (the load tester), if any."""
    spec = canary.get("spec") or {}
    analysis = spec.get("analysis") or spec.get("canaryAnalysis") or {}
    for hook in analysis.get("webhooks") or []:
        if not isinstance(hook, dict) or hook.get("type") != "rollback":
            continue
        host = urlsplit(str(hook.get("url") or "")).hostname or ""
        if host == service or host.startswith(f"{service}."):
            return hook
    return None


async def canary_rollback(client: KubeClient, cfg: CanaryRollback) -> StepResult:
    what = f"flagger rollback canary/{cfg.canary} -n {cfg.namespace}"
    canary = await client.get(client.canary_path(cfg.namespace, cfg.canary))
    phase = str((canary.get("status") or {}).get("phase") or "")
    if phase not in FLAGGER_ROLLBACK_PHASES:
        return StepResult(False, f"{what}: refused: the canary is {phase or 'not analysing'}; "
                                 "Flagger rolls back only during analysis (Progressing, "
                                 "Waiting, WaitingPromotion) — after promotion undo the target "
                                 "Deployment instead")
    if rollback_hook(canary, cfg.loadtester) is None:
        return StepResult(False, f"{what}: refused: the canary has no `rollback` webhook "
                                 f"pointing at {cfg.loadtester}, so Flagger would never see the "
                                 "gate open")
    ns = cfg.loadtester_namespace or cfg.namespace
    path = client.service_proxy_path(ns, cfg.loadtester, cfg.loadtester_port, "rollback/open")
    status, body = await client.post_raw(path, {"name": cfg.canary, "namespace": cfg.namespace})
    text = body.decode("utf-8", "replace").strip()
    if not 200 <= status < 300:
        raise KubeError(f"{what}: load tester answered HTTP {status}: {text[:200]}", status)
    return StepResult(True, f"{what}: rollback gate opened (canary was {phase})",
                      f"{what}: HTTP {status} {text}".strip())


async def rollout_undo(client: KubeClient, cfg: RolloutUndo,
                       memo: dict[str, Any] | None = None) -> StepResult:
    assert cfg.deployment is not None
    what = f"rollout undo deployment/{cfg.deployment} -n {cfg.namespace}"
    deployment = await client.get_deployment(cfg.namespace, cfg.deployment)
    memo = {} if memo is None else memo
    if "target" in memo:
        target = memo["target"]
    else:
        selector = selector_string((deployment.get("spec") or {}).get("selector"))
        replicasets = await client.list_replicasets(cfg.namespace, selector)
        try:
            target = undo_target(deployment, replicasets, cfg.to_revision)
        except UndoRefused as e:
            return StepResult(False, f"{what}: {e}")
        memo["target"] = target
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


async def run(step: KubernetesStep, subject: Subject, env: StepEnv,
              memo: dict[str, Any] | None = None) -> StepResult:
    """`memo`: one dict per step, kept across its retries (see the module docstring)."""
    del subject  # the target is configuration, never taken from alert labels
    if env.kube is None:
        return StepResult(False, "kubernetes is not configured")
    try:
        client = env.kube()
        if step.rollout_undo is not None:
            if step.rollout_undo.rollout is not None:
                return await argo_rollout_undo(client, step.rollout_undo, env.now(), memo)
            return await rollout_undo(client, step.rollout_undo, memo)
        if step.rollout_abort is not None:
            return await rollout_abort(client, step.rollout_abort)
        if step.canary_rollback is not None:
            return await canary_rollback(client, step.canary_rollback)
        if step.scale is not None:
            return await scale(client, step.scale)
        assert step.set_image is not None
        return await set_image(client, step.set_image)
    except KubeError as e:
        retry_after = parse_retry_after(e.retry_after, env.now())
        return StepResult(False, str(e), retryable=e.retryable, retry_after=retry_after)
    except UndoRefused as e:
        return StepResult(False, str(e))
