"""Synthetic benchmark workloads: token-length distributions and texts that follow them.

Dependency-free, so the GPU ceiling script (deploy/gpu/bench_gpu.py) draws the
same events as ``sentiment-worker bench`` on a machine that has only torch and
transformers.
"""

from __future__ import annotations

import random

WORKLOADS = ("short", "mixed", "long")

_WORDS = (
    "the movie was good bad great terrible awful excellent amazing boring best worst product service really "
    "quite never always nothing everything happy sad angry recommend buy bought price quality slow fast love "
    "hate film people time work part place made live after back little only round year came show every give "
    "under name very through just form great think say help line turn cause much mean before move right old "
    "same tell does set three want air well also play small end put home read hand large even land here must"
).split()


def token_lengths(workload: str, n: int, seed: int = 0) -> list[int]:
    """Target token counts (with [CLS] and [SEP]) of ``n`` events of a workload."""
    rng = random.Random(f"{workload}-{seed}")
    out = []
    for _ in range(n):
        if workload == "short" or (workload == "mixed" and rng.random() < 0.8):
            out.append(rng.randint(8, 48))
        elif workload in ("mixed", "long"):
            out.append(rng.randint(100, 512) if workload == "mixed" else rng.randint(200, 512))
        else:
            raise ValueError(f"unknown workload {workload!r}")
    return out


def make_texts(workload: str, n: int, seed: int = 0) -> list[str]:
    """Texts whose token counts follow the workload (one word = one token with these words)."""
    rng = random.Random(f"text-{workload}-{seed}")
    return [" ".join(rng.choice(_WORDS) for _ in range(max(1, length - 2))) for length in token_lengths(workload, n, seed)]
