"""Kubernetes manifests (deploy/k8s): render every overlay with kustomize, validate every object offline.

Built-in kinds are checked against Kubernetes' own OpenAPI-derived JSON schemas (the
`kubernetes-validate` package, strict: unknown fields fail) for the oldest and newest
Kubernetes versions we claim. KEDA's objects are CRDs that package doesn't know: they are
checked against deploy/k8s/schemas/keda-v1alpha1.schema.json (written for the fields we
use, after KEDA's CRDs and its kafka scaler), and their HPA behavior block against
Kubernetes' HorizontalPodAutoscaler schema. Then the things schemas can't see: probes
on the worker's real endpoints, grace period vs. the worker's drain, replicas ≤
partitions, settings names and values the worker accepts, the same start command as the
image.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from worker.settings import Settings

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
KEDA_SCHEMA = json.loads((K8S / "schemas" / "keda-v1alpha1.schema.json").read_text())
# The oldest Kubernetes these manifests target (PDB unhealthyPodEvictionPolicy is GA in
# 1.31) and the newest the installed kubernetes-validate knows.
K8S_VERSIONS = ["1.31.0", kubernetes_validate.latest_version()]
TARGETS = sorted(
    [p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml")]
    + [p.parent for p in (K8S / "examples").glob("*/kustomization.yaml")]
)
# Env vars the pods may set that are not worker settings.
NON_SETTINGS_ENV = {"HF_HUB_OFFLINE", "HF_HOME", "HOME"}


def kustomize_cmd() -> list[str]:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    pytest.fail("neither kubectl nor kustomize is installed: the manifests can't be rendered")


def render(directory: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [*kustomize_cmd(), str(directory)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"kustomize failed for {directory}:\n{out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=TARGETS, ids=lambda p: f"{p.parent.name}/{p.name}")
def rendered(request: pytest.FixtureRequest) -> tuple[Path, list[dict[str, Any]]]:
    return request.param, render(request.param)


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def worker_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "worker")


def config(objs: list[dict[str, Any]]) -> dict[str, str]:
    return one(objs, "ConfigMap")["data"]


def test_overlays_exist() -> None:
    names = {f"{p.parent.name}/{p.name}" for p in TARGETS}
    assert {"overlays/cpu", "overlays/gpu"} <= names


def test_every_object_validates(rendered) -> None:
    directory, objs = rendered
    kinds = {o["kind"] for o in objs}
    assert {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "ScaledObject"} <= kinds
    for obj in objs:
        where = f"{directory.name}: {obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"].startswith("keda.sh/"):
            errors = sorted(jsonschema.Draft202012Validator(KEDA_SCHEMA).iter_errors(obj), key=str)
            assert not errors, f"{where}: " + "; ".join(e.message for e in errors)
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where} invalid for Kubernetes {version}: {exc.message} at {list(exc.path)}")


def test_keda_hpa_behavior_is_valid_kubernetes(rendered) -> None:
    """KEDA passes `advanced.horizontalPodAutoscalerConfig.behavior` to the HPA it creates."""
    _, objs = rendered
    behavior = one(objs, "ScaledObject")["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-hpa-sentiment-worker"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sentiment-worker"},
            "minReplicas": 1,
            "maxReplicas": 2,
            "behavior": behavior,
        },
    }
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(hpa, version, strict=True)


def test_keda_schema_rejects_what_keda_rejects() -> None:
    """The hand-written schema is not a rubber stamp: typical ScaledObject mistakes fail it."""
    base = render(K8S / "overlays" / "cpu")
    good = one(base, "ScaledObject")
    validator = jsonschema.Draft202012Validator(KEDA_SCHEMA)
    assert validator.is_valid(good)

    def broken(change) -> dict[str, Any]:
        obj = json.loads(json.dumps(good))
        change(obj)
        return obj

    trigger = lambda o: o["spec"]["triggers"][0]["metadata"]  # noqa: E731
    cases = {
        "numeric lagThreshold": broken(lambda o: trigger(o).update(lagThreshold=2000)),
        "unknown trigger key": broken(lambda o: trigger(o).update(lagTreshold="5")),
        "missing consumerGroup": broken(lambda o: trigger(o).pop("consumerGroup")),
        "bad offsetResetPolicy": broken(lambda o: trigger(o).update(offsetResetPolicy="smallest")),
        "unknown spec field": broken(lambda o: o["spec"].update(maxReplicas=3)),
        "no scale target": broken(lambda o: o["spec"].pop("scaleTargetRef")),
    }
    for name, obj in cases.items():
        assert not validator.is_valid(obj), f"schema accepted: {name}"


def test_scaler_watches_the_workers_group_and_topic(rendered) -> None:
    _, objs = rendered
    cfg = config(objs)
    deployment = one(objs, "Deployment")
    scaled = one(objs, "ScaledObject")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert spec["scaleTargetRef"]["kind"] == "Deployment"
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["bootstrapServers"] == cfg["KAFKA_BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == cfg["GROUP_ID"]  # the Faust app id is the group id
    assert meta["topic"] == cfg["INPUT_TOPIC"]  # explicit: never every topic of the group
    assert meta["allowIdleConsumers"] == "false"
    # Replicas beyond the partition count would sit idle (and unready).
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= int(cfg["TOPIC_PARTITIONS"])
    # KEDA's HPA owns the replica count: a fixed one would fight it on every apply.
    assert "replicas" not in deployment["spec"]
    if "authenticationRef" in trigger:
        auth = one(objs, "TriggerAuthentication")
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]


def test_overlay_settings_reach_the_scaler(tmp_path: Path) -> None:
    """Kafka settings are written once (the ConfigMap): an overlay's values flow into KEDA's trigger."""
    overlay = tmp_path / "site"
    overlay.mkdir()
    rel = lambda p: os.path.relpath(p, overlay)  # noqa: E731  kustomize wants relative paths
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [rel(K8S / "overlays" / "cpu")],
                "configMapGenerator": [
                    {
                        "name": "sentiment-worker-config",
                        "behavior": "merge",
                        "literals": ["GROUP_ID=site-group", "INPUT_TOPIC=site-in", "KAFKA_BOOTSTRAP_SERVERS=b1:9092,b2:9092"],
                    }
                ],
                "components": [rel(K8S / "components" / "keda-from-config")],
            }
        )
    )
    meta = one(render(overlay), "ScaledObject")["spec"]["triggers"][0]["metadata"]
    assert (meta["consumerGroup"], meta["topic"], meta["bootstrapServers"]) == ("site-group", "site-in", "b1:9092,b2:9092")


def test_config_holds_only_settings_the_worker_accepts(rendered) -> None:
    _, objs = rendered
    cfg = config(objs)
    container = worker_container(objs)
    env_names = set(cfg) | {e["name"] for e in container.get("env", [])}
    fields = {name.upper() for name in Settings.model_fields}
    unknown = env_names - fields - NON_SETTINGS_ENV
    assert not unknown, f"not worker settings (typo?): {sorted(unknown)}"
    # Values parse with the worker's own validation (credential files exist only in the pod).
    values = {k.lower(): v for k, v in cfg.items() if k.lower() in Settings.model_fields}
    for path_setting in ("sasl_password_file", "ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        if path_setting in values:
            assert values.pop(path_setting).startswith("/etc/sentiment-worker/kafka/")
    if values.get("security_protocol", "").startswith("SASL"):
        values["sasl_username"] = "from-the-secret"
    Settings(**values)


def test_probes_and_port_match_the_worker(rendered) -> None:
    _, objs = rendered
    cfg = config(objs)
    deployment = one(objs, "Deployment")
    pod = deployment["spec"]["template"]
    container = worker_container(objs)
    (port,) = [p for p in container["ports"] if p["name"] == "http"]
    assert port["containerPort"] == int(cfg["WEB_PORT"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    # The model loads before the web server starts: the startup probe must allow minutes.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == cfg["WEB_PORT"]
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"

    service = one(objs, "Service")
    assert service["metadata"]["name"] == "sentiment-worker"  # Prometheus job label the alerts expect
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_shutdown_rollout_and_disruptions(rendered) -> None:
    from worker.service import DRAIN_TIMEOUT_S

    _, objs = rendered
    deployment = one(objs, "Deployment")
    pod_spec = deployment["spec"]["template"]["spec"]
    # SIGTERM → drain (DRAIN_TIMEOUT_S) → producer flush, commit, leave group; then SIGKILL.
    assert DRAIN_TIMEOUT_S + 20 <= pod_spec["terminationGracePeriodSeconds"] <= 120
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxSurge"] == 0 and rolling["maxUnavailable"] == 1
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()

    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_security_and_resources(rendered) -> None:
    _, objs = rendered
    pod_spec = one(objs, "Deployment")["spec"]["template"]["spec"]
    container = worker_container(objs)
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["runAsUser"] == dockerfile_uid()
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DATA_DIR"].startswith("/tmp/")
    requests = container["resources"]["requests"]
    assert {"cpu", "memory"} <= set(requests)
    assert "memory" in container["resources"]["limits"]
    # Kafka credentials: only ever references to the Secret, never values in the manifests.
    creds = volumes["kafka-credentials"]["secret"]["secretName"]
    assert env["SASL_USERNAME"] is None
    (username,) = [e for e in container["env"] if e["name"] == "SASL_USERNAME"]
    assert username["valueFrom"]["secretKeyRef"]["name"] == creds
    assert not [o for o in objs if o["kind"] == "Secret"], "Secrets are created by the operator, never rendered"
    assert "SASL_PASSWORD" not in config(objs)


def test_command_is_the_images(rendered) -> None:
    _, objs = rendered
    container = worker_container(objs)
    assert container["command"] + container["args"] == ["sentiment-worker", "run"]
    assert container["command"] + container["args"] == dockerfile_start_command()


def test_cpu_overlay() -> None:
    objs = render(K8S / "overlays" / "cpu")
    cfg = config(objs)
    container = worker_container(objs)
    assert cfg["DEVICE"] == "cpu"
    assert container["image"].endswith("-cpu")
    # One inference thread per requested core: no oversubscription of a shared node.
    assert int(cfg["TORCH_THREADS"]) == int(container["resources"]["requests"]["cpu"])
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


def test_gpu_overlay() -> None:
    objs = render(K8S / "overlays" / "gpu")
    cfg = config(objs)
    container = worker_container(objs)
    pod_spec = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert cfg["DEVICE"] == "cuda"
    assert container["image"].endswith("-cuda")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec["tolerations"]
    assert int(cfg["BATCH_MAX_SIZE"]) > int(config(render(K8S / "overlays" / "cpu"))["BATCH_MAX_SIZE"])


def test_static_membership_and_sasl_example() -> None:
    objs = render(K8S / "examples" / "gpu-sasl-static")
    container = worker_container(objs)
    (instance,) = [e for e in container["env"] if e["name"] == "GROUP_INSTANCE_ID"]
    assert instance["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    cfg = config(objs)
    assert cfg["SECURITY_PROTOCOL"] == "SASL_SSL"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "kafka-credentials")["mountPath"]
    assert cfg["SASL_PASSWORD_FILE"].startswith(mount + "/") and cfg["SSL_CAFILE"].startswith(mount + "/")
    pod_spec = one(objs, "Deployment")["spec"]["template"]["spec"]
    secret = next(v for v in pod_spec["volumes"] if v["name"] == "kafka-credentials")["secret"]
    assert secret["optional"] is False
    auth = one(objs, "TriggerAuthentication")
    assert {r["name"] for r in auth["spec"]["secretTargetRef"]} == {secret["secretName"]}
    meta = one(objs, "ScaledObject")["spec"]["triggers"][0]["metadata"]
    assert (meta["sasl"], meta["tls"]) == ("scram_sha512", "enable")
    # Base and cpu overlay: no static membership unless asked for.
    cpu = worker_container(render(K8S / "overlays" / "cpu"))
    assert "GROUP_INSTANCE_ID" not in {e["name"] for e in cpu["env"]}


# ------------------------------------------------------------------ Dockerfile facts


def dockerfile_text() -> str:
    return (REPO / "deploy" / "docker" / "Dockerfile").read_text()


def dockerfile_uid() -> int:
    users = re.findall(r"^USER\s+(\d+)(?::\d+)?\s*$", dockerfile_text(), re.M)
    assert users, "Dockerfile has no numeric USER"
    return int(users[-1])


def dockerfile_start_command() -> list[str]:
    text = dockerfile_text()
    entrypoint = json.loads(re.findall(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)[-1])
    cmd = json.loads(re.findall(r"^CMD\s+(\[.*\])\s*$", text, re.M)[-1])
    return entrypoint + cmd
