"""The pipeline's stage loop in-process, with a scorer and a sink the test drives: publication in
order, ready batches merged, batches of an ended assignment dropped, a failure that ends it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Optional

import orjson
import pytest
from aiokafka import TopicPartition

from tests.kafka_helpers import until
from tests.test_pipeline_logic import Letters, Rec, builder, scored
from worker.kafka.records import Delivery
from worker.pipeline.batcher import Cut
from worker.pipeline.delivery import Deliverer
from worker.pipeline.ledger import OffsetLedger
from worker.pipeline.observer import NullObserver
from worker.pipeline.scoring import Scored
from worker.pipeline.stages import Pipeline
from worker.settings import InputFormat

TP = TopicPartition("in", 0)


class GatedScorer:
    """Each batch is scored when the test opens its gate (or fails, if ``failure`` is set then)."""

    def __init__(self) -> None:
        self.gates: list[asyncio.Event] = []
        self.failure: Optional[BaseException] = None
        self.started = asyncio.Event()

    async def score(self, texts: Sequence[str]) -> Scored:
        gate = asyncio.Event()
        self.gates.append(gate)
        self.started.set()
        await gate.wait()
        if self.failure is not None:
            raise self.failure
        return scored(len(texts))

    async def scoring(self, count: int) -> None:
        """Until ``count`` batches have started scoring."""
        while len(self.gates) < count:
            self.started.clear()
            await self.started.wait()

    def close(self) -> None:
        pass


class RecordingSink:
    """Stores everything; each deliver() can be held until the test lets it go."""

    transactional = False

    def __init__(self) -> None:
        self.calls: list[list[tuple[int, ...]]] = []  # per call, per delivery: the input offsets
        self.hold: Optional[asyncio.Event] = None
        self.called = asyncio.Event()

    def units(self, deliveries: Sequence[Delivery]) -> list[list[Delivery]]:
        return [list(deliveries)] if deliveries else []

    async def deliver(self, unit: Sequence[Delivery]) -> None:
        self.calls.append([tuple(d.offsets) for d in unit])
        self.called.set()
        if self.hold is not None:
            await self.hold.wait()

    async def deliveries(self, count: int) -> None:
        while len(self.calls) < count:
            self.called.clear()
            await self.called.wait()


class Flow:
    def __init__(self) -> None:
        self.ledger = OffsetLedger()
        self.ledger.assigned([TP])
        self.scorer = GatedScorer()
        self.sink = RecordingSink()
        out = builder({}, Letters())
        self.failures: list[BaseException] = []
        self.stored: list[tuple[Cut, float]] = []  # what the pacer hears
        self.pipeline = Pipeline(
            scorer=self.scorer,
            builder=out,
            deliverer=Deliverer(self.sink, out, self.ledger, NullObserver()),
            ledger=self.ledger,
            observer=NullObserver(),
            input_format=InputFormat.json,
            on_stored=lambda cut, now: self.stored.append((cut, now)),
        )
        self.pipeline.start(self._failed)

    async def _failed(self, exc: BaseException) -> None:
        self.failures.append(exc)

    async def submit(self, offsets: range) -> bool:
        records = [Rec("in", 0, o, value=orjson.dumps({"text": f"text {o}"})) for o in offsets]
        return await self.pipeline.submit(Cut(records, {TP: offsets[-1] + 1}), self.ledger.epoch)


@pytest.fixture
async def flow() -> Any:
    made = Flow()
    yield made
    for gate in made.scorer.gates:
        gate.set()
    if made.sink.hold is not None:
        made.sink.hold.set()
    await made.pipeline.stop(1)


async def test_batches_are_published_in_submission_order_whatever_order_they_are_scored_in(flow: Flow) -> None:
    await flow.submit(range(0, 3))
    await flow.submit(range(3, 6))
    await flow.scorer.scoring(2)
    flow.scorer.gates[1].set()  # the second batch is scored first...
    await until(lambda: flow.pipeline.queued_ready == 1, 5, "the second batch scored")
    assert flow.sink.calls == [], "...but must not be published before the first"
    flow.scorer.gates[0].set()
    assert await flow.pipeline.drain(5)
    assert [offsets for call in flow.sink.calls for offsets in call] == [(0, 1, 2, 3, 4, 5)]
    assert flow.ledger.positions() == {TP: 6}


async def test_each_stored_batch_is_reported_with_its_cut_once_stored(flow: Flow) -> None:
    """The pacer's input: fetch-to-stored is measured from the cut's fetch time to this moment."""
    await flow.submit(range(0, 3))
    await flow.submit(range(3, 5))
    await flow.scorer.scoring(2)
    assert flow.stored == []
    flow.scorer.gates[0].set()
    flow.scorer.gates[1].set()
    assert await flow.pipeline.drain(5)
    assert [[r.offset for r in cut.records] for cut, _ in flow.stored] == [[0, 1, 2], [3, 4]]
    assert flow.stored[0][1] <= flow.stored[1][1] <= time.monotonic()


async def test_batches_ready_while_one_publishes_go_out_together(flow: Flow) -> None:
    flow.sink.hold = asyncio.Event()
    await flow.submit(range(0, 2))
    await flow.scorer.scoring(1)
    flow.scorer.gates[0].set()
    await flow.sink.deliveries(1)  # the first batch is being published, and held there
    await flow.submit(range(2, 4))
    await flow.submit(range(4, 6))
    await flow.scorer.scoring(3)
    flow.scorer.gates[1].set()
    flow.scorer.gates[2].set()
    await until(lambda: flow.pipeline.queued_ready == 2, 5, "both batches scored, behind the held publish")
    flow.sink.hold.set()
    assert await flow.pipeline.drain(5)
    assert flow.sink.calls == [[(0, 1)], [(2, 3, 4, 5)]], "the two ready batches are one publish"
    assert flow.ledger.positions() == {TP: 6}


async def test_a_batch_of_an_ended_assignment_is_dropped_unpublished(flow: Flow) -> None:
    await flow.submit(range(0, 3))
    await flow.scorer.scoring(1)
    flow.ledger.revoked([TP])  # a rebalance ends the epoch while the batch is scored
    flow.ledger.assigned([TP])
    flow.scorer.gates[0].set()
    assert await flow.pipeline.drain(5)
    assert flow.sink.calls == []
    assert flow.ledger.positions() == {} and flow.ledger.stored_total == 0 and flow.ledger.abandoned_total == 3


async def test_a_failure_stops_the_line_and_shutdown_does_not_wait_for_a_drain(flow: Flow) -> None:
    await flow.submit(range(0, 3))
    await flow.submit(range(3, 6))
    await flow.scorer.scoring(2)
    boom = RuntimeError("systemic")
    flow.scorer.failure = boom
    flow.scorer.gates[0].set()
    flow.scorer.gates[1].set()
    await until(lambda: bool(flow.failures), 5, "the failure reported")
    assert flow.failures == [boom] and flow.pipeline.failure is boom
    # Nothing will be stored any more: stop() must not sit out its whole drain timeout.
    drained = await asyncio.wait_for(flow.pipeline.stop(20), timeout=2)
    assert drained is False
    assert flow.sink.calls == [] and flow.ledger.positions() == {}
    with pytest.raises(RuntimeError, match="failed"):
        await flow.submit(range(6, 9))
