"""The one owner of when a batch is cut: at ``max_size`` records, or ``max_wait_s`` after its first one.

Fetches hand over whatever the broker had; the batcher keeps records in
consumption order (so per partition in offset order) and cuts batches of at
most ``max_size``. A partial batch is cut when its first record has waited
``max_wait_s``: the fetch loop asks :meth:`time_left` how long it may block.
Both limits are fixed unless a pacer (``worker.pipeline.pacing``) moves them
with :meth:`set_limits`. The token budget is applied later, when the engine
cuts a batch into model calls (``worker.model.batching``). Pure logic: no
I/O, no clock of its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from aiokafka import TopicPartition


@dataclass(slots=True)
class Cut:
    """A batch: consumed records, and per input partition the offset after its last one.

    ``fetched_at``: when its oldest record was fetched (the batcher's clock), so that
    fetch-to-stored latency can be measured once it is stored; ``full``: cut at the size
    limit rather than by the wait (input is backing up).
    """

    records: list[Any]
    ends: dict[TopicPartition, int]
    fetched_at: float = 0.0
    full: bool = False


class Batcher:
    def __init__(self, max_size: int, max_wait_s: float) -> None:
        self._check(max_size, max_wait_s)
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._records: list[Any] = []
        self._first_at: Optional[float] = None
        self._fetches: deque[list[Any]] = deque()  # [records left, fetched at] per fetch still held

    @staticmethod
    def _check(max_size: int, max_wait_s: float) -> None:
        if max_size < 1 or max_wait_s <= 0:
            raise ValueError("max_size must be >= 1 and max_wait_s > 0")

    def __len__(self) -> int:
        return len(self._records)

    def set_limits(self, max_size: int, max_wait_s: float) -> None:
        """New limits, from the next :meth:`ready` / :meth:`time_left` on (what is held is kept)."""
        self._check(max_size, max_wait_s)
        self.max_size = max_size
        self.max_wait_s = max_wait_s

    def add(self, fetched: Mapping[Any, Sequence[Any]], now: float) -> None:
        """Records of one fetch (per partition, in offset order)."""
        count = 0
        for records in fetched.values():
            if records:
                if self._first_at is None:
                    self._first_at = now
                self._records.extend(records)
                count += len(records)
        if count:
            self._fetches.append([count, now])

    def time_left(self, now: float, idle: float) -> float:
        """How long a fetch may wait: until the partial batch is due, else ``idle``."""
        if self._first_at is None:
            return idle
        return max(0.0, self._first_at + self.max_wait_s - now)

    def ready(self, now: float) -> list[Cut]:
        """The batches to score now: every full one, and the rest if it has waited long enough."""
        cuts = []
        size = self.max_size
        while len(self._records) >= size:
            cuts.append(self._cut(self._records[:size], full=True))
            del self._records[:size]
        if not self._records:
            self._first_at = None
        elif self._first_at is not None and now - self._first_at >= self.max_wait_s:
            cuts.append(self._cut(self._records, full=False))
            self._records = []
            self._first_at = None
        elif cuts:
            self._first_at = now  # the leftover of a full cut starts its own wait
        return cuts

    def take(self) -> list[Any]:
        """Remove and return what is held."""
        records, self._records = self._records, []
        self._first_at = None
        self._fetches.clear()
        return records

    def clear(self) -> int:
        """Drop what is held (a rebalance: it will be fetched again from the committed offsets)."""
        dropped = len(self._records)
        self._records = []
        self._first_at = None
        self._fetches.clear()
        return dropped

    def _cut(self, records: Iterable[Any], *, full: bool) -> Cut:
        records = list(records)
        fetches = self._fetches
        fetched_at = fetches[0][1] if fetches else 0.0
        left = len(records)
        while left and fetches:
            taken = min(left, fetches[0][0])
            fetches[0][0] -= taken
            left -= taken
            if not fetches[0][0]:
                fetches.popleft()
        ends: dict[tuple[str, int], int] = {}
        for record in records:
            ends[(record.topic, record.partition)] = record.offset + 1
        return Cut(
            records,
            {TopicPartition(topic, partition): end for (topic, partition), end in ends.items()},
            fetched_at,
            full,
        )
