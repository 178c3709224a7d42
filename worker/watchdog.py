"""Broker-side lag, and a watchdog for a consumer that stopped fetching.

The lag is measured from the broker (end offsets and the group's committed
offsets, through a group-less client), so it is known from the first second,
also for partitions that have not been consumed yet.

A defence in depth against a consumer that stops fetching without an error: a
worker that holds partitions (or fell out of its group), has nothing in flight,
has consumed nothing for ``stall_timeout_s`` and yet has input waiting is
stuck: it exits non-zero so its orchestrator restarts it (uncommitted input is
consumed again; nothing is lost).

"Input waiting" is measured from the consumer's fetch position, not from the
committed offset: a transactional producer's commit marker (and its aborted
records) take offsets that are never delivered, so the committed offset of an
idle partition can stay one or more below the end for good.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from worker import logs
from worker.aio import bounded

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
            self._consumer = AIOKafkaConsumer(enable_auto_commit=False, isolation_level="read_committed", **self._config)
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
        acked: Mapping[tuple[str, int], int],
        fetched: Optional[Mapping[tuple[str, int], int]] = None,
    ) -> "Lag":
        """Records behind the end per partition, and those the consumer has not even fetched yet.

        ``acked``: next offset to acknowledge per partition, where known (else the
        committed offset counts). ``fetched``: the consumer's fetch positions.
        """
        tps = list(partitions)
        if not tps:
            return Lag({}, 0)
        await self.start()
        assert self._consumer is not None and self._admin is not None
        ends = await self._consumer.end_offsets(tps)
        committed = await self._admin.list_consumer_group_offsets(self._group_id, partitions=tps)
        behind: dict[TopicPartition, int] = {}
        unfetched = 0
        for tp in tps:
            key = (tp.topic, tp.partition)
            meta = committed.get(tp)
            base = acked.get(key)
            if base is None:
                base = meta.offset if meta is not None and meta.offset >= 0 else 0
            behind[tp] = max(0, ends[tp] - base)
            position = (fetched or {}).get(key)
            unfetched += behind[tp] if position is None else max(0, ends[tp] - position)
        return Lag(behind, unfetched)

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
    behind: dict[TopicPartition, int]  # end offset minus the next offset to acknowledge (the lag metric)
    unfetched: int  # records on the broker the consumer has not fetched, all partitions together


class StallWatchdog:
    """Decides when an idle consumer with lag is stuck."""

    def __init__(self, stall_timeout_s: float) -> None:
        self.stall_timeout_s = stall_timeout_s
        self._last_consumed = -1
        self._last_progress = time.monotonic()

    def stalled(self, *, consumed: int, pending: int, lag: int, now: Optional[float] = None) -> bool:
        now = time.monotonic() if now is None else now
        if consumed != self._last_consumed or pending > 0 or lag == 0:
            # Progress, or work still in the pipeline (e.g. a publish being retried), or nothing to do.
            self._last_consumed = consumed
            self._last_progress = now
            return False
        return self.stall_timeout_s > 0 and now - self._last_progress >= self.stall_timeout_s
