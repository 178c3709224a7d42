"""Every few seconds: lag per partition (events and seconds), and the stall watchdog's verdict.

Lag is read from the broker (``worker.ops.lag``) and labelled with the consumer
group the worker was given; the verdict comes from
``worker.ops.watchdog``, fed with what the offset ledger says about progress.
The broker may be away: then this tick is skipped and the probe reconnects
on the next one. One debug line per tick (``monitor.checked``) says what
was seen, so that a test can wait for ticks instead of sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Optional, Protocol

from aiokafka import TopicPartition

from worker.ops import logs, metrics
from worker.ops.aio import bounded
from worker.ops.lag import LagProbe
from worker.ops.watchdog import StallWatchdog

log = logs.get_logger(__name__)

PROBE_TIMEOUT_S = 10.0


class StageAge(Protocol):
    @property
    def stage(self) -> str: ...

    @property
    def stage_since(self) -> float: ...


class Progress(Protocol):
    """What the monitor reads of the offset ledger."""

    @property
    def consumed_total(self) -> int: ...

    @property
    def in_flight_events(self) -> int: ...

    def positions(self) -> dict[TopicPartition, int]: ...

    def oldest_in_flight(self) -> Optional[StageAge]: ...


class Consumer(Protocol):
    """What the monitor reads of the group member."""

    def assignment(self) -> list[TopicPartition]: ...

    def positions(self, partitions: list[TopicPartition]) -> Awaitable[Mapping[TopicPartition, int]]: ...


class Monitor:
    def __init__(
        self,
        probe: LagProbe,
        watchdog: StallWatchdog,
        progress: Progress,
        consumer: Consumer,
        *,
        group: str,
        input_topic: str,
        retrying: Callable[[], bool],
    ) -> None:
        self._probe = probe
        self._watchdog = watchdog
        self._progress = progress
        self._consumer = consumer
        self._group = group
        self._input_topic = input_topic
        self._retrying = retrying
        self._lagging: set[TopicPartition] = set()

    async def check(self) -> Optional[str]:
        """Update the lag metrics; why the worker is stalled, if it is."""
        progress = self._progress
        assigned = self._consumer.assignment()
        try:
            fetched = await bounded(self._consumer.positions(assigned), PROBE_TIMEOUT_S)
            lag = await bounded(self._probe.lag(assigned, progress.positions(), fetched, ages=True), PROBE_TIMEOUT_S)
            orphaned = 0 if assigned else await bounded(self._probe.orphaned_lag(self._input_topic), PROBE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the broker may be away; reconnect next tick
            log.warning("lag.unavailable", error=repr(exc))
            await self._probe.stop()
            return None
        for tp, behind in lag.behind.items():
            metrics.CONSUMER_LAG.labels(self._group, tp.topic, str(tp.partition)).set(behind)
            metrics.CONSUMER_LAG_SECONDS.labels(self._group, tp.topic, str(tp.partition)).set(lag.age_s.get(tp, 0.0))
        for tp in self._lagging - set(lag.behind):
            metrics.CONSUMER_LAG.remove(self._group, tp.topic, str(tp.partition))
            metrics.CONSUMER_LAG_SECONDS.remove(self._group, tp.topic, str(tp.partition))
        self._lagging = set(lag.behind)
        waiting = lag.unfetched + orphaned
        oldest = progress.oldest_in_flight()
        stage_age = time.monotonic() - oldest.stage_since if oldest is not None else None
        log.debug("monitor.checked", lag=sum(lag.behind.values()), waiting=waiting, in_flight=progress.in_flight_events)
        stall = self._watchdog.stall_timeout_s
        if self._watchdog.stalled(consumed=progress.consumed_total, pending=progress.in_flight_events, lag=waiting):
            return f"{waiting} records waiting, none consumed for {stall:.0f} s"
        if self._watchdog.stuck(stage_age_s=stage_age, retrying=self._retrying()):
            return f"a batch has been {oldest.stage if oldest else '?'} for {stage_age:.0f} s"
        return None
