"""Offset commits driven by what was published, not by Faust's acknowledgements.

Faust acks and commits messages it skips itself: after a rebalance it drops
records of the previous generation still in its buffers and acks them, so its
contiguous-ack commit can run past records that were never scored (and lost if
the worker then dies). So the worker switches Faust's committing off and
commits, per partition, the offset after the last record whose output the
broker has stored (at-least-once), or lets each transaction commit it
(exactly-once). Faust still sees every ack, for its rebalance and shutdown
bookkeeping.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any, Optional

from faust.types import TP

from worker import logs

log = logs.get_logger(__name__)

CommitFn = Callable[[Mapping[TP, int]], Awaitable[Any]]


class OffsetCommitter:
    """Commits ``positions`` (next offset to consume, per partition) when they have moved."""

    def __init__(self, positions: MutableMapping[tuple[str, int], int]) -> None:
        self._positions = positions
        self._committed: dict[tuple[str, int], int] = {}
        self._commit: Optional[CommitFn] = None

    def bind(self, commit: CommitFn) -> None:
        self._commit = commit

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """A new assignment: positions start again from the broker's committed offsets."""
        for key in partitions:
            self._positions.pop(key, None)
            self._committed.pop(key, None)

    async def commit(self) -> None:
        if self._commit is None:
            return
        due = {key: pos for key, pos in list(self._positions.items()) if self._committed.get(key) != pos}
        if not due:
            return
        try:
            await self._commit({TP(topic, partition): pos for (topic, partition), pos in due.items()})
        except Exception as exc:  # noqa: BLE001 - e.g. mid-rebalance; the next tick tries again
            log.warning("offsets.commit_failed", error=f"{type(exc).__name__}: {exc}", partitions=len(due))
            return
        self._committed.update(due)
