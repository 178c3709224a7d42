"""What the pipeline hands to a sink, and what a sink says back.

The pipeline builds :class:`Delivery` objects (per input partition: the
records to write and the offset they complete) and hands them to a sink
(``worker.kafka.at_least_once``, ``worker.kafka.transactional``). A sink
returns once the broker stored all of them, or raises:

- :class:`Rejected`: records the broker refuses for good (each was tried
  alone to be sure); the caller replaces them (dead letters) and delivers
  again;
- :class:`PartitionFenced` (exactly-once): the partition's producer was
  fenced or its transaction aborted by the broker; nothing of the share is
  stored, and the caller decides, from the partition's ownership, whether to
  try again or let the partition go;
- anything else is retryable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from aiokafka import TopicPartition
from aiokafka.record.default_records import DefaultRecordBatchBuilder

Headers = tuple[tuple[str, bytes], ...]
# What aiokafka's batch builder may add around one record, on top of its estimate's bytes.
SIZE_MARGIN = 64


@dataclass(slots=True)
class Outbound:
    """One record to write; ``kind`` says what it is, for metrics and for what replaces it if refused."""

    topic: str
    key: Optional[bytes]
    value: Optional[bytes]
    headers: Headers = ()
    kind: str = "output"  # output, dead_letter, or marker (a dead letter without its value)


def record_size(record: Outbound) -> int:
    """An upper bound of the record's size in a record batch of its own (what max.message.bytes limits)."""
    return DefaultRecordBatchBuilder.estimate_size_in_bytes(record.key, record.value, list(record.headers)) + SIZE_MARGIN


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


Item = tuple[Delivery, int]  # one record of a delivery, by index


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
