"""Publishing scored events, and knowing for certain which ones the broker stored.

Two sinks, one contract: :meth:`deliver` returns only once the broker has
stored everything in the unit it was given, and raises otherwise:

- :class:`Rejected` names the records the broker refuses for good (each was
  tried alone to be sure); the caller swaps them for dead letters and
  delivers the unit again;
- :class:`PartitionFenced` (exactly-once) says the partition's producer was
  fenced or its transaction aborted by the broker; nothing of the unit is
  stored, and the caller decides, from the partition's ownership, whether to
  try again with a fresh producer or let the partition go;
- anything else is retryable: back off and deliver the unit again.

- :class:`AtLeastOncePublisher`: one idempotent producer (acks=all). A unit is
  the whole batch; what the broker accepted is remembered in each
  :class:`Delivery`, so a retry re-sends only the rest.
- :class:`TransactionalPublisher` (exactly-once): one transactional producer
  per input partition with a stable transactional id, so a new owner of the
  partition fences the old one; each partition's share of a batch is one unit:
  its outputs, dead letters and the input offset commit, in one transaction.

Records go out in one record batch per output partition (``send_batch``),
partitioned by key exactly like Kafka's default partitioner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from worker.kafka.errors import Verdict, classify
from worker.kafka.partitioner import KeyPartitioner
from worker.ops import logs
from worker.ops.aio import bounded

log = logs.get_logger(__name__)

Headers = tuple[tuple[str, bytes], ...]
STOP_TIMEOUT_S = 5.0
BATCH_BYTES = 1 << 20  # largest record batch per output partition, unless a topic allows less


@dataclass(slots=True)
class Outbound:
    """One record to write; ``kind`` says what it is, for metrics and for what replaces it if refused."""

    topic: str
    key: Optional[bytes]
    value: Optional[bytes]
    headers: Headers = ()
    kind: str = "output"  # output, dead_letter, or marker (a dead letter without its value)


@dataclass(slots=True)
class Delivery:
    """What one input partition's share of a batch produces, and the offset it completes."""

    source: TopicPartition
    records: list[Outbound] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # input offset of each record
    origins: list[Any] = field(default_factory=list)  # the input record each record came from
    next_offset: int = 0
    accepted: set[int] = field(default_factory=set)  # indices the broker has stored (at-least-once)

    def add(self, offset: int, record: Optional[Outbound], origin: Any = None) -> None:
        if record is not None:
            self.records.append(record)
            self.offsets.append(offset)
            self.origins.append(origin)
        self.next_offset = offset + 1

    def extend(self, other: "Delivery") -> None:
        """Append the share of a later batch of the same partition (one transaction for both)."""
        base = len(self.records)
        self.accepted.update(base + i for i in other.accepted)
        self.records.extend(other.records)
        self.offsets.extend(other.offsets)
        self.origins.extend(other.origins)
        self.next_offset = other.next_offset

    def replace(self, index: int, record: Outbound) -> None:
        self.records[index] = record
        self.accepted.discard(index)

    def pending(self, floor: int = 0) -> list[int]:
        """Indices still to be stored, of records at or after input offset ``floor``."""
        return [i for i, offset in enumerate(self.offsets) if i not in self.accepted and offset >= floor]


class Rejected(Exception):
    """Records the broker refuses for good; nothing else of the unit is lost, the rest can be retried."""

    def __init__(self, refused: list[tuple[Delivery, int, BaseException]]) -> None:
        super().__init__(f"{len(refused)} record(s) refused by the broker")
        self.refused = refused


class PartitionFenced(Exception):
    """The partition's transactional producer was fenced, or the broker aborted its transaction."""

    def __init__(self, partition: TopicPartition, cause: BaseException) -> None:
        super().__init__(f"{partition.topic}:{partition.partition}: {type(cause).__name__}: {cause}")
        self.partition = partition


class Floors(Protocol):
    """Where the exactly-once publisher keeps the committed input offset of each partition (the ledger)."""

    def committed(self, tp: TopicPartition) -> Optional[int]: ...

    def note_committed(self, tp: TopicPartition, offset: int) -> None: ...

    def forget_committed(self, tp: TopicPartition) -> None: ...


Item = tuple[Delivery, int]
# Raised by the client before anything went out: the record itself is unacceptable.
_CLIENT_SIDE = (AssertionError, TypeError, ValueError)


async def _open_producer(config: dict[str, Any], deadline_s: float) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(**config)
    try:
        await bounded(producer.start(), deadline_s)
    except BaseException:
        await _close(producer)
        raise
    return producer


