"""The chart against a real Kubernetes API server: install, upgrade, roll back, uninstall.

A control plane of the tests' own (deploy/local/kube: kube-apiserver, etcd,
controller-manager and scheduler built from the Go module proxy, kwok's fake nodes),
with the upstream KEDA and Prometheus Operator CRDs installed. Rendering is not
installing: the API server's own rules (immutable fields, strict validation of every
field, CRD schemas) are what an upgrade meets in a cluster.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm_render import CHART, EXAMPLES, MATRIX, template
from tests.kube_helpers import Kube, control_plane
from tests.upstream_schemas import helm

# Started and built once; its tests are scheduled last (conftest), so that CI can build
# the binaries while the rest of the suite runs.
pytestmark = [pytest.mark.kube, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    with control_plane(tmp_path_factory.mktemp("kube")) as k:
        yield k


def run_helm(kube: Kube, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    home = kube.data_dir / "helm"
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig), "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}
    out = subprocess.run([helm(), *args], env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert out.returncode == 0, f"helm {' '.join(args)} failed:\n{out.stderr}"
    return out


def manifest(kube: Kube, release: str, namespace: str) -> list[dict[str, Any]]:
    text = run_helm(kube, "get", "manifest", release, "-n", namespace).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def deployment(kube: Kube, namespace: str, release: str) -> dict[str, Any]:
    (found,) = [d for d in kube.items("apps/v1", "Deployment", namespace)
                if d["metadata"]["labels"].get("app.kubernetes.io/instance") == release]
    return found


def case_args(name: str) -> list[str]:
    """A case's helm arguments, the values files made absolute (helm runs elsewhere)."""
    args = MATRIX[name][0] if name in MATRIX else []
    return [str(Path(a).resolve()) if a.endswith(".yaml") else a for a in args]


SOURCES_AND_ACCELERATORS = [
    (f"{source}-{accel}", ["--set", f"model.source={source}", "--set", f"accelerator={accel}"])
    for source in ("download", "pvc", "image", "baked") for accel in ("cpu", "gpu")
]
EXAMPLE_CASES = [(f"example-{p.stem}", ["-f", str(p.resolve())]) for p in EXAMPLES]
UPGRADES = [  # what a platform team changes from one release to the next, one helm upgrade each
    ["--set", "image.tag=0.2.0-cpu"],
    ["--set", "model.revision=" + "c" * 40],
    ["--set", "guarantee=exactly_once"],
    ["--set", "autoscaling.enabled=false", "--set", "replicaCount=3"],
]


