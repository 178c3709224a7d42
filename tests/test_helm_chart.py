"""The Helm chart as a package: `helm lint`, and every rendered object valid offline.

helm and helm-docs come from the Go module proxy (tests/upstream_schemas.py; .ci/run
installs them the same way). `helm lint --strict` on the defaults and every example; then `helm template`
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

And the values: values.schema.json and the templates refuse what can't work. Their
documentation: every value has a description in values.yaml, and the chart's README.md
(its values table) is what helm-docs, in strict mode, renders from them. What the
rendered objects mean for the worker is tests/test_deploy_k8s.py.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tarfile
import typing
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr

from tests.helm_render import (  # noqa: F401  (rendered is a fixture)
    CHART, EXAMPLES, K8S_NEWEST, K8S_OLDEST, MATRIX, MONITORING, REPO, find, one, render, rendered, template,
)
from tests.upstream_schemas import HELM_DOCS_VERSION, check_trigger_metadata, crd_kinds, crd_validator, helm, helm_docs
from worker.settings import Settings


# ------------------------------------------------------------------ lint and schemas


def test_helm_lint_strict() -> None:
    for values in [None, *EXAMPLES]:
        args = ["-f", str(values)] if values else []
        out = subprocess.run([helm(), "lint", "--strict", str(CHART), "--kube-version", K8S_OLDEST, *args],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "0 chart(s) failed" in out.stdout


def validate_objects(name: str, objs: list[dict[str, Any]], kube: str) -> None:
    """Built-in kinds by Kubernetes' schemas, CRD kinds by their upstream CRDs; strict about unknown fields."""
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


def test_every_object_validates(rendered) -> None:
    name, objs = rendered
    assert {"ConfigMap", "Deployment", "Service"} <= {o["kind"] for o in objs}
    validate_objects(name, objs, MATRIX[name][1])


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
        (["--set", "runtime=tensorrt"], "/runtime"),
        (["--set", "settings.RUNTIME=onnxruntime"], "settings.RUNTIME: the chart sets it from runtime"),
        (["--set", "settings.PRECISION=int8"], "settings.PRECISION: the chart sets it from precision"),
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


# helm-docs renders deploy/helm/sentiment-worker/README.md (its values table) from the
# `# <path> -- description` comments of values.yaml. Strict mode refuses a value without one,
# except the members of these objects, which are described as a whole.
DESCRIBED_WHOLE = (
    "model.loadSeconds", "model.fetchResources", "podSecurityContext.seccompProfile",
    "containerSecurityContext.capabilities", "cpu.batch", "cpu.resources", "gpu.batch", "gpu.resources",
    "gpu.tolerations", "autoscaling.behavior", "grafanaDashboard.labels",
)
HELM_DOCS_ARGS = [
    "--chart-search-root", "deploy/helm", "--documentation-strict-mode", "--skip-version-footer",
    "--sort-values-order", "file",
    # strict mode only ignores what is described as a whole (not helm-docs' default image.* and service.type)
    "-y", "", "-z", "^(" + "|".join(re.escape(path) for path in DESCRIBED_WHOLE) + r")\.",
]
HELM_DOCS_COMMAND = shlex.join([".cache/bin/helm-docs", *HELM_DOCS_ARGS])
CHART_README = CHART / "README.md"


