"""Upstream schemas for the chart's custom resources, and the helm binary, for the tests.

Nothing here is written by hand from documentation: the CRDs of KEDA and of the
Prometheus Operator come from their Go modules (`go mod download -json MODULE@VERSION`,
through the Go module proxy, cached under .cache/go-mod), and the KEDA trigger
parameters from the `keda:"name=..."` tags of the scalers' Go structs in the same module.

- `crd_validator(kind)`: a JSON-schema validator from the CRD's openAPIV3Schema, made
  strict the way the API server's strict field validation is (unknown fields fail:
  `additionalProperties: false` wherever the CRD lists properties and does not preserve
  unknown fields); CEL rules (x-kubernetes-validations) are not evaluated.
- `scaler_params(scaler)`: each trigger parameter of a KEDA scaler with where it may be
  given (trigger metadata, TriggerAuthentication), whether it is optional, its enum and
  Go type.
- `helm()`: the helm binary (.cache/bin/helm, installed with `go install` from the Go
  module proxy as .ci/run does, or helm on PATH).
- `helm_docs()`: the helm-docs binary, the same way (.cache/bin/helm-docs, or PATH).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import REPO

CACHE = REPO / ".cache"
HELM_VERSION = "v3.22.0"
# helm-docs renders the chart's README from values.yaml (tests/test_helm_chart.py); .ci/run pins the same.
HELM_DOCS_VERSION = "v1.14.2"
# The newest releases on the Go module proxy when the chart was written; KEDA >= 2.16 is
# what the chart needs (limitToPartitionsWithLag), its CRDs and scalers are checked here.
KEDA_MODULE = ("github.com/kedacore/keda/v2", "v2.21.0")
PROMETHEUS_OPERATOR_MODULE = ("github.com/prometheus-operator/prometheus-operator", "v0.85.0")

CRD_FILES = {
    ("keda.sh/v1alpha1", "ScaledObject"): (KEDA_MODULE, "config/crd/bases/keda.sh_scaledobjects.yaml"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): (KEDA_MODULE, "config/crd/bases/keda.sh_triggerauthentications.yaml"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): (
        PROMETHEUS_OPERATOR_MODULE, "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"),
    ("monitoring.coreos.com/v1", "PrometheusRule"): (
        PROMETHEUS_OPERATOR_MODULE, "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml"),
}


def go() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        _missing("Go is not installed: the upstream CRDs (and helm) come from the Go module proxy")
    return go


def _missing(reason: str) -> None:
    # In CI every check must run; on a developer machine without the tool, skip.
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@cache
def module_dir(module: str, version: str) -> Path:
    """The extracted module, downloaded once into .cache/go-mod."""
    env = {**os.environ, "GOMODCACHE": str(CACHE / "go-mod"), "GOFLAGS": "-modcacherw", "GO111MODULE": "on"}
    CACHE.mkdir(exist_ok=True)
    out = subprocess.run([go(), "mod", "download", "-json", f"{module}@{version}"], cwd=CACHE,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"go mod download {module}@{version} failed:\n{out.stdout}{out.stderr}"
    info = json.loads(out.stdout)
    assert "Error" not in info, info
    return Path(info["Dir"])


def _strict(schema: Any) -> Any:
    """openAPIV3Schema → JSON schema with the API server's strictness about unknown fields."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if "properties" in schema:
        out["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    (module, version), path = CRD_FILES[(api_version, kind)]
    crd = yaml.safe_load((module_dir(module, version) / path).read_text())
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind
    group, served = api_version.split("/")
    assert crd["spec"]["group"] == group
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == served]
    assert entry["served"], f"{api_version} {kind} is not served by {module}@{version}"
    schema = _strict(copy.deepcopy(entry["schema"]["openAPIV3Schema"]))
    # metadata is checked by the API server itself: only its type here.
    schema["properties"]["metadata"] = {"type": "object"}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    schema["properties"]["apiVersion"] = {"const": api_version}
    schema["properties"]["kind"] = {"const": kind}
    return schema


def crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    schema = crd_schema(api_version, kind)
    return jsonschema.Draft7Validator(schema)


def crd_kinds() -> set[tuple[str, str]]:
    return set(CRD_FILES)


