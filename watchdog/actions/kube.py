"""A small Kubernetes API client: cluster configuration (in-cluster service account or a
kubeconfig) and the handful of REST calls the `kubernetes` step needs.

Why plain aiohttp and not kr8s, lightkube or kubernetes_asyncio: the step needs five calls (get a
Deployment, list its ReplicaSets, three kinds of PATCH) and full control over the exact patch
bodies, since `rollout_undo` must send byte-for-byte what `kubectl rollout undo` sends.
kubernetes_asyncio is a 30 MB generated client whose models would re-serialise the pod template
(dropping fields it does not know); lightkube and kr8s are built on httpx, a second HTTP stack
next to the daemon's aiohttp session, with its own pool, timeouts and TLS settings to keep in
line. With aiohttp the daemon's one session is reused, the fake API server in the tests is an
ordinary aiohttp app, and no dependency is added. What is given up: exec credential plugins and
auth-provider entries in kubeconfigs (cloud CLIs); those fail with a clear message — use a
service-account token or a client certificate, which is what an unattended daemon should use.

Shell: network and file I/O. It must not log or return credentials, and it knows nothing about
rollbacks (that is `watchdog.actions.steps.kubernetes`).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeError(Exception):
    """A failed API call: the HTTP status and the API's own message (never a credential)."""

    def __init__(self, message: str, status: int | None = None, reason: str = "",
                 retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after  # the Retry-After header of a 429 or 503, as sent

    @property
    def retryable(self) -> bool:
        """No answer at all (connection refused or reset, timed out), 429 or 5xx: trying again
        may work. A 4xx is the request's fault and would fail the same way."""
        return self.status is None or self.status == 429 or self.status >= 500


class KubeConfigError(KubeError):
    """No usable cluster configuration."""


@dataclass(frozen=True)
class Cluster:
    server: str
    ssl: ssl.SSLContext | bool
    token: str | None = None
    token_file: str | None = None  # re-read on every call: projected tokens rotate hourly
    basic_auth: tuple[str, str] | None = None
    namespace: str = "default"

    def auth_headers(self) -> dict[str, str]:
        token = self.token
        if self.token_file:
            try:
                token = Path(self.token_file).read_text().strip()
            except OSError as e:
                raise KubeConfigError(f"cannot read the Kubernetes token file: "
                                      f"{e.strerror or e}") from None
        if token:
            return {"Authorization": f"Bearer {token}"}
        if self.basic_auth:
            raw = f"{self.basic_auth[0]}:{self.basic_auth[1]}".encode()
            return {"Authorization": f"Basic {base64.b64encode(raw).decode()}"}
        return {}


def in_cluster(environ: Mapping[str, str], root: Path = SERVICE_ACCOUNT) -> Cluster:
    host = environ.get("KUBERNETES_SERVICE_HOST")
    port = environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise KubeConfigError("not running in a cluster (KUBERNETES_SERVICE_HOST is unset) and "
                              "no kubeconfig given (set WATCHDOG_KUBECONFIG)")
    if ":" in host:  # IPv6
        host = f"[{host}]"
    ca = root / "ca.crt"
    context: ssl.SSLContext | bool = (ssl.create_default_context(cafile=str(ca))
                                      if ca.exists() else True)
    ns_file = root / "namespace"
    namespace = ns_file.read_text().strip() if ns_file.exists() else "default"
    return Cluster(f"https://{host}:{port}", context, token_file=str(root / "token"),
                   namespace=namespace)


def _pick(items: Any, name: str, kind: str, path: str) -> dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name:
            body = item.get(kind)
            if isinstance(body, dict):
                return body
    raise KubeConfigError(f"{path}: no {kind} named {name!r}")


def _data_file(data: str, suffix: str) -> str:
    # ssl's load_cert_chain only takes paths; the file lives only as long as loading takes.
    fd, name = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as fh:
        fh.write(base64.b64decode(data))
    return name


def from_kubeconfig(path: str, context_name: str | None = None) -> Cluster:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise KubeConfigError(f"cannot read kubeconfig {path}: {e}") from None
    if not isinstance(doc, dict):
        raise KubeConfigError(f"{path}: not a kubeconfig")
    name = context_name or doc.get("current-context")
    if not name:
        raise KubeConfigError(f"{path}: no current-context")
    ctx = _pick(doc.get("contexts"), name, "context", path)
    cluster = _pick(doc.get("clusters"), ctx.get("cluster", ""), "cluster", path)
    user = _pick(doc.get("users"), ctx.get("user", ""), "user", path) if ctx.get("user") else {}
    server = cluster.get("server")
    if not server:
        raise KubeConfigError(f"{path}: cluster {ctx.get('cluster')!r} has no server")
    if "exec" in user or "auth-provider" in user:
        raise KubeConfigError(f"{path}: user {ctx.get('user')!r} uses an exec or auth-provider "
                              "plugin, which the watchdog does not run; give it a token, a "
                              "tokenFile or a client certificate")
    base = Path(path).parent

    def rel(p: str) -> str:
        return str(base / p) if not os.path.isabs(p) else p

    context: ssl.SSLContext | bool = True
    if server.startswith("https"):
        if cluster.get("insecure-skip-tls-verify"):
            context = False
        else:
            sslctx = ssl.create_default_context()
            if cluster.get("certificate-authority-data"):
                sslctx.load_verify_locations(cadata=base64.b64decode(
                    cluster["certificate-authority-data"]).decode())
            elif cluster.get("certificate-authority"):
                sslctx.load_verify_locations(cafile=rel(cluster["certificate-authority"]))
            context = sslctx
        cert, key = user.get("client-certificate"), user.get("client-key")
        temps: list[str] = []
        try:
            if user.get("client-certificate-data"):
                cert = _data_file(user["client-certificate-data"], ".crt")
                temps.append(cert)
            if user.get("client-key-data"):
                key = _data_file(user["client-key-data"], ".key")
                temps.append(key)
            if cert and key:
                if not isinstance(context, ssl.SSLContext):
                    context = ssl.create_default_context()
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                context.load_cert_chain(rel(cert), rel(key))
        finally:
            for t in temps:
                os.unlink(t)
    basic = (user["username"], user.get("password", "")) if user.get("username") else None
    return Cluster(str(server).rstrip("/"), context, token=user.get("token"),
                   token_file=rel(user["tokenFile"]) if user.get("tokenFile") else None,
                   basic_auth=basic, namespace=ctx.get("namespace") or "default")


def load_cluster(kubeconfig: str | None, environ: Mapping[str, str]) -> Cluster:
    """A kubeconfig when one is configured, else the pod's service account."""
    if kubeconfig:
        return from_kubeconfig(kubeconfig)
    return in_cluster(environ)


def _status_message(body: bytes, status: int) -> tuple[str, str]:
    try:
        doc = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace"), ""
    if isinstance(doc, dict) and doc.get("kind") == "Status":
        return str(doc.get("message") or status), str(doc.get("reason") or "")
    return body[:200].decode("utf-8", "replace"), ""


class KubeClient:
    """apps/v1 Deployments and ReplicaSets, the calls `kubectl rollout undo`, `kubectl scale`
    and `kubectl set image` make; Argo Rollouts' `Rollout` and Flagger's `Canary` (with the
    Service proxy to Flagger's load tester) for `kubectl argo rollouts abort|undo` and
    `kubectl flagger rollback`."""

    JSON_PATCH = "application/json-patch+json"
    MERGE_PATCH = "application/merge-patch+json"
    STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"

    def __init__(self, session: aiohttp.ClientSession, cluster: Cluster,
                 timeout: float = 30.0) -> None:
        self._session = session
        self.cluster = cluster
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                      body: Any = None, content_type: str | None = None) -> dict[str, Any]:
        headers = {"Accept": "application/json", **self.cluster.auth_headers()}
        data: bytes | None = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = content_type or "application/json"
        url = f"{self.cluster.server}{path}"
        try:
            async with self._session.request(method, url, params=params, data=data,
                                             headers=headers, ssl=self.cluster.ssl,
                                             timeout=self._timeout) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except TimeoutError:
            raise KubeError(f"{method} {path}: timed out") from None
        except aiohttp.ClientError as e:
            raise KubeError(f"{method} {path}: {type(e).__name__}: {e}") from None
        if status >= 300:
            message, reason = _status_message(raw, status)
            raise KubeError(f"{method} {path}: HTTP {status}: {message}", status, reason,
                            retry_after)
        try:
            doc = json.loads(raw)
        except ValueError:
            raise KubeError(f"{method} {path}: not JSON") from None
        if not isinstance(doc, dict):
            raise KubeError(f"{method} {path}: unexpected answer")
        return doc

    @staticmethod
    def deployment_path(namespace: str, name: str, subresource: str = "") -> str:
        path = (f"/apis/apps/v1/namespaces/{quote(namespace, safe='')}/deployments/"
                f"{quote(name, safe='')}")
        return f"{path}/{subresource}" if subresource else path

    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        return await self.request("GET", self.deployment_path(namespace, name))

    async def list_replicasets(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        params = {"labelSelector": selector}
        path = f"/apis/apps/v1/namespaces/{quote(namespace, safe='')}/replicasets"
        while True:  # follow `continue` like kubectl's FollowContinue
            doc = await self.request("GET", path, params=params)
            items.extend(i for i in doc.get("items") or [] if isinstance(i, dict))
            token = (doc.get("metadata") or {}).get("continue")
            if not token:
                return items
            params = {"labelSelector": selector, "continue": token}

    async def patch_deployment(self, namespace: str, name: str, patch: Any, content_type: str,
                               subresource: str = "") -> dict[str, Any]:
        return await self.request("PATCH", self.deployment_path(namespace, name, subresource),
                                  body=patch, content_type=content_type)

    # ---- Argo Rollouts and Flagger (custom resources) -------------------------------------

    @staticmethod
    def rollout_path(namespace: str, name: str, subresource: str = "") -> str:
        path = (f"/apis/argoproj.io/v1alpha1/namespaces/{quote(namespace, safe='')}/rollouts/"
                f"{quote(name, safe='')}")
        return f"{path}/{subresource}" if subresource else path

    @staticmethod
    def canary_path(namespace: str, name: str) -> str:
        return (f"/apis/flagger.app/v1beta1/namespaces/{quote(namespace, safe='')}/canaries/"
                f"{quote(name, safe='')}")

    @staticmethod
    def service_proxy_path(namespace: str, service: str, port: int, path: str) -> str:
        """The API server's proxy to a Service (`kubectl get --raw .../proxy/...`)."""
        return (f"/api/v1/namespaces/{quote(namespace, safe='')}/services/"
                f"{quote(service, safe='')}:{int(port)}/proxy/{path.lstrip('/')}")

    async def get(self, path: str) -> dict[str, Any]:
        return await self.request("GET", path)

    async def patch(self, path: str, patch: Any, content_type: str) -> dict[str, Any]:
        return await self.request("PATCH", path, body=patch, content_type=content_type)

    async def post_raw(self, path: str, body: Any) -> tuple[int, bytes]:
        """POST JSON through a proxy path, whose answer need not be a Kubernetes object; the
        status and up to 4 KiB of the body. Raises `KubeError` only when there is no answer."""
        headers = {"Accept": "application/json", "Content-Type": "application/json",
                   **self.cluster.auth_headers()}
        data = json.dumps(body, separators=(",", ":")).encode()
        try:
            async with self._session.post(f"{self.cluster.server}{path}", data=data,
                                          headers=headers, ssl=self.cluster.ssl,
                                          timeout=self._timeout) as resp:
                return resp.status, await resp.content.read(4096)
        except TimeoutError:
            raise KubeError(f"POST {path}: timed out") from None
        except aiohttp.ClientError as e:
            raise KubeError(f"POST {path}: {type(e).__name__}: {e}") from None
