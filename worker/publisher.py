"""Publishing scored events, and knowing for certain that the broker stored them.

Two sinks, one contract: :meth:`deliver` returns only once the broker has
stored everything in the unit it was given, and raises otherwise; the pipeline
acknowledges input only after it returns.

- :class:`Publisher` (at-least-once): one idempotent producer (acks=all); a
  batch is one unit, every delivery future is awaited.
- :class:`TransactionalPublisher` (exactly-once): one transactional producer
  per input partition with a stable transactional id, so a new owner of the
  partition fences the old one; each partition's share of a batch is one unit:
  its outputs, dead letters and the input offset commit, in one transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, ProducerFenced

from worker import logs
from worker.aio import bounded

log = logs.get_logger(__name__)

Headers = tuple[tuple[str, bytes], ...]
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class OutboundRecord:
    topic: str
    key: Optional[bytes]
    value: Optional[bytes]
    headers: Headers = ()


@dataclass(slots=True)
class Delivery:
    """What one input partition's share of a batch produces, and the offset it completes."""

    source: TopicPartition
    records: list[OutboundRecord] = field(default_factory=list)
    source_offsets: list[int] = field(default_factory=list)  # input offset of each record
    next_offset: int = 0

    def add(self, offset: int, record: Optional[OutboundRecord]) -> None:
        if record is not None:
            self.records.append(record)
            self.source_offsets.append(offset)
        self.next_offset = offset + 1

    def from_offset(self, committed: int) -> "Delivery":
        """Only what lies at or after ``committed`` (the rest was committed by a previous owner)."""
        if not self.source_offsets or self.source_offsets[0] >= committed:
            return self  # the usual case: nothing to drop
        kept = [(o, r) for o, r in zip(self.source_offsets, self.records) if o >= committed]
        return Delivery(self.source, [r for _, r in kept], [o for o, _ in kept], self.next_offset)


async def _open_producer(config: dict[str, Any], deadline_s: float) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(**config)
    try:
        await bounded(producer.start(), deadline_s)
    except BaseException:
        await _close(producer)
        raise
    return producer


async def _close(producer: AIOKafkaProducer) -> None:
    """Stop a producer that may be broken; give up on it after a few seconds."""
    try:
        await bounded(producer.stop(), STOP_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - it is being discarded either way
        log.debug("producer.close_failed", error=repr(exc))


class PartitionFenced(Exception):
    """Another worker owns this input partition now; its transaction was not committed."""


async def _send_all(producer: AIOKafkaProducer, records: Sequence[OutboundRecord]) -> None:
    deliveries = [
        await producer.send(record.topic, record.value, key=record.key, headers=list(record.headers) or None)
        for record in records
    ]
    if deliveries:
        await asyncio.gather(*deliveries)


class Publisher:
    """At-least-once: an idempotent producer with an all-or-error batch delivery."""

    transactional = False

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str,
        request_timeout_ms: int = 30000,
        options: Optional[dict[str, Any]] = None,
    ) -> None:
        self._config = dict(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            request_timeout_ms=request_timeout_ms,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_request_size=8 * 1024 * 1024,
            **(options or {}),
        )
        self._producer: Optional[AIOKafkaProducer] = None
        self._deadline_s = max(10.0, 3 * request_timeout_ms / 1000)

    async def start(self) -> None:
        """Create and connect the producer (aiokafka needs the running loop for this)."""
        if self._producer is None:
            self._producer = await _open_producer(self._config, self._deadline_s)

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    def units(self, deliveries: Sequence[Delivery]) -> list[list[Delivery]]:
        """The whole batch is one unit: resending it after a failure can only duplicate."""
        return [list(deliveries)] if deliveries else []

    async def deliver(self, unit: Sequence[Delivery]) -> None:
        await self.start()
        assert self._producer is not None
        try:
            await bounded(
                _send_all(self._producer, [record for delivery in unit for record in delivery.records]),
                self._deadline_s,
            )
        except Exception:
            # After a broker restart an idempotent producer can be stuck for good
            # (OutOfOrderSequenceNumber, unknown producer id): retry with a fresh one.
            producer, self._producer = self._producer, None
            await _close(producer)
            raise

    def release(self, partitions: Sequence[TopicPartition]) -> None:
        """Nothing is held per partition in this mode."""