def _helm_docs(cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """The README helm-docs renders for the chart under cwd/deploy/helm, on stdout (--dry-run: nothing written).

    With a value undescribed, strict mode logs "values without documentation" and renders
    nothing, but helm-docs (v1.14.2) still exits 0: the callers check what it printed."""
    return subprocess.run([helm_docs(), *HELM_DOCS_ARGS, "--dry-run"], cwd=cwd, capture_output=True, timeout=120)


def test_chart_readme_is_generated_from_values() -> None:
    out = _helm_docs(REPO)
    log = out.stderr.decode()
    assert "values without documentation" not in log, (
        f"values.yaml has values without a description (strict mode):\n{log}\n"
        f"add a '# <path> -- description' comment above each, then run {HELM_DOCS_COMMAND}")
    assert out.returncode == 0 and "level=warning" not in log and "level=error" not in log, log
    assert out.stdout.startswith(b"# sentiment-worker\n"), out.stdout[:200]
    assert out.stdout == CHART_README.read_bytes(), (
        f"{CHART_README.relative_to(REPO)} is not what values.yaml and README.md.gotmpl give: run {HELM_DOCS_COMMAND}")


def test_docs_and_ci_use_the_helm_docs_the_tests_run() -> None:
    readme = (REPO / "deploy" / "README.md").read_text()
    assert HELM_DOCS_COMMAND in readme and f"helm-docs) {HELM_DOCS_VERSION} (" in readme
    assert f"\nHELM_DOCS_VERSION={HELM_DOCS_VERSION}\n" in (REPO / ".ci" / "run").read_text()


def test_strict_mode_refuses_a_value_without_description(tmp_path: Path) -> None:
    chart = tmp_path / "deploy" / "helm" / "sentiment-worker"
    shutil.copytree(CHART, chart)
    values = chart / "values.yaml"
    lines = values.read_text().splitlines(keepends=True)
    first = lines.index("  # kafka.partitions -- The input topic's partition count (`TOPIC_PARTITIONS`). Topics are\n")
    last = lines.index("  partitions: 12\n")
    assert all(line.lstrip().startswith("#") for line in lines[first:last])
    values.write_text("".join(lines[:first] + lines[last:]))
    out = _helm_docs(tmp_path)
    assert "values without documentation: \\nkafka.partitions\"" in out.stderr.decode(), out.stderr.decode()
    assert out.stdout == b"", "a chart with an undescribed value must not render"


def test_descriptions_sit_above_their_values() -> None:
    """Each `# <path> -- ...` comment block is directly above the key of that path (strict
    mode only checks that some comment names the path), and objects described as a whole
    are rendered whole."""
    text = (CHART / "values.yaml").read_text()
    key_lines: dict[int, str] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                path = f"{prefix}{key.value}"
                key_lines.setdefault(key.start_mark.line, path)  # a flow mapping: its key, not its members
                walk(value, path + ".")

    walk(yaml.compose(text), "")
    lines = text.splitlines()
    described = []
    for i, line in enumerate(lines):
        match = re.match(r"^\s*# ([\w.]+) -- ", line)
        if match:
            j = i + 1
            while lines[j].lstrip().startswith("#"):
                j += 1
            assert key_lines.get(j) == match[1], f"values.yaml:{i + 1}: '{match[1]}' describes line {j + 1}"
            described.append(match[1])
    assert len(described) == len(set(described)) >= 150
    rows = dict(re.findall(r"^\| ([\w.\[\]]+) \| \w+ \| (.*?) \| ", CHART_README.read_text(), re.M))
    for path in DESCRIBED_WHOLE:
        assert path in described and rows[path].startswith("`"), f"{path}: not described and rendered as a whole"


def test_helm_package_ships_the_readme_not_its_template(tmp_path: Path) -> None:
    out = subprocess.run([helm(), "package", str(CHART), "-d", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    (package,) = tmp_path.glob("*.tgz")
    with tarfile.open(package) as tar:
        names = set(tar.getnames())
    assert {"sentiment-worker/README.md", "sentiment-worker/values.yaml"} <= names
    assert not {n for n in names if n.endswith(".gotmpl") or "/examples/" in n}, names


# ------------------------------------------------------------------ mode: job (backfills)

BACKFILL = CHART / "examples" / "jobs" / "backfill.yaml"


@pytest.mark.parametrize("kube", [K8S_OLDEST, K8S_NEWEST])
def test_job_mode_lints_renders_and_validates(kube: str) -> None:
    out = subprocess.run([helm(), "lint", "--strict", str(CHART), "--kube-version", kube, "-f", str(BACKFILL)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "0 chart(s) failed" in out.stdout, out.stdout + out.stderr
    objs = render("-f", str(BACKFILL), *MONITORING, kube=kube)
    kinds = {o["kind"] for o in objs}
    assert "Job" in kinds and "Deployment" not in kinds
    validate_objects("backfill", objs, kube)
