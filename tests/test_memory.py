"""The worker's allocator (worker.ops.memory); its effect on RSS and speed is measured by the bench
(`sentiment-worker bench --soak-minutes`, the e2e / ceiling ratios).

jemalloc must be installed here (Debian's libjemalloc2; `.ci/run` installs it): what these
tests check is that the worker really runs on it, and how it falls back without it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from worker.ops import memory
from worker.ops.memory import ARENAS, MMAP_THRESHOLD, AllocatorUnavailable, tune_malloc, use_allocator

REPORT = (
    "import os, sys; from worker.ops.memory import use_allocator; a = use_allocator(sys.argv[1]); "
    "maps = open('/proc/self/maps').read(); "
    "print(a, os.getpid(), 'libjemalloc' in maps, sep=',')"
)


def _report(choice: str, **env: str) -> tuple[str, int, bool]:
    """What a fresh process reports after use_allocator(choice): allocator, pid, jemalloc mapped."""
    proc = subprocess.Popen(
        [sys.executable, "-c", REPORT, choice], env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **env},
        stdout=subprocess.PIPE, text=True,
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    allocator, pid, mapped = out.strip().split(",")
    assert int(pid) == proc.pid  # re-executed in place: whoever started it still holds the right pid
    return allocator, int(pid), mapped == "True"


def test_jemalloc_is_installed_here() -> None:
    assert memory.find_jemalloc() == "libjemalloc.so.2", "install jemalloc (Debian: apt-get install libjemalloc2)"


def test_auto_reexecutes_onto_jemalloc() -> None:
    allocator, _, mapped = _report("auto")
    assert (allocator, mapped) == ("jemalloc", True)


def test_system_keeps_glibc() -> None:
    allocator, _, mapped = _report("system")
    assert (allocator, mapped) == ("glibc", False)


def test_preloaded_by_the_operator_is_used_as_it_is() -> None:
    allocator, _, mapped = _report("system", LD_PRELOAD="libjemalloc.so.2")
    assert (allocator, mapped) == ("jemalloc", True)


def test_no_loop_when_the_preload_does_not_take(monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-executed once already, yet not on jemalloc: auto falls back, jemalloc refuses."""
    monkeypatch.setattr(memory, "jemalloc_loaded", lambda: False)
    monkeypatch.setattr(memory, "tune_malloc", lambda: {})
    monkeypatch.setenv(memory.REEXECUTED, "1")
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("re-executed twice"))
    assert use_allocator("auto") == "glibc"
    with pytest.raises(AllocatorUnavailable, match="could not be preloaded"):
        use_allocator("jemalloc")


def test_without_jemalloc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "jemalloc_loaded", lambda: False)
    monkeypatch.setattr(memory, "find_jemalloc", lambda: None)
    monkeypatch.setattr(memory, "tune_malloc", lambda: {})
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("nothing to re-execute onto"))
    assert use_allocator("auto") == "glibc"
    with pytest.raises(AllocatorUnavailable, match="apt-get install libjemalloc2"):
        use_allocator("jemalloc")


def test_operator_values_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert tune_malloc() == {}


def test_glibc_settings_applied_in_a_fresh_process() -> None:
    """On Linux (glibc), as ALLOCATOR=system does at start."""
    code = "from worker.ops.memory import tune_malloc; print(sorted(tune_malloc().items()))"
    out = subprocess.run([sys.executable, "-c", code], env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == str(sorted({"MALLOC_ARENA_MAX": ARENAS, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}.items()))
