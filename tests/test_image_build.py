"""Builds the CPU image for real with podman and runs it. Opt-in: SENTIMENT_IMAGE_BUILD=1.

Without Docker Hub the pinned python base can't be pulled, so the base is made here with
debootstrap (Debian bookworm, its Python 3.11, from the Debian mirror) and passed as
PYTHON_IMAGE; everything else is the real Dockerfile: the locked dependencies with
--require-hashes, torch from TORCH_INDEX_URL (env SENTIMENT_TORCH_INDEX_URL; default the
PyTorch CPU index; on a machine that only reaches PyPI, https://pypi.org/simple, whose
torch is the 3 GB CUDA build), the project layer, the build-cpu checks. Then:

- `sentiment-worker --help` and `fetch-model --help` run in the image, as uid 10001;
- a code change rebuilds only the last layer: every other layer of the rebuilt image is
  the same as before.

Not in CI by default: it downloads ~3 GB (PyPI torch), writes ~12 GB of container
storage and takes 5-8 minutes on 2 cores. Needs root, podman, runc and debootstrap
(Debian: apt-get install podman runc debootstrap). The engine's settings are the test's
own (CONTAINERS_CONF): runc with cgroupfs and no default ulimits, which also work in
containers and VMs without CAP_SYS_RESOURCE or a pure cgroup v2 hierarchy. The host's pip
configuration and CA store are mounted into the build, so a TLS-inspecting proxy the host
trusts works the same inside.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest

from tests.conftest import REPO

BASE = "localhost/sentiment-worker-test-base:bookworm"
TAG = "localhost/sentiment-worker:cpu-test"

pytestmark = pytest.mark.skipif(
    os.environ.get("SENTIMENT_IMAGE_BUILD") != "1",
    reason="builds a ~6 GB image (set SENTIMENT_IMAGE_BUILD=1; needs root, podman, runc, debootstrap)",
)

CONTAINERS_CONF = """
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
"""


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory):
    for tool in ("podman", "runc", "debootstrap"):
        assert shutil.which(tool), f"{tool} is missing: apt-get install podman runc debootstrap"
    conf = tmp_path_factory.mktemp("containers") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def run(*args: str, timeout: float = 1800, check: bool = True, **kwargs) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, **kwargs)
        if check:
            assert out.returncode == 0, f"podman {' '.join(args[:3])} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        return out

    if run("image", "exists", BASE, check=False).returncode != 0:
        rootfs = tmp_path_factory.mktemp("rootfs")
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,python-is-python3,ca-certificates",
             "bookworm", str(rootfs), "http://deb.debian.org/debian"],
            check=True, capture_output=True, timeout=1200,
        )
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            run("import", "-", BASE, stdin=tar.stdout)
        finally:
            tar.stdout.close()
            tar.wait(timeout=60)
    yield run
    run("rmi", "--force", TAG, TAG + "-changed", check=False)


def build(podman, context: Path, tag: str) -> None:
    mounts = []
    for host in ("/etc/pip.conf", "/etc/ssl/certs"):
        if Path(host).exists():
            mounts += ["-v", f"{host}:{host}:ro"]
    podman(
        # docker format: OCI image configs have no HEALTHCHECK
        "build", "--format", "docker", "-f", str(context / "deploy" / "docker" / "Dockerfile"), "--target", "cpu",
        "--build-arg", f"PYTHON_IMAGE={BASE}",
        "--build-arg", "TORCH_INDEX_URL=" + os.environ.get("SENTIMENT_TORCH_INDEX_URL", "https://download.pytorch.org/whl/cpu"),
        *mounts, "-t", tag, str(context),
    )


def layers(podman, tag: str) -> list[str]:
    return podman("image", "inspect", tag, "--format", "{{range .RootFS.Layers}}{{println .}}{{end}}").stdout.split()


def copy_context(dest: Path) -> Path:
    """The files the build context allows (deploy/docker/Dockerfile.dockerignore), and the Dockerfile."""
    for rel in ("pyproject.toml", "README.md", "worker", "requirements", "deploy/docker"):
        src = REPO / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def test_cpu_image_builds_runs_and_rebuilds_only_the_code_layer(podman, tmp_path: Path) -> None:
    context = copy_context(tmp_path / "context")
    build(podman, context, TAG)

    out = podman("run", "--rm", TAG, "--help", timeout=300)
    assert "Usage: sentiment-worker" in out.stdout
    assert "usage: fetch-model" in podman("run", "--rm", "--entrypoint", "fetch-model", TAG, "--help", timeout=300).stdout
    assert podman("run", "--rm", "--entrypoint", "id", TAG, "-u", timeout=300).stdout.strip() == "10001"
    config = podman("image", "inspect", TAG, "--format", "{{.Config.Entrypoint}} {{.Config.Cmd}} {{.Config.User}}").stdout
    assert config.split() == ["[sentiment-worker]", "[run]", "10001:10001"]
    assert "/health" in podman("image", "inspect", TAG, "--format", "{{.HealthCheck}}").stdout
    # `run` re-executes itself onto the image's jemalloc, then stops at the Kafka check (nothing listens there)
    started = podman("run", "--rm", TAG, "run", "--kafka-bootstrap-servers", "127.0.0.1:9", "--kafka-timeout-s", "2",
                     timeout=300, check=False)
    assert started.returncode == 2, started.stdout[-2000:] + started.stderr[-2000:]
    starting = next(orjson.loads(line) for line in started.stdout.splitlines() if '"worker.starting"' in line)
    assert starting["allocator"] == "jemalloc"

    before = layers(podman, TAG)
    with (context / "worker" / "__init__.py").open("a") as f:
        f.write("\n# a code change\n")
    build(podman, context, TAG + "-changed")
    after = layers(podman, TAG + "-changed")
    assert len(after) == len(before)
    assert after[:-1] == before[:-1], "a code change rebuilt more than the last layer"
    assert after[-1] != before[-1]
