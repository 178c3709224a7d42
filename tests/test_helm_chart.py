"""The Helm chart as a package: `helm lint`, and every rendered object valid offline.

helm comes from the Go module proxy (tests/upstream_schemas.py; .ci/run installs it the
same way). `helm lint --strict` on the defaults and every example; then `helm template`
for a matrix of values (tests/helm_render.py: CPU and GPU, every model source,
PLAINTEXT / SASL_SSL / SASL_PLAINTEXT / mutual TLS, with and without autoscaling,
monitoring and the Prometheus trigger, the examples) on the oldest and newest
Kubernetes we claim. Every object is validated:

- built-in kinds with Kubernetes' own OpenAPI-derived schemas (`kubernetes-validate`,
  strict: unknown fields fail);
- KEDA's and the Prometheus Operator's kinds with their upstream CRDs' schemas (from
  their Go modules, strict about unknown fields), and every KEDA trigger's parameters
  with the scaler's own parameter definitions (names, required ones, enums, types);
- no duplicate keys in any mapping.

And the values: values.schema.json and the templates refuse what can't work; the
README's values table names real values. What the rendered objects mean for the worker
is tests/test_deploy_k8s.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import typing
from typing import Any

import kubernetes_validate
import pytest
from pydantic import SecretStr

from tests.helm_render import (  # noqa: F401  (rendered is a fixture)
    CHART, EXAMPLES, K8S_OLDEST, MATRIX, MONITORING, REPO, VALUES, find, one, render, rendered, template,
)
from tests.upstream_schemas import check_trigger_metadata, crd_kinds, crd_validator, helm
from worker.settings import Settings


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
        "fallback without replicas": broken(lambda o: o["spec"]["fallback"].pop("replicas")),
        "unknown fallback behavior": broken(lambda o: o["spec"]["fallback"].update(behavior="currentReplicasIfHigherr")),
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
        (["--set", "settings.log_level=debug"], "invalid propertyName 'log_level'"),
        (["--set", "settings.BATCH_MAX_SZE=8"], "invalid propertyName 'BATCH_MAX_SZE'"),
        (["--set", "image.digest=latest"], "/image/digest"),
        (["--set", "metrics.serviceMonitor.enabled=maybe"], "/metrics/serviceMonitor/enabled"),
        (["--set", "metrics.scrapeAnnotations=yes"], "/metrics/scrapeAnnotations"),
        (["--set", "autoscaling.fallback.behavior=higher"], "/autoscaling/fallback/behavior"),
        (["--set", "prometheusRule.brokerLag.exporter=burrow"], "/prometheusRule/brokerLag/exporter"),
        (["--set", "prometheusRule.brokerLag.for=15 minutes"], "/prometheusRule/brokerLag/for"),
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


def test_the_schema_lists_exactly_the_worker_settings() -> None:
    """settings: takes worker settings by env var name, and only those (deploy/helm/update-settings-schema)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    names = schema["properties"]["settings"]["propertyNames"]["enum"]
    secrets = {name.upper() for name, f in Settings.model_fields.items() if SecretStr in typing.get_args(f.annotation)}
    assert secrets == {"SASL_PASSWORD", "SCHEMA_REGISTRY_PASSWORD", "OAUTH_CLIENT_SECRET"}  # never in a ConfigMap
    assert names == sorted(name.upper() for name in Settings.model_fields if name.upper() not in secrets)
    assert template("--set", "settings.LOG_LEVEL=debug", "--set", "settings.ALLOW_ENV=X").returncode == 0


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
