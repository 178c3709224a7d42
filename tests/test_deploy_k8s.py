"""The Helm chart (deploy/helm/sentiment-worker): lint, render a matrix of values, validate every object offline.

helm comes from the Go module proxy (tests/upstream_schemas.py; .ci/run installs it the
same way). `helm lint --strict` on the defaults and every example; then `helm template`
for a matrix of values (CPU and GPU, every model source, PLAINTEXT / SASL_SSL / mutual
TLS, with and without autoscaling, monitoring and the Prometheus trigger) on the oldest
and newest Kubernetes we claim. Every object is validated:

- built-in kinds with Kubernetes' own OpenAPI-derived schemas (`kubernetes-validate`,
  strict: unknown fields fail);
- KEDA's and the Prometheus Operator's kinds with their upstream CRDs' schemas (from
  their Go modules, strict about unknown fields), and every KEDA trigger's parameters
  with the scaler's own parameter definitions (names, required ones, enums, types);
- no duplicate keys in any mapping.

Then what schemas can't see: probes on the worker's real endpoints, grace period vs. the
worker's drain, replicas ≤ partitions, settings the worker accepts with values it
parses, the same start command as the image, the model delivered before the worker
starts for every source, lagThreshold from the measured rate, the alert rules rendered
from their one source, selectors that select.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.upstream_schemas import check_trigger_metadata, crd_kinds, crd_validator, helm
from worker.settings import Settings

REPO = Path(__file__).resolve().parents[1]
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
        *MONITORING], K8S_NEWEST),
    "cpu-mtls-baked-exactly-once": ([
        "--set", "kafka.securityProtocol=SSL", "--set", "kafka.tls.ca=true", "--set", "kafka.tls.clientCert=true",
        "--set", "model.source=baked", "--set", "guarantee=exactly_once", "--set", "precision=int8",
        "--set", "batch.maxSize=32", "--set", "settings.LOG_LEVEL=debug", "--set", "model.hubEndpoint=https://hub.example.invalid",
        *MONITORING], K8S_OLDEST),
    "gpu-image-volume-mig": ([
        "--set", "accelerator=gpu", "--set", "model.source=image", "--set", "gpu.resourceName=nvidia.com/mig-1g.18gb",
        "--set", "gpu.runtimeClassName=nvidia", "--set", "gpu.nodeSelector.nvidia\\.com/gpu\\.present=true",
        "--set", "autoscaling.maxReplicas=4", "--set", "image.digest=sha256:" + "a" * 64], K8S_NEWEST),
    "no-autoscaling-no-networkpolicy-existing-claim": ([
        "--set", "autoscaling.enabled=false", "--set", "networkPolicy.enabled=false", "--set", "model.source=pvc",
        "--set", "model.pvc.existingClaim=models", "--set", "kafka.securityProtocol=SASL_PLAINTEXT",
        "--set", "kafka.saslMechanism=PLAIN", "--set", "podDisruptionBudget.enabled=false",
        "--set", "serviceAccount.create=false", "--set", "metrics.serviceMonitor.enabled=false",
        "--set", "prometheusRule.enabled=false", *MONITORING], K8S_OLDEST),
    "renamed-release-job-and-runbooks": ([
        "--set", "metrics.job=reviews-sentiment", "--set", "prometheusRule.runbookBaseUrl=https://docs.example.invalid/ops.md",
        "--set", "networkPolicy.kafkaTo[0].ipBlock.cidr=10.20.0.0/16", "--set", "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
        *MONITORING], K8S_NEWEST),
    **{f"example-{p.stem}": (["-f", str(p), *MONITORING], K8S_NEWEST) for p in EXAMPLES},
}


class StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (PyYAML keeps the last one silently)."""


