"""Rendering the Helm chart (deploy/helm/sentiment-worker) for the tests: the values matrix,
`helm template` with a YAML loader that refuses duplicate keys, and accessors for the
rendered objects. Used by tests/test_helm_chart.py and tests/test_deploy_k8s.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO
from tests.upstream_schemas import helm

CHART = REPO / "deploy" / "helm" / "sentiment-worker"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "sentiment-worker.json"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
# The oldest Kubernetes the chart targets (PDB unhealthyPodEvictionPolicy is GA in 1.31)
# and the newest the installed kubernetes-validate knows.
K8S_OLDEST = "1.31.0"
K8S_NEWEST = kubernetes_validate.latest_version()
MONITORING = ["--api-versions", "monitoring.coreos.com/v1"]
# Env vars the pods may set that are not worker settings.
NON_SETTINGS_ENV = {"HF_HUB_OFFLINE", "HF_HOME", "HOME", "HF_ENDPOINT", "HF_TOKEN"}

# name → (helm arguments, Kubernetes version). Together they switch every template branch on.
MATRIX: dict[str, tuple[list[str], str]] = {
    "defaults": ([], K8S_OLDEST),
    "defaults-newest": ([], K8S_NEWEST),
    "gpu-pvc-sasl-static-monitoring": ([
        "--set", "accelerator=gpu", "--set", "model.source=pvc", "--set", "kafka.securityProtocol=SASL_SSL",
        "--set", "kafka.tls.ca=true", "--set", "staticMembership=true", "--set", "autoscaling.maxReplicas=4",
        "--set", "autoscaling.prometheus.enabled=true", "--set", "grafanaDashboard.enabled=true",
        "--set", "metrics.serviceMonitor.labels.release=kube-prometheus-stack", "--set", "model.tokenSecret=hf",
        "--set", "prometheusRule.brokerLag.enabled=true", "--set", "prometheusRule.brokerLag.exporter=kminion",
        "--set", 'prometheusRule.brokerLag.matchers=cluster="prod"', *MONITORING], K8S_NEWEST),
    "cpu-mtls-baked-exactly-once": ([
        "--set", "kafka.securityProtocol=SSL", "--set", "kafka.tls.ca=true", "--set", "kafka.tls.clientCert=true",
        "--set", "model.source=baked", "--set", "guarantee=exactly_once", "--set", "precision=int8",
        "--set", "batch.maxSize=32", "--set", "settings.LOG_LEVEL=debug", "--set", "model.hubEndpoint=https://hub.example.invalid",
        *MONITORING], K8S_OLDEST),
    "gpu-image-volume-mig": ([
        "--set", "accelerator=gpu", "--set", "model.source=image", "--set", "gpu.resourceName=nvidia.com/mig-1g.18gb",
        "--set", "gpu.runtimeClassName=nvidia", "--set", "gpu.nodeSelector.nvidia\\.com/gpu\\.present=true",
        "--set", "autoscaling.maxReplicas=4", "--set", "image.digest=sha256:" + "a" * 64,
        "--set", "autoscaling.fallback.enabled=false"], K8S_NEWEST),
    "cpu-pvc-onnxruntime-int8": ([
        "--set", "model.source=pvc", "--set", "runtime=onnxruntime", "--set", "precision=int8"], K8S_OLDEST),
    "no-autoscaling-no-networkpolicy-existing-claim": ([
        "--set", "autoscaling.enabled=false", "--set", "networkPolicy.enabled=false", "--set", "model.source=pvc",
        "--set", "model.pvc.existingClaim=models", "--set", "kafka.securityProtocol=SASL_PLAINTEXT",
        "--set", "kafka.saslMechanism=PLAIN", "--set", "podDisruptionBudget.enabled=false",
        "--set", "serviceAccount.create=false", "--set", "metrics.serviceMonitor.enabled=false",
        "--set", "prometheusRule.enabled=false", *MONITORING], K8S_OLDEST),
    "renamed-release-job-and-runbooks": ([
        "--set", "metrics.job=reviews-sentiment", "--set", "prometheusRule.runbookBaseUrl=https://docs.example.invalid/ops.md",
        "--set", "networkPolicy.kafkaTo[0].ipBlock.cidr=10.20.0.0/16", "--set", "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
        "--set", "prometheusRule.brokerLag.enabled=true", *MONITORING], K8S_NEWEST),
    "oauthbearer": ([
        "--set", "kafka.securityProtocol=SASL_SSL", "--set", "kafka.saslMechanism=OAUTHBEARER",
        "--set", "kafka.oauth.tokenEndpointUrl=https://sso.example.invalid/realms/kafka/protocol/openid-connect/token",
        "--set", "kafka.oauth.clientId=sentiment-worker", "--set", "kafka.oauth.scope=kafka",
        "--set", "kafka.tls.ca=true", "--set", "kafka.caSecret.name=my-cluster-cluster-ca-cert"], K8S_NEWEST),
    **{f"example-{p.stem}": (["-f", str(p), *MONITORING], K8S_NEWEST) for p in EXAMPLES},
}


def model_source(name: str) -> str:
    """model.source of a matrix case: its --set, its values file, or values.yaml's default."""
    args = MATRIX[name][0]
    source = next((s for s in ("pvc", "image", "baked") if f"model.source={s}" in " ".join(args)), None)
    if name.startswith("example-"):
        source = yaml.safe_load(Path(args[1]).read_text()).get("model", {}).get("source")
    return source or VALUES["model"]["source"]


class StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (PyYAML keeps the last one silently)."""


def _no_duplicates(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    dupes = {k for k in keys if keys.count(k) > 1}
    if dupes:
        raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {sorted(dupes)}", node.start_mark)
    return loader.construct_mapping(node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def template(*args: str, kube: str = K8S_OLDEST, release: str = "sw", namespace: str = "sentiment",
             check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [helm(), "template", release, str(CHART), "--namespace", namespace, "--kube-version", kube, *args],
        capture_output=True, text=True, timeout=120,
    )
    if check:
        assert out.returncode == 0, f"helm template {' '.join(args)} failed:\n{out.stderr}"
    return out


def render(*args: str, kube: str = K8S_OLDEST, release: str = "sw", namespace: str = "sentiment") -> list[dict[str, Any]]:
    out = template(*args, kube=kube, release=release, namespace=namespace)
    return [doc for doc in yaml.load_all(out.stdout, Loader=StrictLoader) if doc]


@pytest.fixture(scope="module", params=sorted(MATRIX), ids=str)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    args, kube = MATRIX[request.param]
    return request.param, render(*args, kube=kube)


def find(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = find(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def pod_spec(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objs, "Deployment")["spec"]["template"]["spec"]


def container(objs: list[dict[str, Any]], name: str = "worker", init: bool = False) -> dict[str, Any]:
    containers = pod_spec(objs)["initContainers" if init else "containers"]
    return next(c for c in containers if c["name"] == name)


def config(objs: list[dict[str, Any]]) -> dict[str, str]:
    """The worker's settings (the ConfigMap that is not the Grafana dashboard)."""
    (cm,) = [c for c in find(objs, "ConfigMap") if not c["metadata"]["name"].endswith("-dashboard")]
    return cm["data"]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}
