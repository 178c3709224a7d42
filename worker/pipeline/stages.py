"""decode -> tokenise -> infer -> build outputs -> publish -> stored, with the stages overlapped.

Batches enter with :meth:`Pipeline.submit`: decoded at once on the event
loop, then tokenised, scored and turned into outputs in worker threads while
the loop goes on fetching, heartbeating and publishing earlier batches. One
publishing task takes batches strictly in submission order; when several are
ready it publishes them together (one transaction per input partition for all
of them in exactly-once mode), and only once the broker has stored
everything of a batch does it report the batch's offsets to the ledger.

Anything that can't be retried away (a systemic model failure, the retry
budget spent, a record nothing can be written for) stops the pipeline: the
failure is kept, nothing of that batch or later is reported stored, nobody
waits for the rest to drain (:meth:`Pipeline.drain` returns at once), and the
``on_failure`` callback ends the worker.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from worker.kafka.records import Delivery
from worker.pipeline.batcher import Cut
from worker.pipeline.codec import DecodeError, InputRecord, decode
from worker.pipeline.delivery import Deliverer
from worker.pipeline.ledger import BatchTicket, OffsetLedger
from worker.pipeline.observer import BatchDone, BatchTraceLike, Observer, Tracer
from worker.pipeline.scoring import Scored
from worker.settings import InputFormat

MERGE_MAX_BATCHES = 8


class InputDecoder(Protocol):
    """Decodes values that need I/O first (worker.registry): ``prepare`` a batch, then ``decode`` each value."""

    async def prepare(self, values: Sequence[Optional[bytes]]) -> None: ...

    def decode(self, value: Optional[bytes]) -> InputRecord: ...


class Scorer(Protocol):
    """Texts to scores (``worker.pipeline.scoring.BatchScorer``)."""

    async def score(self, texts: Sequence[str]) -> Scored: ...

    def close(self) -> None: ...


class Builder(Protocol):
    """Scores to records to write (``worker.pipeline.outputs.OutputBuilder``); runs in the outputs thread."""

    def build(
        self, records: Sequence[Any], decoded: Sequence[Any], scored: Scored, trace: Optional[BatchTraceLike] = None
    ) -> list[Delivery]: ...


@dataclass(slots=True)
class _InFlight:
    ticket: BatchTicket
    cut: Cut
    work: "asyncio.Task[tuple[Scored, list[Delivery]]]"
    started: float
    trace: Optional[BatchTraceLike] = None
    stamps: dict[str, int] = field(default_factory=dict)  # wall-clock ns of stage boundaries, when traced


class Pipeline:
    """Turns consumed batches into stored outputs, and reports them to the ledger in order."""

    def __init__(
        self,
        *,
        scorer: Scorer,
        builder: Builder,
        deliverer: Deliverer,
        ledger: OffsetLedger,
        observer: Observer,
        input_format: InputFormat,
        max_pending: int = 4,
        tracer: Optional[Tracer] = None,
        decoder: Optional[InputDecoder] = None,
        on_stored: Optional[Callable[[Cut, float], None]] = None,
    ) -> None:
        """``on_stored``: told of each stored batch with ``time.monotonic()`` then (the pacer's input)."""
        self._scorer = scorer
        self._builder = builder
        self._deliverer = deliverer
        self._ledger = ledger
        self._observer = observer
        self._format = input_format
        self._tracer = tracer
        self._decoder = decoder
        self._on_stored = on_stored
        self._pending: deque[_InFlight] = deque()  # submitted, not yet taken by the publisher
        self._space = asyncio.Semaphore(max_pending)
        self._arrived = asyncio.Event()
        self._outputs_pool = ThreadPoolExecutor(1, thread_name_prefix="outputs")
        self._publisher: Optional[asyncio.Task[None]] = None
        self._delivering: Optional[asyncio.Task[list[Delivery]]] = None
        self._on_failure: Optional[Callable[[BaseException], Awaitable[None]]] = None
        self._failure: Optional[BaseException] = None
        self._idle = asyncio.Event()
        self._idle.set()

    # -- lifecycle ------------------------------------------------------------------

    def start(self, on_failure: Callable[[BaseException], Awaitable[None]]) -> None:
        self._on_failure = on_failure
        self._publisher = asyncio.get_running_loop().create_task(self._publish_loop(), name="publish")

    @property
    def failure(self) -> Optional[BaseException]:
        """Why the pipeline stopped, if it did."""
        return self._failure

    @property
    def retrying_since(self) -> Optional[float]:
        """Monotonic time since which the current delivery keeps failing, if it does."""
        return self._deliverer.failing_since

    @property
    def queued_ready(self) -> int:
        """Batches scored and built, waiting for the publisher."""
        return sum(1 for item in self._pending if item.work.done())

    @property
    def denied(self) -> Optional[str]:
        """The right the broker says is missing, while publishing is refused for one."""
        return self._deliverer.denied

    async def drain(self, timeout: float) -> bool:
        """Wait until every submitted batch is stored (or dropped); False if that took too long, or never
        will happen (the pipeline failed)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return self._failure is None

    def abandon(self) -> None:
        """The epoch ended with batches still in flight: stop delivering them (the ledger forgot them)."""
        if self._delivering is not None and not self._delivering.done():
            self._delivering.cancel()

    async def stop(self, timeout: float) -> bool:
        """Finish what was submitted (bounded), then stop; True if everything was stored."""
        drained = await self.drain(timeout) if self._publisher is not None else True
        if self._publisher is not None:
            self._publisher.cancel()
            await asyncio.gather(self._publisher, return_exceptions=True)
            self._publisher = None
        for item in self._pending:  # never to be published (a failure, or the drain timed out)
            item.work.cancel()
        await asyncio.gather(*(item.work for item in self._pending), return_exceptions=True)
        self._scorer.close()
        self._outputs_pool.shutdown(wait=False, cancel_futures=True)
        return drained

    # -- stage 1: decode and start the work (on the event loop) -----------------------

    async def submit(self, cut: Cut, epoch: int) -> bool:
        """Decode a batch and start scoring it; waits while ``max_pending`` batches are queued.

        ``epoch``: the assignment the records were fetched in; a batch of an assignment
        that has ended meanwhile is dropped (False), since it will be fetched again.
        """
        if self._failure is not None:
            raise RuntimeError("the pipeline has failed; not taking more input") from self._failure
        if self._decoder is not None:  # e.g. fetch unknown schemas; the epoch is checked after it
            await self._decoder.prepare([record.value for record in cut.records])
        await self._space.acquire()
        if epoch != self._ledger.epoch:
            self._space.release()
            return False
        decode_ns = time.time_ns() if self._tracer is not None else 0
        fmt = self._format
        decoder = self._decoder
        decoded: list[Any] = []
        texts: list[str] = []
        for record in cut.records:
            try:
                parsed = decode(record.value, fmt) if decoder is None else decoder.decode(record.value)
            except DecodeError as err:
                decoded.append(err)
                continue
            decoded.append(parsed)
            texts.append(parsed.text)
        ticket = self._ledger.consumed(cut.ends, len(cut.records))
        self._observer.batch_consumed(len(cut.records))
        self._idle.clear()
        item = _InFlight(ticket, cut, None, time.perf_counter())  # type: ignore[arg-type]
        if self._tracer is not None:
            item.trace = self._tracer.batch(cut.records, decode_ns)
            item.stamps.update(decode=decode_ns, decoded=time.time_ns())
        item.work = asyncio.get_running_loop().create_task(self._work(cut, decoded, texts, item), name="score")
        self._pending.append(item)
        self._arrived.set()
        return True

    async def _work(self, cut: Cut, decoded: list[Any], texts: list[str], item: _InFlight) -> tuple[Scored, list[Delivery]]:
        traced = item.trace is not None
        if traced:
            item.stamps["scoring"] = time.time_ns()
        scored = await self._scorer.score(texts)
        if traced:
            item.stamps["scored"] = time.time_ns()
        loop = asyncio.get_running_loop()
        deliveries = await loop.run_in_executor(
            self._outputs_pool, self._builder.build, cut.records, decoded, scored, item.trace
        )
        if traced:
            item.stamps["built"] = time.time_ns()
        return scored, deliveries

    # -- stage 2: publish and report, strictly in order (one task) ----------------------

    async def _publish_loop(self) -> None:
        try:
            while True:
                while not self._pending:
                    self._arrived.clear()
                    await self._arrived.wait()
                group = [self._take()]
                await asyncio.wait({group[0].work})
                # Batches already scored behind it go out together (fewer transactions, fuller requests).
                while len(group) < MERGE_MAX_BATCHES and self._pending and self._pending[0].work.done():
                    group.append(self._take())
                await self._publish(group)
                if not self._pending and self._ledger.in_flight_batches == 0:
                    self._idle.set()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - anything here must stop the line
            self._failure = exc
            self._idle.set()  # nothing more will be stored: don't keep a drain waiting for it
            self._observer.pipeline_failed(exc)
            if self._on_failure is not None:
                await self._on_failure(exc)

    def _take(self) -> _InFlight:
        self._space.release()
        return self._pending.popleft()

    async def _publish(self, group: Sequence[_InFlight]) -> None:
        current = [item for item in group if self._ledger.current(item.ticket)]
        for item in group:
            if item not in current:
                item.work.cancel()
                self._observer.batch_abandoned(item.ticket.events)
                self._ledger.finished(item.ticket)
        if not current:
            return
        errors = [item.work.exception() for item in current]  # each one retrieved, none left unseen
        failed = next((error for error in errors if error is not None), None)
        if failed is not None:
            raise failed  # the scoring failure
        results = [item.work.result() for item in current]
        for item in current:
            self._ledger.publishing(item.ticket)
        merged: dict[Any, Delivery] = {}
        for _, deliveries in results:
            for delivery in deliveries:
                if delivery.source not in merged:
                    merged[delivery.source] = Delivery(delivery.source)
                merged[delivery.source].extend(delivery)
        epoch = current[0].ticket.epoch
        publish_ns = time.time_ns()
        t0 = time.perf_counter()
        self._delivering = asyncio.get_running_loop().create_task(self._deliverer.deliver(list(merged.values()), epoch))
        try:
            stored = await self._delivering
        except asyncio.CancelledError:
            if self._ledger.current(current[0].ticket):
                raise
            stored = []  # abandoned: the epoch ended under it
        finally:
            self._delivering = None
        publish_s = time.perf_counter() - t0
        for delivery in stored:
            self._ledger.stored(delivery.source, delivery.next_offset, epoch)
        for item, (scored, deliveries) in zip(current, results):
            self._ledger.finished(item.ticket)
            stored_ok = self._ledger.current(item.ticket)
            if item.trace is not None:
                _end_trace(item, scored, publish_ns, time.time_ns(), stored_ok)
            if not stored_ok:
                self._observer.batch_abandoned(item.ticket.events)
                continue
            self._observer.batch_done(_summary(item, scored, deliveries, publish_s))
            if self._on_stored is not None:
                self._on_stored(item.cut, time.monotonic())


def _end_trace(item: _InFlight, scored: Scored, publish_ns: int, stored_ns: int, stored: bool) -> None:
    """The batch's stage spans, from the wall-clock stamps taken along the way."""
    trace, stamps = item.trace, item.stamps
    assert trace is not None
    scoring, scored_at = stamps["scoring"], stamps["scored"]
    trace.stage("decode", stamps["decode"], stamps["decoded"], records=len(item.cut.records))
    trace.stage("tokenize", scoring, scoring + int(scored.encode_s * 1e9), texts=len(scored.scores))
    trace.stage("infer", scored_at - int(scored.infer_s * 1e9), scored_at, model_calls=scored.scores.report.model_calls)
    trace.stage("outputs", scored_at, stamps["built"])
    trace.stage("publish", publish_ns, stored_ns)
    trace.end(stored=stored, end_ns=stored_ns)


def _summary(item: _InFlight, scored: Scored, deliveries: Sequence[Delivery], publish_s: float) -> BatchDone:
    timestamps = [
        origin.timestamp
        for d in deliveries
        for record, origin in zip(d.records, d.origins)
        if record.kind == "output" and origin.timestamp is not None
    ]
    outputs = sum(1 for d in deliveries for r in d.records if r.kind == "output")
    return BatchDone(
        events=len(item.cut.records),
        scored=outputs,
        dead_lettered=sum(len(d.records) for d in deliveries) - outputs,
        report=scored.scores.report,
        encode_s=scored.encode_s,
        infer_s=scored.infer_s,
        publish_s=publish_s,
        total_s=time.perf_counter() - item.started,
        input_timestamps_ms=timestamps,
        input_lengths=scored.tokens,
        truncated=sum(scored.scores.truncated),
    )
