"""Getting a batch's records onto the broker, whatever it takes short of losing or repeating one.

The policy, per failure (see ``worker.kafka.errors`` for how failures are told apart):

- records the broker refuses for good are replaced (output -> dead letter ->
  dead letter without its value) and the unit is delivered again at once;
- a fenced or aborted transaction on a partition this worker still owns is
  retried with a fresh producer (which reads the committed offset first, so
  nothing is written twice); a partition that has moved is let go, and
  nothing of its share is acknowledged;
- anything else is retried with exponential backoff, offsets held, until it
  works or ``retry_budget_s`` has passed since the first failure: then
  :class:`DeliveryFailed` stops the worker (its replacement starts again from
  the committed offsets), rather than a partition stalling unseen;
- a missing ACL is retried the same way (an operator can grant it), but said
  at once: ``denied`` names the missing right until a delivery succeeds
  (/ready answers 503 meanwhile), with one log line when it starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Optional, Protocol

from aiokafka import TopicPartition

from worker.kafka.errors import Verdict, classify, describe, missing_right
from worker.kafka.records import Delivery, Outbound, PartitionFenced, Rejected
from worker.pipeline.observer import Observer

FENCED_PAUSE_S = 0.2


class DeliveryFailed(RuntimeError):
    """Publishing kept failing for longer than the retry budget."""


class Unpublishable(RuntimeError):
    """The broker refuses even the smallest replacement of a record (a dead letter without its value)."""


class Sink(Protocol):
    transactional: bool

    def units(self, deliveries: Sequence[Delivery]) -> list[list[Delivery]]: ...

    async def deliver(self, unit: Sequence[Delivery]) -> None: ...


class Fallbacks(Protocol):
    def fallback(self, refused: Outbound, origin: Any, exc: BaseException) -> Optional[Outbound]: ...


class Ownership(Protocol):
    @property
    def epoch(self) -> int: ...

    def owns(self, tp: TopicPartition) -> bool: ...


class Deliverer:
    """Delivers deliveries through a sink under the policy above."""

    def __init__(
        self,
        sink: Sink,
        fallbacks: Fallbacks,
        ownership: Ownership,
        observer: Observer,
        *,
        backoff_max_s: float = 30.0,
        retry_budget_s: float = 300.0,
        backoff_initial_s: float = 0.5,
    ) -> None:
        self._sink = sink
        self._fallbacks = fallbacks
        self._ownership = ownership
        self._observer = observer
        self._backoff_max_s = backoff_max_s
        self._retry_budget_s = retry_budget_s
        self._backoff_initial_s = backoff_initial_s
        self.failing_since: Optional[float] = None  # monotonic time of the current run of failures
        self.denied: Optional[str] = None  # the missing right, while publishing is refused for one

    async def deliver(self, deliveries: Sequence[Delivery], epoch: int) -> list[Delivery]:
        """The deliveries now stored (all, unless partitions moved or the epoch ended meanwhile)."""
        pending = self._sink.units(deliveries)
        stored: list[Delivery] = []
        delay = self._backoff_initial_s
        attempt = 0
        first_failure: Optional[float] = None
        try:
            while pending:
                if self._ownership.epoch != epoch:
                    return stored  # the partitions were revoked: the next owner starts from the commits
                attempt += 1
                results = await asyncio.gather(*(self._sink.deliver(unit) for unit in pending), return_exceptions=True)
                again: list[list[Delivery]] = []
                errors: list[BaseException] = []
                fenced = False
                for unit, result in zip(pending, results):
                    if result is None:
                        stored.extend(unit)
                        if self._sink.transactional:
                            self._observer.transactions("committed", len(unit))
                    elif isinstance(result, Rejected):
                        self._replace(result)
                        again.append(unit)
                    elif isinstance(result, PartitionFenced):
                        self._observer.transactions("fenced")
                        if self._ownership.owns(result.partition):
                            fenced = True
                            again.append(unit)  # still ours: a fresh producer takes over
                    elif isinstance(result, asyncio.CancelledError):
                        raise result
                    else:
                        if self._sink.transactional:
                            self._observer.transactions("aborted")
                        errors.append(result)
                        again.append(unit)
                pending = again
                if not pending:
                    self._allowed()
                if not pending or not (errors or fenced):
                    continue
                now = time.monotonic()
                first_failure = first_failure or now
                self.failing_since = first_failure
                if now - first_failure > self._retry_budget_s:
                    raise DeliveryFailed(
                        f"publishing has failed for {now - first_failure:.0f} s (retry budget "
                        f"{self._retry_budget_s:.0f} s): {describe(errors[0]) if errors else 'fenced'}"
                    ) from (errors[0] if errors else None)
                if errors:
                    topics = sorted({r.topic for unit in pending for d in unit for r in d.records})
                    self._check_denied(errors, topics)
                    self._observer.publish_failed(describe(errors[0]), topics, attempt, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._backoff_max_s)
                else:
                    await asyncio.sleep(FENCED_PAUSE_S)
            return stored
        finally:
            self.failing_since = None

    def _check_denied(self, errors: Sequence[BaseException], topics: Sequence[str]) -> None:
        denial = next((exc for exc in errors if classify(exc) is Verdict.DENIED), None)
        if denial is None:
            return
        right = missing_right(denial, topic_operation="Write", topics=topics)
        if right != self.denied:
            self._observer.access_denied(right, "publish", describe(denial))
        self.denied = right

    def _allowed(self) -> None:
        if self.denied is not None:
            self.denied = None
            self._observer.access_restored("publish")

    def _replace(self, rejected: Rejected) -> None:
        for delivery, index, exc in rejected.refused:
            refused = delivery.records[index]
            replacement = self._fallbacks.fallback(refused, delivery.origins[index], exc)
            if replacement is None:
                raise Unpublishable(
                    f"{refused.topic} refuses even a dead letter without its value for input "
                    f"{delivery.source.topic}:{delivery.source.partition}:{delivery.offsets[index]}: {describe(exc)}"
                ) from exc
            delivery.replace(index, replacement)
