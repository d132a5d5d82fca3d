"""The Helm chart (deploy/helm/metrics-watchdog), linted and rendered by Helm itself: Helm's Go
SDK (v4) through the PyPI package helm-python-sdk, which bundles it as a native library — there
is no `helm` binary in Debian or on PyPI (measured: README, "Kubernetes"). Each values file of
the chart's ci/ folder, and the defaults, render to objects that are valid for Kubernetes 1.28
and 1.37 (kubernetes-validate, strict) and hold what the chart promises; values that cannot
work are refused at render time with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="pip install helm-python-sdk (a dev extra)")
kv = pytest.importorskip("kubernetes_validate.utils")

ROOT = Path(__file__).parent.parent
CHART = ROOT / "deploy" / "helm" / "metrics-watchdog"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
K8S_VERSIONS = ("1.28.0", "1.37.0")


def render(values: dict[str, Any] | None = None, name: str = "wd",
           namespace: str = "prod") -> dict[str, dict[str, Any]]:
    """`helm template`: every object, by `Kind/name`."""
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values or {}, name=name, namespace=namespace)
    out: dict[str, dict[str, Any]] = {}
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                key = f"{doc['kind']}/{doc['metadata']['name']}"
                assert key not in out, key
                out[key] = doc
    return out


def container(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    [dep] = [o for o in objs.values() if o["kind"] == "Deployment"]
    [c] = dep["spec"]["template"]["spec"]["containers"]
    return c


def env(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(objs)["env"]}


def test_helm_lint_finds_nothing() -> None:
    for values in [None, *CI_VALUES]:
        data = yaml.safe_load(values.read_text()) if values else None
        report = helm.lint(str(CHART), data, strict=True, namespace="prod")
        assert report["errors"] == [], (values, report)
        # severity 1 is "info" (an icon is recommended); warnings (2) and errors (3) fail
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], (values, report)


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_every_object_is_valid_kubernetes(values: Path | None) -> None:
    objs = render(yaml.safe_load(values.read_text()) if values else None)
    for doc in objs.values():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # CRDs: scripts/lint-deploy.sh checks them against the operator's schema
        for version in K8S_VERSIONS:
            kv.validate(doc, version, strict=True)
    # every object carries the release's labels, and the Service selects the Pods
    for doc in objs.values():
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == "wd"
    pod_labels = next(o for o in objs.values() if o["kind"] == "Deployment")[
        "spec"]["template"]["metadata"]["labels"]
    svc = objs["Service/wd-metrics-watchdog"]
    assert all(pod_labels[k] == v for k, v in svc["spec"]["selector"].items())


def test_defaults_one_replica_on_sqlite_non_root_with_prometheus_probes() -> None:
    objs = render()
    assert sorted(objs) == [
        "Deployment/wd-metrics-watchdog", "PersistentVolumeClaim/wd-metrics-watchdog-state",
        "Role/wd-metrics-watchdog-actions", "RoleBinding/wd-metrics-watchdog-actions",
        "Service/wd-metrics-watchdog", "ServiceAccount/wd-metrics-watchdog"]
    dep = objs["Deployment/wd-metrics-watchdog"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["enableServiceLinks"] is False
    c = container(objs)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http"}
    e = env(objs)
    assert e["WATCHDOG_STATE_URL"] == "sqlite:////var/lib/watchdog/state.db"
    assert "WATCHDOG_REPLICA_ID" not in e and "WATCHDOG_API_TOKEN" not in e
    assert {m["mountPath"] for m in c["volumeMounts"]} == {
        "/etc/watchdog/rules", "/var/lib/watchdog", "/tmp"}
    # an empty folder hides the example rules the image carries at /etc/watchdog/rules
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["rules"]
    assert c["image"] == "metrics-watchdog:0.1.0"


def test_ha_on_postgresql() -> None:
    values = yaml.safe_load((CHART / "ci" / "ha-values.yaml").read_text())
    objs = render(values)
    dep = objs["Deployment/wd-metrics-watchdog"]
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    e = env(objs)
    assert e["WATCHDOG_STATE_URL"] == {"secretKeyRef": {"name": "watchdog-postgres",
                                                        "key": "state-url"}}
    assert e["WATCHDOG_REPLICA_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert e["WATCHDOG_LEASE_TTL"] == "20s"
    assert e["WATCHDOG_API_TOKEN"]["secretKeyRef"]["name"] == "watchdog-secrets"
    assert e["WATCHDOG_EVALUATION_INTERVAL"] == "30s" and e["WATCHDOG_DRY_RUN"] == "false"
    assert e["WATCHDOG_PROMETHEUS_BEARER_TOKEN_FILE"] == "/etc/watchdog/prometheus/token"
    assert "PersistentVolumeClaim/wd-metrics-watchdog-state" not in objs  # no SQLite volume
    mounts = {m["name"]: m["mountPath"] for m in container(objs)["volumeMounts"]}
    assert mounts["rules-values"] == "/etc/watchdog/rules/values"
    assert mounts["rules-team-routing"] == "/etc/watchdog/rules/team-routing"
    assert mounts["secrets"] == "/etc/watchdog/secrets"
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["rules-platform-rules"]["configMap"] == {"name": "platform-rules",
                                                           "optional": True}
    # the rules written in values are a ConfigMap the watchdog itself accepts
    cm = objs["ConfigMap/wd-metrics-watchdog-rules"]
    from watchdog.rulefile import parse_rule_file

    pf = parse_rule_file(cm["data"]["checkout.yml"], "checkout.yml")
    assert pf.ok, pf.errors
    assert objs["PodDisruptionBudget/wd-metrics-watchdog"]["spec"]["maxUnavailable"] == 1
    np = objs["NetworkPolicy/wd-metrics-watchdog"]["spec"]
    assert np["policyTypes"] == ["Ingress", "Egress"]
    assert np["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert len(np["ingress"][0]["from"]) == 2
    sm = objs["ServiceMonitor/wd-metrics-watchdog"]
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["endpoints"][0]["port"] == "http"


def test_the_prometheusrule_is_the_base_one_with_the_release_job() -> None:
    objs = render({"prometheusRule": {"enabled": True}}, name="shop")
    rule = objs["PrometheusRule/shop-metrics-watchdog"]
    base = yaml.safe_load((ROOT / "deploy" / "base" / "prometheusrule.yaml").read_text())
    expected = yaml.safe_load(yaml.safe_dump(base["spec"]["groups"], width=10_000).replace(
        'job="metrics-watchdog"', 'job="shop-metrics-watchdog"'))
    assert rule["spec"]["groups"] == expected
    assert 'job="shop-metrics-watchdog"' in rule["spec"]["groups"][0]["rules"][0]["expr"]
    # and the file in the chart is the base's, not a drifting copy
    copied = yaml.safe_load((CHART / "files" / "prometheusrule-groups.yaml").read_text())
    assert copied == base["spec"]["groups"]


def test_created_secret_and_rules() -> None:
    values = yaml.safe_load((CHART / "ci" / "created-secret-values.yaml").read_text())
    objs = render(values)
    secret = objs["Secret/wd-metrics-watchdog"]
    assert secret["stringData"]["slack"].startswith("https://hooks.slack.com/")
    e = env(objs)
    assert e["WATCHDOG_API_TOKEN"]["secretKeyRef"]["name"] == "wd-metrics-watchdog"
    pvc = objs["PersistentVolumeClaim/wd-metrics-watchdog-state"]
    assert pvc["spec"]["storageClassName"] == "fast"
    assert "PodDisruptionBudget/wd-metrics-watchdog" not in objs  # one replica: no budget
    # a changed secret rolls the Pods (tokens are read at start)
    other = render({**values, "secrets": {"create": True, "values": {"api-token": "x" * 32}}})
    annotations = [o["Deployment/wd-metrics-watchdog"]["spec"]["template"]["metadata"][
        "annotations"]["checksum/secret"] for o in (objs, other)]
    assert annotations[0] != annotations[1]


@pytest.mark.parametrize(("values", "message"), [
    ({"replicas": 2}, "replicas > 1 needs the state in PostgreSQL"),
    ({"settings": {"WATCHDOG_DRY_RUN": "true"}}, "without the WATCHDOG_ prefix"),
    ({"settings": {"API_TOKEN": "x"}}, "is a secret"),
    ({"secrets": {"existingSecret": "a", "create": True}}, "not both"),
    ({"replica": 3}, "replica"),  # a misspelt key: values.schema.json refuses it
])
def test_values_that_cannot_work_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)
