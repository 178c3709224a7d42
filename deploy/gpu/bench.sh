#!/usr/bin/env bash
# GPU benchmark: the engine ceiling (fp16 and bf16, short and mixed workloads) and, where
# Kafka can run, the framework-overhead (no-op model) run and, beside it, the worker with a
# simulated device (bench --device sim: fast and slow profiles); on CUDA the first precision
# also with CUDA graphs (COMPILE_MODE=reduce-overhead; --graphs off leaves it out). Prints a
# short table last.
#
# Needs only Python 3.10+ with torch (CUDA build) and transformers for the ceiling; the
# overhead run also needs this project's dependencies (faust-streaming, aiokafka, ...),
# Java 17+ and the Kafka jars in .cache/kafka (or Maven to fetch them), and is skipped
# with a note when any is missing. Budget: under 7 minutes on one H200 (the simulated
# device's runs, ~2 minutes, need no GPU: --sim off leaves them out).
#
# Usage:
#   deploy/gpu/bench.sh                      # cuda, fp16+bf16, short+mixed, overhead if possible
#   deploy/gpu/bench.sh --device cpu --quick # rehearsal on a CPU machine (tiny model, seconds)
#   deploy/gpu/bench.sh --json out.json      # also write the results as JSON
#   deploy/gpu/bench.sh --sim on             # fail if the simulated-device runs cannot run
#   (all flags: deploy/gpu/bench.sh --help)
#
# Offline machines: if transformers is missing and .cache/gpu/wheels holds wheels
# (fill it elsewhere with deploy/gpu/bench.sh --download-wheels), they are installed
# into .cache/gpu/site and put on PYTHONPATH; nothing is fetched from the network.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT"

if [[ -x .venv/bin/python ]] && .venv/bin/python -c "import torch, transformers" 2>/dev/null; then
  PY="${PYTHON:-.venv/bin/python}"
else
  PY="${PYTHON:-python3}"
fi

WHEELS=.cache/gpu/wheels
SITE=.cache/gpu/site
if [[ "${1:-}" == "--download-wheels" ]]; then
  # Run where the network is reachable: wheels of transformers and its dependencies for
  # the GPU box's Python (default 3.12, manylinux x86_64), without torch.
  PYVER="${GPU_PYTHON_VERSION:-3.12}"
  mkdir -p "$WHEELS"
  "$PY" -m pip download --dest "$WHEELS" --only-binary=:all: --python-version "$PYVER" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    "transformers>=5.17,<5.18" "tokenizers>=0.23,<0.24" "safetensors>=0.8,<0.9" "huggingface-hub>=1.16,<1.31"
  exit 0
fi

export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import transformers" 2>/dev/null; then
  if [[ -d "$WHEELS" ]]; then
    echo "transformers not found: installing from $WHEELS into $SITE (offline)" >&2
    "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" --target "$SITE" \
      "transformers>=5.17,<5.18" >&2
    export PYTHONPATH="$REPO_ROOT:$REPO_ROOT/$SITE${PYTHONPATH#$REPO_ROOT}"
  else
    echo "error: this Python ($PY) has no transformers; install it (pip install 'transformers>=5.17,<5.18') or fill $WHEELS with deploy/gpu/bench.sh --download-wheels on a connected machine" >&2
    exit 2
  fi
fi
exec "$PY" deploy/gpu/bench_gpu.py "$@"
