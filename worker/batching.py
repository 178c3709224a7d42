"""How a consumed batch is cut into model calls.

A model call pads every row to its longest one, so the cost of a call is
``rows x longest row`` tokens whatever the real lengths are. Sorting by length
and cutting the sorted run under a padded-token budget keeps the padding (and so
the wasted compute) small, and bounds memory per call on any device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SubBatch:
    """Indices into the original batch, shortest first, and their padded width."""

    indices: tuple[int, ...]
    width: int

    @property
    def padded_tokens(self) -> int:
        return len(self.indices) * self.width


def plan_sub_batches(lengths: Sequence[int], *, max_tokens: int, max_rows: int) -> list[SubBatch]:
    """Group rows by length so that each group's ``rows x width`` stays within ``max_tokens``.

    A single row longer than the budget still gets a call of its own: the
    budget shapes batches, it never drops input.
    """
    if max_tokens < 1 or max_rows < 1:
        raise ValueError("max_tokens and max_rows must be positive")
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    plan: list[SubBatch] = []
    current: list[int] = []
    width = 0
    for index in order:
        length = lengths[index]
        # Sorted ascending, so this row sets the new width of the group.
        if current and (len(current) >= max_rows or (len(current) + 1) * length > max_tokens):
            plan.append(SubBatch(tuple(current), width))
            current = []
        current.append(index)
        width = length
    if current:
        plan.append(SubBatch(tuple(current), width))
    return plan


def padding_efficiency(lengths: Sequence[int], plan: Sequence[SubBatch]) -> float:
    """Real tokens over padded tokens: 1.0 means no compute spent on padding."""
    padded = sum(sub.padded_tokens for sub in plan)
    return sum(lengths) / padded if padded else 1.0
