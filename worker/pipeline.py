"""decode -> tokenise -> infer -> publish -> acknowledge, with the stages overlapped.

The stream hands over batches of consumed records; each batch is decoded at
once, then tokenised and scored in worker threads (FIFO, one batch at a time per
stage) while the event loop goes on consuming, heartbeating and publishing the
previous batch. A single publisher task takes batches strictly in submission
order, publishes their outputs, waits for the broker's acknowledgement of every
one, and only then acknowledges the input records, in offset order. Any failure
stops the line before the acknowledgement: the offsets of that batch and of
every later one stay uncommitted, and the worker exits to be restarted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional, Protocol

from worker import logs, metrics
from worker.codec import DecodeError, InputRecord, Source, decode, encode_output
from worker.engine import BatchReport, Encoded, ModelInfo, Prediction
from worker.publisher import OutboundRecord
from worker.settings import InputFormat

log = logs.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Consumed:
    """One input record as the stream delivered it; ``handle`` is what the acker needs."""

    source: Source
    key: Optional[bytes]
    value: Optional[bytes]
    handle: Any


class Scorer(Protocol):
    info: ModelInfo
    last_report: BatchReport

    def encode(self, texts: Sequence[str]) -> Encoded: ...

    def infer(self, encoded: Encoded) -> list[Prediction]: ...


class Sink(Protocol):
    async def publish(self, records: Sequence[OutboundRecord]) -> None: ...


Acker = Callable[[Any], Awaitable[Any]]


@dataclass(slots=True)
class _Batch:
    consumed: list[Consumed]
    good: list[tuple[Consumed, InputRecord]]
    scoring: "asyncio.Future[tuple[list[Prediction], BatchReport, float, float]]"
    started: float


@dataclass(slots=True)
class Stats:
    """Running totals, for the periodic summary line (and later, metrics)."""

    consumed: int = 0
    scored: int = 0
    rejected: int = 0
    batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    encode_s: float = 0.0
    infer_s: float = 0.0
    publish_s: float = 0.0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)


class BatchPipeline:
    """Turns consumed batches into durable outputs and then acknowledgements."""

    def __init__(
        self,
        scorer: Scorer,
        sink: Sink,
        *,
        output_topic: str,
        input_format: InputFormat,
        include_text: bool = False,
        max_pending: int = 2,
    ) -> None:
        self._scorer = scorer
        self._sink = sink
        self._output_topic = output_topic
        self._input_format = input_format
        self._include_text = include_text
        self.model_info = scorer.info
        self._model_block = scorer.info.as_output()
        self._queue: asyncio.Queue[Optional[_Batch]] = asyncio.Queue(maxsize=max_pending)
        self._tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="infer")
        self._acker: Optional[Acker] = None
        self._publisher_task: Optional[asyncio.Task[None]] = None
        self.failure: Optional[BaseException] = None
        self.stats = Stats()
        # Next offset to acknowledge per (topic, partition): what consumer lag is measured from.
        self.next_offsets: dict[tuple[str, int], int] = {}

    # -- lifecycle --------------------------------------------------------------

    def start(self, acker: Acker, on_failure: Callable[[BaseException], Awaitable[None]]) -> None:
        self._acker = acker
        self._on_failure = on_failure
        self._publisher_task = asyncio.get_running_loop().create_task(self._publish_loop(), name="publish")

    async def drain(self, timeout: float) -> None:
        """Finish what was submitted (publish and ack it), then stop the publisher."""
        if self._publisher_task is None or self._publisher_task.done():
            return
        try:
            await asyncio.wait_for(self._queue.put(None), timeout)
            await asyncio.wait_for(asyncio.shield(self._publisher_task), timeout)
        except asyncio.TimeoutError:
            log.warning("pipeline.drain_timeout", pending=self._queue.qsize())
            self._publisher_task.cancel()
        finally:
            self._tokenize_pool.shutdown(wait=False, cancel_futures=True)
            self._infer_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def in_flight(self) -> int:
        return self._queue.qsize()

    # -- stage 1: decode and start scoring (called by the stream) ---------------

    async def submit(self, batch: Sequence[Consumed]) -> None:
        """Decode a batch and start scoring it; waits while ``max_pending`` batches are queued."""
        if self.failure is not None:
            raise RuntimeError("pipeline has failed; not taking more input") from self.failure
        good: list[tuple[Consumed, InputRecord]] = []
        for item in batch:
            try:
                good.append((item, decode(item.value, self._input_format)))
            except DecodeError as err:
                self._reject(item, err)
        texts = [record.text for _, record in good]
        loop = asyncio.get_running_loop()
        scoring = loop.create_task(self._score(texts), name="score")
        self.stats.consumed += len(batch)
        metrics.EVENTS_CONSUMED.inc(len(batch))
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.IN_FLIGHT.inc(len(batch))
        await self._queue.put(_Batch(list(batch), good, scoring, time.perf_counter()))

    def _reject(self, item: Consumed, err: DecodeError) -> None:
        # The dead-letter topic comes with the reliability work; for now, say why and move on.
        self.stats.rejected += 1
        self.stats.rejected_by_reason[err.reason] = self.stats.rejected_by_reason.get(err.reason, 0) + 1
        metrics.EVENTS_DEAD_LETTERED.labels(err.reason).inc()
        log.warning(
            "record.rejected",
            reason=err.reason,
            error=str(err),
            topic=item.source.topic,
            partition=item.source.partition,
            offset=item.source.offset,
        )

    async def _score(self, texts: list[str]) -> tuple[list[Prediction], BatchReport, float, float]:
        if not texts:
            return [], BatchReport(0, 0, 0, 0), 0.0, 0.0
        loop = asyncio.get_running_loop()
        encoded, encode_s = await loop.run_in_executor(self._tokenize_pool, _timed, self._scorer.encode, texts)
        (predictions, report), infer_s = await loop.run_in_executor(self._infer_pool, _timed, self._infer, encoded)
        return predictions, report, encode_s, infer_s

    def _infer(self, encoded: Encoded) -> tuple[list[Prediction], BatchReport]:
        # Runs in the single inference thread, so last_report belongs to this call.
        predictions = self._scorer.infer(encoded)
        return predictions, self._scorer.last_report

    # -- stage 2: publish, then acknowledge (one task, strictly in order) --------

    async def _publish_loop(self) -> None:
        while True:
            batch = await self._queue.get()
            if batch is None:
                return
            try:
                await self._complete(batch)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - anything here must stop the line
                self.failure = exc
                metrics.FAILURES.inc()
                log.error("pipeline.failed", error=repr(exc), batch_size=len(batch.consumed), exc_info=exc)
                await self._on_failure(exc)
                return

    async def _complete(self, batch: _Batch) -> None:
        predictions, report, encode_s, infer_s = await batch.scoring
        processed_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        outbound = [
            OutboundRecord(
                topic=self._output_topic,
                key=item.key,
                value=encode_output(
                    record,
                    item.source,
                    label=prediction.label,
                    score=prediction.score,
                    scores=prediction.scores,
                    truncated=prediction.truncated,
                    model=self._model_block,
                    processed_at=processed_at,
                    include_text=self._include_text,
                ),
            )
            for (item, record), prediction in zip(batch.good, predictions)
        ]
        t0 = time.perf_counter()
        await self._sink.publish(outbound)
        publish_s = time.perf_counter() - t0
        assert self._acker is not None
        for item in batch.consumed:  # offset order per partition, as consumed
            await self._acker(item.handle)
            self.next_offsets[(item.source.topic, item.source.partition)] = item.source.offset + 1
        self._observe(batch, report, encode_s, infer_s, publish_s, scored=len(outbound))

    def _observe(
        self, batch: _Batch, report: BatchReport, encode_s: float, infer_s: float, publish_s: float, *, scored: int
    ) -> None:
        now_ms = time.time() * 1000
        for item, _ in batch.good:
            if item.source.timestamp_ms is not None:
                metrics.END_TO_END_SECONDS.observe(max(0.0, (now_ms - item.source.timestamp_ms) / 1000))
        metrics.IN_FLIGHT.dec(len(batch.consumed))
        metrics.EVENTS_SCORED.inc(scored)
        metrics.BATCHES.inc()
        metrics.TOKENS.labels("real").inc(report.real_tokens)
        metrics.TOKENS.labels("padded").inc(report.padded_tokens)
        metrics.BATCH_TOKENS.observe(report.padded_tokens)
        if report.padded_tokens:
            metrics.PADDING_EFFICIENCY.set(report.padding_efficiency)
        metrics.TOKENIZE_SECONDS.observe(encode_s)
        metrics.INFERENCE_SECONDS.observe(infer_s)
        metrics.PUBLISH_SECONDS.observe(publish_s)
        stats = self.stats
        stats.batches += 1
        stats.scored += scored
        stats.real_tokens += report.real_tokens
        stats.padded_tokens += report.padded_tokens
        stats.encode_s += encode_s
        stats.infer_s += infer_s
        stats.publish_s += publish_s
        log.debug(
            "batch.done",
            size=len(batch.consumed),
            scored=scored,
            tokens=report.real_tokens,
            padded_tokens=report.padded_tokens,
            model_calls=report.model_calls,
            encode_ms=round(encode_s * 1000, 2),
            infer_ms=round(infer_s * 1000, 2),
            publish_ms=round(publish_s * 1000, 2),
            total_ms=round((time.perf_counter() - batch.started) * 1000, 2),
        )


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - t0
