"""The processing guarantee, as one object: its sink and how it commits input offsets.

- :class:`AtLeastOnce`: an idempotent sink; the committer commits what the
  ledger says is stored, on a timer, before partitions are revoked, and at
  shutdown. A crash repeats what was stored but not yet committed.
- :class:`ExactlyOnce`: a transactional sink; every transaction commits its
  own partition's offset, so there is nothing to commit besides, and revoked
  partitions' producers are let go.

The worker (``worker.service``) asks the guarantee, never which guarantee it is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Union

from aiokafka import TopicPartition

from worker.kafka.at_least_once import AtLeastOnceSink
from worker.kafka.committer import CommitFn, CommitLedger, Committer, CommitTracer
from worker.kafka.records import SIZE_MARGIN
from worker.kafka.security import aiokafka_options
from worker.kafka.sending import BATCH_BYTES
from worker.kafka.topics import TopicInfo
from worker.kafka.transactional import Floors, TransactionalSink
from worker.settings import Guarantee, Settings

Sink = Union[AtLeastOnceSink, TransactionalSink]


class OffsetBook(CommitLedger, Floors, Protocol):
    """The offset ledger, as the guarantees use it."""


@dataclass(frozen=True)
class Timer:
    name: str
    interval_s: float
    run: Callable[[], Awaitable[Any]]


class AtLeastOnce:
    """Outputs through an idempotent producer; offsets committed once their outputs are stored."""

    def __init__(self, sink: AtLeastOnceSink, committer: Committer, commit_interval_s: float) -> None:
        self.sink = sink
        self._committer = committer
        self._interval_s = commit_interval_s

    @property
    def denied(self) -> Optional[str]:
        """The missing right while commits are refused for one."""
        return self._committer.denied

    async def start(self) -> None:
        await self.sink.start()

    async def stop(self) -> None:
        await self.sink.stop()

    def timers(self) -> list[Timer]:
        return [Timer("commit", self._interval_s, self._committer.commit)]

    async def settle(self) -> None:
        """Before a revocation or at shutdown: commit what is stored while the partitions are still ours."""
        await self._committer.commit()

    def release(self, partitions: Sequence[TopicPartition]) -> None:
        """Nothing is held per partition."""


class ExactlyOnce:
    """Outputs and offsets in one transaction per input partition."""

    denied: Optional[str] = None  # a transaction refused for an ACL is a publish failure (the deliverer's)

    def __init__(self, sink: TransactionalSink) -> None:
        self.sink = sink

    async def start(self) -> None:
        await self.sink.start()

    async def stop(self) -> None:
        await self.sink.stop()

    def timers(self) -> list[Timer]:
        return []

    async def settle(self) -> None:
        """Every transaction committed its own offsets: nothing is left to commit."""

    def release(self, partitions: Sequence[TopicPartition]) -> None:
        """Revoked partitions' producers go; their next transactions start on fresh ones."""
        self.sink.release(partitions)


DeliveryGuarantee = Union[AtLeastOnce, ExactlyOnce]


def make_guarantee(
    settings: Settings,
    ledger: OffsetBook,
    topics: TopicInfo,
    commit_offsets: CommitFn,
    tracer: Optional[CommitTracer] = None,
) -> DeliveryGuarantee:
    """The configured guarantee, with record batches no larger than the topics accept."""
    limits = [topics.max_message_bytes[t] for t in (settings.output_topic, settings.dead_letter_topic_name)
              if t in topics.max_message_bytes]
    batch_bytes = min([BATCH_BYTES, *(limit - SIZE_MARGIN for limit in limits)])
    request_timeout_ms = int(settings.kafka_request_timeout_s * 1000)
    if settings.processing_guarantee is Guarantee.exactly_once:
        return ExactlyOnce(
            TransactionalSink(
                settings.kafka_bootstrap_servers,
                group_id=settings.group_id,
                floors=ledger,
                transaction_timeout_ms=settings.transaction_timeout_ms,
                request_timeout_ms=request_timeout_ms,
                batch_bytes=batch_bytes,
                options=aiokafka_options(settings),
            )
        )
    sink = AtLeastOnceSink(
        settings.kafka_bootstrap_servers,
        client_id=f"{settings.group_id}-publisher",
        request_timeout_ms=request_timeout_ms,
        batch_bytes=batch_bytes,
        options=aiokafka_options(settings),
    )
    committer = Committer(ledger, commit_offsets, timeout_s=settings.kafka_request_timeout_s, tracer=tracer)
    return AtLeastOnce(sink, committer, settings.commit_interval_s)
