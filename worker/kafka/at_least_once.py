"""The at-least-once sink: one idempotent producer (acks=all) for the whole batch.

A unit is the whole batch; :meth:`AtLeastOnceSink.deliver` returns only once
the broker stored every record in it (see ``worker.kafka.records`` for what
it raises otherwise). What the broker accepted is remembered in each
:class:`~worker.kafka.records.Delivery`, so a retry re-sends only the rest.
Offsets are committed separately, by the committer (``worker.kafka.guarantee``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from aiokafka import AIOKafkaProducer, TopicPartition

from worker.kafka.records import Delivery, Rejected
from worker.kafka.sending import BATCH_BYTES, ProducerSink, close_producer, open_producer, send_batches, split_failures
from worker.ops.aio import bounded


class AtLeastOnceSink(ProducerSink):
    """At-least-once: an idempotent producer; a unit is stored completely or the call raises."""

    transactional = False

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str,
        request_timeout_ms: int = 30000,
        batch_bytes: int = BATCH_BYTES,
        options: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__(
            bootstrap_servers,
            request_timeout_ms=request_timeout_ms,
            batch_bytes=batch_bytes,
            options=options,
            extra={"client_id": client_id},
        )
        self._producer: Optional[AIOKafkaProducer] = None

    async def start(self) -> None:
        """Create and connect the producer (aiokafka needs the running loop for this)."""
        if self._producer is None:
            self._producer = await open_producer(self._config, self._deadline_s)

    async def stop(self) -> None:
        await self._reset()

    def units(self, deliveries: Sequence[Delivery]) -> list[list[Delivery]]:
        """The whole batch is one unit: one producer, every partition at once."""
        return [list(deliveries)] if deliveries else []

    def release(self, partitions: Sequence[TopicPartition]) -> None:
        """Nothing is held per partition in this mode."""

    async def deliver(self, unit: Sequence[Delivery]) -> None:
        items = [(delivery, i) for delivery in unit for i in delivery.pending()]
        if not items:
            return
        await self.start()
        assert self._producer is not None
        try:
            failures = await bounded(send_batches(self._producer, items, self._partitioner), self._deadline_s)
        except Exception:
            await self._reset()
            raise
        failed = {(id(delivery), index) for (delivery, index), _ in failures}
        for delivery, index in items:
            if (id(delivery), index) not in failed:
                delivery.accepted.add(index)
        if not failures:
            return
        # After a refused batch an idempotent producer's sequence numbers are out of step with
        # the broker's (OutOfOrderSequenceNumber next), and after an outage it can be stuck for
        # good (unknown producer id): go on with a fresh one either way.
        await self._reset()
        suspects, retry = split_failures(failures)
        if suspects:
            refused, fine, other = await self._isolate(suspects, self._probe_producer, self._after_probe)
            for delivery, index in fine:
                delivery.accepted.add(index)
            retry += other
            if refused:
                raise Rejected(refused)
        if retry:
            raise retry[0]

    async def _probe_producer(self) -> AIOKafkaProducer:
        await self.start()
        assert self._producer is not None
        return self._producer

    async def _after_probe(self, producer: AIOKafkaProducer, ok: bool) -> None:
        if not ok:
            await self._reset()

    async def _reset(self) -> None:
        producer, self._producer = self._producer, None
        await close_producer(producer)
