"""decode -> tokenise -> infer -> publish -> acknowledge, with the stages overlapped.

The stream hands over batches of consumed records; each batch is decoded at
once, then tokenised and scored in worker threads (FIFO, one batch at a time per
stage) while the event loop goes on consuming, heartbeating and publishing the
previous batch. A single publisher task takes batches strictly in submission
order, delivers their outputs and dead letters, waits until the broker stored
every one, and only then acknowledges the input records, in offset order.

Failure policy, so that nothing is lost and nothing loops forever:
- a record that can't be decoded goes to the dead-letter topic;
- a batch whose tokenisation or inference raises is split in halves and retried;
  a single record that still fails is dead-lettered if the model still scores a
  known-good probe text, otherwise the fault is systemic (broken device or
  model) and the worker stops without acknowledging anything of the batch;
- a delivery that fails (output topic missing, not authorised, broker away) is
  retried with exponential backoff; offsets don't move meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional, Protocol, TypeVar, Union

from aiokafka import TopicPartition

from worker import logs, metrics
from worker.codec import DecodeError, InputRecord, Source, decode, encode_output
from worker.dead_letter import dead_letter
from worker.engine import BatchReport, Encoded, ModelInfo, Prediction
from worker.publisher import Delivery, OutboundRecord, PartitionFenced
from worker.settings import InputFormat

log = logs.get_logger(__name__)

PROBE_TEXT = "a known-good probe text"
T = TypeVar("T")


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
    transactional: bool

    def units(self, deliveries: Sequence[Delivery]) -> list[list[Delivery]]: ...

    async def deliver(self, unit: Sequence[Delivery]) -> None: ...


Acker = Callable[[Any], Awaitable[Any]]
Outcome = Union[Prediction, BaseException]


@dataclass(slots=True)
class Scored:
    outcomes: list[Outcome]
    report: BatchReport
    encode_s: float
    infer_s: float


@dataclass(slots=True)
class _Batch:
    consumed: list[Consumed]
    good: list[tuple[Consumed, InputRecord]]
    rejected: dict[int, OutboundRecord]  # index in consumed -> dead letter
    scoring: "asyncio.Future[Scored]"
    started: float


@dataclass(slots=True)
class Stats:
    """Running totals, for the periodic summary line."""

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


class TokenizeFailed(RuntimeError):
    """Tokenising this text alone raised (the cause is chained)."""


def _as_tokenize_failure(item: Any) -> Any:
    if isinstance(item, BaseException) and not isinstance(item, TokenizeFailed):
        failure = TokenizeFailed(str(item))
        failure.__cause__ = item
        return failure
    return item


class SystemicFailure(RuntimeError):
    """The model fails even on a known-good text: stop rather than dead-letter everything."""


def split_retry(run: Callable[[list[int]], list[T]], indices: list[int], probe: Callable[[], object]) -> dict[int, Union[T, BaseException]]:
    """Run ``run`` on all indices; on failure, on halves, down to single items.

    A single item that still fails is returned as its exception, unless
    ``probe`` fails too, in which case :class:`SystemicFailure` is raised.
    At most ~2n calls; never loops.
    """
    try:
        return dict(zip(indices, run(indices)))
    except Exception as exc:  # noqa: BLE001 - any error is a reason to narrow down
        if len(indices) == 1:
            try:
                probe()
            except Exception as probe_exc:  # noqa: BLE001
                raise SystemicFailure(f"model fails on a known-good text too: {probe_exc!r}") from exc
            return {indices[0]: exc}
        mid = len(indices) // 2
        out = split_retry(run, indices[:mid], probe)
        out.update(split_retry(run, indices[mid:], probe))
        return out


class BatchPipeline:
    """Turns consumed batches into durable outputs and then acknowledgements."""

    def __init__(
        self,
        scorer: Scorer,
        sink: Sink,
        *,
        output_topic: str,
        dead_letter_topic: str,
        input_format: InputFormat,
        include_text: bool = False,
        max_pending: int = 2,
        backoff_max_s: float = 30.0,
    ) -> None:
        self._scorer = scorer
        self._sink = sink
        self._output_topic = output_topic
        self._dead_letter_topic = dead_letter_topic
        self._input_format = input_format
        self._include_text = include_text
        self._backoff_max_s = backoff_max_s
        self.model_info = scorer.info
        self._model_block = scorer.info.as_output()
        self._queue: asyncio.Queue[Optional[_Batch]] = asyncio.Queue(maxsize=max_pending)
        self._tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="infer")
        self._acker: Optional[Acker] = None
        self._on_failure: Optional[Callable[[BaseException], Awaitable[None]]] = None
        self._publisher_task: Optional[asyncio.Task[None]] = None
        self.failure: Optional[BaseException] = None
        self.stats = Stats()
        self.acked = 0  # events acknowledged so far; consumed - acked = events in the pipeline
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
        """Events consumed and not yet acknowledged."""
        return self.stats.consumed - self.acked

    # -- stage 1: decode and start scoring (called by the stream) ---------------

    async def submit(self, batch: Sequence[Consumed]) -> None:
        """Decode a batch and start scoring it; waits while ``max_pending`` batches are queued."""
        if self.failure is not None:
            raise RuntimeError("pipeline has failed; not taking more input") from self.failure
        good: list[tuple[Consumed, InputRecord]] = []
        rejected: dict[int, OutboundRecord] = {}
        for index, item in enumerate(batch):
            try:
                good.append((item, decode(item.value, self._input_format)))
            except DecodeError as err:
                rejected[index] = self._dead_letter(item, err.reason, type(err).__name__, str(err))
        texts = [record.text for _, record in good]
        scoring = asyncio.get_running_loop().create_task(self._score(texts), name="score")
        self.stats.consumed += len(batch)
        metrics.EVENTS_CONSUMED.inc(len(batch))
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.IN_FLIGHT.inc(len(batch))
        await self._queue.put(_Batch(list(batch), good, rejected, scoring, time.perf_counter()))

    def _dead_letter(self, item: Consumed, reason: str, exception_class: str, message: str) -> OutboundRecord:
        self.stats.rejected += 1
        self.stats.rejected_by_reason[reason] = self.stats.rejected_by_reason.get(reason, 0) + 1
        metrics.EVENTS_DEAD_LETTERED.labels(reason).inc()
        # Where and why, never the content.
        log.warning(
            "record.dead_lettered",
            reason=reason,
            error=message[:200],
            topic=item.source.topic,
            partition=item.source.partition,
            offset=item.source.offset,
            dead_letter_topic=self._dead_letter_topic,
        )
        return dead_letter(
            self._dead_letter_topic,
            item.source,
            item.key,
            item.value,
            reason=reason,
            exception_class=exception_class,
            message=message,
        )

    async def _score(self, texts: list[str]) -> Scored:
        if not texts:
            return Scored([], BatchReport(0, 0, 0, 0), 0.0, 0.0)
        loop = asyncio.get_running_loop()
        encoded, encode_s = await loop.run_in_executor(self._tokenize_pool, _timed, self._encode, texts)
        (outcomes, report), infer_s = await loop.run_in_executor(self._infer_pool, _timed, self._infer, encoded)
        return Scored(outcomes, report, encode_s, infer_s)

    def _encode(self, texts: list[str]) -> list[Union[tuple[list[int], bool], BaseException]]:
        """Token ids per text, or the exception that tokenising it alone raised."""
        scorer = self._scorer

        def run(indices: list[int]) -> list[tuple[list[int], bool]]:
            enc = scorer.encode([texts[i] for i in indices])
            return list(zip(enc.input_ids, enc.truncated))

        found = split_retry(run, list(range(len(texts))), lambda: scorer.encode([PROBE_TEXT]))
        return [_as_tokenize_failure(found[i]) for i in range(len(texts))]

    def _infer(self, encoded: list[Union[tuple[list[int], bool], BaseException]]) -> tuple[list[Outcome], BatchReport]:
        """Runs in the single inference thread, so ``last_report`` belongs to our own calls."""
        scorer = self._scorer
        ok = [i for i, item in enumerate(encoded) if not isinstance(item, BaseException)]
        totals = [0, 0, 0, 0]

        def run(indices: list[int]) -> list[Prediction]:
            rows = [encoded[i] for i in indices]
            predictions = scorer.infer(Encoded([r[0] for r in rows], [r[1] for r in rows]))  # type: ignore[index]
            report = scorer.last_report
            for slot, value in enumerate((report.rows, report.real_tokens, report.padded_tokens, report.model_calls)):
                totals[slot] += value
            return predictions

        found: dict[int, Any] = split_retry(run, ok, lambda: scorer.infer(scorer.encode([PROBE_TEXT]))) if ok else {}
        outcomes: list[Outcome] = [
            found[i] if i in found else encoded[i] for i in range(len(encoded))  # type: ignore[misc]
        ]
        return outcomes, BatchReport(*totals)

    # -- stage 2: deliver, then acknowledge (one task, strictly in order) --------

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
                assert self._on_failure is not None
                await self._on_failure(exc)
                return

    async def _complete(self, batch: _Batch) -> None:
        scored = await batch.scoring
        processed_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        records: dict[int, OutboundRecord] = dict(batch.rejected)
        positions = {id(item): index for index, item in enumerate(batch.consumed)}
        scored_count = 0
        for (item, record), outcome in zip(batch.good, scored.outcomes):
            index = positions[id(item)]
            if isinstance(outcome, BaseException):
                cause = outcome.__cause__ if isinstance(outcome, TokenizeFailed) and outcome.__cause__ else outcome
                reason = "tokenize_failed" if isinstance(outcome, TokenizeFailed) else "inference_failed"
                records[index] = self._dead_letter(item, reason, type(cause).__name__, str(cause) or repr(cause))
                continue
            try:
                value = encode_output(
                    record,
                    item.source,
                    label=outcome.label,
                    score=outcome.score,
                    scores=outcome.scores,
                    truncated=outcome.truncated,
                    model=self._model_block,
                    processed_at=processed_at,
                    include_text=self._include_text,
                )
            except (TypeError, ValueError) as exc:  # orjson: a value it can't write; never stall on it
                records[index] = self._dead_letter(item, "encode_failed", type(exc).__name__, str(exc))
                continue
            scored_count += 1
            records[index] = OutboundRecord(topic=self._output_topic, key=item.key, value=value)
        deliveries: dict[TopicPartition, Delivery] = {}
        for index, item in enumerate(batch.consumed):  # per partition, in offset order
            tp = TopicPartition(item.source.topic, item.source.partition)
            deliveries.setdefault(tp, Delivery(tp)).add(item.source.offset, records.get(index))
        t0 = time.perf_counter()
        for unit in self._sink.units(list(deliveries.values())):
            await self._deliver_with_retry(unit)
        publish_s = time.perf_counter() - t0
        assert self._acker is not None
        for item in batch.consumed:  # offset order per partition, as consumed
            await self._acker(item.handle)
            self.next_offsets[(item.source.topic, item.source.partition)] = item.source.offset + 1
            self.acked += 1
        dead = len(records) - scored_count
        self._observe(batch, scored, publish_s, scored=scored_count, dead=dead)

    async def _deliver_with_retry(self, unit: list[Delivery]) -> None:
        delay = 0.5
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._sink.deliver(unit)
                if self._sink.transactional:
                    metrics.TRANSACTIONS.labels("committed").inc(len(unit))
                return
            except PartitionFenced as exc:
                # Another worker owns the partition; it resumes from the last committed
                # transaction, so this share is neither lost nor duplicated. Drop it.
                metrics.TRANSACTIONS.labels("fenced").inc()
                log.warning("partition.fenced", error=str(exc))
                return
            except Exception as exc:  # noqa: BLE001 - retried; offsets stay put meanwhile
                if self._sink.transactional:
                    metrics.TRANSACTIONS.labels("aborted").inc()
                topics = {r.topic for d in unit for r in d.records}
                for topic in topics:
                    metrics.PUBLISH_ERRORS.labels(topic).inc()
                log.error(
                    "publish.failed",
                    error=f"{type(exc).__name__}: {exc}",
                    topics=sorted(topics),
                    attempt=attempt,
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max_s)

    def _observe(self, batch: _Batch, result: Scored, publish_s: float, *, scored: int, dead: int) -> None:
        report = result.report
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
        metrics.TOKENIZE_SECONDS.observe(result.encode_s)
        metrics.INFERENCE_SECONDS.observe(result.infer_s)
        metrics.PUBLISH_SECONDS.observe(publish_s)
        stats = self.stats
        stats.batches += 1
        stats.scored += scored
        stats.real_tokens += report.real_tokens
        stats.padded_tokens += report.padded_tokens
        stats.encode_s += result.encode_s
        stats.infer_s += result.infer_s
        stats.publish_s += publish_s
        log.debug(
            "batch.done",
            size=len(batch.consumed),
            scored=scored,
            dead_lettered=dead,
            tokens=report.real_tokens,
            padded_tokens=report.padded_tokens,
            model_calls=report.model_calls,
            encode_ms=round(result.encode_s * 1000, 2),
            infer_ms=round(result.infer_s * 1000, 2),
            publish_ms=round(publish_s * 1000, 2),
            total_ms=round((time.perf_counter() - batch.started) * 1000, 2),
        )


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - t0
