"""The exactly-once sink: per input partition, its outputs and its offset commit in one transaction.

One transactional producer per input partition, with a stable transactional
id (``<group>-<topic>-<partition>``), so a new owner of the partition fences
the old one (aiokafka speaks no KIP-447, so per-partition ids are what keeps
zombie fencing safe). Each partition's share of a batch is one unit: its
outputs, its dead letters and ``send_offsets_to_transaction``, committed
together; units of different partitions run concurrently.

A producer is used for one ownership only: when partitions are revoked, their
producers leave the map at once (before any await, so a unit running beside
the revocation cannot take one) and are closed before the next delivery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Optional, Protocol

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from worker.kafka.errors import Verdict, classify
from worker.kafka.records import Delivery, Item, PartitionFenced, Rejected
from worker.kafka.sending import BATCH_BYTES, ProducerSink, close_producer, open_producer, send_batches, split_failures
from worker.ops import logs
from worker.ops.aio import bounded

log = logs.get_logger(__name__)


class Floors(Protocol):
    """Where the sink keeps the committed input offset of each partition (the offset ledger)."""

    def committed(self, tp: TopicPartition) -> Optional[int]: ...

    def note_committed(self, tp: TopicPartition, offset: int) -> None: ...

    def forget_committed(self, tp: TopicPartition) -> None: ...


class TransactionalSink(ProducerSink):
    """Exactly-once: per input partition, outputs and the offset commit in one transaction."""

    transactional = True

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        group_id: str,
        floors: Floors,
        transaction_timeout_ms: int,
        request_timeout_ms: int = 30000,
        batch_bytes: int = BATCH_BYTES,
        options: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__(
            bootstrap_servers,
            request_timeout_ms=request_timeout_ms,
            batch_bytes=batch_bytes,
            options=options,
            extra={"transaction_timeout_ms": transaction_timeout_ms},
        )
        self._group_id = group_id
        self._floors = floors
        # Give up on a transaction before the broker would abort it for taking too long.
        self._deadline_s = min(self._deadline_s, 0.9 * transaction_timeout_ms / 1000)
        self._producers: dict[TopicPartition, AIOKafkaProducer] = {}
        self._retired: list[AIOKafkaProducer] = []  # out of the map, not closed yet
        self._releases = 0  # revocations so far: a producer opened across one is not used
        self._admin: Optional[AIOKafkaAdminClient] = None
        self._admin_config = dict(bootstrap_servers=bootstrap_servers, **(options or {}))

    def transactional_id(self, tp: TopicPartition) -> str:
        # Stable per input partition: whoever owns the partition next fences us.
        return f"{self._group_id}-{tp.topic}-{tp.partition}"

    def producer_of(self, tp: TopicPartition) -> Optional[AIOKafkaProducer]:
        """The producer the partition's next transaction runs on, if one is open."""
        return self._producers.get(tp)

    async def start(self) -> None:
        """Producers are created per partition on first use; the admin client reads offsets then."""
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(**self._admin_config)
            await self._admin.start()

    async def stop(self) -> None:
        producers = [*self._producers.values(), *self._retired]
        self._producers.clear()
        self._retired.clear()
        await asyncio.gather(*(close_producer(p) for p in producers))
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                await bounded(admin.close(), 5)
            except Exception as exc:  # noqa: BLE001 - discarded either way
                log.debug("admin.close_failed", error=repr(exc))

    def units(self, deliveries: Sequence[Delivery]) -> list[list[Delivery]]:
        """Each partition commits on its own (concurrently), so a retry never repeats a committed share."""
        return [[delivery] for delivery in deliveries]

    def release(self, partitions: Sequence[TopicPartition]) -> None:
        """Partitions were revoked: their producers leave now and are closed before the next delivery.

        Even when a partition comes straight back to this worker, its next
        transaction starts from a new producer: another worker may have owned it
        in between (and fenced the old producer), and the consumer may have
        re-read a committed offset from before our last transaction settled.
        Only a fresh producer followed by a committed-offset read settles both.
        """
        self._releases += 1
        for tp in partitions:
            producer = self._producers.pop(tp, None)
            self._floors.forget_committed(tp)
            if producer is not None:
                self._retired.append(producer)

    async def deliver(self, unit: Sequence[Delivery]) -> None:
        if self._retired:
            retired, self._retired = self._retired, []
            await asyncio.gather(*(close_producer(p) for p in retired))
        for delivery in unit:
            await self._deliver_one(delivery)

    async def _deliver_one(self, delivery: Delivery) -> None:
        tp = delivery.source
        producer = await self._producer(tp)
        try:
            failures = await bounded(self._transact(producer, delivery), self._deadline_s)
        except Exception as exc:
            # No abort: it can hang on the very fault that failed the transaction.
            # The next producer with this id bumps the epoch, which aborts it for us.
            await self._drop(tp, producer)
            if classify(exc) is Verdict.FENCED:
                raise PartitionFenced(tp, exc) from exc
            raise
        if not failures:
            return
        await self._drop(tp, producer)
        suspects, others = split_failures(failures)
        if suspects:
            refused, _, other = await self._isolate(
                suspects, lambda: self._probe_producer(tp), lambda probe, ok: self._after_probe(tp, probe, ok)
            )
            if refused:
                raise Rejected(refused)
            others += other
        fenced = next((exc for exc in others if classify(exc) is Verdict.FENCED), None)
        if fenced is not None:
            raise PartitionFenced(tp, fenced) from fenced
        # Retryable, or the suspects were all stored fine alone (a passing broker error):
        # the whole transaction again, after a pause.
        raise (others or [failures[0][1]])[0]

    async def _transact(self, producer: AIOKafkaProducer, delivery: Delivery) -> list[tuple[Item, BaseException]]:
        """One transaction: the share's records and its input offset; the failed sends if any (then left open)."""
        tp = delivery.source
        # For a new producer this waits for its init_transactions (aiokafka's start()
        # doesn't): older producers of this id are fenced and their last transaction
        # settled, so a committed offset read after it is final.
        await producer.begin_transaction()
        floor = self._floors.committed(tp)
        if floor is None:
            floor = await self._committed(tp)
            self._floors.note_committed(tp, floor)
        # Skip what a previous owner, or this producer, already committed.
        if floor >= delivery.next_offset:
            await producer.commit_transaction()  # empty: ends locally, nothing is sent
            log.debug("transaction.skipped", partition=f"{tp.topic}:{tp.partition}", committed=floor)
            return []
        items = [(delivery, i) for i in delivery.pending(floor)]
        failures = await send_batches(producer, items, self._partitioner)
        if failures:
            return failures
        await producer.send_offsets_to_transaction({tp: delivery.next_offset}, self._group_id)
        await producer.commit_transaction()
        self._floors.note_committed(tp, delivery.next_offset)
        log.debug(
            "transaction.committed",
            partition=f"{tp.topic}:{tp.partition}",
            next_offset=delivery.next_offset,
            records=len(items),
        )
        return []

    async def _probe_producer(self, tp: TopicPartition) -> AIOKafkaProducer:
        """A producer in an open transaction, to try one record in; the transaction is aborted after."""
        producer = await self._producer(tp)
        await producer.begin_transaction()
        return producer

    async def _after_probe(self, tp: TopicPartition, producer: AIOKafkaProducer, ok: bool) -> None:
        # A probe is never committed, so read_committed readers never see it.
        try:
            if not ok:
                raise RuntimeError("a failed transaction is not reused")
            await bounded(producer.abort_transaction(), self._deadline_s)
        except Exception:  # noqa: BLE001 - a fresh producer aborts it anyway
            await self._drop(tp, producer)

    async def _producer(self, tp: TopicPartition) -> AIOKafkaProducer:
        producer = self._producers.get(tp)
        if producer is None:
            # A new producer's first transaction reads the committed offset again.
            self._floors.forget_committed(tp)
            config = {**self._config, "transactional_id": self.transactional_id(tp)}
            releases = self._releases
            producer = await open_producer(config, self._deadline_s)
            if releases != self._releases:  # revoked while it started: it belongs to no ownership
                self._retired.append(producer)
                raise RuntimeError(f"{tp.topic}:{tp.partition} was revoked while its producer started")
            self._producers[tp] = producer
        return producer

    async def _committed(self, tp: TopicPartition) -> int:
        assert self._admin is not None, "TransactionalSink.start() was not awaited"
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

    async def _drop(self, tp: TopicPartition, producer: AIOKafkaProducer) -> None:
        """Discard a producer after a failure; the partition's floor goes with it, if it is still the one in use."""
        if self._producers.get(tp) is producer:
            del self._producers[tp]
            self._floors.forget_committed(tp)
        await close_producer(producer)
