"""Keep the worker's resident memory flat under steady load.

Inference allocates tensors of a new size with every batch shape. glibc's
malloc raises its mmap threshold each time a large mmapped block is freed
(up to 32 MiB), so after a while those tensors are carved out of the heap
arenas instead, and the arenas fragment: measured at full load, RSS grew 16 %
over 10 minutes with glibc's defaults, and one thread's arena held 197 MB of
which 26 MB was in use (README "Performance"). Nothing leaks; the memory is
just never handed back. A fixed mmap threshold sends large blocks to mmap for
good, returned to the system on free; two arenas (as ``MALLOC_ARENA_MAX=2``
would) bound what the worker's threads keep besides.

glibc reads its ``MALLOC_*`` variables only at process start, so the same is
done here through ``mallopt`` as the CLI starts, before any worker thread
exists. An operator's ``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_`` wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers
M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 1 << 20  # 1 MiB: activations of a batch are larger; tokens and Python objects smaller


def tune_malloc() -> dict[str, int]:
    """Apply the settings above where the environment doesn't set them; returns what was set."""
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