@dataclass(frozen=True)
class Param:
    name: str
    metadata: bool  # may be given in the trigger's metadata
    auth: bool  # may come from a TriggerAuthentication
    from_env: bool  # may be given as <name>FromEnv
    required: bool
    enum: tuple[str, ...]
    go_type: str


_TAG = re.compile(r'^\s*\w+\s+(?P<type>[\w.\[\]*]+)\s+`[^`]*keda:"(?P<tag>[^"]*)"', re.M)


@cache
def scaler_params(scaler: str) -> dict[str, Param]:
    """Parameters of pkg/scalers/<scaler>_scaler.go, from its struct tags."""
    source = (module_dir(*KEDA_MODULE) / "pkg" / "scalers" / f"{scaler}_scaler.go").read_text()
    params: dict[str, Param] = {}
    for match in _TAG.finditer(source):
        fields = {}
        for part in match["tag"].split(","):
            key, _, value = part.strip().partition("=")
            fields[key] = value
        if "name" not in fields:
            continue  # an embedded block (e.g. Prometheus' auth config), parsed elsewhere
        order = set(fields.get("order", "").split(";"))
        params[fields["name"]] = Param(
            name=fields["name"],
            metadata="triggerMetadata" in order,
            auth="authParams" in order,
            from_env="resolvedEnv" in order,
            required="optional" not in fields and "default" not in fields,
            enum=tuple(e for e in fields.get("enum", "").split(";") if e),
            go_type=match["type"],
        )
    assert len(params) >= 8, f"no keda tags found in {scaler}_scaler.go: has the module changed its layout?"
    return params


def check_trigger_metadata(scaler: str, metadata: dict[str, str], auth_params: set[str]) -> list[str]:
    """What KEDA's parser would reject in one trigger (metadata plus the parameters its TriggerAuthentication supplies)."""
    params = scaler_params(scaler)
    errors = []
    for key, value in metadata.items():
        name = key[: -len("FromEnv")] if key.endswith("FromEnv") and key[: -len("FromEnv")] in params else key
        param = params.get(name)
        if param is None or not param.metadata:
            errors.append(f"{scaler}: unknown trigger metadata {key!r}")
            continue
        if not isinstance(value, str):
            errors.append(f"{scaler}: {key} must be a string, not {value!r}")
            continue
        if param.enum and value not in param.enum:
            errors.append(f"{scaler}: {key}={value!r} not one of {param.enum}")
        if param.go_type in {"int", "int32", "int64"} and not re.fullmatch(r"-?\d+", value):
            errors.append(f"{scaler}: {key}={value!r} is not an integer")
        if param.go_type == "float64":
            try:
                float(value)
            except ValueError:
                errors.append(f"{scaler}: {key}={value!r} is not a number")
        if param.go_type == "bool" and value.lower() not in {"true", "false", "1", "0", "t", "f"}:
            errors.append(f"{scaler}: {key}={value!r} is not a boolean")
    for name in auth_params:
        if name not in params or not params[name].auth:
            errors.append(f"{scaler}: {name!r} can't come from a TriggerAuthentication")
    given = set(metadata) | auth_params | {k[: -len("FromEnv")] for k in metadata if k.endswith("FromEnv")}
    for param in params.values():
        if param.required and param.name not in given:
            errors.append(f"{scaler}: required parameter {param.name!r} missing")
    return errors


def _go_tool(name: str, package: str) -> str:
    """.cache/bin/NAME (installed here with `go install PACKAGE` from the Go module proxy when missing), else PATH."""
    local = CACHE / "bin" / name
    if not local.exists() and not shutil.which(name):
        local.parent.mkdir(parents=True, exist_ok=True)
        out = subprocess.run([go(), "install", package],
                             env={**os.environ, "GOBIN": str(local.parent)}, capture_output=True, text=True, timeout=1200)
        assert out.returncode == 0, f"go install {name} failed:\n{out.stderr}"
    return str(local) if local.exists() else shutil.which(name)


def helm() -> str:
    """The helm binary: .cache/bin/helm (installed here from the Go module proxy when missing), else PATH."""
    return _go_tool("helm", f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}")


def helm_docs() -> str:
    """The helm-docs binary: .cache/bin/helm-docs (installed here from the Go module proxy when missing), else PATH."""
    return _go_tool("helm-docs", f"github.com/norwoodj/helm-docs/cmd/helm-docs@{HELM_DOCS_VERSION}")