@pytest.mark.parametrize(("name", "args"), SOURCES_AND_ACCELERATORS + EXAMPLE_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_install_upgrade_rollback_uninstall(kube: Kube, name: str, args: list[str]) -> None:
    namespace, release = f"t-{name}"[:63], "sw"
    run_helm(kube, "install", release, str(CHART), "-n", namespace, "--create-namespace", *args)
    objs = manifest(kube, release, namespace)
    for obj in objs:  # every object the chart rendered is in the cluster
        meta = obj["metadata"]
        assert kube.get(obj["apiVersion"], obj["kind"], meta.get("namespace", namespace), meta["name"]), (obj["kind"], meta["name"])
    first_image = deployment(kube, namespace, release)["spec"]["template"]["spec"]["containers"][0]["image"]

    for upgrade in UPGRADES:  # an immutable field changed under an unchanged name fails here ("field is immutable")
        run_helm(kube, "upgrade", release, str(CHART), "-n", namespace, "--reuse-values", *upgrade)
    worker = deployment(kube, namespace, release)
    assert worker["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":0.2.0-cpu")
    assert worker["spec"]["replicas"] == 3
    history = run_helm(kube, "history", release, "-n", namespace, "-o", "json").stdout
    assert len(yaml.safe_load(history)) == 1 + len(UPGRADES)

    run_helm(kube, "rollback", release, "1", "-n", namespace)
    assert deployment(kube, namespace, release)["spec"]["template"]["spec"]["containers"][0]["image"] == first_image

    run_helm(kube, "uninstall", release, "-n", namespace)
    for obj in objs:  # gone, but the model's claim (kept on purpose: helm.sh/resource-policy)
        meta = obj["metadata"]
        left = kube.get(obj["apiVersion"], obj["kind"], meta.get("namespace", namespace), meta["name"])
        gone = left is None or left["metadata"].get("deletionTimestamp") is not None
        assert gone != (obj["kind"] == "PersistentVolumeClaim"), (obj["kind"], meta["name"])


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_every_object_passes_the_api_servers_strict_validation(kube: Kube, name: str) -> None:
    """Each rendered object, dry-run applied with strict field validation: the core types by the
    server's own schemas, the CRD-based ones (ScaledObject, PrometheusRule...) by the upstream CRDs."""
    namespace = f"v-{name}"[:63]
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    objs = [o for o in yaml.safe_load_all(template(*case_args(name), kube=MATRIX[name][1]).stdout) if o]
    for obj in objs:
        kube.apply(obj, namespace=namespace, dry_run=True)


def test_a_backfill_job_installs_and_uninstalls(kube: Kube) -> None:
    """mode: job on the API server: the Job of the backfill example, accepted with strict validation
    and the bounded run's settings, and gone with the release."""
    namespace, release = "t-backfill", "backfill"
    backfill = (CHART / "examples" / "jobs" / "backfill.yaml").resolve()
    run_helm(kube, "install", release, str(CHART), "-n", namespace, "--create-namespace", "-f", str(backfill))
    objs = manifest(kube, release, namespace)
    (job,) = [o for o in objs if o["kind"] == "Job" and o["metadata"]["name"].startswith(release)]
    found = kube.get("batch/v1", "Job", namespace, job["metadata"]["name"])
    assert found and found["spec"]["parallelism"] == found["spec"]["completions"] == 3
    assert found["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    (config,) = [o for o in objs if o["kind"] == "ConfigMap" and "RUN_UNTIL" in o.get("data", {})]
    assert config["data"]["RUN_UNTIL"] == "end"
    run_helm(kube, "uninstall", release, "-n", namespace)
    left = kube.get("batch/v1", "Job", namespace, job["metadata"]["name"])
    assert left is None or left["metadata"].get("deletionTimestamp") is not None


def test_the_fake_nodes_renew_their_leases(kube: Kube) -> None:
    """A node that renews no Lease goes Unknown every grace period, and the node controller marks its
    pods not ready, which kwok never undoes: a rollout caught then waits forever (it did, in CI)."""
    def renewals() -> dict[str, str]:
        return {lease["metadata"]["name"]: lease["spec"].get("renewTime", "")
                for lease in kube.items("coordination.k8s.io/v1", "Lease", "kube-node-lease")}

    first = kube.wait("the fake nodes' Leases", lambda: (lambda r: r if {"fake-node-0", "fake-node-1"} <= set(r) else None)(renewals()))
    kube.wait("a renewal of each", lambda: all(renewals()[n] > first[n] for n in ("fake-node-0", "fake-node-1")), timeout_s=60)
    nodes = kube.items("v1", "Node", None)
    assert all(c["status"] == "True" for n in nodes for c in n["status"]["conditions"] if c["type"] == "Ready")


def test_the_pods_roll_out_and_the_model_job_completes(kube: Kube) -> None:
    """With fake nodes the Deployment rolls out (init container first) and the pvc source's Job runs
    to completion, on a claim bound to a volume the test provides (there is no provisioner)."""
    namespace, release = "t-rollout", "sw"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    kube.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "models-rollout"},
                "spec": {"capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteMany"],
                         "hostPath": {"path": "/tmp/models"}, "persistentVolumeReclaimPolicy": "Retain",
                         "claimRef": {"namespace": namespace, "name": "sw-sentiment-worker-model"}}})
    run_helm(kube, "install", release, str(CHART), "-n", namespace, "--set", "model.source=pvc",
             "--set", "autoscaling.enabled=false", "--set", "replicaCount=2")
    (job,) = kube.items("batch/v1", "Job", namespace)
    kube.wait("the model Job to complete",
              lambda: (kube.get("batch/v1", "Job", namespace, job["metadata"]["name"]) or {}).get("status", {}).get("succeeded"))
    kube.wait("the rollout", lambda: deployment(kube, namespace, release).get("status", {}).get("availableReplicas") == 2)
    # An image upgrade: a new Job (named by its spec), the pods replaced one at a time.
    run_helm(kube, "upgrade", release, str(CHART), "-n", namespace, "--reuse-values", "--set", "image.tag=0.2.0-cpu")
    jobs = kube.items("batch/v1", "Job", namespace)
    assert [j["metadata"]["name"] for j in jobs] != [job["metadata"]["name"]] and len(jobs) == 1

    def rolled() -> bool:
        d = deployment(kube, namespace, release)
        status = d.get("status", {})
        return status.get("updatedReplicas") == 2 and status.get("availableReplicas") == 2 and \
            status.get("observedGeneration") == d["metadata"]["generation"]

    kube.wait("the upgraded rollout", rolled)
    run_helm(kube, "uninstall", release, "-n", namespace)


def test_a_changed_secret_rolls_the_pods_on_the_next_upgrade(kube: Kube) -> None:
    """The pod template carries a checksum of the Secrets it reads, looked up at install and upgrade."""
    namespace, release = "t-secret", "sw"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})

    def secret(password: str) -> None:
        kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sentiment-worker-kafka"},
                    "data": {"username": base64.b64encode(b"worker").decode(),
                             "password": base64.b64encode(password.encode()).decode()}}, namespace=namespace)

    def checksum() -> str:
        return deployment(kube, namespace, release)["spec"]["template"]["metadata"]["annotations"]["checksum/secrets"]

    secret("first")
    args = ["--set", "kafka.securityProtocol=SASL_PLAINTEXT", "--set", "kafka.saslMechanism=SCRAM-SHA-512"]
    run_helm(kube, "install", release, str(CHART), "-n", namespace, *args)
    before = checksum()
    run_helm(kube, "upgrade", release, str(CHART), "-n", namespace, "--reuse-values")
    assert checksum() == before, "an unchanged Secret rolls nothing"
    secret("rotated")
    run_helm(kube, "upgrade", release, str(CHART), "-n", namespace, "--reuse-values")
    assert checksum() != before
    run_helm(kube, "uninstall", release, "-n", namespace)