def _no_duplicates(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    dupes = {k for k in keys if keys.count(k) > 1}
    if dupes:
        raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {sorted(dupes)}", node.start_mark)
    return loader.construct_mapping(node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def template(*args: str, kube: str = K8S_OLDEST, release: str = "sw", check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [helm(), "template", release, str(CHART), "--namespace", "sentiment", "--kube-version", kube, *args],
        capture_output=True, text=True, timeout=120,
    )
    if check:
        assert out.returncode == 0, f"helm template {' '.join(args)} failed:\n{out.stderr}"
    return out


def render(*args: str, kube: str = K8S_OLDEST, release: str = "sw") -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(template(*args, kube=kube, release=release).stdout, Loader=StrictLoader) if doc]


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


# ------------------------------------------------------------------ lint and schemas


def test_helm_lint_strict() -> None:
    for values in [None, *EXAMPLES]:
        args = ["-f", str(values)] if values else []
        out = subprocess.run([helm(), "lint", "--strict", str(CHART), "--kube-version", K8S_OLDEST, *args],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "0 chart(s) failed" in out.stdout


def test_every_object_validates(rendered) -> None:
    name, objs = rendered
    kube = MATRIX[name][1]
    kinds = {o["kind"] for o in objs}
    assert {"ConfigMap", "Deployment", "Service"} <= kinds
    for obj in objs:
        where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        if (obj["apiVersion"], obj["kind"]) in crd_kinds():
            errors = sorted(crd_validator(obj["apiVersion"], obj["kind"]).iter_errors(obj), key=str)
            assert not errors, f"{where}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors)
            continue
        assert not obj["apiVersion"].endswith((".sh/v1alpha1", ".com/v1")), f"{where}: a CRD kind without its schema"
        try:
            kubernetes_validate.validate(obj, kube, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} invalid for Kubernetes {kube}: {exc.message} at {list(exc.path)}")


def test_keda_triggers_have_parameters_keda_accepts(rendered) -> None:
    name, objs = rendered
    auths = {a["metadata"]["name"]: {r["parameter"] for r in a["spec"]["secretTargetRef"]}
             for a in find(objs, "TriggerAuthentication")}
    for scaled in find(objs, "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            ref = trigger.get("authenticationRef", {}).get("name")
            auth_params = auths.get(ref, set())
            if ref and ref.endswith("-kafka"):
                assert ref in auths, f"{name}: authenticationRef {ref} is not rendered"
            errors = check_trigger_metadata(trigger["type"], trigger["metadata"], auth_params)
            assert not errors, f"{name}: {errors}"


def test_upstream_schemas_reject_what_keda_and_the_operator_reject() -> None:
    """The upstream schemas and scaler definitions are not rubber stamps: typical mistakes fail."""
    objs = render("--set", "kafka.securityProtocol=SASL_SSL", *MONITORING)
    good = one(objs, "ScaledObject")
    scaled = crd_validator("keda.sh/v1alpha1", "ScaledObject")
    assert scaled.is_valid(good)
    auth = {r["parameter"] for r in one(objs, "TriggerAuthentication")["spec"]["secretTargetRef"]}
    meta = good["spec"]["triggers"][0]["metadata"]
    assert check_trigger_metadata("kafka", meta, auth) == []

    def broken(change) -> dict[str, Any]:
        obj = json.loads(json.dumps(good))
        change(obj)
        return obj

    trig = lambda o: o["spec"]["triggers"][0]  # noqa: E731
    for case, obj in {
        "numeric lagThreshold": broken(lambda o: trig(o)["metadata"].update(lagThreshold=2000)),
        "unknown spec field": broken(lambda o: o["spec"].update(maxReplicas=3)),
        "no scale target": broken(lambda o: o["spec"].pop("scaleTargetRef")),
        "trigger without type": broken(lambda o: trig(o).pop("type")),
    }.items():
        assert not scaled.is_valid(obj), f"CRD schema accepted: {case}"
    for case, (metadata, params) in {
        "unknown trigger key": ({**meta, "lagTreshold": "5"}, auth),
        "missing consumerGroup": ({k: v for k, v in meta.items() if k != "consumerGroup"}, auth),
        "bad offsetResetPolicy": ({**meta, "offsetResetPolicy": "smallest"}, auth),
        "bad sasl": ({**meta, "sasl": "scram-sha-512"}, auth),
        "non-integer lagThreshold": ({**meta, "lagThreshold": "2e3"}, auth),
        "a secret parameter in metadata": ({**meta, "password": "x"}, auth),
        "unknown auth parameter": (meta, auth | {"passwd"}),
    }.items():
        assert check_trigger_metadata("kafka", metadata, params), f"scaler check accepted: {case}"
    monitor = one(objs, "ServiceMonitor")
    validator = crd_validator("monitoring.coreos.com/v1", "ServiceMonitor")
    assert validator.is_valid(monitor)
    bad = json.loads(json.dumps(monitor))
    bad["spec"]["endpoints"][0]["intervall"] = "15s"
    assert not validator.is_valid(bad)
    rule = one(objs, "PrometheusRule")
    validator = crd_validator("monitoring.coreos.com/v1", "PrometheusRule")
    assert validator.is_valid(rule)
    bad = json.loads(json.dumps(rule))
    bad["spec"]["groups"][0]["rules"][0]["for"] = 120  # a duration string, not a number
    assert not validator.is_valid(bad)


def test_chart_refuses_what_can_not_work() -> None:
    """values.schema.json catches misspelt keys and impossible values; the templates' own checks back it up."""
    for args, message in [
        (["--set", "autoscaling.maxReplicas=13"], "exceeds kafka.partitions"),
        (["--set", "autoscalling.enabled=false"], "additional properties 'autoscalling' not allowed"),
        (["--set", "accelerator=tpu"], "/accelerator"),
        (["--set", "model.source=s3"], "/model/source"),
        (["--set", "kafka.securityProtocol=SASL_SSL", "--set", "kafka.saslMechanism=GSSAPI"], "/kafka/saslMechanism"),
        (["--set", "guarantee=exactly-once"], "/guarantee"),
        (["--set", "settings.log_level=debug"], "'log_level' does not match pattern"),
        (["--set", "image.digest=latest"], "/image/digest"),
        (["--set", "metrics.serviceMonitor.enabled=maybe"], "/metrics/serviceMonitor/enabled"),
    ]:
        out = template(*args, check=False)
        assert out.returncode != 0 and message in out.stderr, (args, out.stderr)
    # image volumes exist from Kubernetes 1.33
    out = template("--set", "model.source=image", kube="1.32.0", check=False)
    assert out.returncode != 0 and "needs Kubernetes 1.33" in out.stderr
    assert template("--set", "model.source=image", kube="1.33.0").returncode == 0
    # without the schema (helm --skip-schema-validation), the templates still refuse
    for args, message in [
        (["--set", "accelerator=tpu"], "accelerator must be cpu or gpu"),
        (["--set", "model.source=s3"], "model.source must be"),
        (["--set", "kafka.securityProtocol=SASL_SSL", "--set", "kafka.saslMechanism=GSSAPI"], "kafka.saslMechanism"),
    ]:
        out = template("--skip-schema-validation", *args, check=False)
        assert out.returncode != 0 and message in out.stderr, (args, out.stderr)


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
    for path_setting in ("sasl_password_file", "ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        if path_setting in values:
            assert values.pop(path_setting).startswith("/etc/sentiment-worker/kafka/")
    if values.get("security_protocol", "").startswith("SASL"):
        values["sasl_username"] = "from-the-secret"
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
        assert meta["sasl"] == cfg["SASL_MECHANISM"].lower().replace("-", "_").replace("scram_sha_", "scram_sha")
    # Replicas beyond the partition count would sit idle (and unready).
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= int(cfg["TOPIC_PARTITIONS"])
    # KEDA's HPA owns the replica count: a fixed one would fight it on every apply.
    assert "replicas" not in deployment["spec"]
    for trigger in spec["triggers"]:
        if trigger["type"] == "prometheus":
            assert trigger["metricType"] == "Value"
            assert "sentiment_worker_consumer_lag_seconds" in trigger["metadata"]["query"]
            assert f'topic="{cfg["INPUT_TOPIC"]}"' in trigger["metadata"]["query"]


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
    _, objs = rendered
    cfg = config(objs)
    pod = one(objs, "Deployment")["spec"]["template"]
    worker = container(objs)
    (port,) = [p for p in worker["ports"] if p["name"] == "http"]
    assert port["containerPort"] == int(cfg["WEB_PORT"]) == Settings.model_fields["web_port"].default
    assert worker["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert worker["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert worker["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    startup = worker["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180  # model loading takes minutes
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == cfg["WEB_PORT"]
    service = one(objs, "Service")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["publishNotReadyAddresses"] is True and service["spec"]["clusterIP"] == "None"
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["targetPort"] == "http" and svc_port["name"] == "http-metrics"
    # a changed setting rolls the pods
    assert re.fullmatch(r"[0-9a-f]{64}", pod["metadata"]["annotations"]["checksum/config"])


def test_shutdown_rollout_and_disruptions(rendered) -> None:
    from worker.app import DRAIN_TIMEOUT_S

    name, objs = rendered
    deployment = one(objs, "Deployment")
    spec = pod_spec(objs)
    assert DRAIN_TIMEOUT_S + 20 <= spec["terminationGracePeriodSeconds"] <= 120
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
    # Kafka credentials: only references to the operator's Secret, never values.
    assert not find(objs, "Secret"), "Secrets are created by the operator, never rendered"
    assert "SASL_PASSWORD" not in cfg
    protocol = cfg["SECURITY_PROTOCOL"]
    needs_secret = protocol.startswith("SASL") or "SSL_CAFILE" in cfg or "SSL_CERTFILE" in cfg
    if not needs_secret:
        assert "kafka-credentials" not in volumes
        return
    secret = volumes["kafka-credentials"]["secret"]["secretName"]
    mount = next(m for m in worker["volumeMounts"] if m["name"] == "kafka-credentials")
    assert mount["readOnly"] is True
    for key in ("SASL_PASSWORD_FILE", "SSL_CAFILE", "SSL_CERTFILE", "SSL_KEYFILE"):
        if key in cfg:
            assert cfg[key].startswith(mount["mountPath"] + "/")
    if protocol.startswith("SASL"):
        assert env_of(worker)["SASL_USERNAME"]["secretKeyRef"]["name"] == secret
    # KEDA reads the same Secret, the same keys the worker mounts
    for auth in find(objs, "TriggerAuthentication"):
        refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
        assert {r["name"] for r in refs.values()} == {secret}
        files = {Path(cfg[k]).name for k in ("SASL_PASSWORD_FILE", "SSL_CAFILE", "SSL_CERTFILE", "SSL_KEYFILE") if k in cfg}
        assert {r["key"] for p, r in refs.items() if p != "username"} == files
        assert ("cert" in refs) == ("SSL_CERTFILE" in cfg) and ("ca" in refs) == ("SSL_CAFILE" in cfg)


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
    source = next((s for s in ("pvc", "image", "baked") if f"model.source={s}" in " ".join(MATRIX[name][0])), None)
    if name.startswith("example-"):
        source = yaml.safe_load(Path(MATRIX[name][0][1]).read_text()).get("model", {}).get("source")
    source = source or VALUES["model"]["source"]
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
        assert [c["metadata"]["name"] for c in claims] in ([claim], [])  # created, or existingClaim
        (job,) = jobs
        job_pod = job["spec"]["template"]["spec"]
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


def test_pvc_job_name_follows_the_revision() -> None:
    """Jobs are immutable: a new revision is a new Job, the same one keeps its name."""
    names = [one(render("--set", "model.source=pvc", "--set", f"model.revision={rev}"), "Job")["metadata"]["name"]
             for rev in ("a" * 40, "b" * 40, "a" * 40)]
    assert names[0] == names[2] != names[1] and all(len(n) <= 63 for n in names)


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


def test_prometheus_rule_is_the_alerts_file() -> None:
    """One source of rules: the chart renders deploy/prometheus/alerts.yml, base and job substituted."""
    assert (CHART / "files" / "alerts.yml").resolve() == ALERTS.resolve()
    source = yaml.safe_load(ALERTS.read_text())["groups"]
    assert one(render(*MONITORING), "PrometheusRule")["spec"]["groups"] == source
    base = "https://docs.example.invalid/ops/OPERATIONS.md"
    objs = render("--set", f"prometheusRule.runbookBaseUrl={base}", "--set", "metrics.job=reviews",
                  "--set", "prometheusRule.labels.release=kube-prometheus-stack", *MONITORING)
    rule = one(objs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rendered_rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    source_rules = [r for g in source for r in g["rules"]]
    assert [r["alert"] for r in rendered_rules] == [r["alert"] for r in source_rules]
    for got, want in zip(rendered_rules, source_rules):
        anchor = want["annotations"]["runbook_url"].split("#", 1)[1]
        assert got["annotations"]["runbook_url"] == f"{base}#{anchor}"
        assert got["expr"] == want["expr"].replace('job="sentiment-worker"', 'job="reviews"')
        assert {k: v for k, v in got["annotations"].items() if k != "runbook_url"} == \
            {k: v for k, v in want["annotations"].items() if k != "runbook_url"}


def test_grafana_dashboard_configmap_is_the_dashboard() -> None:
    assert not [c for c in find(render(), "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    objs = render("--set", "grafanaDashboard.enabled=true")
    (cm,) = [c for c in find(objs, "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["sentiment-worker.json"]) == json.loads(DASHBOARD.read_text())


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


# ------------------------------------------------------------------ docs


def test_readme_values_table_names_real_values() -> None:
    readme = (REPO / "deploy" / "README.md").read_text()
    section = readme.split("### Values", 1)[1].split("\n## ", 1)[0]
    first_cells = re.findall(r"^\| (`[^|]+) \|", section, re.M)
    documented = [name for cell in first_cells for name in re.findall(r"`([a-zA-Z.]+)`", cell)]
    assert len(documented) >= 30
    for path in documented:
        node: Any = VALUES
        for part in path.split("."):
            assert isinstance(node, dict) and part in node, f"README documents {path}, not in values.yaml"
            node = node[part]
    for key in VALUES:
        if key not in ("nameOverride", "fullnameOverride"):
            assert any(d == key or d.startswith(key + ".") for d in documented), f"values.yaml {key} is not in the README"


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
