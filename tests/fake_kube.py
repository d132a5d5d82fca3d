"""An in-process fake of the Kubernetes API for the `kubernetes` step: a real aiohttp server that
models Deployments and the ReplicaSets the Deployment controller keeps for them, and records
every request (method, path, content type, parsed body).

It implements what `kubectl rollout undo`, `kubectl scale` and `kubectl set image` use — GET a
Deployment, LIST ReplicaSets by label selector, PATCH a Deployment (JSON patch, merge patch,
strategic merge patch for containers) and its `scale` subresource — plus the controller's
reaction to a template change (new or re-numbered ReplicaSet, revision annotations), so a test
can undo twice and see kubectl's "undo the undo". Also Argo Rollouts' `Rollout` (GET, JSON and
merge PATCH, the `status` subresource, its ReplicaSets with `rollout.argoproj.io/revision`),
Flagger's `Canary` (GET) and the API server's Service proxy to a flagger-loadtester
(`POST .../services/NAME:PORT/proxy/rollback/open`). `fail_next` makes the next writes (PATCH,
POST) answer an error, optionally after applying them, as a proxy that loses the answer would.
It must not grow cleverness the real API lacks:
anything it does not model answers 404 or 415, never a silent success.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

REVISION = "deployment.kubernetes.io/revision"
HASH = "pod-template-hash"
ARGO_REVISION = "rollout.argoproj.io/revision"
ARGO_HASH = "rollouts-pod-template-hash"


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    content_type: str
    body: Any
    query: dict[str, str]


def pod_template(image: str, *, app: str = "checkout", container: str = "app",
                 extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod template as the API server returns it (Go's zero values included:
    `creationTimestamp: null`, `resources: {}`)."""
    c: dict[str, Any] = {
        "name": container, "image": image, "resources": {},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent",
    }
    if extra_env:
        c["env"] = [{"name": k, "value": v} for k, v in extra_env.items()]
    return {
        "metadata": {"creationTimestamp": None, "labels": {"app": app}},
        "spec": {"containers": [c], "restartPolicy": "Always",
                 "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                 "securityContext": {}, "schedulerName": "default-scheduler"},
    }


def _hash(template: dict[str, Any]) -> str:
    t = copy.deepcopy(template)
    t.get("metadata", {}).get("labels", {}).pop(HASH, None)
    return hashlib.sha256(json.dumps(t, sort_keys=True).encode()).hexdigest()[:10]


def _strip_hash(template: dict[str, Any]) -> dict[str, Any]:
    t = copy.deepcopy(template)
    t.get("metadata", {}).get("labels", {}).pop(HASH, None)
    return t


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """The subset of label selector syntax the clients send: `k=v`, `k in (a,b)`, `k`, `!k`."""
    if not selector:
        return True
    parts: list[str] = []
    depth, cur = 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    for p in (x.strip() for x in parts):
        if " notin " in p:
            k, vals = p.split(" notin ", 1)
            if labels.get(k) in vals.strip("() ").split(","):
                return False
        elif " in " in p:
            k, vals = p.split(" in ", 1)
            if labels.get(k) not in vals.strip("() ").split(","):
                return False
        elif p.startswith("!"):
            if p[1:] in labels:
                return False
        elif "!=" in p:
            k, v = p.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in p:
            k, v = p.split("=", 1)
            if labels.get(k.rstrip("=")) != v.lstrip("="):
                return False
        elif p not in labels:
            return False
    return True


def _apply_json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    for op in ops:
        if op.get("op") not in ("replace", "add"):
            raise web.HTTPUnsupportedMediaType(text=f"fake: op {op.get('op')} not modelled")
        keys = [k.replace("~1", "/").replace("~0", "~") for k in op["path"].split("/")[1:]]
        target = out
        for k in keys[:-1]:
            target = target.setdefault(k, {})
        if op["op"] == "replace" and keys[-1] not in target:
            raise web.HTTPUnprocessableEntity(text="replace of a missing path")
        target[keys[-1]] = copy.deepcopy(op["value"])
    return out


def _merge(doc: Any, patch: Any) -> Any:
    """RFC 7386 merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(doc) if isinstance(doc, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


def _strategic(doc: Any, patch: Any) -> Any:
    """Strategic merge patch, for what set image sends: lists of containers merge by name,
    `$setElementOrder/...` directives are accepted."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(doc) if isinstance(doc, dict) else {}
    for k, v in patch.items():
        if k.startswith("$setElementOrder/"):
            continue
        if k in ("containers", "initContainers") and isinstance(v, list):
            current = {c["name"]: c for c in out.get(k, [])}
            for item in v:
                current[item["name"]] = _strategic(current.get(item["name"], {}), item)
            out[k] = list(current.values())
        elif v is None:
            out.pop(k, None)
        else:
            out[k] = _strategic(out.get(k), v)
    return out


@dataclass
class FakeKube:
    token: str | None = "test-token"
    deployments: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    replicasets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    rollouts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    canaries: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    status_subresource: bool = True  # a Rollout CRD with `subresources: {status: {}}`
    gates: list[tuple[str, str, Any]] = field(default_factory=list)  # (ns/svc:port, path, body)
    # the next requests' answers: (status, apply the PATCH first, Retry-After)
    fail_next: list[tuple[int, bool, str | None]] = field(default_factory=list)
    _uids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _clock: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # ---- fixtures ---------------------------------------------------------------------------

    def add_deployment(self, namespace: str, name: str, history: list[dict[str, Any]], *,
                       paused: bool = False, current: dict[str, Any] | None = None,
                       annotations: dict[str, str] | None = None,
                       rs_annotations: list[dict[str, str]] | None = None,
                       replicas: int = 3) -> dict[str, Any]:
        """A Deployment whose rollouts were `history` (oldest first): one ReplicaSet each, with
        revisions 1..n; its template is the last one unless `current` says otherwise (a change
        the controller has not acted on yet)."""
        app = history[-1]["metadata"]["labels"]["app"] if history else name
        dep_uid = f"uid-{next(self._uids)}"
        template = copy.deepcopy(current if current is not None else history[-1])
        dep = {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "uid": dep_uid,
                         "generation": len(history),
                         "annotations": {REVISION: str(len(history)), **(annotations or {})}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": app}},
                     "template": template, "paused": paused,
                     "strategy": {"type": "RollingUpdate"}, "revisionHistoryLimit": 10},
        }
        if not paused:
            del dep["spec"]["paused"]  # Go's omitempty
        self.deployments[(namespace, name)] = dep
        for i, t in enumerate(history, start=1):
            extra = (rs_annotations or [])[i - 1] if rs_annotations and \
                i - 1 < len(rs_annotations) else {}
            self._add_rs(dep, t, i, extra, replicas if i == len(history) else 0)
        return dep

    def _add_rs(self, dep: dict[str, Any], template: dict[str, Any], rev: int,
                annotations: dict[str, str], replicas: int) -> dict[str, Any]:
        ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
        h = _hash(template)
        t = copy.deepcopy(template)
        t["metadata"].setdefault("labels", {})[HASH] = h
        rs = {
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {
                "name": f"{name}-{h}", "namespace": ns, "uid": f"uid-{next(self._uids)}",
                "creationTimestamp": f"2026-01-01T00:00:{next(self._clock):02d}Z",
                "labels": {**t["metadata"]["labels"]},
                "annotations": {REVISION: str(rev),
                                "deployment.kubernetes.io/desired-replicas": str(replicas),
                                "deployment.kubernetes.io/max-replicas": str(replicas + 1),
                                **annotations},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": name, "uid": dep["metadata"]["uid"],
                                     "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": {"replicas": replicas,
                     "selector": {"matchLabels": {**t["metadata"]["labels"]}},
                     "template": t},
        }
        self.replicasets[(ns, rs["metadata"]["name"])] = rs
        return rs

    def add_foreign_replicaset(self, namespace: str, template: dict[str, Any],
                               revision: int) -> None:
        """A ReplicaSet that matches the selector but another controller owns: ignored by
        kubectl."""
        owner = {"metadata": {"namespace": namespace, "name": "other", "uid": "uid-foreign"}}
        self._add_rs(owner, template, revision, {}, 1)

    def add_rollout(self, namespace: str, name: str, history: list[dict[str, Any]], *,
                    promoted_at: str | None = None, stable: int | None = None) -> dict[str, Any]:
        """An Argo Rollout whose revisions were `history` (oldest first), its template the last.
        `promoted_at`: fully promoted (stableRS = the current pod hash), Completed and Healthy
        since then; otherwise revision `stable` (default the one before the last) is the stable
        ReplicaSet and the update is in progress."""
        uid = f"uid-{next(self._uids)}"
        app = history[-1]["metadata"]["labels"]["app"]
        ro: dict[str, Any] = {
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": name, "namespace": namespace, "uid": uid,
                         "annotations": {ARGO_REVISION: str(len(history))}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": app}},
                     "template": copy.deepcopy(history[-1]),
                     "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}]}}},
            "status": {},
        }
        hashes = []
        for i, t in enumerate(history, start=1):
            h = _hash(t)
            hashes.append(h)
            tt = copy.deepcopy(t)
            tt["metadata"].setdefault("labels", {})[ARGO_HASH] = h
            rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                  "metadata": {"name": f"{name}-{h}", "namespace": namespace,
                               "uid": f"uid-{next(self._uids)}",
                               "labels": {**tt["metadata"]["labels"]},
                               "annotations": {ARGO_REVISION: str(i)},
                               "ownerReferences": [{"apiVersion": "argoproj.io/v1alpha1",
                                                    "kind": "Rollout", "name": name,
                                                    "uid": uid, "controller": True}]},
                  "spec": {"replicas": 1, "template": tt}}
            self.replicasets[(namespace, rs["metadata"]["name"])] = rs
        current = hashes[-1]
        if promoted_at is not None:
            ro["status"] = {"stableRS": current, "currentPodHash": current, "phase": "Healthy",
                            "conditions": [
                                {"type": "Completed", "status": "True",
                                 "reason": "RolloutCompleted",
                                 "lastTransitionTime": promoted_at},
                                {"type": "Healthy", "status": "True",
                                 "reason": "RolloutHealthy",
                                 "lastTransitionTime": promoted_at}]}
        else:
            idx = (stable or len(history) - 1) - 1
            ro["status"] = {"stableRS": hashes[idx], "currentPodHash": current,
                            "phase": "Paused", "conditions": [
                                {"type": "Completed", "status": "False",
                                 "reason": "RolloutCompleted",
                                 "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        self.rollouts[(namespace, name)] = ro
        return ro

    def add_canary(self, namespace: str, name: str, phase: str, *,
                   rollback_hook: str | None = "http://flagger-loadtester.test/rollback/check"
                   ) -> dict[str, Any]:
        hooks = [{"name": "load-test", "type": "rollout",
                  "url": "http://flagger-loadtester.test/"}]
        if rollback_hook is not None:
            hooks.append({"name": "rollback gate", "type": "rollback", "url": rollback_hook})
        canary = {"apiVersion": "flagger.app/v1beta1", "kind": "Canary",
                  "metadata": {"name": name, "namespace": namespace},
                  "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                         "name": name},
                           "analysis": {"interval": "1m", "threshold": 5, "webhooks": hooks}},
                  "status": {"phase": phase, "canaryWeight": 20}}
        self.canaries[(namespace, name)] = canary
        return canary

    def owned(self, namespace: str, name: str) -> list[dict[str, Any]]:
        uid = self.deployments[(namespace, name)]["metadata"]["uid"]
        return [rs for (ns, _), rs in self.replicasets.items() if ns == namespace and any(
            r.get("uid") == uid for r in rs["metadata"].get("ownerReferences", []))]

    def patches(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "PATCH"]

    # ---- the controller ---------------------------------------------------------------------

    def _reconcile(self, dep: dict[str, Any]) -> None:
        """What the Deployment controller does after a template change: adopt the ReplicaSet
        with the same template under a new revision, or create one."""
        ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
        owned = self.owned(ns, name)
        top = max((int(rs["metadata"]["annotations"].get(REVISION, "0")) for rs in owned),
                  default=0)
        want = _strip_hash(dep["spec"]["template"])
        same = [rs for rs in owned if _strip_hash(rs["spec"]["template"]) == want]
        if same:
            rs = same[0]
            if int(rs["metadata"]["annotations"][REVISION]) != top:
                rs["metadata"]["annotations"][REVISION] = str(top + 1)
                top += 1
        else:
            self._add_rs(dep, dep["spec"]["template"], top + 1, {}, dep["spec"]["replicas"])
            top += 1
        dep["metadata"].setdefault("annotations", {})[REVISION] = str(top)
        dep["metadata"]["generation"] = dep["metadata"].get("generation", 0) + 1

    # ---- HTTP -------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        base = "/apis/apps/v1/namespaces/{ns}"
        app.router.add_get(base + "/deployments/{name}", self._get_deployment)
        app.router.add_patch(base + "/deployments/{name}", self._patch_deployment)
        app.router.add_get(base + "/deployments/{name}/scale", self._get_scale)
        app.router.add_patch(base + "/deployments/{name}/scale", self._patch_scale)
        app.router.add_get(base + "/replicasets", self._list_replicasets)
        argo = "/apis/argoproj.io/v1alpha1/namespaces/{ns}/rollouts/{name}"
        app.router.add_get(argo, self._get_rollout)
        app.router.add_patch(argo, self._patch_rollout)
        app.router.add_patch(argo + "/status", self._patch_rollout_status)
        app.router.add_get("/apis/flagger.app/v1beta1/namespaces/{ns}/canaries/{name}",
                           self._get_canary)
        app.router.add_post("/api/v1/namespaces/{ns}/services/{svc}/proxy/{path:.*}",
                            self._proxy)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        self.requests.append(Recorded(request.method, request.path,
                                      request.headers.get("Content-Type", ""), body,
                                      dict(request.query)))
        if self.token is not None and \
                request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._status(401, "Unauthorized", "Unauthorized")
        if self.fail_next and request.method in ("PATCH", "POST"):
            code, apply, retry_after = self.fail_next.pop(0)
            if apply:
                await handler(request)
            resp = self._status(code, "ServiceUnavailable" if code == 503 else "InternalError",
                                "fake: failing as told")
            if retry_after is not None:
                resp.headers["Retry-After"] = retry_after
            return resp
        try:
            return await handler(request)
        except web.HTTPException as e:
            return self._status(e.status, e.reason, e.text or e.reason)

    @staticmethod
    def _status(code: int, reason: str, message: str) -> web.Response:
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                  "message": message, "reason": reason, "code": code},
                                 status=code)

    def _dep(self, request: web.Request) -> dict[str, Any]:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.deployments:
            raise web.HTTPNotFound(
                text=f'deployments.apps "{key[1]}" not found')
        return self.deployments[key]

    async def _get_deployment(self, request: web.Request) -> web.Response:
        return web.json_response(self._dep(request))

    async def _list_replicasets(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        selector = request.query.get("labelSelector", "")
        items = [rs for (n, _), rs in self.replicasets.items()
                 if n == ns and _selector_matches(selector, rs["metadata"].get("labels", {}))]
        return web.json_response({"kind": "ReplicaSetList", "apiVersion": "apps/v1",
                                  "metadata": {"resourceVersion": "1"}, "items": items})

    async def _patch_deployment(self, request: web.Request) -> web.Response:
        dep = self._dep(request)
        ctype = request.headers.get("Content-Type", "")
        body = self.requests[-1].body
        before = copy.deepcopy(dep["spec"]["template"])
        if ctype == "application/json-patch+json":
            new = _apply_json_patch(dep, body)
        elif ctype == "application/merge-patch+json":
            new = _merge(dep, body)
        elif ctype == "application/strategic-merge-patch+json":
            new = _strategic(dep, body)
        else:
            raise web.HTTPUnsupportedMediaType(text=f"unsupported patch type {ctype}")
        dep.clear()
        dep.update(new)
        if dep["spec"]["template"] != before and not dep["spec"].get("paused"):
            self._reconcile(dep)
        return web.json_response(dep)

    async def _get_scale(self, request: web.Request) -> web.Response:
        dep = self._dep(request)
        return web.json_response({"kind": "Scale", "apiVersion": "autoscaling/v1",
                                  "metadata": {"name": dep["metadata"]["name"]},
                                  "spec": {"replicas": dep["spec"]["replicas"]}})

    async def _patch_scale(self, request: web.Request) -> web.Response:
        dep = self._dep(request)
        if request.headers.get("Content-Type") != "application/merge-patch+json":
            raise web.HTTPUnsupportedMediaType(text="fake: scale takes merge patches")
        body = self.requests[-1].body
        dep["spec"]["replicas"] = int(body["spec"]["replicas"])
        return await self._get_scale(request)

    # ---- Argo Rollouts, Flagger, the Service proxy ------------------------------------------

    def _rollout(self, request: web.Request) -> dict[str, Any]:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.rollouts:
            raise web.HTTPNotFound(text=f'rollouts.argoproj.io "{key[1]}" not found')
        return self.rollouts[key]

    async def _get_rollout(self, request: web.Request) -> web.Response:
        return web.json_response(self._rollout(request))

    async def _patch_rollout(self, request: web.Request) -> web.Response:
        ro = self._rollout(request)
        ctype = request.headers.get("Content-Type", "")
        body = self.requests[-1].body
        if ctype == "application/json-patch+json":
            new = _apply_json_patch(ro, body)
        elif ctype == "application/merge-patch+json":
            new = _merge(ro, body)
        else:
            raise web.HTTPUnsupportedMediaType(text=f"unsupported patch type {ctype}")
        ro.clear()
        ro.update(new)
        return web.json_response(ro)

    async def _patch_rollout_status(self, request: web.Request) -> web.Response:
        if not self.status_subresource:
            raise web.HTTPNotFound(text="the server could not find the requested resource")
        ro = self._rollout(request)
        if request.headers.get("Content-Type") != "application/merge-patch+json":
            raise web.HTTPUnsupportedMediaType(text="fake: status takes merge patches")
        body = self.requests[-1].body
        if set(body) != {"status"}:
            raise web.HTTPUnprocessableEntity(text="the status subresource changes status only")
        ro["status"] = _merge(ro.get("status", {}), body["status"])
        return web.json_response(ro)

    async def _get_canary(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.canaries:
            raise web.HTTPNotFound(text=f'canaries.flagger.app "{key[1]}" not found')
        return web.json_response(self.canaries[key])

    async def _proxy(self, request: web.Request) -> web.Response:
        """flagger-loadtester's gate endpoints, as reached through the Service proxy."""
        svc, path = request.match_info["svc"], request.match_info["path"]
        name, _, port = svc.partition(":")
        if name != "flagger-loadtester" or not port.isdigit():
            raise web.HTTPServiceUnavailable(text=f'no endpoints available for service "{svc}"')
        body = self.requests[-1].body
        if path not in ("rollback/open", "rollback/close", "gate/open", "gate/close"):
            raise web.HTTPNotFound(text="404 page not found")
        if not isinstance(body, dict) or not body.get("name") or not body.get("namespace"):
            return web.Response(status=400, text="Bad request: name and namespace required")
        self.gates.append((f"{request.match_info['ns']}/{svc}", path, body))
        return web.Response(status=202, text="Gate opened")
