"""The `kubernetes` step against an in-process fake API server: the requests must be the ones
kubectl sends. The expected JSON patches are written out by hand from kubectl's
DeploymentRollbacker (rollback.go), not computed by the code under test."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fake_kube import FakeKube, pod_template
from storage_support import sqlite_storage
from test_daemon_support import serve

from watchdog.actions.expand import Subject
from watchdog.actions.handler import ActionsHandler
from watchdog.actions.kube import (
    Cluster,
    KubeClient,
    KubeConfigError,
    from_kubeconfig,
    in_cluster,
)
from watchdog.actions.steps import StepEnv
from watchdog.actions.steps import kubernetes as k8s
from watchdog.actions.testing import RecordingSink, eventually, make_context
from watchdog.model import KubernetesStep
from watchdog.rulesdir import build
from watchdog.settings import Settings
from watchdog.testing import FakeSource

LAST_APPLIED = '{"apiVersion":"apps/v1","kind":"Deployment"}'


@pytest.fixture
async def kube() -> AsyncIterator[tuple[FakeKube, str]]:
    fake = FakeKube()
    async with serve(fake.app()) as url:
        yield fake, url


def subject() -> Subject:
    return Subject(action="rollback", run_id="r1", trigger="alert",
                   labels={"service": "checkout", "deployment": "evil"})


async def run_step(step: dict[str, Any], url: str, session: aiohttp.ClientSession,
                   token: str = "test-token") -> k8s.StepResult:
    client = KubeClient(session, Cluster(url, True, token=token))
    env = StepEnv(session=session, environ={}, kube=lambda: client)
    return await k8s.run(KubernetesStep.model_validate(step), subject(), env)


def checkout(fake: FakeKube, **kw: Any) -> None:
    fake.add_deployment(
        "prod", "checkout",
        [pod_template("checkout:v1"), pod_template("checkout:v2")],
        annotations={"kubectl.kubernetes.io/last-applied-configuration": LAST_APPLIED,
                     "team": "checkout"},
        rs_annotations=[{"kubernetes.io/change-cause": "deploy v1"},
                        {"kubernetes.io/change-cause": "deploy v2"}], **kw)


UNDO = {"rollout_undo": {"namespace": "prod", "deployment": "checkout"}}

# What kubectl 1.3x sends for `kubectl rollout undo deployment/checkout -n prod` here: the pod
# template of revision 1 without its pod-template-hash label (Go's zero values kept), and the
# annotations rebuilt — annotationsToSkip from the Deployment, the rest from the ReplicaSet
# (so "team", present only on the Deployment, is dropped, exactly as kubectl drops it).
EXPECTED_UNDO_PATCH = [
    {"op": "replace", "path": "/spec/template", "value": {
        "metadata": {"creationTimestamp": None, "labels": {"app": "checkout"}},
        "spec": {
            "containers": [{
                "name": "app", "image": "checkout:v1", "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"}],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst", "securityContext": {},
            "schedulerName": "default-scheduler"}}},
    {"op": "replace", "path": "/metadata/annotations", "value": {
        "deployment.kubernetes.io/revision": "2",
        "kubectl.kubernetes.io/last-applied-configuration": LAST_APPLIED,
        "kubernetes.io/change-cause": "deploy v1"}},
]


async def test_rollout_undo_sends_kubectls_json_patch(kube: tuple[FakeKube, str],
                                                      session: aiohttp.ClientSession) -> None:
    fake, url = kube
    checkout(fake)
    result = await run_step(UNDO, url, session)
    assert result.ok, result.detail
    assert "rolled back to revision 1" in result.detail
    gets = [(r.method, r.path, r.query) for r in fake.requests if r.method == "GET"]
    assert gets == [
        ("GET", "/apis/apps/v1/namespaces/prod/deployments/checkout", {}),
        ("GET", "/apis/apps/v1/namespaces/prod/replicasets", {"labelSelector": "app=checkout"}),
    ]
    [patch] = fake.patches()
    assert patch.path == "/apis/apps/v1/namespaces/prod/deployments/checkout"
    assert patch.content_type == "application/json-patch+json"
    assert patch.query == {}
    assert patch.body == EXPECTED_UNDO_PATCH
    dep = fake.deployments[("prod", "checkout")]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "checkout:v1"
    assert dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"


async def test_second_undo_undoes_the_undo_like_kubectl(kube: tuple[FakeKube, str],
                                                        session: aiohttp.ClientSession) -> None:
    fake, url = kube
    checkout(fake)
    assert (await run_step(UNDO, url, session)).ok
    result = await run_step(UNDO, url, session)
    assert result.ok and "revision 2" in result.detail
    second = fake.patches()[1].body
    assert second[0]["value"]["spec"]["containers"][0]["image"] == "checkout:v2"
    assert second[1]["value"]["kubernetes.io/change-cause"] == "deploy v2"
    assert second[1]["value"]["deployment.kubernetes.io/revision"] == "3"


async def test_already_at_previous_revision_sends_nothing(kube: tuple[FakeKube, str],
                                                          session: aiohttp.ClientSession
                                                          ) -> None:
    fake, url = kube
    # The Deployment's template is already revision 1's (the controller has not caught up):
    # kubectl prints "skipped rollback (current template already matches revision ...)".
    checkout(fake, current=pod_template("checkout:v1"))
    result = await run_step(UNDO, url, session)
    assert result.ok
    assert "skipped rollback (current template already matches revision 1)" in result.detail
    assert fake.patches() == []


async def test_paused_deployment_is_refused(kube: tuple[FakeKube, str],
                                            session: aiohttp.ClientSession) -> None:
    fake, url = kube
    checkout(fake, paused=True)
    result = await run_step(UNDO, url, session)
    assert not result.ok
    assert "you cannot rollback a paused deployment; resume it first with 'kubectl rollout " \
           "resume deployment/checkout' and try again" in result.detail
    assert fake.patches() == []


async def test_no_history(kube: tuple[FakeKube, str], session: aiohttp.ClientSession) -> None:
    fake, url = kube
    fake.add_deployment("prod", "checkout", [pod_template("checkout:v1")])
    result = await run_step(UNDO, url, session)
    assert not result.ok
    assert 'no rollout history found for deployment "checkout"' in result.detail
    assert fake.patches() == []


async def test_foreign_replicasets_and_to_revision(kube: tuple[FakeKube, str],
                                                   session: aiohttp.ClientSession) -> None:
    fake, url = kube
    fake.add_deployment("prod", "checkout", [pod_template(f"checkout:v{i}") for i in (1, 2, 3)])
    # Same labels, higher revision, but controlled by someone else: kubectl ignores it.
    fake.add_foreign_replicaset("prod", pod_template("intruder:v9"), 99)
    result = await run_step(UNDO, url, session)
    assert result.ok
    assert fake.patches()[0].body[0]["value"]["spec"]["containers"][0]["image"] == "checkout:v2"
    missing = await run_step({"rollout_undo": {"namespace": "prod", "deployment": "checkout",
                                               "to_revision": 7}}, url, session)
    assert not missing.ok and "unable to find specified revision 7" in missing.detail
    to_one = await run_step({"rollout_undo": {"namespace": "prod", "deployment": "checkout",
                                              "to_revision": 1}}, url, session)
    assert to_one.ok
    assert fake.patches()[-1].body[0]["value"]["spec"]["containers"][0]["image"] == "checkout:v1"


async def test_missing_deployment_and_bad_token(kube: tuple[FakeKube, str],
                                                session: aiohttp.ClientSession) -> None:
    fake, url = kube
    result = await run_step(UNDO, url, session)
    assert not result.ok and "HTTP 404" in result.detail and "not found" in result.detail
    checkout(fake)
    denied = await run_step(UNDO, url, session, token="wrong")
    assert not denied.ok and "HTTP 401" in denied.detail
    assert "wrong" not in denied.detail and "test-token" not in denied.detail


async def test_scale_patches_the_scale_subresource(kube: tuple[FakeKube, str],
                                                   session: aiohttp.ClientSession) -> None:
    fake, url = kube
    checkout(fake)
    result = await run_step({"scale": {"namespace": "prod", "deployment": "checkout",
                                       "replicas": 0}}, url, session)
    assert result.ok
    [patch] = fake.patches()
    assert patch.path == "/apis/apps/v1/namespaces/prod/deployments/checkout/scale"
    assert patch.content_type == "application/merge-patch+json"
    assert patch.body == {"spec": {"replicas": 0}}
    assert fake.deployments[("prod", "checkout")]["spec"]["replicas"] == 0


async def test_set_image_sends_kubectls_strategic_merge_patch(
        kube: tuple[FakeKube, str], session: aiohttp.ClientSession) -> None:
    fake, url = kube
    checkout(fake)
    step = {"set_image": {"namespace": "prod", "deployment": "checkout", "container": "app",
                          "image": "checkout:v1-stable"}}
    result = await run_step(step, url, session)
    assert result.ok
    [patch] = fake.patches()
    assert patch.content_type == "application/strategic-merge-patch+json"
    assert patch.body == {"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "app"}],
        "containers": [{"image": "checkout:v1-stable", "name": "app"}]}}}}
    dep = fake.deployments[("prod", "checkout")]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "checkout:v1-stable"
    again = await run_step(step, url, session)
    assert again.ok and "already set" in again.detail and len(fake.patches()) == 1
    wrong = await run_step({"set_image": {**step["set_image"], "container": "nope"}}, url,
                           session)
    assert not wrong.ok and "unable to find container named 'nope'" in wrong.detail


def test_pure_helpers() -> None:
    assert k8s.selector_string({"matchLabels": {"b": "2", "a": "1"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["web", "api"]},
        {"key": "canary", "operator": "DoesNotExist"}]}) == \
        "a=1,b=2,!canary,tier in (api,web)"
    t1 = pod_template("x:1")
    t2 = pod_template("x:1")
    t2["metadata"]["labels"][k8s.HASH_LABEL] = "abc"
    del t2["metadata"]["creationTimestamp"]
    assert k8s.equal_ignore_hash(t1, t2)
    assert not k8s.equal_ignore_hash(t1, pod_template("x:2"))


# ---- configuration --------------------------------------------------------------------------

def test_kubeconfig_token_and_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "prod",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1/"}}],
        "users": [{"name": "u", "user": {"tokenFile": "token"}},
                  {"name": "v", "user": {"token": "inline"}}],
        "contexts": [{"name": "prod", "context": {"cluster": "c", "user": "u",
                                                  "namespace": "shop"}},
                     {"name": "other", "context": {"cluster": "c", "user": "v"}}],
    }))
    c = from_kubeconfig(str(cfg))
    assert c.server == "http://127.0.0.1:1" and c.namespace == "shop"
    assert c.auth_headers() == {"Authorization": "Bearer from-file"}
    token_file.write_text("rotated")
    assert c.auth_headers() == {"Authorization": "Bearer rotated"}
    assert from_kubeconfig(str(cfg), "other").auth_headers() == \
        {"Authorization": "Bearer inline"}


def test_kubeconfig_exec_plugin_is_refused_clearly(tmp_path: Path) -> None:
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(json.dumps({
        "current-context": "x", "clusters": [{"name": "c", "cluster": {"server": "https://k"}}],
        "users": [{"name": "u", "user": {"exec": {"command": "aws"}}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}]}))
    with pytest.raises(KubeConfigError, match="exec or auth-provider"):
        from_kubeconfig(str(cfg))


def test_in_cluster_config(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "namespace").write_text("watchdog")
    c = in_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"},
                   root=tmp_path)
    assert c.server == "https://10.0.0.1:443" and c.namespace == "watchdog"
    assert c.auth_headers() == {"Authorization": "Bearer sa-token"}
    with pytest.raises(KubeConfigError, match="WATCHDOG_KUBECONFIG"):
        in_cluster({}, root=tmp_path)


# ---- through the runner: refused is failed, and notified ------------------------------------

ACTION_RULES = b"""
groups:
  - name: g
    rules:
      - alert: CheckoutDown
        expr: up == 0
        actions: [undo]
