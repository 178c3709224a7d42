"""How a consumed batch is cut into model calls.

A model call pads every row to its longest one, so the cost of a call is
``rows x longest row`` tokens whatever the real lengths are. Sorting by length
and cutting the sorted run into groups keeps the padding (and so the wasted
compute) small, and the padded-token budget bounds memory per call on any
device.

Where to cut is a trade: every extra call costs a fixed overhead (on a CPU,
reading all weights once, ~15-20 ms for DistilBERT in fp32; on a GPU, launching
some hundred kernels), every padded token costs compute. :func:`plan_sub_batches`
finds the cheapest cut of the sorted run exactly (dynamic programming over
contiguous groups, O(n x max_rows)) under a simple cost model:

    cost(call) = call_overhead + sum over rows of width x (1 + width / attention_scale)

in units of one token's linear-layer compute. ``attention_scale`` is where the
quadratic attention term equals the linear one (84.9 MFLOP / 18.4 kFLOP per
token for DistilBERT, ~4600; see shared/notes/speed-limits.md). With
``call_overhead=0`` the plan has no padding at all (one call per distinct
length); with a huge overhead it degenerates to "fill each call up to the
budget", the plain token-budget cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Token-equivalents of one call's fixed cost: measured ~16 ms per call vs ~0.5 ms
# per token for DistilBERT-base fp32 on a 2-core CPU; a GPU call costs a few ms
# of launches against well under a microsecond per token.
CPU_CALL_OVERHEAD_TOKENS = 32
GPU_CALL_OVERHEAD_TOKENS = 8192
ATTENTION_SCALE = 4600.0


@dataclass(frozen=True, slots=True)
class SubBatch:
    """Indices into the original batch, shortest first, and their padded width."""

    indices: tuple[int, ...]
    width: int

    @property
    def padded_tokens(self) -> int:
        return len(self.indices) * self.width


def plan_sub_batches(
    lengths: Sequence[int],
    *,
    max_tokens: int,
    max_rows: int,
    call_overhead: float = CPU_CALL_OVERHEAD_TOKENS,
    attention_scale: float = ATTENTION_SCALE,
) -> list[SubBatch]:
    """Group rows by length: each group's ``rows x width`` stays within ``max_tokens``,
    at most ``max_rows`` rows, and the total estimated cost is the least possible.

    A single row longer than the budget still gets a call of its own: the
    budget shapes batches, it never drops input.
    """
    if max_tokens < 1 or max_rows < 1:
        raise ValueError("max_tokens and max_rows must be positive")
    if call_overhead < 0:
        raise ValueError("call_overhead must not be negative")
    n = len(lengths)
    if n == 0:
        return []
    order = sorted(range(n), key=lengths.__getitem__)
    sorted_lengths = [lengths[i] for i in order]
    # best[j]: least cost of the first j sorted rows; cut[j]: where its last group starts.
    inf = float("inf")
    best = [0.0] + [inf] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = sorted_lengths[j - 1]  # the group i..j-1 is padded to its last (longest) row
        per_row = width * (1.0 + width / attention_scale)
        fit = max(1, min(max_rows, max_tokens // width if width else max_rows))
        low = max(0, j - fit)
        here = inf
        at = j - 1
        for i in range(j - 1, low - 1, -1):
            cost = best[i] + call_overhead + (j - i) * per_row
            if cost < here:
                here, at = cost, i
        best[j] = here
        cut[j] = at
    groups: list[SubBatch] = []
    j = n
    while j > 0:
        i = cut[j]
        groups.append(SubBatch(tuple(order[i:j]), sorted_lengths[j - 1]))
        j = i
    groups.reverse()
    return groups


def padding_efficiency(lengths: Sequence[int], plan: Sequence[SubBatch]) -> float:
    """Real tokens over padded tokens: 1.0 means no compute spent on padding."""
    padded = sum(sub.padded_tokens for sub in plan)
    return sum(lengths) / padded if padded else 1.0
