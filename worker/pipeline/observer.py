"""What the pipeline tells the outside world: one interface that metrics, logs and tracing hang on.

The pipeline calls these at batch granularity (never per event, except for
the rare dead letter); the implementations live in ``worker.ops``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Protocol

from worker.model.report import BatchReport


@dataclass(frozen=True, slots=True)
class BatchDone:
    """One batch through to the broker."""

    events: int
    scored: int
    dead_lettered: int
    report: BatchReport
    encode_s: float
    infer_s: float
    publish_s: float
    total_s: float
    input_timestamps_ms: Sequence[int]  # Kafka timestamps of the scored inputs (end-to-end latency)
    input_lengths: Sequence[int] = ()  # tokens per scored text, before truncation (capped at MAX_LENGTH)
    truncated: int = 0


class Observer(Protocol):
    def batch_consumed(self, events: int) -> None: ...

    def dead_lettered(self, reason: str, topic: str, partition: int, offset: int, error: str) -> None: ...

    def batch_done(self, done: BatchDone) -> None: ...

    def batch_abandoned(self, events: int) -> None: ...

    def publish_failed(self, error: str, topics: Sequence[str], attempt: int, retry_in_s: float) -> None: ...

    def transactions(self, outcome: str, count: int = 1) -> None: ...

    def access_denied(self, missing: str, during: str, error: str) -> None: ...

    def access_restored(self, during: str) -> None: ...

    def pipeline_failed(self, error: BaseException) -> None: ...


class BatchTraceLike(Protocol):
    """A batch's trace (``worker.ops.tracing.BatchTrace``)."""

    def headers(self, index: int) -> tuple[tuple[str, bytes], ...]: ...

    def stage(self, name: str, start_ns: int, end_ns: int, **attributes: Any) -> None: ...

    def end(self, *, stored: bool, end_ns: Optional[int] = None) -> None: ...


class Tracer(Protocol):
    def batch(self, records: Sequence[Any], started_ns: int) -> BatchTraceLike: ...


class NullObserver:
    """Observes nothing (tests, tools)."""

    def batch_consumed(self, events: int) -> None:
        pass

    def dead_lettered(self, reason: str, topic: str, partition: int, offset: int, error: str) -> None:
        pass

    def batch_done(self, done: BatchDone) -> None:
        pass

    def batch_abandoned(self, events: int) -> None:
        pass

    def publish_failed(self, error: str, topics: Sequence[str], attempt: int, retry_in_s: float) -> None:
        pass

    def transactions(self, outcome: str, count: int = 1) -> None:
        pass

    def access_denied(self, missing: str, during: str, error: str) -> None:
        pass

    def access_restored(self, during: str) -> None:
        pass

    def pipeline_failed(self, error: BaseException) -> None:
        pass
