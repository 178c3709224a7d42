"""What a model call did, in numbers: for logs, metrics and the bench.

Its own module, without torch, so that whoever reports on batches (the
pipeline's observer, the telemetry) can read it without loading the model's
libraries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What one inference call did, for logs and metrics."""

    rows: int
    real_tokens: int
    padded_tokens: int
    model_calls: int
    # Wall time of the model calls, the device synchronised once at the end: the device's busy time.
    forward_s: float = 0.0
    # The planner's cost model after this batch (worker.model.costs), for metrics and logs.
    costs: Optional["CostFit"] = None

    @property
    def padding_efficiency(self) -> float:
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0

    def __add__(self, other: "BatchReport") -> "BatchReport":
        return BatchReport(
            self.rows + other.rows,
            self.real_tokens + other.real_tokens,
            self.padded_tokens + other.padded_tokens,
            self.model_calls + other.model_calls,
            self.forward_s + other.forward_s,
            other.costs or self.costs,
        )


EMPTY_REPORT = BatchReport(0, 0, 0, 0)


class CallTerms(Protocol):
    """A batch's calls summed into the cost model's terms (``worker.model.costs.Observation``)."""

    calls: int
    tokens: int
    token_positions: int


@dataclass(frozen=True, slots=True)
class CostFit:
    """What a model call costs on this model, device and precision, in seconds:

    ``call_s + padded_tokens x (token_s + width x token_position_s)``

    ``source`` says where the numbers come from: ``prior`` (the built-in
    guess), ``probe`` (the warm-up's calls) or ``fit`` (a running fit over
    recent batches too). ``observations``: batches and probes behind it.
    """

    call_s: float
    token_s: float
    token_position_s: float
    source: str
    observations: int

    @property
    def call_overhead_tokens(self) -> float:
        """One call's fixed cost in tokens' worth: the planner's trade between calls and padding."""
        return self.call_s / self.token_s if self.token_s > 0 else float("inf")

    @property
    def attention_scale(self) -> float:
        """The width at which attention costs as much per token as the rest (inf: no attention term seen)."""
        return self.token_s / self.token_position_s if self.token_position_s > 0 else float("inf")

    def seconds_of(self, calls: "CallTerms") -> float:
        """The predicted time of a batch whose calls sum to these terms."""
        return self.call_s * calls.calls + self.token_s * calls.tokens + self.token_position_s * calls.token_positions

    def seconds(self, rows: int, width: int) -> float:
        """The predicted time of one call of ``rows`` x ``width``."""
        return self.call_s + rows * width * (self.token_s + width * self.token_position_s)