actions:
  undo:
    steps:
      - kubernetes: {rollout_undo: {namespace: prod, deployment: checkout}}
"""


async def test_paused_refusal_fails_the_run_and_is_notified(
        kube: tuple[FakeKube, str], session: aiohttp.ClientSession, tmp_path: Path) -> None:
    fake, url = kube
    checkout(fake, paused=True)
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(json.dumps({
        "current-context": "t", "clusters": [{"name": "c", "cluster": {"server": url}}],
        "users": [{"name": "u", "user": {"token": "test-token"}}],
        "contexts": [{"name": "t", "context": {"cluster": "c", "user": "u"}}]}))
    sink = RecordingSink()
    async with sqlite_storage(tmp_path / "db") as db:
        ctx = make_context(db, session, FakeSource(), settings=Settings(kubeconfig=str(cfg)),
                           sinks=[sink])
        h = ActionsHandler(ctx)
        await h.on_rules(build({"r.yml": ACTION_RULES}))
        await h.start()
        doc = await h.run_action("undo", {"labels": {"service": "checkout"}})
        await eventually(lambda: "failed" in sink.kinds())
        run = await h.run(doc["runID"])
        await h.stop()
    assert run["status"] == "failed"
    assert run["steps"][0]["status"] == "failed"
    failed = next(e for e in sink.events if e.kind == "failed")
    assert "paused deployment" in failed.detail and failed.step == "1/1 kubernetes"
    assert fake.patches() == []


# ---- Argo Rollouts, Flagger, and retries ---------------------------------------------------

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


async def run_argo(step: dict[str, Any], url: str, session: aiohttp.ClientSession,
                   memo: dict[str, Any] | None = None) -> k8s.StepResult:
    client = KubeClient(session, Cluster(url, True, token="test-token"))
    env = StepEnv(session=session, environ={}, kube=lambda: client, clock=lambda: NOW)
    return await k8s.run(KubernetesStep.model_validate(step), subject(), env, memo)


def episodes(fake: FakeKube, **kw: Any) -> None:
    fake.add_rollout("generator", "episodes",
                     [pod_template("episodes:v1", app="episodes"),
                      pod_template("episodes:v2", app="episodes")], **kw)


ARGO_UNDO = {"rollout_undo": {"namespace": "generator", "rollout": "episodes"}}
ARGO_PATH = "/apis/argoproj.io/v1alpha1/namespaces/generator/rollouts/episodes"


async def test_argo_undo_patches_the_previous_pod_template_like_the_plugin(
        kube: tuple[FakeKube, str], session: aiohttp.ClientSession) -> None:
    fake, url = kube
    episodes(fake)  # a canary of v2 in progress
    result = await run_argo(ARGO_UNDO, url, session)
    assert result.ok and "rolled back to revision 1" in result.detail, result
    [patch] = fake.patches()
    assert patch.path == ARGO_PATH and patch.content_type == "application/json-patch+json"
    # `kubectl argo rollouts undo`: one op, the revision-1 template without its hash label
    assert patch.body == [{"op": "replace", "path": "/spec/template",
                           "value": pod_template("episodes:v1", app="episodes")}]
    assert [r.query.get("labelSelector") for r in fake.requests if r.method == "GET"
            and r.path.endswith("/replicasets")] == ["app=episodes"]
    # the template is revision 1's now: a second undo sends nothing
    again = await run_argo(ARGO_UNDO, url, session, {})
    assert again.ok and "skipped rollback" in again.detail, again
    assert len(fake.patches()) == 1


async def test_argo_undo_guard_refuses_a_rollout_promoted_long_ago(
        kube: tuple[FakeKube, str], session: aiohttp.ClientSession) -> None:
    fake, url = kube
    episodes(fake, promoted_at="2027-01-15T05:00:00Z")  # fully promoted 3h before NOW
    result = await run_argo(ARGO_UNDO, url, session)
    assert not result.ok and "fully promoted and stable for 3h" in result.detail, result
    assert "stable_for_at_most 1h" in result.detail
    assert fake.patches() == []
    # promoted 30 minutes ago: within the guard, undone
    fake.rollouts.clear()
    episodes(fake, promoted_at="2027-01-15T07:30:00Z")
    assert (await run_argo(ARGO_UNDO, url, session)).ok
    assert len(fake.patches()) == 1
    # a longer guard lets the 3h-old one through; 0 turns the guard off
    fake.rollouts.clear()
    episodes(fake, promoted_at="2027-01-15T05:00:00Z")
    step = {"rollout_undo": {**ARGO_UNDO["rollout_undo"], "stable_for_at_most": 0}}
    assert (await run_argo(step, url, session)).ok


async def test_argo_abort_patches_the_status_subresource_and_falls_back(
        kube: tuple[FakeKube, str], session: aiohttp.ClientSession) -> None:
    fake, url = kube
    episodes(fake)
    abort = {"rollout_abort": {"namespace": "generator", "rollout": "episodes"}}
    result = await run_argo(abort, url, session)
    assert result.ok and result.detail.endswith(": aborted"), result
    [patch] = fake.patches()
    assert (patch.path, patch.content_type, patch.body) == (
        f"{ARGO_PATH}/status", "application/merge-patch+json", {"status": {"abort": True}})
    assert fake.rollouts[("generator", "episodes")]["status"]["abort"] is True
    assert (await run_argo(abort, url, session)).detail.endswith("already aborted")
    # a CRD without the status subresource: the plugin patches the Rollout itself
    fake.rollouts.clear()
    fake.requests.clear()
    fake.status_subresource = False
    episodes(fake)
    assert (await run_argo(abort, url, session)).ok
    assert [(p.path, p.body) for p in fake.patches()] == [
        (f"{ARGO_PATH}/status", {"status": {"abort": True}}),
        (ARGO_PATH, {"status": {"abort": True}})]
    # fully promoted: nothing to abort, nothing sent
    fake.rollouts.clear()
    fake.requests.clear()
    episodes(fake, promoted_at="2027-01-15T07:00:00Z")
    result = await run_argo(abort, url, session)
    assert result.ok and "fully promoted" in result.detail and fake.patches() == []


async def test_flagger_rollback_opens_the_load_testers_gate_through_the_service_proxy(
        kube: tuple[FakeKube, str], session: aiohttp.ClientSession) -> None:
    fake, url = kube
    fake.add_canary("prod", "checkout", "Progressing")
    step = {"canary_rollback": {"namespace": "prod", "canary": "checkout",
                                "loadtester_namespace": "test"}}
    result = await run_argo(step, url, session)
    assert result.ok and "rollback gate opened (canary was Progressing)" in result.detail
    # what `kubectl flagger rollback checkout prod -n test` sends the load tester
    assert fake.gates == [("test/flagger-loadtester:80", "rollback/open",
                           {"name": "checkout", "namespace": "prod"})]
    [post] = [r for r in fake.requests if r.method == "POST"]
    assert post.path == ("/api/v1/namespaces/test/services/flagger-loadtester:80/proxy/"
                         "rollback/open") and post.content_type == "application/json"
    # after promotion there is nothing for Flagger to roll back: refused, nothing sent
    fake.gates.clear()
    fake.add_canary("prod", "checkout", "Succeeded")
    result = await run_argo(step, url, session)
    assert not result.ok and "refused: the canary is Succeeded" in result.detail
    # a canary without a rollback webhook would never look at the gate
    fake.add_canary("prod", "checkout", "Progressing", rollback_hook=None)
    result = await run_argo(step, url, session)
    assert not result.ok and "no `rollback` webhook" in result.detail
    assert fake.gates == []


async def test_a_retried_undo_keeps_its_first_target_instead_of_undoing_the_undo(
        kube: tuple[FakeKube, str], session: aiohttp.ClientSession) -> None:
    """The first PATCH takes effect but its answer is lost (a 500 after applying it): the retry
    must not compute "the previous revision" again — that is now the bad version."""
    fake, url = kube
    checkout(fake)
    fake.fail_next = [(500, True, None)]
    memo: dict[str, Any] = {}
    first = await run_step_memo(UNDO, url, session, memo)
    assert not first.ok and first.retryable and "HTTP 500" in first.detail
    image = fake.deployments[("prod", "checkout")]["spec"]["template"]["spec"]["containers"][0]
    assert image["image"] == "checkout:v1"  # it did take effect
    second = await run_step_memo(UNDO, url, session, memo)
    assert second.ok and "skipped rollback" in second.detail, second
    assert len(fake.patches()) == 1
    dep = fake.deployments[("prod", "checkout")]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "checkout:v1"
    # without the pinned target the same retry would have put v2 back
    third = await run_step_memo(UNDO, url, session, {})
    assert third.ok and "rolled back to revision 2" in third.detail


async def test_kube_errors_say_whether_to_retry(kube: tuple[FakeKube, str],
                                                session: aiohttp.ClientSession) -> None:
    fake, url = kube
    checkout(fake)
    fake.fail_next = [(429, False, "7")]
    r = await run_step_memo(UNDO, url, session, {})
    assert not r.ok and r.retryable and r.retry_after == 7.0
    fake.add_canary("prod", "checkout", "Progressing")
    r = await run_step_memo({"canary_rollback": {"namespace": "prod", "canary": "nope"}}, url,
                            session, {})
    assert not r.ok and not r.retryable and "404" in r.detail


async def run_step_memo(step: dict[str, Any], url: str, session: aiohttp.ClientSession,
                        memo: dict[str, Any]) -> k8s.StepResult:
    client = KubeClient(session, Cluster(url, True, token="test-token"))
    env = StepEnv(session=session, environ={}, kube=lambda: client)
    return await k8s.run(KubernetesStep.model_validate(step), subject(), env, memo)
