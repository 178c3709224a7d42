"""At-least-once offset commits: what the ledger says is stored, nothing else.

An input offset is committed only after the broker stored the outputs of
every record before it (the ledger's ``due()``). A commit the group member
refuses (the group rebalanced meanwhile: Faust's commit returns False) or
that raises is not recorded as committed; the next tick, or the next owner,
starts from what the broker really has. In exactly-once mode each
transaction commits its own offsets and this is not used.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Optional, Protocol

from aiokafka import TopicPartition

from worker.ops import logs
from worker.pipeline.ledger import OffsetLedger

log = logs.get_logger(__name__)

CommitFn = Callable[[Mapping[TopicPartition, int]], Awaitable[bool]]


class CommitTracer(Protocol):
    def commit(self, offsets: dict[Any, int], started_ns: int, ok: bool) -> None: ...


class Committer:
    def __init__(self, ledger: OffsetLedger, commit: CommitFn, tracer: Optional[CommitTracer] = None) -> None:
        self._ledger = ledger
        self._commit = commit
        self._tracer = tracer

    async def commit(self) -> bool:
        """Commit what is due; True when nothing is left due."""
        due = self._ledger.due()
        if not due:
            return True
        started_ns = time.time_ns()
        error: Optional[BaseException] = None
        try:
            done = await self._commit(due)
        except Exception as exc:  # noqa: BLE001 - e.g. mid-rebalance; the next tick tries again
            done, error = False, exc
        if self._tracer is not None:
            self._tracer.commit(due, started_ns, bool(done))
        if error is not None:
            log.warning("offsets.commit_failed", error=f"{type(error).__name__}: {error}", partitions=len(due))
            return False
        if not done:
            log.info("offsets.commit_refused", reason="the group rebalanced meanwhile", partitions=len(due))
            return False
        self._ledger.commits_done(due)
        return True
