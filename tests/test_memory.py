"""glibc malloc settings (worker.memory); their effect on RSS is measured by `sentiment-worker bench --soak-minutes`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from worker.ops.memory import ARENAS, MMAP_THRESHOLD, tune_malloc


def test_operator_values_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert tune_malloc() == {}


def test_settings_applied_in_a_fresh_process() -> None:
    """On Linux (glibc), as the CLI does at start."""
    code = "from worker.ops.memory import tune_malloc; print(sorted(tune_malloc().items()))"
    out = subprocess.run([sys.executable, "-c", code], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == str(sorted({"MALLOC_ARENA_MAX": ARENAS, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}.items()))
