"""LATENCY_TARGET_MS: the batch size and wait that carry the most events within a p99 latency target.

A fixed size and wait (BATCH_MAX_SIZE / BATCH_MAX_WAIT_MS, like Triton's
``max_queue_delay_microseconds`` or TEI's batching wait) suit one rate and one
text length: a burst of long texts blows the latency, a trickle waits for
nothing. The :class:`Pacer` instead watches what it is asked to bound. Per
stored batch it hears how long the batch's oldest record took from fetch to
stored (the batch's worst, so the p99 it sees is conservative) and whether the
batch was cut full (input is backing up: the size is what limits throughput).
Over the batches cut since its last change it takes the p99 and:

* above the target: shrinks the size in proportion to the overshoot (at least
  by 30 %) and halves the wait;
* below ``GROW_BELOW`` × target with batches cut full: grows the size in
  proportion to the headroom (at most doubled). Bigger batches pay the
  per-batch cost (a model call, a publish) over more events, and latency grows
  no faster than the size, so the proportional step stays under the target;
* below that with batches cut by the wait (a trickle): lets the wait back up
  to its cap, ``WAIT_SHARE`` × target, so a lone event is never held long.

In between it does nothing (hysteresis). Batches cut before a change, and
those queued behind them, describe the old limits and are not judged: after a
change it waits for fresh ones. Pure logic: no I/O, the time is passed in.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from worker.pipeline.batcher import Batcher, Cut

WAIT_SHARE = 0.25  # the longest wait, as a share of the target
MIN_WAIT_S = 0.001
GROW_BELOW = 0.8  # p99 under this share of the target, with batches cut full: grow
AIM = 0.9  # proportional steps aim at this share of the target
MAX_GROWTH = 2.0
MAX_SHRINK = 0.7  # a shrink takes off at least 30 %
SHRINK_AFTER = 4  # fresh batches before a p99 over the target is believed (one over twice the target is)
GROW_AFTER = 16  # fresh batches before a p99 under it is
WINDOW = 64  # batches kept for the p99


@dataclass(frozen=True, slots=True)
class Limits:
    size: int
    wait_s: float


def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile (the maximum of up to 100 values)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


class Pacer:
    """Batch limits within ``1..max_size`` and ``MIN_WAIT_S..max_wait_s`` that meet ``target_s`` at p99."""

    def __init__(self, target_s: float, max_size: int, max_wait_s: float) -> None:
        if target_s <= 0 or max_size < 1 or max_wait_s <= 0:
            raise ValueError("target_s, max_size and max_wait_s must be > 0")
        self.target_s = target_s
        self.max_size = max_size
        self.min_wait_s = min(MIN_WAIT_S, max_wait_s)
        self.max_wait_s = max(self.min_wait_s, min(max_wait_s, WAIT_SHARE * target_s))
        # Start at the most the settings allow: at saturation that is usually where it ends (a slow
        # start costs throughput for hundreds of batches), and a size over the target shrinks within
        # a few batches, at once when one batch takes over twice the target.
        self.limits = Limits(max_size, self.max_wait_s)
        self.p99_s: Optional[float] = None  # of the batches judged last
        self._window: deque[tuple[float, bool]] = deque(maxlen=WINDOW)  # (latency, cut full)
        self._changed_at = -math.inf
        self._settled_at = -math.inf  # batches fetched before this waited behind old-limit ones

    def observe(self, fetched_at: float, stored_at: float, full: bool) -> Optional[Limits]:
        """One batch stored: its oldest record fetched at ``fetched_at``. New limits, or None."""
        if fetched_at < self._changed_at:  # cut under the old limits
            self._settled_at = max(self._settled_at, stored_at)
            return None
        if fetched_at < self._settled_at:  # queued behind those
            return None
        self._window.append((stored_at - fetched_at, full))
        return self._judge(stored_at)

    def _judge(self, now: float) -> Optional[Limits]:
        window = self._window
        latency = p99([seen for seen, _ in window])
        self.p99_s = latency
        target = self.target_s
        size, wait = self.limits.size, self.limits.wait_s
        if latency > target and (len(window) >= SHRINK_AFTER or latency > 2 * target):
            step = min(MAX_SHRINK, AIM * target / latency)
            size = max(1, min(size - 1, math.floor(size * step)))
            wait = max(self.min_wait_s, wait / 2)
        elif latency < GROW_BELOW * target and len(window) >= GROW_AFTER:
            if sum(full for _, full in window) * 2 >= len(window):
                step = min(MAX_GROWTH, AIM * target / latency) if latency > 0 else MAX_GROWTH
                size = min(self.max_size, max(size + 1, math.floor(size * step)))
            else:
                wait = min(self.max_wait_s, wait * 2)
        limits = Limits(size, wait)
        if limits == self.limits:
            return None
        self.limits = limits
        self._window.clear()
        self._changed_at = self._settled_at = now
        return limits


class Pacing:
    """A :class:`Pacer` bound to the :class:`Batcher` whose limits it sets; fed stored batches."""

    def __init__(
        self, pacer: Pacer, batcher: Batcher, on_change: Optional[Callable[[Limits, Optional[float]], None]] = None
    ) -> None:
        self.pacer = pacer
        self._batcher = batcher
        self._on_change = on_change
        batcher.set_limits(pacer.limits.size, pacer.limits.wait_s)

    def stored(self, cut: Cut, now: float) -> None:
        """A batch is stored (``now``: the batcher's clock)."""
        limits = self.pacer.observe(cut.fetched_at, now, cut.full)
        if limits is None:
            return
        self._batcher.set_limits(limits.size, limits.wait_s)
        if self._on_change is not None:
            self._on_change(limits, self.pacer.p99_s)
