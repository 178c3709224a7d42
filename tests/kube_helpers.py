"""A Kubernetes control plane of the tests' own (deploy/local/kube) and a small REST client for it.

The client speaks to the API server directly (client certificate, server-side apply,
dry runs with strict field validation), so the tests need no kubectl.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, Optional

from tests.conftest import REPO
from tests.upstream_schemas import CRD_FILES, go, module_dir

KUBE_SCRIPT = REPO / "deploy" / "local" / "kube"


class KubeError(RuntimeError):
    def __init__(self, status: int, doc: Any) -> None:
        super().__init__(f"HTTP {status}: {doc.get('message') if isinstance(doc, dict) else doc}")
        self.status = status
        self.doc = doc


class Kube:
    """The API server of a data dir started by deploy/local/kube, as its admin."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.kubeconfig = data_dir / "kubeconfig"
        self.server = f"https://127.0.0.1:{(data_dir / 'api-port').read_text().strip()}"
        pki = data_dir / "pki"
        self._ssl = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self._ssl.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

    def request(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
                params: Optional[dict[str, str]] = None) -> Any:
        url = self.server + path + (("?" + urllib.parse.urlencode(params)) if params else "")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=60) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = raw.decode(errors="replace")
            raise KubeError(exc.code, doc) from None

    @cache
    def _resources(self, api_version: str) -> dict[str, tuple[str, bool]]:
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        doc = self.request("GET", base)
        return {r["kind"]: (r["name"], r["namespaced"]) for r in doc["resources"] if "/" not in r["name"]}

    def path(self, api_version: str, kind: str, namespace: Optional[str], name: Optional[str] = None) -> str:
        try:
            plural, namespaced = self._resources(api_version)[kind]
        except KeyError:
            self._resources.cache_clear()  # a CRD installed since
            plural, namespaced = self._resources(api_version)[kind]
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        where = f"/namespaces/{namespace}" if namespaced else ""
        return f"{base}{where}/{plural}" + (f"/{name}" if name else "")

    def apply(self, obj: dict[str, Any], *, namespace: Optional[str] = None, dry_run: bool = False) -> Any:
        """Server-side apply, every field validated strictly (an unknown or misplaced field is an error)."""
        meta = obj["metadata"]
        params = {"fieldManager": "tests", "force": "true", "fieldValidation": "Strict"}
        if dry_run:
            params["dryRun"] = "All"
        path = self.path(obj["apiVersion"], obj["kind"], meta.get("namespace", namespace), meta["name"])
        return self.request("PATCH", path, obj, content_type="application/apply-patch+yaml", params=params)

    def get(self, api_version: str, kind: str, namespace: Optional[str], name: str) -> Optional[dict[str, Any]]:
        try:
            return self.request("GET", self.path(api_version, kind, namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def items(self, api_version: str, kind: str, namespace: Optional[str]) -> list[dict[str, Any]]:
        return self.request("GET", self.path(api_version, kind, namespace))["items"]

    def wait(self, what: str, check: Any, timeout_s: float = 120.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(0.5)

    def install_upstream_crds(self) -> None:
        """The KEDA and Prometheus Operator CRDs the chart's objects need, from the same modules as the schemas."""
        files = {(module, path) for (module, path) in CRD_FILES.values()}
        for (name, version), path in sorted(files):
            import yaml

            crd = yaml.safe_load((module_dir(name, version) / path).read_text())
            self.apply(crd)
        for crd in self.items("apiextensions.k8s.io/v1", "CustomResourceDefinition", None):
            self.wait(f"CRD {crd['metadata']['name']}", lambda n=crd["metadata"]["name"]: established(self, n), 60)


def established(kube: Kube, name: str) -> bool:
    crd = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, name) or {}
    return any(c["type"] == "Established" and c["status"] == "True" for c in crd.get("status", {}).get("conditions", []))


@contextmanager
def control_plane(data_dir: Path) -> Iterator[Kube]:
    """Build (once per clone; .cache/bin) and start the control plane; stopped at the end."""
    go()  # without Go: a skip on a developer's machine, a failure in CI
    env = {**os.environ, "KUBE_DATA_DIR": str(data_dir)}
    built = subprocess.run([str(KUBE_SCRIPT), "build"], env=env, capture_output=True, text=True, timeout=3600)
    assert built.returncode == 0, f"deploy/local/kube build failed:\n{built.stderr[-4000:]}"
    started = subprocess.run([str(KUBE_SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, f"deploy/local/kube start failed:\n{started.stderr[-4000:]}"
        kube = Kube(data_dir)
        kube.install_upstream_crds()
        yield kube
    finally:
        subprocess.run([str(KUBE_SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