async def _close(producer: Optional[AIOKafkaProducer]) -> None:
    """Stop a producer that may be broken; give up on it after a few seconds."""
    if producer is None:
        return
    try:
        await bounded(producer.stop(), STOP_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - it is being discarded either way
        log.debug("producer.close_failed", error=repr(exc))


async def _send(producer: AIOKafkaProducer, items: Sequence[Item], partitioner: KeyPartitioner) -> list[tuple[Item, BaseException]]:
    """Send records in one record batch per output partition; the failed ones, with why.

    Returns once the broker has answered for every batch.
    """
    counts: dict[str, int] = {}
    groups: dict[tuple[str, int], list[Item]] = {}
    failed: list[tuple[Item, BaseException]] = []
    for item in items:
        record = item[0].records[item[1]]
        count = counts.get(record.topic)
        if count is None:
            count = counts[record.topic] = len(await producer.partitions_for(record.topic))
        if record.key is None and record.value is None:
            failed.append((item, ValueError("a record needs a key or a value")))
            continue
        partition = partitioner(record.key, count) if record.key is not None else 0
        groups.setdefault((record.topic, partition), []).append(item)
    sent: list[tuple[list[Item], asyncio.Future[Any]]] = []
    for (topic, partition), members in groups.items():
        builder = producer.create_batch()
        in_batch: list[Item] = []
        for item in members:
            record = item[0].records[item[1]]
            headers = list(record.headers)
            if builder.append(timestamp=None, key=record.key, value=record.value, headers=headers) is None:
                sent.append((in_batch, await producer.send_batch(builder, topic, partition=partition)))
                builder = producer.create_batch()
                in_batch = []
                builder.append(timestamp=None, key=record.key, value=record.value, headers=headers)
            in_batch.append(item)
        if in_batch:
            sent.append((in_batch, await producer.send_batch(builder, topic, partition=partition)))
    results = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
    for (members, _), result in zip(sent, results):
        if isinstance(result, BaseException):
            failed.extend((item, result) for item in members)
    return failed


class _Publisher:
    """What both sinks share: producer settings, the key partitioner, isolating refused records."""

    transactional = False

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        request_timeout_ms: int,
        batch_bytes: int,
        options: Optional[dict[str, Any]],
        extra: dict[str, Any],
    ) -> None:
        self._config = dict(
            bootstrap_servers=bootstrap_servers,
            request_timeout_ms=request_timeout_ms,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=batch_bytes,
            max_request_size=max(batch_bytes, 8 * 1024 * 1024),
            **extra,
            **(options or {}),
        )
        self._partitioner = KeyPartitioner()
        self._deadline_s = max(10.0, 3 * request_timeout_ms / 1000)

    async def _isolate(
        self,
        suspects: Sequence[tuple[Item, BaseException]],
        open_producer: Callable[[], Awaitable[AIOKafkaProducer]],
        close_producer: Callable[[AIOKafkaProducer, bool], Awaitable[None]],
    ) -> tuple[list[tuple[Delivery, int, BaseException]], list[Item], list[BaseException]]:
        """Try each suspect alone: refused (fails again for the same kind of reason), fine, or retry.

        ``open_producer()`` gives a usable producer (in a transaction, an open one);
        ``close_producer(producer, ok)`` ends the attempt.
        """
        refused: list[tuple[Delivery, int, BaseException]] = []
        fine: list[Item] = []
        other: list[BaseException] = []
        for item, first in suspects:
            if isinstance(first, _CLIENT_SIDE):
                refused.append((item[0], item[1], first))  # the client refused it: nothing to ask the broker
                continue
            producer = await open_producer()
            try:
                failures = await bounded(_send(producer, [item], self._partitioner), self._deadline_s)
            except Exception as exc:  # noqa: BLE001 - judged below like a send failure
                failures = [(item, exc)]
            await close_producer(producer, not failures)
            if not failures:
                fine.append(item)
            elif classify(failures[0][1]) is Verdict.RECORD:
                refused.append((item[0], item[1], failures[0][1]))
            else:
                other.append(failures[0][1])
        return refused, fine, other


class AtLeastOncePublisher(_Publisher):
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
            self._producer = await _open_producer(self._config, self._deadline_s)

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

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
            failures = await bounded(_send(self._producer, items, self._partitioner), self._deadline_s)
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
        suspects = [(item, exc) for item, exc in failures if classify(exc) is Verdict.RECORD]
        retry = [exc for _, exc in failures if classify(exc) is not Verdict.RECORD]
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
        await _close(producer)


class TransactionalPublisher(_Publisher):
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
        self._released: set[TopicPartition] = set()
        self._admin: Optional[AIOKafkaAdminClient] = None
        self._admin_config = dict(bootstrap_servers=bootstrap_servers, **(options or {}))

    def transactional_id(self, tp: TopicPartition) -> str:
        # Stable per input partition: whoever owns the partition next fences us.
        return f"{self._group_id}-{tp.topic}-{tp.partition}"

    async def start(self) -> None:
        """Producers are created per partition on first use; the admin client reads offsets then."""
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
        """Each partition commits on its own (concurrently), so a retry never repeats a committed share."""
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
            await self._deliver_one(delivery)

    async def _deliver_one(self, delivery: Delivery) -> None:
        tp = delivery.source
        producer = await self._producer(tp)
        try:
            failures = await bounded(self._transact(producer, delivery), self._deadline_s)
        except Exception as exc:
            # No abort: it can hang on the very fault that failed the transaction.
            # The next producer with this id bumps the epoch, which aborts it for us.
            await self._drop(tp)
            if classify(exc) is Verdict.FENCED:
                raise PartitionFenced(tp, exc) from exc
            raise
        if not failures:
            return
        await self._drop(tp)
        suspects = [(item, exc) for item, exc in failures if classify(exc) is Verdict.RECORD]
        others = [exc for _, exc in failures if classify(exc) is not Verdict.RECORD]
        if suspects:
            refused, _, other = await self._isolate(
                suspects, lambda: self._probe_producer(tp), lambda producer, ok: self._after_probe(tp, producer, ok)
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
        failures = await _send(producer, items, self._partitioner)
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
            await self._drop(tp)

    async def _producer(self, tp: TopicPartition) -> AIOKafkaProducer:
        producer = self._producers.get(tp)
        if producer is None:
            # A new producer's first transaction reads the committed offset again.
            self._floors.forget_committed(tp)
            config = {**self._config, "transactional_id": self.transactional_id(tp)}
            producer = self._producers[tp] = await _open_producer(config, self._deadline_s)
        return producer

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
        self._floors.forget_committed(tp)
        producer = self._producers.pop(tp, None)
        await _close(producer)

    async def _close_released(self) -> None:
        released, self._released = self._released, set()
        await asyncio.gather(*(self._drop(tp) for tp in released))


Publisher = AtLeastOncePublisher | TransactionalPublisher
