"""The pipeline's observer: Prometheus metrics, log lines and running totals, per batch.

Implements ``worker.pipeline.observer.Observer`` by its shape alone (ops/
never imports the pipeline). Logs name where a record was (topic, partition,
offset) and why it was set aside, never its content.

Threads: ``dead_lettered`` is called from the outputs thread, everything else
from the event loop. Only the loop writes the running totals; the outputs
thread touches nothing but Prometheus' metrics (locked) and the log.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np

from worker.ops import logs, metrics

log = logs.get_logger("worker.pipeline")


class CostTerms(Protocol):
    """The planner's fitted cost model (``worker.model.report.CostFit``)."""

    @property
    def call_s(self) -> float: ...

    @property
    def token_s(self) -> float: ...

    @property
    def token_position_s(self) -> float: ...

    @property
    def call_overhead_tokens(self) -> float: ...

    @property
    def attention_scale(self) -> float: ...


class CallReport(Protocol):
    """A batch's model calls in numbers (``worker.model.report.BatchReport``)."""

    @property
    def real_tokens(self) -> int: ...

    @property
    def padded_tokens(self) -> int: ...

    @property
    def model_calls(self) -> int: ...

    @property
    def padding_efficiency(self) -> float: ...

    @property
    def forward_s(self) -> float: ...

    @property
    def costs(self) -> Optional[CostTerms]: ...


class BatchSummary(Protocol):
    """One batch through to the broker (``worker.pipeline.observer.BatchDone``)."""

    @property
    def events(self) -> int: ...

    @property
    def scored(self) -> int: ...

    @property
    def dead_lettered(self) -> int: ...

    @property
    def report(self) -> CallReport: ...

    @property
    def encode_s(self) -> float: ...

    @property
    def infer_s(self) -> float: ...

    @property
    def publish_s(self) -> float: ...

    @property
    def total_s(self) -> float: ...

    @property
    def input_timestamps_ms(self) -> Sequence[int]: ...

    @property
    def input_lengths(self) -> Sequence[int]: ...

    @property
    def truncated(self) -> int: ...


@dataclass(slots=True)
class Totals:
    """Running totals, for the periodic summary line."""

    consumed: int = 0
    scored: int = 0
    dead_lettered: int = 0
    batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    abandoned: int = 0


