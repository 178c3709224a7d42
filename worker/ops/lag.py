"""Broker-side lag: records behind the end of each input partition, in events and in seconds.

Measured from the broker (end offsets and the group's committed offsets,
through a group-less client), so it is known from the first second, also for
partitions that have not been consumed yet. The end offsets are the last
stable offsets (``read_committed``): records of an upstream transaction still
open can't be read yet and don't count as waiting.

"Unfetched" is measured from the consumer's fetch position, not from the
committed offset: a transactional producer's commit marker (and its aborted
records) take offsets that are never delivered, so the committed offset of an
idle partition can stay one or more below the end for good. The stall
watchdog uses it (``worker.ops.watchdog``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from worker.ops import logs
from worker.ops.aio import bounded

log = logs.get_logger(__name__)


class LagProbe:
    """End and committed offsets of the group's partitions, read from the broker."""

    def __init__(self, bootstrap_servers: str, group_id: str, options: Optional[dict[str, Any]] = None) -> None:
        self._config = dict(bootstrap_servers=bootstrap_servers, **(options or {}))
        self._group_id = group_id
        self._consumer: Optional[AIOKafkaConsumer] = None
        self._admin: Optional[AIOKafkaAdminClient] = None

    async def start(self) -> None:
        if self._consumer is None:
            # read_committed, like the worker's own consumer: end offsets are then the last
            # stable offsets, so records of an upstream transaction still open don't count as
            # waiting (the worker can't have them yet).
            self._consumer = AIOKafkaConsumer(
                enable_auto_commit=False,
                isolation_level="read_committed",
                max_partition_fetch_bytes=1024,  # one record (or batch) is all the age needs
                **self._config,
            )
            await self._consumer.start()
            self._admin = AIOKafkaAdminClient(**self._config)
            await self._admin.start()

    async def stop(self) -> None:
        """Close the clients (bounded: after a broker restart they can hang); the next call reopens them."""
        consumer, admin, self._consumer, self._admin = self._consumer, self._admin, None, None
        for closing in (consumer.stop() if consumer else None, admin.close() if admin else None):
            if closing is not None:
                try:
                    await bounded(closing, 5)
                except Exception as exc:  # noqa: BLE001 - discarded either way
                    log.debug("probe.close_failed", error=repr(exc))

    async def lag(
        self,
        partitions: Iterable[TopicPartition],
        stored: Mapping[TopicPartition, int],
        fetched: Optional[Mapping[TopicPartition, int]] = None,
        *,
        ages: bool = False,
    ) -> "Lag":
        """Records behind the end per partition, those the consumer has not even fetched yet,
        and (``ages``) how old the oldest record not yet stored is, per partition.

        ``stored``: per partition the next offset whose output is not stored yet, where
        known (else the committed offset counts). ``fetched``: the consumer's fetch positions.
        """
        tps = list(partitions)
        if not tps:
            return Lag({}, 0, {})
        await self.start()
        assert self._consumer is not None and self._admin is not None
        ends = await self._consumer.end_offsets(tps)
        committed = await self._admin.list_consumer_group_offsets(self._group_id, partitions=tps)
        behind: dict[TopicPartition, int] = {}
        bases: dict[TopicPartition, int] = {}
        unfetched = 0
        for tp in tps:
            meta = committed.get(tp)
            base = stored.get(tp)
            if base is None:
                base = meta.offset if meta is not None and meta.offset >= 0 else 0
            bases[tp] = base
            behind[tp] = max(0, ends[tp] - base)
            position = (fetched or {}).get(tp)
            unfetched += behind[tp] if position is None else max(0, ends[tp] - position)
        age = await self._ages({tp: bases[tp] for tp in tps if behind[tp] > 0}) if ages else {}
        return Lag(behind, unfetched, {tp: age.get(tp, 0.0) for tp in tps})

    async def _ages(self, bases: Mapping[TopicPartition, int]) -> dict[TopicPartition, float]:
        """Seconds since the Kafka timestamp of the record at each base offset (the oldest waiting one)."""
        if not bases:
            return {}
        assert self._consumer is not None
        consumer = self._consumer
        consumer.assign(list(bases))
        for tp, offset in bases.items():
            consumer.seek(tp, offset)
        found: dict[TopicPartition, float] = {}
        deadline = time.monotonic() + 2.0
        while len(found) < len(bases) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=len(bases))
            for tp, records in batch.items():
                if records and tp not in found:
                    found[tp] = records[0].timestamp / 1000
                    consumer.pause(tp)
        consumer.resume(*consumer.assignment())
        now = time.time()
        return {tp: max(0.0, now - ts) for tp, ts in found.items()}

    async def orphaned_lag(self, topic: str) -> int:
        """Group lag on ``topic`` that no live member can be serving, for a replica without partitions.

        A replica with no assignment is normal when the group has at least as many
        members as partitions. With fewer, every member should own something, so an
        empty assignment means this replica fell out of the group and never rejoined.
        """
        await self.start()
        assert self._consumer is not None and self._admin is not None
        (meta,) = await self._admin.describe_topics([topic])
        tps = [TopicPartition(topic, p["partition"]) for p in meta.get("partitions", [])]
        if not tps:
            return 0
        (group,) = await self._admin.describe_consumer_groups([self._group_id])
        members = len(group.to_object()["groups"][0]["members"])
        if members >= len(tps):
            return 0
        return sum((await self.lag(tps, {})).behind.values())


@dataclass(frozen=True)
class Lag:
    behind: dict[TopicPartition, int]  # end offset minus the next offset not stored yet (the lag metric)
    unfetched: int  # records on the broker the consumer has not fetched, all partitions together
    age_s: dict[TopicPartition, float]  # age of the oldest record not stored yet (0 when none waits)
