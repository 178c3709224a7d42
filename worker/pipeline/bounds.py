"""RUN_UNTIL: a bounded run, each partition scored up to a stop offset, then the worker exits 0.

A backfill (re-scoring history with a new model) is a run that ends. Each
replica takes a partition's stop offset when it is first assigned that
partition: its end (under read_committed the last stable offset, so a
transaction still open does not hold the run forever) for ``RUN_UNTIL=end``,
or the first record at or after a time. Records at or past the stop are not
scored; the partition is paused once its fetch position reaches the stop.

A partition is done when the fetch position has reached its stop and every
record taken from it is stored and committed; the replica is done when every
partition it owns is. A partition that moves to another replica mid-run is
finished by its new owner (from the committed offset, to the stop that owner
takes); a replica that finishes leaves the group, and its partitions, done,
go to the others, which find them done at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

from aiokafka import TopicPartition


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """How far a partition of a bounded run got."""

    stop: int
    position: Optional[int]  # the consumer's fetch position
    committed: Optional[int]
    done: bool


class RunBounds:
    """The stop offsets of a bounded run and what was taken below them (the event loop's only)."""

    def __init__(self) -> None:
        self.stops: dict[TopicPartition, int] = {}
        self._last_taken: dict[TopicPartition, int] = {}
        self.reached: set[TopicPartition] = set()  # fetch position at or past the stop: paused

    def add_stops(self, stops: Mapping[TopicPartition, int]) -> None:
        """Stops of partitions first assigned to this replica; a partition keeps its first stop."""
        for tp, offset in stops.items():
            self.stops.setdefault(tp, offset)

    def unknown(self, partitions: Iterable[TopicPartition]) -> list[TopicPartition]:
        """The partitions without a stop yet (first assigned now)."""
        return [tp for tp in partitions if tp not in self.stops]

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """What was taken from them is the next owner's to commit (or to fetch again): only the stop stays."""
        for tp in partitions:
            self._last_taken.pop(tp, None)
            self.reached.discard(tp)

    def take(self, records: Mapping[TopicPartition, list[Any]]) -> dict[TopicPartition, list[Any]]:
        """The records below each partition's stop; records at or past it are not scored by this run."""
        kept: dict[TopicPartition, list[Any]] = {}
        for tp, batch in records.items():
            stop = self.stops.get(tp)
            if stop is not None and batch and batch[-1].offset >= stop:
                batch = [record for record in batch if record.offset < stop]
                self.reached.add(tp)
            if batch:
                kept[tp] = batch
                self._last_taken[tp] = batch[-1].offset
        return kept

    def progress(
        self, tp: TopicPartition, position: Optional[int], committed: Optional[int]
    ) -> Optional[PartitionProgress]:
        """Where ``tp`` stands; None when it has no stop (not a partition of this run)."""
        stop = self.stops.get(tp)
        if stop is None:
            return None
        last = self._last_taken.get(tp)
        fetched_all = position is not None and position >= stop
        if fetched_all:
            self.reached.add(tp)
        stored_all = last is None or (committed is not None and committed > last)
        return PartitionProgress(stop, position, committed, fetched_all and stored_all)
