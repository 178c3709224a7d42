"""Between the fetch loop and the pipeline: fetched records into batches, tagged with their assignment.

Implements ``worker.kafka.faust_adapter.Intake``. Each fetch is tagged with
the ledger's assignment epoch when it started; records of an epoch that has
ended (a revocation happened while they were on their way) are dropped here
or by :meth:`Pipeline.submit`, never scored. Dropping is only safe if the
records are fetched again: their partitions' next owner reads them from the
committed offset, and where that owner is this worker and its consumer has
already moved past them, the intake rewinds it to the first dropped record.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Optional

from aiokafka import TopicPartition

from worker.pipeline.batcher import Batcher
from worker.pipeline.bounds import RunBounds
from worker.pipeline.ledger import OffsetLedger
from worker.pipeline.stages import Pipeline

IDLE_FETCH_S = 1.0


Rewind = Callable[[Mapping[TopicPartition, int]], Awaitable[None]]


class Intake:
    def __init__(
        self,
        batcher: Batcher,
        pipeline: Pipeline,
        ledger: OffsetLedger,
        rewind: Rewind,
        bounds: Optional[RunBounds] = None,
        pause: Optional[Callable[[set[TopicPartition]], None]] = None,
    ) -> None:
        """``bounds``: RUN_UNTIL's stops (records at or past them are not scored); ``pause``: stop
        fetching partitions that reached theirs."""
        self._batcher = batcher
        self._pipeline = pipeline
        self._ledger = ledger
        self._rewind = rewind
        self._bounds = bounds
        self._pause = pause

    def fetch_started(self) -> int:
        return self._ledger.epoch

    def fetch_timeout(self, now: float) -> float:
        return self._batcher.time_left(now, IDLE_FETCH_S)

    def fetch_max_records(self) -> int:
        """A fetch brings at most one batch: more would wait in the batcher, past a paced size."""
        return self._batcher.max_size

    async def fetched(self, records: Mapping[TopicPartition, list[Any]], token: int, now: float) -> None:
        if token != self._ledger.epoch:
            await self._drop(record for batch in records.values() for record in batch)
            return
        if self._bounds is not None:
            reached = len(self._bounds.reached)
            records = self._bounds.take(records)
            if self._pause is not None and len(self._bounds.reached) > reached:
                self._pause(self._bounds.reached & self._ledger.owned)
        self._batcher.add(records, now)
        cuts = self._batcher.ready(now)
        for k, cut in enumerate(cuts):
            if not await self._pipeline.submit(cut, token):
                await self._drop([*(record for later in cuts[k:] for record in later.records), *self._batcher.take()])
                return

    async def _drop(self, records: Iterable[Any]) -> None:
        """Records that won't be scored: fetch them again, from the first one of each partition."""
        first: dict[TopicPartition, int] = {}
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            if tp not in first or record.offset < first[tp]:
                first[tp] = record.offset
        if first:
            await self._rewind(first)

    def clear(self) -> int:
        """A rebalance or shutdown: what waits for a batch is dropped (fetched again later)."""
        return self._batcher.clear()
