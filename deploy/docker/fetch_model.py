#!/usr/bin/env python3
"""Deliver the model before the worker starts: download it once, or wait until it is there.

Installed in the images as `fetch-model` (on PATH). One implementation for every
packaging:

- image build with BAKE_MODEL=1: `fetch-model download --attempts 3` fills /opt/huggingface;
- Helm chart, model.source=download: an init container `fetch-model download` fills the
  pod's model volume; model.source=pvc: a Job runs `fetch-model download` once into a
  PersistentVolumeClaim and every pod's init container runs `fetch-model wait`;
- docker compose: the one-shot `model` service runs `fetch-model download` into the shared
  volume, and the workers start after it has completed.

`download` fetches MODEL at MODEL_REVISION (pin a commit) from the Hugging Face Hub into
the standard cache at HF_HOME (config, tokenizer and safetensors files only; no code),
then writes a marker file. It is idempotent (a filled cache returns at once) and by
default retries forever with capped exponential backoff, so a pod without hub access
waits in its init container, visibly, instead of crash-looping. `wait` returns when the
marker of MODEL@MODEL_REVISION exists (or, for a MODEL that is a local directory, when
its config.json exists). Log lines are JSON on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# Weights as safetensors only; nothing executable (no *.py, no pickles).
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]
MARKERS = "sentiment-worker-models"


def log(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "logger": "fetch-model", **fields}), file=sys.stderr, flush=True)


def hf_home() -> Path:
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")


def is_local(model: str) -> bool:
    return model.startswith(("/", "./", "../")) or Path(model).is_dir()


def marker_path(model: str, revision: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "--", f"{model}@{revision}")
    return hf_home() / MARKERS / f"{safe}.json"


def present(model: str, revision: str) -> Path | None:
    """The marker (or the local model's config.json) when the model is complete, else None."""
    path = Path(model) / "config.json" if is_local(model) else marker_path(model, revision)
    return path if path.is_file() else None


def download_once(model: str, revision: str) -> Path:
    from huggingface_hub import snapshot_download

    snapshot = Path(snapshot_download(model, revision=revision, allow_patterns=ALLOW_PATTERNS))
    if not (snapshot / "config.json").is_file() or not any(snapshot.glob("*.safetensors")):
        raise RuntimeError(f"{model}@{revision} has no config.json or no safetensors weights")
    marker = marker_path(model, revision)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(f".tmp-{os.getpid()}")
    record = {"model": model, "revision": revision, "commit": snapshot.name,
              "files": sorted(p.name for p in snapshot.iterdir())}
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(marker)  # atomic: waiters never see half a marker
    return marker


def cmd_download(model: str, revision: str, attempts: int, backoff_max: float) -> int:
    found = present(model, revision)
    if found:
        log("model.present", model=model, revision=revision, marker=str(found))
        return 0
    if is_local(model):
        log("model.local_missing", model=model, hint="mount the model directory; waiting for it")
        return cmd_wait(model, revision, timeout=0, interval=5)
    attempt = 0
    while True:
        attempt += 1
        log("model.download", model=model, revision=revision, attempt=attempt, hf_home=str(hf_home()))
        try:
            marker = download_once(model, revision)
        except Exception as exc:  # noqa: BLE001  every failure is retried the same way
            delay = min(backoff_max, 2.0 ** min(attempt, 10))
            log("model.download_failed", model=model, revision=revision, attempt=attempt,
                error=f"{type(exc).__name__}: {exc}"[:500],
                retry_in_s=None if attempts and attempt >= attempts else delay)
            if attempts and attempt >= attempts:
                return 1
            time.sleep(delay)
            continue
        log("model.ready", model=model, revision=revision, marker=str(marker))
        return 0


def cmd_wait(model: str, revision: str, timeout: float, interval: float) -> int:
    start = time.monotonic()
    last_log = None
    while True:
        found = present(model, revision)
        if found:
            log("model.present", model=model, revision=revision, marker=str(found))
            return 0
        waited = time.monotonic() - start
        if timeout and waited >= timeout:
            log("model.wait_timeout", model=model, revision=revision, waited_s=round(waited))
            return 1
        if last_log is None or time.monotonic() - last_log >= 60:
            log("model.waiting", model=model, revision=revision, waited_s=round(waited),
                expected=str(Path(model) / "config.json" if is_local(model) else marker_path(model, revision)))
            last_log = time.monotonic()
        time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fetch-model", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["download", "wait"])
    parser.add_argument("--model", default=os.environ.get("MODEL"), help="hub id or local directory (env MODEL)")
    parser.add_argument("--revision", default=os.environ.get("MODEL_REVISION") or "main",
                        help="hub branch, tag or commit; pin a commit (env MODEL_REVISION)")
    parser.add_argument("--attempts", type=int, default=0, help="download: give up after N attempts (0: never)")
    parser.add_argument("--backoff-max", type=float, default=60.0, help="download: longest pause between attempts (s)")
    parser.add_argument("--timeout", type=float, default=0.0, help="wait: give up after N seconds (0: never)")
    parser.add_argument("--interval", type=float, default=5.0, help="wait: seconds between checks")
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("no model: set MODEL or --model")
    if args.command == "download":
        return cmd_download(args.model, args.revision, args.attempts, args.backoff_max)
    return cmd_wait(args.model, args.revision, args.timeout, args.interval)


if __name__ == "__main__":
    sys.exit(main())
