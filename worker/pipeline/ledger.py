"""The one owner of input offsets: what is assigned, in flight, stored, and committed.

Everybody else asks through methods: the pipeline reports batches consumed
and shares stored; the committer asks what is due and says what it committed;
the exactly-once publisher keeps its per-partition floor (the committed
offset its next transaction starts from) here; the lag probe and the stall
watchdog read positions, counts and ages.

Assignments come in epochs. A revocation ends the current epoch (Kafka's
eager protocol revokes every partition before a new assignment); a batch
consumed in an epoch that has ended is abandoned: its results are neither
acknowledged nor committed, since the next owner starts again from the
committed offset. The new assignment starts no epoch of its own: what is
fetched after a revocation is fetched from the committed offsets.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Optional

from aiokafka import TopicPartition


@dataclass(slots=True)
class BatchTicket:
    """A batch in flight: where it came from, and since when."""

    number: int
    epoch: int
    events: int
    ends: dict[TopicPartition, int]  # per input partition, the offset after its last record
    started: float = field(default_factory=time.monotonic)
    stage: str = "scoring"  # scoring, publishing
    stage_since: float = field(default_factory=time.monotonic)


class OffsetLedger:
    """Offsets of the input partitions this worker owns, and the batches in flight."""

    def __init__(self) -> None:
        self._epoch = 0
        self._owned: set[TopicPartition] = set()
        self._stored: dict[TopicPartition, int] = {}  # next offset whose input has not been stored yet
        self._committed: dict[TopicPartition, int] = {}  # what the broker has as committed, where known
        self._in_flight: dict[int, BatchTicket] = {}
        self._next_ticket = 0
        self.consumed_total = 0
        self.stored_total = 0
        self.abandoned_total = 0

    # -- assignment --------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self._epoch

    def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """A new assignment (after a revocation): these partitions are read from their committed offsets."""
        self._owned = set(partitions)

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """The epoch ends; batches still in flight are abandoned."""
        gone = set(partitions)
        self._epoch += 1
        self._owned -= gone
        for tp in gone:
            self._stored.pop(tp, None)
            self._committed.pop(tp, None)
        for number, ticket in list(self._in_flight.items()):
            if ticket.epoch != self._epoch:
                self.abandoned_total += ticket.events
                del self._in_flight[number]

    def owns(self, tp: TopicPartition) -> bool:
        return tp in self._owned

    @property
    def owned(self) -> frozenset[TopicPartition]:
        return frozenset(self._owned)

    def current(self, ticket: BatchTicket) -> bool:
        """Whether a batch still belongs to this assignment (else it is to be dropped)."""
        return ticket.epoch == self._epoch

    # -- batches ------------------------------------------------------------------

    def consumed(self, ends: Mapping[TopicPartition, int], events: int) -> BatchTicket:
        """A batch enters the pipeline."""
        ticket = BatchTicket(self._next_ticket, self._epoch, events, dict(ends))
        self._in_flight[ticket.number] = ticket
        self._next_ticket += 1
        self.consumed_total += events
        return ticket

    def publishing(self, ticket: BatchTicket) -> None:
        ticket.stage = "publishing"
        ticket.stage_since = time.monotonic()

    def stored(self, tp: TopicPartition, next_offset: int, epoch: int) -> bool:
        """The outputs of everything below ``next_offset`` on ``tp`` are on the broker.

        Ignored (False) when the batch's epoch has ended or the partition is not ours.
        """
        if epoch != self._epoch or tp not in self._owned:
            return False
        if next_offset > self._stored.get(tp, -1):
            self._stored[tp] = next_offset
        return True

    def finished(self, ticket: BatchTicket) -> None:
        """A batch left the pipeline (stored, or dropped with its epoch)."""
        if self._in_flight.pop(ticket.number, None) is not None and ticket.epoch == self._epoch:
            self.stored_total += ticket.events

    # -- commits --------------------------------------------------------------------

    def due(self) -> dict[TopicPartition, int]:
        """Stored positions of owned partitions that the broker does not have as committed yet."""
        return {tp: pos for tp, pos in self._stored.items() if tp in self._owned and self._committed.get(tp) != pos}

    def committed(self, tp: TopicPartition) -> Optional[int]:
        """The committed offset of ``tp`` as last written or read by this worker; None if unknown."""
        return self._committed.get(tp)

    def note_committed(self, tp: TopicPartition, offset: int) -> None:
        """The broker has ``offset`` as committed for ``tp`` (a commit that returned True, a transaction, a read)."""
        if tp in self._owned:
            self._committed[tp] = offset

    def commits_done(self, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            self.note_committed(tp, offset)

    def forget_committed(self, tp: TopicPartition) -> None:
        """What is committed must be read from the broker again (a new transactional producer)."""
        self._committed.pop(tp, None)

    # -- what the lag probe and the watchdog read --------------------------------------

    def positions(self) -> dict[TopicPartition, int]:
        return {tp: pos for tp, pos in self._stored.items() if tp in self._owned}

    @property
    def in_flight_events(self) -> int:
        return sum(ticket.events for ticket in self._in_flight.values())

    @property
    def in_flight_batches(self) -> int:
        return len(self._in_flight)

    def oldest_in_flight(self) -> Optional[BatchTicket]:
        return min(self._in_flight.values(), key=lambda t: t.started, default=None)
