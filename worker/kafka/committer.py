"""At-least-once offset commits: what the ledger says is stored, nothing else.

An input offset is committed only after the broker stored the outputs of
every record before it (the ledger's ``due()``). A commit the group member
refuses (the group rebalanced meanwhile: Faust's commit returns False) or
that raises is not recorded as committed; the next tick, or the next owner,
starts from what the broker really has. A commit refused for a missing ACL is
said at once (``denied``, which turns /ready to 503) and retried on every
tick. In exactly-once mode each transaction commits its own offsets and this
is not used.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Optional, Protocol

from aiokafka import TopicPartition

from worker.kafka.errors import Verdict, classify, describe, missing_right
from worker.ops import logs
from worker.ops.aio import bounded

log = logs.get_logger(__name__)

CommitFn = Callable[[Mapping[TopicPartition, int]], Awaitable[bool]]


class CommitLedger(Protocol):
    """What the committer needs of the offset ledger."""

    def due(self) -> dict[TopicPartition, int]: ...

    def commits_done(self, offsets: Mapping[TopicPartition, int]) -> None: ...


class CommitTracer(Protocol):
    def commit(self, offsets: dict[Any, int], started_ns: int, ok: bool) -> None: ...


class Committer:
    def __init__(
        self,
        ledger: CommitLedger,
        commit: CommitFn,
        *,
        timeout_s: float,
        tracer: Optional[CommitTracer] = None,
    ) -> None:
        self._ledger = ledger
        self._commit = commit
        self._timeout_s = timeout_s
        self._tracer = tracer
        self.denied: Optional[str] = None  # the missing right, while commits are refused for one

    async def commit(self) -> bool:
        """Commit what is due; True when nothing is left due."""
        due = self._ledger.due()
        if not due:
            return True
        started_ns = time.time_ns()
        error: Optional[BaseException] = None
        try:
            done = await bounded(self._commit(due), self._timeout_s)
        except Exception as exc:  # noqa: BLE001 - e.g. mid-rebalance; the next tick tries again
            done, error = False, exc
        if self._tracer is not None:
            self._tracer.commit(due, started_ns, bool(done))
        if error is not None:
            self._failed(error, due)
            return False
        if not done:
            log.info("offsets.commit_refused", reason="the group rebalanced meanwhile", partitions=len(due))
            return False
        if self.denied is not None:
            log.info("kafka.access_restored", during="commit")
            self.denied = None
        self._ledger.commits_done(due)
        return True

    def _failed(self, error: BaseException, due: Mapping[TopicPartition, int]) -> None:
        if classify(error) is Verdict.DENIED:
            right = missing_right(error, topic_operation="Read", topics={tp.topic for tp in due})
            if right != self.denied:
                log.error("kafka.access_denied", during="commit", missing=right, error=describe(error))
            self.denied = right
            return
        log.warning("offsets.commit_failed", error=describe(error), partitions=len(due))