class Telemetry:
    """Implements ``worker.pipeline.observer.Observer``."""

    def __init__(self, dead_letter_topic: str) -> None:
        self._dead_letter_topic = dead_letter_topic
        self.totals = Totals()
        self._last_scored = 0
        self._last_at = time.monotonic()

    def batch_consumed(self, events: int) -> None:
        self.totals.consumed += events
        metrics.EVENTS_CONSUMED.inc(events)
        metrics.BATCH_SIZE.observe(events)
        metrics.IN_FLIGHT.inc(events)

    def dead_lettered(self, reason: str, topic: str, partition: int, offset: int, error: str) -> None:
        """Called from the outputs thread: a metric and a log line, no state of ours (see above)."""
        metrics.EVENTS_DEAD_LETTERED.labels(reason).inc()
        log.warning(
            "record.dead_lettered",
            reason=reason,
            error=error[:200],
            topic=topic,
            partition=partition,
            offset=offset,
            dead_letter_topic=self._dead_letter_topic,
        )

    def batch_done(self, done: BatchSummary) -> None:
        totals = self.totals
        report = done.report
        totals.batches += 1
        totals.scored += done.scored
        totals.dead_lettered += done.dead_lettered
        totals.real_tokens += report.real_tokens
        totals.padded_tokens += report.padded_tokens
        metrics.IN_FLIGHT.dec(done.events)
        metrics.EVENTS_SCORED.inc(done.scored)
        metrics.BATCHES.inc()
        metrics.TOKENS.labels("real").inc(report.real_tokens)
        metrics.TOKENS.labels("padded").inc(report.padded_tokens)
        metrics.BATCH_TOKENS.observe(report.padded_tokens)
        if report.padded_tokens:
            metrics.PADDING_EFFICIENCY.set(report.padding_efficiency)
        metrics.TOKENIZE_SECONDS.observe(done.encode_s)
        metrics.INFERENCE_SECONDS.observe(done.infer_s)
        metrics.MODEL_BUSY_SECONDS.inc(report.forward_s)
        if report.costs is not None:
            set_planner_costs(report.costs)
        metrics.PUBLISH_SECONDS.observe(done.publish_s)
        if done.truncated:
            metrics.TRUNCATED.inc(done.truncated)
        metrics.observe_many(metrics.INPUT_TOKENS, done.input_lengths)
        if len(done.input_timestamps_ms):
            now_ms = time.time() * 1000
            ages = (now_ms - np.asarray(done.input_timestamps_ms, dtype=np.float64)) / 1000
            metrics.observe_many(metrics.END_TO_END_SECONDS, np.maximum(ages, 0.0))
        log.debug(
            "batch.done",
            size=done.events,
            scored=done.scored,
            dead_lettered=done.dead_lettered,
            tokens=report.real_tokens,
            padded_tokens=report.padded_tokens,
            model_calls=report.model_calls,
            encode_ms=round(done.encode_s * 1000, 2),
            infer_ms=round(done.infer_s * 1000, 2),
            publish_ms=round(done.publish_s * 1000, 2),
            total_ms=round(done.total_s * 1000, 2),
        )

    def batch_abandoned(self, events: int) -> None:
        self.totals.abandoned += events
        metrics.IN_FLIGHT.dec(events)
        log.info("batch.abandoned", events=events, reason="partitions revoked; the next owner reads them again")

    def publish_failed(self, error: str, topics: Sequence[str], attempt: int, retry_in_s: float) -> None:
        for topic in topics:
            metrics.PUBLISH_ERRORS.labels(topic).inc()
        log.error("publish.failed", error=error, topics=list(topics), attempt=attempt, retry_in_s=retry_in_s)

    def transactions(self, outcome: str, count: int = 1) -> None:
        metrics.TRANSACTIONS.labels(outcome).inc(count)
        if outcome != "committed":
            log.warning("transaction." + outcome, count=count)

    def access_denied(self, missing: str, during: str, error: str) -> None:
        log.error("kafka.access_denied", during=during, missing=missing, error=error)

    def access_restored(self, during: str) -> None:
        log.info("kafka.access_restored", during=during)

    def pipeline_failed(self, error: BaseException) -> None:
        metrics.FAILURES.inc()
        log.error("pipeline.failed", error=repr(error), exc_info=error)

    def batch_limits(self, events: int, wait_s: float, p99_s: Optional[float] = None) -> None:
        """The batcher's current limits (at start, and whenever LATENCY_TARGET_MS's pacer moves them)."""
        metrics.BATCH_LIMIT.set(events)
        metrics.BATCH_WAIT.set(wait_s)
        if p99_s is not None:
            log.debug("batching.limits", size=events, wait_ms=round(wait_s * 1000, 2), p99_ms=round(p99_s * 1000, 2))

    def log_throughput(self, in_flight: int) -> None:
        """The periodic summary line."""
        now = time.monotonic()
        totals = self.totals
        rate = (totals.scored - self._last_scored) / max(now - self._last_at, 1e-9)
        self._last_scored, self._last_at = totals.scored, now
        log.info(
            "throughput",
            events_per_s=round(rate, 1),
            scored=totals.scored,
            dead_lettered=totals.dead_lettered,
            batches=totals.batches,
            padding_efficiency=round(totals.real_tokens / totals.padded_tokens, 3) if totals.padded_tokens else None,
            in_flight=in_flight,
            abandoned=totals.abandoned,
        )

    def gpu_memory(self, device: str) -> None:
        """GPU memory gauges, for a model on CUDA (torch is only imported then)."""
        if not device.startswith("cuda"):
            return
        import torch

        gpu = torch.device(device)
        metrics.GPU_MEMORY_BYTES.labels(str(gpu), "allocated").set(torch.cuda.memory_allocated(gpu))
        metrics.GPU_MEMORY_BYTES.labels(str(gpu), "reserved").set(torch.cuda.memory_reserved(gpu))


def set_planner_costs(costs: CostTerms) -> None:
    """The cost model the planner works with now, as gauges (the start, then every refit)."""
    gauge = metrics.PLANNER_COST.labels
    gauge("call_seconds").set(costs.call_s)
    gauge("token_seconds").set(costs.token_s)
    gauge("token_position_seconds").set(costs.token_position_s)
    gauge("call_overhead_tokens").set(costs.call_overhead_tokens)
    gauge("attention_scale").set(costs.attention_scale)
