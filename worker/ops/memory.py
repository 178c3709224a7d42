"""The worker's memory allocator: fast inference and a resident size that stays flat.

Inference allocates tensors of a new size with every batch shape (DistilBERT, 64 short
texts: ~360 MB of activations per call in blocks of 1-40 MB). Measured on the 2-core
development machine (README "Performance", "Memory"):

- glibc's defaults: its mmap threshold rises whenever a large mmapped block is freed
  (up to 32 MiB), after which those blocks are carved from the heap arenas, which
  fragment as shapes vary: RSS grew 16 % over a 10-minute soak (one thread's arena held
  197 MB of which 26 MB was in use). Nothing leaks; the memory is never handed back.
- glibc with a fixed 32 MiB threshold: the same growth (+11.8 % in 10 minutes).
- glibc with a fixed 1 MiB threshold: RSS flat, but every activation is a fresh mmap
  whose pages the kernel faults in and zeroes on every call: inference ran at about
  half the engine's speed in int8 and -14 % in fp32.
- jemalloc (5.3, Debian's libjemalloc2): RSS flat (+2.1 %) and inference at the
  engine's speed: it keeps freed pages for reuse and returns them over time.

So ``run`` uses jemalloc when it is installed. An allocator can only be chosen as a
process starts (``LD_PRELOAD``), so the worker re-executes itself with jemalloc
preloaded before it does anything else, the way PyTorch's own CPU launcher
(``torch.backends.xeon.run_cpu``) does; the process id stays the same. Without
jemalloc the flat-RSS glibc settings apply, through ``mallopt`` (glibc reads its
``MALLOC_*`` variables only at start); an operator's ``MALLOC_ARENA_MAX`` /
``MALLOC_MMAP_THRESHOLD_`` win.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Optional

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers
M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 1 << 20  # 1 MiB: activations of a batch are larger; tokens and Python objects smaller
JEMALLOC = "libjemalloc.so.2"
JEMALLOC_PATHS = ("/usr/local/lib/libjemalloc.so.2",)  # where the images put it (deploy/docker/Dockerfile)
REEXECUTED = "SENTIMENT_WORKER_ALLOCATOR_REEXEC"  # set in the re-executed process: never loop


class AllocatorUnavailable(RuntimeError):
    """ALLOCATOR=jemalloc on a machine without it."""


def use_allocator(choice: str) -> str:
    """Run this process on the allocator ``choice`` (auto, jemalloc, system) asks for.

    Re-executes the process with jemalloc preloaded where needed (then it never
    returns); call it before any output or connection. Returns the allocator in use:
    ``jemalloc`` or ``glibc``.
    """
    if jemalloc_loaded():
        return "jemalloc"
    if choice != "system":
        library = find_jemalloc()
        if library is None and choice == "jemalloc":
            raise AllocatorUnavailable(
                f"ALLOCATOR=jemalloc: {JEMALLOC} is not installed (Debian/Ubuntu: apt-get install libjemalloc2)"
            )
        if library is not None and not os.environ.get(REEXECUTED) and sys.platform.startswith("linux"):
            sys.stdout.flush()
            sys.stderr.flush()
            preload = " ".join(p for p in (os.environ.get("LD_PRELOAD", ""), library) if p)
            os.execve(sys.executable, list(sys.orig_argv), {**os.environ, "LD_PRELOAD": preload, REEXECUTED: "1"})
        if choice == "jemalloc":  # re-executed, yet not loaded: the loader refused it
            raise AllocatorUnavailable(f"ALLOCATOR=jemalloc: {library} could not be preloaded")
    tune_malloc()
    return "glibc"


def jemalloc_loaded() -> bool:
    """Whether jemalloc is this process's allocator (preloaded or linked)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return any("libjemalloc" in line for line in maps)
    except OSError:
        return False


def find_jemalloc() -> Optional[str]:
    """jemalloc's shared library, as the dynamic loader finds it; None if not installed."""
    if ctypes.util.find_library("jemalloc") == JEMALLOC:  # in the loader's cache: preload it by name
        return JEMALLOC
    return next((path for path in JEMALLOC_PATHS if os.path.exists(path)), None)


def tune_malloc() -> dict[str, int]:
    """glibc's flat-RSS settings where the environment doesn't set them; returns what was set."""
    wanted = {"MALLOC_ARENA_MAX": (M_ARENA_MAX, ARENAS), "MALLOC_MMAP_THRESHOLD_": (M_MMAP_THRESHOLD, MMAP_THRESHOLD)}
    todo = {env: param for env, param in wanted.items() if not os.environ.get(env)}
    name = ctypes.util.find_library("c")
    if not todo or name is None:
        return {}
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return {}
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return {env: value for env, (param, value) in todo.items() if mallopt(param, value) == 1}
