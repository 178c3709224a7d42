"""What a model call did, in numbers: for logs, metrics and the bench.

Its own module, without torch, so that whoever reports on batches (the
pipeline's observer, the telemetry) can read it without loading the model's
libraries.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What one inference call did, for logs and metrics."""

    rows: int
    real_tokens: int
    padded_tokens: int
    model_calls: int

    @property
    def padding_efficiency(self) -> float:
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0

    def __add__(self, other: "BatchReport") -> "BatchReport":
        return BatchReport(
            self.rows + other.rows,
            self.real_tokens + other.real_tokens,
            self.padded_tokens + other.padded_tokens,
            self.model_calls + other.model_calls,
        )


EMPTY_REPORT = BatchReport(0, 0, 0, 0)
