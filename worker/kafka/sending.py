"""Sending records as record batches, and what both sinks share.

Records go out in one record batch per output partition (``send_batch``),
partitioned by key exactly like Kafka's default partitioner, and every batch's
answer is awaited. :class:`ProducerSink` holds the producer settings both
sinks use and the one step they share after a failed send: trying each
suspect record alone, to tell a record the broker refuses for good from a
passing fault.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Optional

from aiokafka import AIOKafkaProducer

from worker.kafka.errors import Verdict, classify
from worker.kafka.partitioner import KeyPartitioner
from worker.kafka.records import Delivery, Item
from worker.ops import logs
from worker.ops.aio import bounded

log = logs.get_logger(__name__)

STOP_TIMEOUT_S = 5.0
BATCH_BYTES = 1 << 20  # largest record batch per output partition, unless a topic allows less
# Raised by the client before anything went out: the record itself is unacceptable.
CLIENT_SIDE_ERRORS = (AssertionError, TypeError, ValueError)


async def open_producer(config: dict[str, Any], deadline_s: float) -> AIOKafkaProducer:
    """A started producer; one that does not start within the deadline is closed again."""
    producer = AIOKafkaProducer(**config)
    try:
        await bounded(producer.start(), deadline_s)
    except BaseException:
        await close_producer(producer)
        raise
    return producer


async def close_producer(producer: Optional[AIOKafkaProducer]) -> None:
    """Stop a producer that may be broken; give up on it after a few seconds."""
    if producer is None:
        return
    try:
        await bounded(producer.stop(), STOP_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - it is being discarded either way
        log.debug("producer.close_failed", error=repr(exc))


async def send_batches(
    producer: AIOKafkaProducer, items: Sequence[Item], partitioner: KeyPartitioner
) -> list[tuple[Item, BaseException]]:
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


Refused = list[tuple[Delivery, int, BaseException]]


class ProducerSink:
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
        open_attempt: Callable[[], Awaitable[AIOKafkaProducer]],
        close_attempt: Callable[[AIOKafkaProducer, bool], Awaitable[None]],
    ) -> tuple[Refused, list[Item], list[BaseException]]:
        """Try each suspect alone: refused (fails again for the same kind of reason), fine, or retry.

        ``open_attempt()`` gives a usable producer (in a transaction, an open one);
        ``close_attempt(producer, ok)`` ends the attempt.
        """
        refused: Refused = []
        fine: list[Item] = []
        other: list[BaseException] = []
        for item, first in suspects:
            if isinstance(first, CLIENT_SIDE_ERRORS):
                refused.append((item[0], item[1], first))  # the client refused it: nothing to ask the broker
                continue
            producer = await open_attempt()
            try:
                failures = await bounded(send_batches(producer, [item], self._partitioner), self._deadline_s)
            except Exception as exc:  # noqa: BLE001 - judged below like a send failure
                failures = [(item, exc)]
            await close_attempt(producer, not failures)
            if not failures:
                fine.append(item)
            elif classify(failures[0][1]) is Verdict.RECORD:
                refused.append((item[0], item[1], failures[0][1]))
            else:
                other.append(failures[0][1])
        return refused, fine, other


def split_failures(
    failures: Sequence[tuple[Item, BaseException]],
) -> tuple[list[tuple[Item, BaseException]], list[BaseException]]:
    """Failed sends: those that may be the record's fault (to isolate), and the other errors."""
    suspects = [(item, exc) for item, exc in failures if classify(exc) is Verdict.RECORD]
    others = [exc for _, exc in failures if classify(exc) is not Verdict.RECORD]
    return suspects, others