class TransactionalPublisher:
    """Exactly-once: per input partition, outputs and the offset commit in one transaction."""

    transactional = True

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        group_id: str,
        transaction_timeout_ms: int,
        request_timeout_ms: int = 30000,
        options: Optional[dict[str, Any]] = None,
    ) -> None:
        self._group_id = group_id
        # A transaction that hasn't committed by then is given up and retried with a new producer.
        self._deadline_s = max(10.0, 3 * request_timeout_ms / 1000)
        self._config = dict(
            bootstrap_servers=bootstrap_servers,
            request_timeout_ms=request_timeout_ms,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_request_size=8 * 1024 * 1024,
            transaction_timeout_ms=transaction_timeout_ms,
            **(options or {}),
        )
        self._producers: dict[TopicPartition, AIOKafkaProducer] = {}
        self._released: set[TopicPartition] = set()
        # Per partition, the offset up to which outputs are known to be committed.
        self._floors: dict[TopicPartition, int] = {}
        self._admin: Optional[AIOKafkaAdminClient] = None
        self._admin_config = dict(bootstrap_servers=bootstrap_servers, **(options or {}))

    def transactional_id(self, tp: TopicPartition) -> str:
        # Stable per input partition: whoever owns the partition next fences us.
        return f"{self._group_id}-{tp.topic}-{tp.partition}"

    async def start(self) -> None:
        """Producers are created per partition on first use; the admin client checks offsets then."""
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(**self._admin_config)
            await self._admin.start()

    async def stop(self) -> None:
        await asyncio.gather(*(_close(p) for p in self._producers.values()))
        self._producers.clear()
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    def units(self, deliveries: Sequence[Delivery]) -> list[list[Delivery]]:
        """Each partition commits on its own, so a retry never repeats a committed share."""
        return [[delivery] for delivery in deliveries]

    def release(self, partitions: Sequence[TopicPartition]) -> None:
        """Partitions were revoked: their producers are closed before the next delivery.

        Even when a partition comes straight back to this worker, its next
        transaction starts from a new producer: another worker may have owned it
        in between (and fenced the old producer), and the consumer may have
        re-read a committed offset from before our last transaction settled.
        Only a fresh producer followed by a committed-offset read settles both.
        """
        self._released.update(partitions)

    async def deliver(self, unit: Sequence[Delivery]) -> None:
        await self._close_released()
        for delivery in unit:
            tp = delivery.source
            producer, fresh = await self._producer(tp)
            try:
                await bounded(self._transact(producer, delivery, fresh), self._deadline_s)
            except ProducerFenced as exc:
                await self._drop(tp)
                raise PartitionFenced(f"{tp} is owned by another worker now") from exc
            except Exception:
                # No abort here: it can hang on the very fault that failed the transaction.
                # The next producer with this id bumps the epoch, which aborts it for us.
                await self._drop(tp)
                raise

    async def _transact(self, producer: AIOKafkaProducer, delivery: Delivery, fresh: bool) -> None:
        tp = delivery.source
        # For a new producer this waits for its init_transactions (aiokafka's start()
        # doesn't): older producers of this id are fenced and their last transaction
        # settled, so the committed offset read next is final.
        await producer.begin_transaction()
        if fresh:
            self._floors[tp] = await self._committed(tp)
        # Skip what a previous owner, or this producer, already committed.
        floor = self._floors.get(tp, 0)
        delivery = delivery.from_offset(floor)
        if floor >= delivery.next_offset:
            await producer.commit_transaction()  # empty: ends locally, nothing is sent
            log.debug("transaction.skipped", partition=f"{tp.topic}:{tp.partition}", committed=floor)
            return
        await _send_all(producer, delivery.records)
        await producer.send_offsets_to_transaction({tp: delivery.next_offset}, self._group_id)
        await producer.commit_transaction()
        self._floors[tp] = delivery.next_offset
        log.debug(
            "transaction.committed",
            partition=f"{tp.topic}:{tp.partition}",
            first=delivery.source_offsets[0] if delivery.source_offsets else None,
            next_offset=delivery.next_offset,
            records=len(delivery.records),
            fresh=fresh,
        )

    async def _producer(self, tp: TopicPartition) -> tuple[AIOKafkaProducer, bool]:
        producer = self._producers.get(tp)
        if producer is not None:
            return producer, False
        producer = await _open_producer({**self._config, "transactional_id": self.transactional_id(tp)}, self._deadline_s)
        self._producers[tp] = producer
        return producer, True

    async def _committed(self, tp: TopicPartition) -> int:
        assert self._admin is not None, "TransactionalPublisher.start() was not awaited"
        admin = self._admin

        async def read() -> Any:
            # The group coordinator may be moving or loading (broker restart, a first
            # group on a new cluster): those errors pass, so ask again until the deadline.
            while True:
                try:
                    return await admin.list_consumer_group_offsets(self._group_id, partitions=[tp])
                except KafkaError as exc:
                    if not exc.retriable:
                        raise
                    await asyncio.sleep(0.2)

        offsets = await bounded(read(), self._deadline_s)
        meta = offsets.get(tp)
        return meta.offset if meta is not None and meta.offset >= 0 else 0

    async def _drop(self, tp: TopicPartition) -> None:
        self._floors.pop(tp, None)
        producer = self._producers.pop(tp, None)
        if producer is not None:
            await _close(producer)

    async def _close_released(self) -> None:
        released, self._released = self._released, set()
        await asyncio.gather(*(self._drop(tp) for tp in released))
