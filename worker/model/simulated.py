"""A simulated accelerator: a forward pass that only waits, as long as a device of known speed would.

It costs ``ms_per_call`` per model call plus ``ns_per_token`` per padded
token (and optionally ``ns_per_token_position`` per padded token and position,
attention's quadratic term). The wait is a ``time.sleep``: it takes no CPU
and releases the GIL, as a GPU kernel does, so everything around the model
(Kafka, tokenisation, the plan, padding, outputs) runs for real beside it.
With it, the benchmark measures whether the worker keeps a device fed on a
machine that has none, and the cost learner is tested against a known truth.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True, slots=True)
class _Output:
    logits: torch.Tensor


@dataclass
class SimulatedDevice:
    """A callable with the model's forward signature; zeros for logits."""

    labels: int
    ms_per_call: float = 2.0
    ns_per_token: float = 30.0
    ns_per_token_position: float = 0.0
    busy_s: float = field(default=0.0, init=False)  # total time slept: the device's busy time
    calls: int = field(default=0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def cost_s(self, rows: int, width: int) -> float:
        """What one call of ``rows`` x ``width`` padded tokens costs on this device."""
        tokens = rows * width
        return self.ms_per_call / 1e3 + tokens * (self.ns_per_token + width * self.ns_per_token_position) / 1e9

    def __call__(self, *, input_ids: torch.Tensor, **_: Any) -> _Output:
        rows, width = input_ids.shape
        wait = self.cost_s(rows, width)
        started = time.perf_counter()
        time.sleep(wait)
        with self._lock:
            self.busy_s += time.perf_counter() - started
            self.calls += 1
        return _Output(torch.zeros((rows, self.labels)))
