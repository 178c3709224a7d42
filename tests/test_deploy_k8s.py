"""The Kubernetes objects the Helm chart renders, against the worker's contract.

Rendered with `helm template` over the values matrix of tests/helm_render.py (their
validity as Kubernetes, KEDA and Prometheus Operator objects is tests/test_helm_chart.py).
Checked here: probes on the worker's real endpoints, grace period vs. the worker's
drain, replicas ≤ partitions, settings the worker accepts with values it parses, the
same start command as the image, the model in place before the worker starts for every
source, lagThreshold from the measured rate and below the latency alert, credentials
only by reference and the same for the worker and KEDA, the alert rules rendered from
their one source, selectors that select, the NetworkPolicy's ports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.helm_render import (  # noqa: F401  (rendered is a fixture)
    ALERTS, CHART, DASHBOARD, K8S_NEWEST, MATRIX, MONITORING, NON_SETTINGS_ENV, REPO, VALUES, config, container, env_of, find,
    model_source, one, pod_spec, render, rendered, template,
)
from tests.test_prometheus_rules import promtool, runbook_anchors
from worker.settings import Settings


# ------------------------------------------------------------------ the worker's contract


def test_config_holds_only_settings_the_worker_accepts(rendered) -> None:
    _, objs = rendered
    cfg = config(objs)
    env_names = set(cfg) | set(env_of(container(objs)))
    fields = {name.upper() for name in Settings.model_fields}
    unknown = env_names - fields - NON_SETTINGS_ENV
    assert not unknown, f"not worker settings (typo?): {sorted(unknown)}"
    assert cfg["HF_HUB_OFFLINE"] == "1", "the worker never downloads the model at start"
    values = {k.lower(): v for k, v in cfg.items() if k.lower() in Settings.model_fields}
    for path_setting in ("sasl_password_file", "oauth_client_secret_file", "ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        if path_setting in values:
            assert values.pop(path_setting).startswith(("/etc/sentiment-worker/kafka/", "/etc/sentiment-worker/kafka-ca/"))
    if values.get("sasl_mechanism") == "OAUTHBEARER":
        values["oauth_client_secret"] = "from-the-secret"
    elif values.get("security_protocol", "").startswith("SASL"):
        values.setdefault("sasl_username", "from-the-secret")
    Settings(**values)


def test_scaler_watches_the_workers_group_and_topic(rendered) -> None:
    _, objs = rendered
    cfg = config(objs)
    deployment = one(objs, "Deployment")
    scaled_objects = find(objs, "ScaledObject")
    if not scaled_objects:
        assert deployment["spec"]["replicas"] <= int(cfg["TOPIC_PARTITIONS"])
        return
    spec = one(objs, "ScaledObject")["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    kafka = next(t for t in spec["triggers"] if t["type"] == "kafka")
    meta = kafka["metadata"]
    assert meta["bootstrapServers"] == cfg["KAFKA_BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == cfg["GROUP_ID"]  # the Faust app id is the group id
    assert meta["topic"] == cfg["INPUT_TOPIC"]  # explicit: never every topic of the group
    assert meta["allowIdleConsumers"] == "false" and meta["limitToPartitionsWithLag"] == "true"
    assert meta["tls"] == ("enable" if cfg["SECURITY_PROTOCOL"] in ("SSL", "SASL_SSL") else "disable")
    if cfg["SECURITY_PROTOCOL"].startswith("SASL"):
        keda_sasl = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512",
                     "OAUTHBEARER": "oauthbearer"}  # KEDA's names (its kafka scaler's enum)
        assert meta["sasl"] == keda_sasl[cfg["SASL_MECHANISM"]]
    # Replicas beyond the partition count would sit idle (and unready).
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= int(cfg["TOPIC_PARTITIONS"])
    # KEDA's HPA owns the replica count: a fixed one would fight it on every apply.
    assert "replicas" not in deployment["spec"]
    # Lag unreadable: keep what runs (at least the fallback's count, within the bounds). Before
    # 2.18 KEDA's webhook wants some trigger to say AverageValue for a fallback.
    fallback = spec.get("fallback")
    if fallback:
        assert fallback["failureThreshold"] >= 1 and fallback["replicas"] <= spec["maxReplicaCount"]
        assert kafka["metricType"] == "AverageValue"
    for trigger in spec["triggers"]:
        if trigger["type"] == "prometheus":
            assert trigger["metricType"] == "Value"
            assert "sentiment_worker_consumer_lag_seconds" in trigger["metadata"]["query"]
            assert f'topic="{cfg["INPUT_TOPIC"]}"' in trigger["metadata"]["query"]
            assert f'group="{cfg["GROUP_ID"]}"' in trigger["metadata"]["query"]


def test_scaler_fallback() -> None:
    """Lag unreadable for 3 polls: KEDA keeps the replicas that run, at least 2 (KEDA's fallback)."""
    spec = one(render(), "ScaledObject")["spec"]
    assert spec["fallback"] == {"failureThreshold": 3, "replicas": 2, "behavior": "currentReplicasIfHigher"}
    spec = one(render("--set", "autoscaling.fallback.behavior=static", "--set", "autoscaling.fallback.replicas=4"), "ScaledObject")["spec"]
    assert spec["fallback"] == {"failureThreshold": 3, "replicas": 4, "behavior": "static"}
    assert "fallback" not in one(render("--set", "autoscaling.fallback.enabled=false"), "ScaledObject")["spec"]
    # never more than maxReplicas (the HPA would cap it anyway)
    spec = one(render("--set", "autoscaling.maxReplicas=1", "--set", "autoscaling.minReplicas=1"), "ScaledObject")["spec"]
    assert spec["fallback"]["replicas"] == 1


def test_lag_threshold_comes_from_the_measured_rate_and_beats_the_latency_alert() -> None:
    """lagThreshold = events/s per replica × target drain seconds, and a scale-out starts before SentimentWorkerSlow."""
    rules = {r["alert"]: r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    latency_limit = float(re.search(r">\s*(\d+(?:\.\d+)?)\s*$", rules["SentimentWorkerSlow"]["expr"].strip())[1])
    auto = VALUES["autoscaling"]
    for accelerator in ("cpu", "gpu"):
        objs = render("--set", f"accelerator={accelerator}", "--set", "autoscaling.maxReplicas=4")
        spec = one(objs, "ScaledObject")["spec"]
        threshold = int(spec["triggers"][0]["metadata"]["lagThreshold"])
        rate = VALUES[accelerator]["eventsPerSecondPerReplica"]
        assert threshold == rate * auto["kafka"]["targetDrainSeconds"]
        # the backlog that triggers a scale-out drains in this many seconds; plus one polling
        # interval before KEDA sees it: below the latency the alert pages on
        assert threshold / rate + spec["pollingInterval"] < latency_limit
    # the CPU rate is the slower of the measured fp32 workloads (deploy/OPERATIONS.md's table)
    table = (REPO / "deploy" / "OPERATIONS.md").read_text()
    measured = [int(m) for m in re.findall(r"^\| 2 vCPU[^|]*\| fp32 \| (?:short|mixed)[^|]*\| (\d+)", table, re.M)]
    assert measured and VALUES["cpu"]["eventsPerSecondPerReplica"] == min(measured)
    # an explicit lagThreshold wins
    objs = render("--set", "autoscaling.kafka.lagThreshold=777")
    assert one(objs, "ScaledObject")["spec"]["triggers"][0]["metadata"]["lagThreshold"] == "777"


def test_probes_and_port_match_the_worker(rendered) -> None:
    name, objs = rendered
    cfg = config(objs)
    pod = one(objs, "Deployment")["spec"]["template"]
    worker = container(objs)
    (port,) = [p for p in worker["ports"] if p["name"] == "http"]
    assert port["containerPort"] == int(cfg["WEB_PORT"]) == Settings.model_fields["web_port"].default
    assert worker["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert worker["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert worker["startupProbe"]["httpGet"] == {"path": "/started", "port": "http"}
    startup = worker["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    accel = "gpu" if cfg["DEVICE"] == "cuda" else "cpu"
    assert budget == VALUES[accel]["startupSeconds"] + VALUES["model"]["loadSeconds"][model_source(name)]
    annotations = pod["metadata"]["annotations"]
    if find(objs, "ServiceMonitor"):
        assert "prometheus.io/scrape" not in annotations  # scraped once, through the ServiceMonitor
    else:
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == cfg["WEB_PORT"]
    service = one(objs, "Service")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["publishNotReadyAddresses"] is True and service["spec"]["clusterIP"] == "None"
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["targetPort"] == "http" and svc_port["name"] == "http-metrics"
    # a changed setting rolls the pods
    assert re.fullmatch(r"[0-9a-f]{64}", pod["metadata"]["annotations"]["checksum/config"])


def test_shutdown_rollout_and_disruptions(rendered) -> None:
    name, objs = rendered
    deployment = one(objs, "Deployment")
    spec = pod_spec(objs)
    # The worker's whole shutdown is bounded by SHUTDOWN_TIMEOUT_S: it must end before the kubelet kills it.
    shutdown_s = float(config(objs).get("SHUTDOWN_TIMEOUT_S", Settings.model_fields["shutdown_timeout_s"].default))
    assert shutdown_s + 5 <= spec["terminationGracePeriodSeconds"] <= 120
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxSurge"] == 0 and rolling["maxUnavailable"] == 1
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pdbs = find(objs, "PodDisruptionBudget")
    if "podDisruptionBudget.enabled=false" in MATRIX[name][0]:
        assert not pdbs
        return
    (pdb,) = pdbs
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1 and pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_security_and_credentials(rendered) -> None:
    _, objs = rendered
    spec = pod_spec(objs)
    cfg = config(objs)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == dockerfile_uid()
    assert spec["automountServiceAccountToken"] is False
    for c in spec["containers"] + spec["initContainers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert {"requests", "limits"} <= set(c["resources"]) and "memory" in c["resources"]["limits"]
    worker = container(objs)
    mounts = {m["mountPath"]: m["name"] for m in worker["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert env_of(worker)["DATA_DIR"].startswith("/tmp/")
    # Kafka credentials: only references to the operator's Secrets, never values.
    assert not find(objs, "Secret"), "Secrets are created by the operator, never rendered"
    assert "SASL_PASSWORD" not in cfg and "OAUTH_CLIENT_SECRET" not in cfg
    protocol = cfg["SECURITY_PROTOCOL"]
    oauth = cfg.get("SASL_MECHANISM") == "OAUTHBEARER"
    ca_dir, credentials_dir = "/etc/sentiment-worker/kafka-ca/", "/etc/sentiment-worker/kafka/"
    own_ca = cfg.get("SSL_CAFILE", "").startswith(ca_dir)  # a CA Secret of its own (Strimzi's cluster CA)
    needs_secret = protocol.startswith("SASL") or "SSL_CERTFILE" in cfg or ("SSL_CAFILE" in cfg and not own_ca)
    assert ("kafka-credentials" in volumes) == needs_secret and ("kafka-ca" in volumes) == own_ca
    secrets: dict[str, str] = {}  # Secret name -> where the worker mounts it
    for volume_name in ("kafka-credentials", "kafka-ca"):
        if volume_name in volumes:
            mount = next(m for m in worker["volumeMounts"] if m["name"] == volume_name)
            assert mount["readOnly"] is True
            secrets[volumes[volume_name]["secret"]["secretName"]] = mount["mountPath"] + "/"
    assert set(secrets.values()) <= {credentials_dir, ca_dir}
    for key in ("SASL_PASSWORD_FILE", "OAUTH_CLIENT_SECRET_FILE", "SSL_CAFILE", "SSL_CERTFILE", "SSL_KEYFILE"):
        if key in cfg:
            assert cfg[key].startswith(ca_dir if key == "SSL_CAFILE" and own_ca else credentials_dir), key
    if protocol.startswith("SASL") and not oauth and "SASL_USERNAME" not in cfg:
        assert env_of(worker)["SASL_USERNAME"]["secretKeyRef"]["name"] in secrets
    # KEDA reads the same Secrets and keys the worker mounts, and the chart's ConfigMap for the rest
    for auth in find(objs, "TriggerAuthentication"):
        refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
        assert {r["name"] for r in refs.values()} == set(secrets)
        files = {Path(cfg[k]).name for k in ("SASL_PASSWORD_FILE", "OAUTH_CLIENT_SECRET_FILE", "SSL_CAFILE", "SSL_CERTFILE",
                                             "SSL_KEYFILE") if k in cfg}
        assert {r["key"] for p, r in refs.items() if p != "username"} == files
        assert ("cert" in refs) == ("SSL_CERTFILE" in cfg) and ("ca" in refs) == ("SSL_CAFILE" in cfg)
        from_config = {r["parameter"]: r["key"] for r in auth["spec"].get("configMapTargetRef", [])}
        if oauth:
            assert from_config["username"] == "OAUTH_CLIENT_ID" and from_config["oauthTokenEndpointUri"] == "OAUTH_TOKEN_ENDPOINT_URL"
        elif "SASL_USERNAME" in cfg:
            assert from_config == {"username": "SASL_USERNAME"} and "username" not in refs
        elif protocol.startswith("SASL"):
            assert "username" in refs and not from_config


def test_command_is_the_images(rendered) -> None:
    _, objs = rendered
    worker = container(objs)
    assert worker["command"] + worker["args"] == ["sentiment-worker", "run"] == dockerfile_start_command()


def test_model_is_in_place_before_the_worker_starts(rendered) -> None:
    """Every model source: an init container delivers or awaits the model; the worker never downloads it."""
    name, objs = rendered
    cfg = config(objs)
    spec = pod_spec(objs)
    worker = container(objs)
    init = container(objs, "model", init=True)
    assert [c["name"] for c in spec["initContainers"]] == ["model"]
    assert init["image"] == worker["image"]  # fetch-model ships in the worker image
    fetch_env = env_of(init)
    assert (fetch_env["MODEL"], fetch_env["MODEL_REVISION"]) == (cfg["MODEL"], cfg["MODEL_REVISION"])
    assert re.fullmatch(r"[0-9a-f]{40}", cfg["MODEL_REVISION"]), "a pinned commit"
    assert fetch_env["HF_HOME"] == env_of(worker)["HF_HOME"] == "/opt/huggingface"
    volumes = {v["name"]: v for v in spec["volumes"]}
    worker_mounts = {m["mountPath"]: m for m in worker["volumeMounts"]}
    init_mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
    source = model_source(name)
    jobs = find(objs, "Job")
    if source == "baked":
        assert init["command"] == ["fetch-model", "wait"]
        assert "/opt/huggingface" not in worker_mounts and "model" not in volumes  # the image's own copy
        assert not jobs
        return
    model_volume = volumes[worker_mounts["/opt/huggingface"]["name"]]
    assert worker_mounts["/opt/huggingface"]["readOnly"] is True
    if source == "download":
        assert init["command"] == ["fetch-model", "download"]
        assert init_mounts["/opt/huggingface"]["readOnly"] is False and "emptyDir" in model_volume
        assert not jobs
    elif source == "pvc":
        assert init["command"] == ["fetch-model", "wait"] and init_mounts["/opt/huggingface"]["readOnly"] is True
        claim = model_volume["persistentVolumeClaim"]["claimName"]
        claims = find(objs, "PersistentVolumeClaim")
        existing = "model.pvc.existingClaim=" in " ".join(MATRIX[name][0])
        assert [c["metadata"]["name"] for c in claims] == ([] if existing else [claim])  # existingClaim, or created
        (job,) = jobs
        job_pod = job["spec"]["template"]["spec"]
        if cfg["RUNTIME"] != "torch" and cfg["DEVICE"] == "cpu":  # then the export, after the download
            (fetch,) = job_pod["initContainers"]
            (export,) = job_pod["containers"]
            assert export["command"] == ["sentiment-worker", "model", "export"] and export["image"] == worker["image"]
            export_env = env_of(export)
            for key in ("MODEL", "MODEL_REVISION", "PRECISION", "DEVICE", "HF_HUB_OFFLINE"):
                assert export_env[key] == cfg[key], key  # the cache key the pods look the file up by
            assert export_env["HF_HOME"] == "/opt/huggingface"
            assert export["resources"] == worker["resources"] | {"requests": {
                k: v for k, v in worker["resources"]["requests"].items() if k != "ephemeral-storage"}}
        else:
            assert "initContainers" not in job_pod
            (fetch,) = job_pod["containers"]
        assert fetch["command"] == ["fetch-model", "download"] and fetch["image"] == worker["image"]
        assert env_of(fetch)["MODEL_REVISION"] == cfg["MODEL_REVISION"]
        job_volumes = {v["name"]: v for v in job_pod["volumes"]}
        (job_mount,) = [m for m in fetch["volumeMounts"] if m["mountPath"] == "/opt/huggingface"]
        assert job_volumes[job_mount["name"]]["persistentVolumeClaim"]["claimName"] == claim
        assert not job_mount.get("readOnly")
    elif source == "image":
        assert init["command"] == ["fetch-model", "wait"]
        assert model_volume["image"]["reference"]
        assert not jobs
    else:
        pytest.fail(f"unknown source {source}")


def test_the_model_job_exports_for_onnx_runtime_on_cpu_only() -> None:
    """runtime onnxruntime or auto with a pvc: the Job exports into the claim; torch, or a GPU (the
    export is per device type, and the Job has no GPU), keep the download alone."""
    base = ["--set", "model.source=pvc"]

    def job_pod(*args: str) -> dict[str, Any]:
        return one(render(*base, *args), "Job")["spec"]["template"]["spec"]

    for runtime in ("onnxruntime", "auto"):
        pod = job_pod("--set", f"runtime={runtime}")
        assert [c["name"] for c in pod["initContainers"]] == ["fetch-model"]
        assert [c["name"] for c in pod["containers"]] == ["export-model"]
        assert {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]} == {"/tmp", "/opt/huggingface"}
    for args in ([], ["--set", "runtime=onnxruntime", "--set", "accelerator=gpu"]):
        pod = job_pod(*args)
        assert "initContainers" not in pod and [c["name"] for c in pod["containers"]] == ["fetch-model"]
    names = {one(render(*base, *args), "Job")["metadata"]["name"] for args in (
        [], ["--set", "runtime=onnxruntime"], ["--set", "runtime=onnxruntime", "--set", "precision=int8"])}
    assert len(names) == 3, "a new runtime or precision is a new Job (its pod template is immutable)"
    assert config(render("--set", "runtime=auto"))["RUNTIME"] == "auto"


def test_pvc_job_name_follows_the_revision() -> None:
    """Jobs are immutable: a new revision is a new Job, the same one keeps its name."""
    names = [one(render("--set", "model.source=pvc", "--set", f"model.revision={rev}"), "Job")["metadata"]["name"]
             for rev in ("a" * 40, "b" * 40, "a" * 40)]
    assert names[0] == names[2] != names[1] and all(len(n) <= 63 for n in names)


def immutable_parts(obj: dict[str, Any]) -> Any:
    """What Kubernetes refuses to change in place, per kind (the API server's validation of updates)."""
    spec = obj.get("spec", {})
    kind = obj["kind"]
    if kind == "Job":
        return {"template": spec.get("template"), "selector": spec.get("selector"), "completions": spec.get("completions")}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
        parts = {"selector": spec.get("selector")}
        if kind == "StatefulSet":
            parts.update(serviceName=spec.get("serviceName"), podManagementPolicy=spec.get("podManagementPolicy"),
                         volumeClaimTemplates=spec.get("volumeClaimTemplates"))
        return parts
    if kind == "PersistentVolumeClaim":  # only the storage request may grow
        return {k: v for k, v in spec.items() if k != "resources"}
    if kind == "Service":
        return {"clusterIP": spec.get("clusterIP")}
    return None


UPGRADES = {  # what a platform team changes from one release to the next
    "image tag": ["--set", "image.tag=0.2.0-cpu"],
    "model revision": ["--set", "model.revision=" + "c" * 40],
    "guarantee": ["--set", "guarantee=exactly_once"],
    "replica count": ["--set", "autoscaling.enabled=false", "--set", "replicaCount=3"],
    "a setting": ["--set", "settings.LOG_LEVEL=debug"],
}


@pytest.mark.parametrize("source", ["download", "pvc", "image", "baked"])
@pytest.mark.parametrize("accelerator", ["cpu", "gpu"])
def test_no_immutable_field_changes_under_an_unchanged_name_across_upgrades(source: str, accelerator: str) -> None:
    """helm upgrade patches objects of unchanged names in place: one whose immutable fields differ
    fails the upgrade ("field is immutable"), as the model Job did on its first image upgrade."""
    base = ["--set", f"model.source={source}", "--set", f"accelerator={accelerator}"]
    before = {(o["kind"], o["metadata"]["name"]): o for o in render(*base, kube=K8S_NEWEST)}
    for change, args in UPGRADES.items():
        after = {(o["kind"], o["metadata"]["name"]): o for o in render(*base, *args, kube=K8S_NEWEST)}
        for key in before.keys() & after.keys():
            assert immutable_parts(before[key]) == immutable_parts(after[key]), f"{change} changes {key} in place"
        if source == "pvc" and change == "image tag":
            assert find(list(before.values()), "Job")[0]["metadata"]["name"] != find(list(after.values()), "Job")[0]["metadata"]["name"]


def test_extra_env_volumes_zone_spread_and_scratch_storage() -> None:
    objs = render(
        "--set", "extraEnv[0].name=TZ", "--set", "extraEnv[0].value=UTC",
        "--set", "extraEnvFrom[0].secretRef.name=more-settings",
        "--set", "extraVolumes[0].name=certs", "--set", "extraVolumes[0].configMap.name=corporate-ca",
        "--set", "extraVolumeMounts[0].name=certs", "--set", "extraVolumeMounts[0].mountPath=/etc/corporate-ca",
        "--set", "zoneSpread.enabled=true",
    )
    worker = container(objs)
    spec = pod_spec(objs)
    assert {"name": "TZ", "value": "UTC"} in worker["env"]
    assert {"secretRef": {"name": "more-settings"}} in worker["envFrom"]
    assert {"name": "certs", "configMap": {"name": "corporate-ca"}} in spec["volumes"]
    assert {"name": "certs", "mountPath": "/etc/corporate-ca"} in worker["volumeMounts"]
    zones = [c for c in spec["topologySpreadConstraints"] if c["topologyKey"] == "topology.kubernetes.io/zone"]
    assert len(zones) == 1 and zones[0]["labelSelector"]["matchLabels"] == one(objs, "Deployment")["spec"]["selector"]["matchLabels"]
    # every emptyDir is requested as ephemeral-storage: scratch, plus the downloaded model (default source)
    assert worker["resources"]["requests"]["ephemeral-storage"] == "3072Mi"  # 1Gi + 2Gi
    assert container(objs, "model", init=True)["resources"]["requests"]["ephemeral-storage"] == "3072Mi"
    baked = render("--set", "model.source=baked")
    assert container(baked)["resources"]["requests"]["ephemeral-storage"] == "1Gi"
    assert "topology.kubernetes.io/zone" not in str(pod_spec(baked)["topologySpreadConstraints"])


def test_security_contexts_can_be_left_to_the_platform() -> None:
    """OpenShift's restricted-v2 picks the uid: with the keys set to null the chart sets none."""
    objs = render("--set", "podSecurityContext.runAsUser=null", "--set", "podSecurityContext.runAsGroup=null",
                  "--set", "podSecurityContext.fsGroup=null")
    pod = pod_spec(objs)["securityContext"]
    assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(pod) and pod["runAsNonRoot"] is True
    assert container(objs)["securityContext"]["readOnlyRootFilesystem"] is True


def test_a_moving_revision_is_refused_unless_intended() -> None:
    out = template("--set", "model.revision=main", check=False)
    assert out.returncode != 0 and 'model.revision "main" is not a commit' in out.stderr
    cfg = config(render("--set", "model.revision=main", "--set", "model.allowUnpinnedRevision=true"))
    assert cfg["MODEL_REVISION"] == "main"


def test_no_secret_ever_lands_in_a_config_map() -> None:
    objs = render("--set", "schemaRegistry.url=https://registry.example.invalid", "--set", "schemaRegistry.username=sw",
                  "--set", "schemaRegistry.passwordSecret.name=registry-auth", "--set", "settings.OUTPUT_FORMAT=avro")
    cfg = config(objs)
    assert cfg["SCHEMA_REGISTRY_PASSWORD_FILE"] == "/etc/sentiment-worker/registry/password"
    assert not any("PASSWORD" in k and not k.endswith("_FILE") for k in cfg)
    (volume,) = [v for v in pod_spec(objs)["volumes"] if v["name"] == "registry-credentials"]
    assert volume["secret"] == {"secretName": "registry-auth", "defaultMode": 0o440, "items": [{"key": "password", "path": "password"}]}
    for setting in ("SASL_PASSWORD", "SCHEMA_REGISTRY_PASSWORD"):
        out = template("--set", f"settings.{setting}=hunter2", check=False)
        assert out.returncode != 0 and f"invalid propertyName '{setting}'" in out.stderr
        out = template("--skip-schema-validation", "--set", f"settings.{setting}=hunter2", check=False)
        assert out.returncode != 0 and "would put a secret into a ConfigMap" in out.stderr


def test_cpu_defaults() -> None:
    objs = render()
    cfg = config(objs)
    worker = container(objs)
    assert cfg["DEVICE"] == "cpu" and worker["image"].endswith(":0.1.0-cpu")
    # one inference thread per requested core: no oversubscription of a shared node
    assert int(cfg["TORCH_THREADS"]) == int(worker["resources"]["requests"]["cpu"])
    assert not any(k.startswith("nvidia.com/") for k in worker["resources"]["limits"])
    assert "runtimeClassName" not in pod_spec(objs) and "tolerations" not in pod_spec(objs)


def test_gpu_scheduling() -> None:
    base = ["--set", "accelerator=gpu", "--set", "autoscaling.maxReplicas=4"]
    objs = render(*base)
    cfg = config(objs)
    worker = container(objs)
    spec = pod_spec(objs)
    assert cfg["DEVICE"] == "cuda" and cfg["PRECISION"] == "fp16" and worker["image"].endswith(":0.1.0-cuda")
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == worker["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert int(cfg["BATCH_MAX_SIZE"]) > int(config(render())["BATCH_MAX_SIZE"])
    # a MIG slice or a shared GPU's resource, a runtime class, node selection
    objs = render(*base, "--set", "gpu.resourceName=nvidia.com/mig-1g.18gb", "--set", "gpu.runtimeClassName=nvidia",
                  "--set", "nodeSelector.pool=inference", "--set", "gpu.nodeSelector.gpu=h100",
                  "--set", "tolerations[0].key=dedicated", "--set", "tolerations[0].operator=Exists")
    worker, spec = container(objs), pod_spec(objs)
    assert worker["resources"]["limits"]["nvidia.com/mig-1g.18gb"] == 1 and "nvidia.com/gpu" not in worker["resources"]["limits"]
    assert spec["runtimeClassName"] == "nvidia" and spec["nodeSelector"] == {"pool": "inference", "gpu": "h100"}
    assert [t["key"] for t in spec["tolerations"]] == ["dedicated", "nvidia.com/gpu"]
    # explicit batch settings win over the accelerator's
    assert config(render(*base, "--set", "batch.maxSize=100"))["BATCH_MAX_SIZE"] == "100"


def test_static_membership_and_sasl() -> None:
    objs = render("--set", "staticMembership=true", "--set", "kafka.securityProtocol=SASL_SSL",
                  "--set", "kafka.saslMechanism=SCRAM-SHA-256")
    env = env_of(container(objs))
    assert env["GROUP_INSTANCE_ID"]["fieldRef"]["fieldPath"] == "metadata.name"
    meta = one(objs, "ScaledObject")["spec"]["triggers"][0]["metadata"]
    assert (meta["sasl"], meta["tls"]) == ("scram_sha256", "enable")
    assert "GROUP_INSTANCE_ID" not in env_of(container(render()))


# ------------------------------------------------------------------ monitoring


def test_monitoring_objects_follow_the_cluster() -> None:
    """auto: ServiceMonitor and PrometheusRule only where the Prometheus Operator's API is served."""
    kinds = {o["kind"] for o in render()}
    assert not {"ServiceMonitor", "PrometheusRule"} & kinds
    kinds = {o["kind"] for o in render(*MONITORING)}
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds
    kinds = {o["kind"] for o in render("--set", "metrics.serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true")}
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds


def test_pods_are_scraped_once() -> None:
    """prometheus.io/scrape annotations only where no ServiceMonitor is rendered (auto), or as told:
    a Prometheus that honours both would scrape every pod twice (and double every sum)."""
    def kinds_and_annotations(*args: str) -> tuple[bool, bool]:
        objs = render(*args)
        annotations = one(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        return bool(find(objs, "ServiceMonitor")), "prometheus.io/scrape" in annotations

    assert kinds_and_annotations() == (False, True)
    assert kinds_and_annotations(*MONITORING) == (True, False)
    assert kinds_and_annotations("--set", "metrics.serviceMonitor.enabled=true") == (True, False)
    assert kinds_and_annotations(*MONITORING, "--set", "metrics.serviceMonitor.enabled=false") == (False, True)
    assert kinds_and_annotations(*MONITORING, "--set", "metrics.scrapeAnnotations=true") == (True, True)
    assert kinds_and_annotations("--set", "metrics.scrapeAnnotations=false") == (False, False)


def test_service_monitor_scrapes_the_service_as_the_rules_expect() -> None:
    for job, release in (("sentiment-worker", "sw"), ("reviews", "reviews-prod")):
        objs = render("--set", f"metrics.job={job}", *MONITORING, release=release)
        monitor, service = one(objs, "ServiceMonitor"), one(objs, "Service")
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["sentiment"]
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["path"] == "/metrics"
        # the job label comes from a Service label, whatever the release's name
        assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == job


def scoped(text: str, job: str = "sentiment-worker", namespace: str = "sentiment") -> str:
    """alerts.yml's selectors as the chart renders them for a release."""
    return text.replace('job="sentiment-worker"', f'job="{job}", namespace="{namespace}"')


def test_prometheus_rule_is_the_alerts_file() -> None:
    """One source of rules: the chart renders deploy/prometheus/alerts.yml, base substituted,
    each selector scoped to the release's job and namespace."""
    assert (CHART / "files" / "alerts.yml").resolve() == ALERTS.resolve()
    source = yaml.safe_load(ALERTS.read_text())["groups"]
    groups = one(render(*MONITORING), "PrometheusRule")["spec"]["groups"]
    assert groups[:len(source)] == yaml.safe_load(scoped(ALERTS.read_text()))["groups"]
    assert [g["name"] for g in groups[len(source):]] == ["sentiment-worker-release"]  # the release's own (below)
    base = "https://docs.example.invalid/ops/OPERATIONS.md"
    objs = render("--set", f"prometheusRule.runbookBaseUrl={base}", "--set", "metrics.job=reviews",
                  "--set", "prometheusRule.labels.release=kube-prometheus-stack", *MONITORING)
    rule = one(objs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rendered_rules = [r for g in rule["spec"]["groups"][:len(source)] for r in g["rules"]]
    source_rules = [r for g in source for r in g["rules"]]
    assert [r["alert"] for r in rendered_rules] == [r["alert"] for r in source_rules]
    for got, want in zip(rendered_rules, source_rules):
        anchor = want["annotations"]["runbook_url"].split("#", 1)[1]
        assert got["annotations"]["runbook_url"] == f"{base}#{anchor}"
        assert got["expr"] == scoped(want["expr"], job="reviews")
        assert {k: v for k, v in got["annotations"].items() if k != "runbook_url"} == \
            {k: v for k, v in want["annotations"].items() if k != "runbook_url"}


def rendered_dashboard(release: str = "sw", namespace: str = "sentiment", *args: str) -> tuple[str, dict]:
    """The dashboard ConfigMap's file name and dashboard."""
    objs = render("--set", "grafanaDashboard.enabled=true", *args, release=release, namespace=namespace)
    (cm,) = [c for c in find(objs, "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    ((name, text),) = cm["data"].items()
    return name, json.loads(text)


def test_grafana_dashboard_configmap_is_the_dashboard() -> None:
    """The dashboard file, with a uid, title and file name of the release's own, its job and
    namespace preselected: two releases' dashboards never replace each other in Grafana."""
    assert not [c for c in find(render(), "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    name, dashboard = rendered_dashboard("sw", "sentiment", "--set", "metrics.job=reviews")
    source = json.loads(DASHBOARD.read_text())
    assert name == "sentiment-sw-sentiment-worker.json"
    assert dashboard["title"] == "Sentiment worker (sentiment/sw)"
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dashboard["uid"]) and dashboard["uid"] != source["uid"]
    current = {v["name"]: v.get("current") for v in dashboard["templating"]["list"]}
    assert current["job"] == {"text": "reviews", "value": "reviews"}
    assert current["namespace"] == {"text": "sentiment", "value": "sentiment"}
    for doc in (dashboard, source):
        doc.pop("uid"), doc.pop("title")
        for variable in doc["templating"]["list"]:
            variable.pop("current", None)
    assert dashboard == source
    # another release name, another namespace, or both: another uid, title and file; the same: the same
    seen = dict((name, doc["uid"]) for name, doc in (
        rendered_dashboard(r, ns) for r, ns in (("sw", "sentiment"), ("reviews", "sentiment"), ("sw", "reviews"), ("reviews", "reviews"))))
    assert len(seen) == len(set(seen.values())) == 4
    assert rendered_dashboard("sw", "sentiment")[1]["uid"] == seen["sentiment-sw-sentiment-worker.json"]


def test_two_releases_rules_never_mix() -> None:
    """Two releases in two namespaces, even with one job name: each one's rules select only its
    own namespace's series (and KEDA's Prometheus trigger only its own group's lag)."""
    exprs = {}
    for namespace in ("sentiment", "reviews"):
        objs = render("--set", "autoscaling.prometheus.enabled=true", *MONITORING, namespace=namespace)
        rules = [r for g in one(objs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
        exprs[namespace] = " ".join(r["expr"] for r in rules)
        scoped_selectors = exprs[namespace].count(f'job="sentiment-worker", namespace="{namespace}"')
        assert exprs[namespace].count('job="sentiment-worker"') == scoped_selectors > 12
        (trigger,) = [t for t in one(objs, "ScaledObject")["spec"]["triggers"] if t["type"] == "prometheus"]
        assert f'namespace="{namespace}"' in trigger["metadata"]["query"]
    assert '"reviews"' not in exprs["sentiment"] and '"sentiment"' not in exprs["reviews"]


def release_rules(*args: str) -> list[dict]:
    """The rule group that names the release's own objects (group, topic, ScaledObject)."""
    groups = one(render(*args, *MONITORING), "PrometheusRule")["spec"]["groups"]
    return [r for g in groups if g["name"] == "sentiment-worker-release" for r in g["rules"]]


def test_release_rules_are_valid_promql_with_runbooks(tmp_path: Path) -> None:
    """Broker-side lag (either exporter) and KEDA's scaler errors: `promtool check rules`, the
    release's labels for routing, runbooks that resolve; each only where it applies."""
    for exporter, metric in (("kafka-exporter", "kafka_consumergroup_lag{"), ("kminion", "kminion_kafka_consumer_group_topic_lag{")):
        rules = release_rules("--set", "prometheusRule.brokerLag.enabled=true", "--set", f"prometheusRule.brokerLag.exporter={exporter}",
                              "--set", 'prometheusRule.brokerLag.matchers=cluster="prod"')
        path = tmp_path / f"{exporter}.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "release", "rules": rules}]}))
        out = promtool("check", "rules", str(path))
        assert out.returncode == 0 and "SUCCESS: 2 rules found" in out.stdout, out.stdout + out.stderr
        alerts = {r["alert"]: r for r in rules}
        lag = alerts["SentimentWorkerBrokerLag"]
        assert metric in lag["expr"] and 'cluster="prod"' in lag["expr"]
        assert '"sentiment-worker"' in lag["expr"] and '"sentiment-input"' in lag["expr"]  # this release's group and topic
        assert lag["labels"] == {"severity": "warning", "namespace": "sentiment", "job": "sentiment-worker",
                                 "group": "sentiment-worker", "topic": "sentiment-input"}
        assert alerts["SentimentWorkerScalerErrors"]["labels"] == {"severity": "warning", "namespace": "sentiment", "job": "sentiment-worker"}
        for rule in rules:
            assert rule["annotations"]["runbook_url"].split("#", 1)[1] in runbook_anchors()
    assert [r["alert"] for r in release_rules()] == ["SentimentWorkerScalerErrors"]  # autoscaling on, broker lag off
    assert release_rules("--set", "autoscaling.enabled=false") == []
    out = template("--skip-schema-validation", "--set", "prometheusRule.brokerLag.enabled=true",
                   "--set", "prometheusRule.brokerLag.exporter=burrow", *MONITORING, check=False)
    assert out.returncode != 0 and "must be kafka-exporter or kminion" in out.stderr


def test_release_rules_fire_for_this_release_only(tmp_path: Path) -> None:
    """`promtool test rules` on the rendered rules: broker-side lag of this release's group that
    builds while no worker runs fires (exporter replicas and uncommitted partitions counted
    right); a draining backlog and other groups' lag don't. KEDA's errors fire for this
    release's ScaledObject, scraped with or without honorLabels, never for a namesake elsewhere."""
    rules = release_rules("--set", "prometheusRule.brokerLag.enabled=true")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "release", "rules": rules}]}))
    alerts = {r["alert"]: r for r in rules}

    def expect(alert: str, **labels: str) -> dict:
        return {"exp_labels": {**alerts[alert]["labels"], **labels}, "exp_annotations": alerts[alert]["annotations"]}

    lag = 'kafka_consumergroup_lag{{job="kafka-exporter", instance="{}", consumergroup="{}", topic="sentiment-input", partition="{}"}}'
    errors = 'keda_scaled_object_errors_total{{namespace="{}", {}scaledObject="sw-sentiment-worker"}}'
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": [
            # nothing consumes: partition 0 grows (two exporter replicas report it), 1 has no commit yet (-1)
            {"series": lag.format("e1", "sentiment-worker", 0), "values": "0+100x40"},
            {"series": lag.format("e2", "sentiment-worker", 0), "values": "0+100x40"},
            {"series": lag.format("e1", "sentiment-worker", 1), "values": "-1x40"},
            {"series": lag.format("e1", "another-group", 0), "values": "90000x40"},
            # KEDA scraped without honorLabels: the ScaledObject's namespace is exported_namespace
            {"series": errors.format("keda", 'exported_namespace="sentiment", '), "values": "0+2x40"},
            {"series": errors.format("keda", 'exported_namespace="reviews", '), "values": "0x40"},
        ], "alert_rule_test": [
            # above 1000 from minute 11 (one copy of partition 0, nothing of partition 1): pending for 15m
            {"alertname": "SentimentWorkerBrokerLag", "eval_time": "20m", "exp_alerts": []},
            {"alertname": "SentimentWorkerBrokerLag", "eval_time": "30m", "exp_alerts": [expect("SentimentWorkerBrokerLag")]},
            {"alertname": "SentimentWorkerScalerErrors", "eval_time": "20m",
             "exp_alerts": [expect("SentimentWorkerScalerErrors", scaledObject="sw-sentiment-worker")]},
        ]},
        {"interval": "1m", "input_series": [
            # a backlog being drained; KEDA running in the release's namespace, scraped with and
            # without honorLabels: another namespace's namesake fails, this one doesn't
            {"series": lag.format("e1", "sentiment-worker", 0), "values": "50000-1000x40"},
            {"series": errors.format("sentiment", 'exported_namespace="reviews", '), "values": "0+2x40"},
            {"series": errors.format("sentiment", ""), "values": "0x40"},
        ], "alert_rule_test": [
            {"alertname": "SentimentWorkerBrokerLag", "eval_time": "30m", "exp_alerts": []},
            {"alertname": "SentimentWorkerScalerErrors", "eval_time": "30m", "exp_alerts": []},
        ]},
    ]}
    (tmp_path / "rules.test.yml").write_text(yaml.safe_dump(tests))
    out = promtool("test", "rules", str(tmp_path / "rules.test.yml"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_absent_alert_when_scaled_to_zero_is_normal() -> None:
    """minReplicas 0: no scrape target is the idle state, not an outage (the broker-side lag alert
    sees a backlog nobody consumes)."""
    def alerts(*args: str) -> set[str]:
        return {r["alert"] for g in one(render(*args, *MONITORING), "PrometheusRule")["spec"]["groups"] for r in g["rules"]}

    assert "SentimentWorkerAbsent" in alerts()
    assert "SentimentWorkerAbsent" not in alerts("--set", "autoscaling.minReplicas=0")
    assert "SentimentWorkerAbsent" in alerts("--set", "autoscaling.minReplicas=0", "--set", "autoscaling.enabled=false")


# ------------------------------------------------------------------ network policy


def test_network_policy_allows_what_the_worker_needs() -> None:
    objs = render()
    (policy,) = find(objs, "NetworkPolicy")
    pod = one(objs, "Deployment")["spec"]["template"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}] and "from" not in ingress
    egress_ports = [{p["port"] for p in rule["ports"]} for rule in policy["spec"]["egress"]]
    assert {53} in egress_ports  # DNS
    assert set(VALUES["kafka"]["brokerPorts"]) in egress_ports
    assert {443} in egress_ports  # model.source=download: the init container reaches the hub
    # pvc: the workers don't reach the hub, the Job's own policy does
    objs = render("--set", "model.source=pvc")
    worker_policy, job_policy = sorted(find(objs, "NetworkPolicy"), key=lambda p: p["metadata"]["name"])
    assert {443} not in [{p["port"] for p in r["ports"]} for r in worker_policy["spec"]["egress"]]
    job_pod = one(objs, "Job")["spec"]["template"]
    assert job_policy["spec"]["podSelector"]["matchLabels"].items() <= job_pod["metadata"]["labels"].items()
    assert not job_policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert {443} in [{p["port"] for p in r["ports"]} for r in job_policy["spec"]["egress"]]
    assert "ingress" not in job_policy["spec"]  # nothing in
    # restricted peers
    objs = render("--set", "networkPolicy.kafkaTo[0].ipBlock.cidr=10.20.0.0/16")
    kafka_rule = next(r for r in one(objs, "NetworkPolicy")["spec"]["egress"] if 9092 in {p["port"] for p in r["ports"]})
    assert kafka_rule["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]


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


# ------------------------------------------------------------------ mode: job (backfills)


def test_job_mode_is_a_bounded_run_of_the_same_worker() -> None:
    """The backfill example: a Job of the same pod, RUN_UNTIL and START_FROM set (and accepted by the
    worker), every pod's success counted, nothing of the long-running release's scaling or alerting."""
    backfill = CHART / "examples" / "jobs" / "backfill.yaml"
    objs = render("-f", str(backfill), *MONITORING, kube=K8S_NEWEST)
    job = one(objs, "Job")
    values = yaml.safe_load(backfill.read_text())
    assert job["spec"]["parallelism"] == job["spec"]["completions"] == values["job"]["parallelism"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert "selector" not in job["spec"] and "replicas" not in job["spec"]  # the Job makes its own selector
    data = config(objs)
    assert (data["RUN_UNTIL"], data["START_FROM"]) == ("end", values["job"]["startFrom"])
    settings = Settings(**{k.lower(): v for k, v in data.items() if k.lower() in Settings.model_fields})
    assert (settings.run_until, settings.start_from) == ("end", "2026-11-30T00:00:00Z")
    assert not {"ScaledObject", "PodDisruptionBudget", "PrometheusRule", "Deployment"} & {o["kind"] for o in objs}
    # the same pod as the Deployment's: the same containers, probes and volumes
    deployment = one(render(*MONITORING, kube=K8S_NEWEST), "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in job["spec"]["template"]["spec"]["containers"]] == [c["name"] for c in deployment["containers"]]
    assert job["spec"]["template"]["spec"]["initContainers"][0]["command"] == deployment["initContainers"][0]["command"]
    # a Deployment release never carries them
    assert not {"RUN_UNTIL", "START_FROM"} & set(config(render()))


def test_job_parallelism_beyond_the_partitions_is_refused() -> None:
    out = template("--set", "mode=job", "--set", "job.parallelism=13", "--set", "kafka.partitions=12", check=False)
    assert out.returncode != 0 and "job.parallelism (13) exceeds kafka.partitions (12)" in out.stderr
