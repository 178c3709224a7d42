"""deploy/docker/fetch_model.py (`fetch-model` in the images): model delivery before the worker starts.

Run as the images, init containers and compose's model service run it, on a Hugging Face
cache built here (no hub access in tests): `download` fills or confirms the cache and
writes the marker; `wait` returns once the marker appears; a hub that can't be reached
is retried with backoff, forever by default (a pod waits in its init container instead
of crash-looping), or a bounded number of times (the image build).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "deploy" / "docker" / "fetch_model.py"
MODEL = "example-org/tiny-sentiment"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(hf_home: Path, model: str = MODEL, commit: str = COMMIT) -> Path:
    """The layout huggingface_hub writes: blobs, refs and a snapshot of one commit."""
    repo = hf_home / "hub" / ("models--" + model.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "distilbert"}))
    (snapshot / "model.safetensors").write_bytes(b"\0" * 16)
    (snapshot / "tokenizer.json").write_text("{}")
    return snapshot


def env(hf_home: Path, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODEL"))}
    return {**clean, "HF_HOME": str(hf_home), "MODEL": MODEL, "MODEL_REVISION": COMMIT, **extra}


def run(hf_home: Path, *args: str, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env(hf_home, **extra),
                          capture_output=True, text=True, timeout=timeout)


def events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proc:
    """A fetch-model process whose JSON log lines are read as they come; always stopped."""

    def __init__(self, hf_home: Path, *args: str, **extra: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], env=env(hf_home, **extra),
                                     stderr=subprocess.PIPE, text=True)
        self.seen: list[dict] = []

    def until(self, event: str, count: int = 1, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while sum(e["event"] == event for e in self.seen) < count:
            assert time.monotonic() < deadline, f"no {event} x{count} within {timeout}s: {self.seen}"
            line = self.proc.stderr.readline()  # blocks until a line or EOF
            if not line:
                pytest.fail(f"exited {self.proc.wait()} before {event} x{count}: {self.seen}")
            if line.startswith("{"):
                self.seen.append(json.loads(line))
        return self.seen

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stderr.close()


def test_download_confirms_a_filled_cache_and_writes_the_marker(tmp_path: Path) -> None:
    snapshot = fake_hub_cache(tmp_path)
    out = run(tmp_path, "download", HF_HUB_OFFLINE="1")
    assert out.returncode == 0, out.stderr
    ready = [e for e in events(out.stderr) if e["event"] == "model.ready"]
    assert ready, out.stderr
    marker = json.loads(Path(ready[0]["marker"]).read_text())
    assert marker == {"model": MODEL, "revision": COMMIT, "commit": COMMIT,
                      "files": sorted(p.name for p in snapshot.iterdir())}
    # idempotent: a second run finds the marker and downloads nothing
    again = run(tmp_path, "download", HF_HUB_OFFLINE="1")
    assert again.returncode == 0 and [e["event"] for e in events(again.stderr)] == ["model.present"]


def test_download_refuses_a_snapshot_without_safetensors(tmp_path: Path) -> None:
    snapshot = fake_hub_cache(tmp_path)
    (snapshot / "model.safetensors").unlink()
    out = run(tmp_path, "download", "--attempts", "1", HF_HUB_OFFLINE="1")
    assert out.returncode == 1
    (failed,) = [e for e in events(out.stderr) if e["event"] == "model.download_failed"]
    assert "safetensors" in failed["error"] and failed["retry_in_s"] is None
    assert not (tmp_path / "sentiment-worker-models").exists()


def test_unreachable_hub_is_retried_with_backoff(tmp_path: Path) -> None:
    hub = f"http://127.0.0.1:{closed_port()}"
    # bounded (the image build): gives up after N attempts with status 1
    out = run(tmp_path, "download", "--attempts", "2", "--backoff-max", "0.2", HF_ENDPOINT=hub)
    assert out.returncode == 1
    failures = [e for e in events(out.stderr) if e["event"] == "model.download_failed"]
    assert [f["attempt"] for f in failures] == [1, 2]
    assert failures[0]["retry_in_s"] == 0.2 and failures[1]["retry_in_s"] is None
    # unbounded (init containers, the default): still retrying after several failures
    proc = Proc(tmp_path, "download", "--backoff-max", "0.2", HF_ENDPOINT=hub)
    try:
        proc.until("model.download_failed", count=3)
        assert proc.proc.poll() is None, "fetch-model gave up: the pod would crash-loop"
    finally:
        proc.stop()


def test_wait_returns_once_the_model_is_delivered(tmp_path: Path) -> None:
    proc = Proc(tmp_path, "wait", "--interval", "0.1")
    try:
        (waiting,) = proc.until("model.waiting")
        assert waiting["expected"].startswith(str(tmp_path / "sentiment-worker-models"))
        assert proc.proc.poll() is None
        # what the Job (or compose's model service) does: fill the cache, then the marker
        fake_hub_cache(tmp_path)
        assert run(tmp_path, "download", HF_HUB_OFFLINE="1").returncode == 0
        proc.until("model.present")
        assert proc.proc.wait(timeout=30) == 0
    finally:
        proc.stop()


def test_wait_for_a_mounted_directory_and_timeout(tmp_path: Path) -> None:
    model_dir = tmp_path / "models" / "mine"
    out = run(tmp_path, "wait", "--timeout", "0.3", "--interval", "0.1", MODEL=str(model_dir))
    assert out.returncode == 1 and events(out.stderr)[-1]["event"] == "model.wait_timeout"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    out = run(tmp_path, "wait", MODEL=str(model_dir))
    assert out.returncode == 0 and events(out.stderr)[-1]["event"] == "model.present"
    # download with a local path never reaches for the hub: it is the same wait
    assert run(tmp_path, "download", MODEL=str(model_dir)).returncode == 0


def test_the_worker_loads_the_delivered_model_offline_from_a_read_only_cache(tmp_path: Path) -> None:
    """What every packaging does: fetch-model fills and marks the cache, the worker loads from it, offline, read-only."""
    sentiment_worker = Path(sys.executable).with_name("sentiment-worker")
    made = tmp_path / "made"
    subprocess.run([str(sentiment_worker), "model", "init-random", str(made)], check=True, capture_output=True, timeout=300)
    hf_home = tmp_path / "hf"
    snapshot = fake_hub_cache(hf_home)
    for f in snapshot.iterdir():
        f.unlink()
    for f in made.iterdir():
        if f.suffix in (".json", ".safetensors", ".txt", ".model"):
            shutil.copy2(f, snapshot / f.name)
    assert run(hf_home, "download", HF_HUB_OFFLINE="1").returncode == 0
    assert run(hf_home, "wait", "--timeout", "5").returncode == 0
    # the worker's view: a read-only volume (it writes nothing there: checked on the files
    # themselves, since root, as in CI, would write through any permission bits), no hub
    # (an endpoint nobody listens on)
    def state() -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in hf_home.rglob("*")}

    before = state()
    out = subprocess.run(
        [str(sentiment_worker), "model", "check", "--model", MODEL, "--model-revision", COMMIT, "--device", "cpu"],
        env=env(hf_home, HF_HUB_OFFLINE="1", HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", HOME=str(tmp_path)),
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"model {MODEL} revision {COMMIT}" in out.stdout
    assert state() == before, "the worker wrote into the model cache: a read-only mount would break it"
