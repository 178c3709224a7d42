"""Everything that touches Faust's or aiokafka's internals, in one place.

Faust stays the application: group membership and rebalances, the web
server, timers, lifecycle and supervision. What it does not do is deliver
our input: its per-message path (a Stream, an Event and an ack per record,
and four tasks created per message by ``Consumer._drain_messages``) cost
~90 µs of the event loop per event, more than everything else together. So
the consumer's fetch loop is replaced: whole fetches go to an :class:`Intake`
(the batcher), and nothing is tracked or acknowledged per message. Offsets
are ours (``worker.pipeline.ledger``); Faust commits nothing, since it sees
no acknowledged message; ``commit()`` here writes what the ledger says.

Every private hook used below has a test in ``tests/test_faust_adapter.py``
that fails loudly if an upgrade renames or changes it:

- ``Consumer._drain_messages(fetcher)``: the fetch loop, replaced;
- ``Consumer._wait_next_records(timeout)``: one fetch, honouring Faust's flow
  control (paused during rebalances) and active partitions;
- ``AIOKafkaConsumerThread._create_worker_consumer`` and aiokafka's
  ``AIOKafkaConsumer._isolation_level``: read ``read_committed``;
- ``AIOKafkaConsumerThread.on_partitions_assigned`` (aiokafka's rebalance
  listener, in the consumer's thread, before any fetch of the new
  assignment): START_FROM places partitions the group never committed,
  RUN_UNTIL takes their stop offsets;
- ``AIOKafkaConsumerThread.commit(offsets) -> bool``: False when the group
  already rebalanced (then nothing was committed);
- ``Consumer.position(tp)`` / ``Consumer.seek(tp, offset)``: fetched records
  that had to be dropped are fetched again;
- ``faust.App(env=...)`` and the ``web_*_enabled`` settings;
- ``Worker._on_sigterm`` / ``Worker._on_sigint`` (what mode's signal handlers
  call) and the ``on_worker_shutdown`` hook: every way a shutdown begins arms
  the exit deadline (``worker.ops.shutdown``).

Faust reads ``read_uncommitted`` unless its own exactly-once mode is on, which
does not cover our output topic (see ``worker.kafka.transactional``). Producers
that write the input topic in transactions would then have their aborted
records scored, and their open transactions scored before they commit. Both
guarantees therefore read ``read_committed``; for producers that don't use
transactions it changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, Optional, Protocol

import aiokafka
import faust
from aiokafka import TopicPartition
from faust.app import base as faust_app
from faust.transport.drivers import aiokafka as faust_aiokafka

from worker.kafka.positions import StartAt, place_uncommitted, stop_offsets
from worker.ops.shutdown import ExitDeadline

ISOLATION_LEVEL = "read_committed"

# mode names a service's logger after the module of its class: name ours under Faust's,
# so that its chatter stays under the "faust" log level (worker.ops.logs). (Faust's own
# logger objects can't be reused: mode marks them, and renames the subclass's.)
_FAUST_DRIVER_LOG = logging.getLogger(f"{faust_aiokafka.__name__}.read_committed")


class Intake(Protocol):
    """Where fetched records go (the batcher in front of the pipeline)."""

    def fetch_started(self) -> int:
        """A fetch begins; returns a token (the assignment epoch) to hand back with its records."""
        ...

    def fetch_timeout(self, now: float) -> float:
        """How long the next fetch may wait for records."""
        ...

    # Optional: ``fetch_max_records() -> int``, the most records the next fetch may bring.

    async def fetched(self, records: Mapping[TopicPartition, list[Any]], token: int, now: float) -> None:
        """One fetch's records (possibly none: a timeout), per partition in offset order.

        Records it drops, it rewinds (:meth:`BatchConsumer.rewind`), so none is skipped.
        """
        ...


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    logger = _FAUST_DRIVER_LOG

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka hands this to its fetcher in start(), which has not run yet;
        # Faust offers no setting for it.
        consumer._isolation_level = ISOLATION_LEVEL  # noqa: SLF001
        return consumer

    async def on_partitions_assigned(self, assigned: Any, generation_id: int = 0) -> None:
        """START_FROM and RUN_UNTIL first: here nothing of the new assignment has been fetched yet, so
        no record before the start can slip through; then Faust's own handling (the app's signal)."""
        app = self.app
        start: Optional[StartAt] = getattr(app, "start_from", None)
        until: Optional[StartAt] = getattr(app, "run_until", None)
        if (start is not None or until is not None) and assigned:
            partitions = [TopicPartition(tp.topic, tp.partition) for tp in assigned]
            consumer = self._ensure_consumer()
            try:
                if start is not None:
                    app.started_at.update(await place_uncommitted(consumer, partitions, start))
                if until is not None:
                    app.stops_found.update(await stop_offsets(consumer, partitions, until))
            except Exception as exc:  # noqa: BLE001 - aiokafka would log and fetch from AUTO_OFFSET_RESET
                # Fetching from the reset position instead would score what START_FROM excludes (or skip
                # what it includes): stop; the replacement tries again.
                asyncio.run_coroutine_threadsafe(app.crash(exc), app.loop)
                raise
        await super().on_partitions_assigned(assigned, generation_id)


class BatchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, handing whole fetches to an :class:`Intake`."""

    logger = _FAUST_DRIVER_LOG

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        """Run by Faust's Fetcher service: fetch, hand over, repeat, until stopped."""
        intake = getattr(self.app, "intake", None)
        if intake is None:
            raise RuntimeError("InputApp.intake must be set before the app starts")
        fetch_limit = getattr(intake, "fetch_max_records", None)  # optional: see Intake
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set  # noqa: SLF001
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                # Records are never dropped here: a fetch that straddles a rebalance is judged by
                # the intake from its token (and rewound, if dropped, so that nothing is skipped).
                token = intake.fetch_started()
                if fetch_limit is not None:
                    self._limit_fetch(fetch_limit())
                records, _ = await self._wait_next_records(intake.fetch_timeout(time.monotonic()))
                if self.should_stop:
                    return
                await intake.fetched(records or {}, token, time.monotonic())
                await asyncio.sleep(0)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise

    def _limit_fetch(self, records: int) -> None:
        """Faust fixes max_poll_records at start (broker_max_poll_records); aiokafka reads it per fetch."""
        consumer = getattr(self._thread, "_consumer", None)
        if consumer is not None and consumer._max_poll_records != records:  # noqa: SLF001
            consumer._max_poll_records = records  # noqa: SLF001

    async def rewind(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Fetch these partitions again from these offsets, where the consumer is already past them.

        For records that were fetched and then dropped (their assignment ended while they
        were on their way): without this, the consumer would go on after them, and the
        next commit would skip them.
        """
        assigned = {TopicPartition(tp.topic, tp.partition) for tp in self.assignment()}
        for tp, offset in offsets.items():
            if tp not in assigned:
                continue  # its next owner starts from the committed offset
            position = await self.position(tp)
            if position is not None and position > offset:
                await self.seek(tp, offset)

    async def commit_offsets(self, offsets: Mapping[TopicPartition, int]) -> bool:
        """Commit through the group member (generation-checked); False if the group rebalanced meanwhile.

        Only partitions still assigned are committed; other errors crash the app (Faust's choice).
        """
        return bool(await self._thread.commit(offsets))  # noqa: SLF001


class _Transport(faust_aiokafka.Transport):
    Consumer = BatchConsumer


class InputApp(faust.App):
    """A Faust app configured by its arguments alone, whose consumer hands over whole fetches."""

    logger = logging.getLogger(f"{faust_app.__name__}.input")
    intake: Optional[Intake] = None  # where the consumer's fetches go; set before the app starts
    start_from: Optional[StartAt] = None  # START_FROM: where partitions the group never committed begin
    run_until: Optional[StartAt] = None  # RUN_UNTIL: end, or a time: where a bounded run stops

    def __init__(self, id: str, *, builtin_pages: bool = False, **options: Any) -> None:
        # Faust also reads settings from environment variables, several named like ours
        # (PROCESSING_GUARANTEE, TOPIC_PARTITIONS, WEB_PORT...), and lets them override
        # its arguments. With PROCESSING_GUARANTEE=exactly_once in the environment it ran
        # transactions of its own next to ours and committed stale offsets over our
        # commits (duplicates after a crash). It is given no environment at all.
        options.setdefault("env", {})
        # Faust's own pages show host names, assignments and tables: off unless asked for.
        for page in ("web_router_enabled", "web_tables_enabled", "web_graph_enabled", "web_stats_enabled"):
            options.setdefault(page, builtin_pages)
        super().__init__(id, **options)
        self.started_at: dict[TopicPartition, int] = {}  # where START_FROM placed partitions, until logged
        self.stops_found: dict[TopicPartition, int] = {}  # RUN_UNTIL's stops, until the service takes them

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)

    @property
    def batch_consumer(self) -> BatchConsumer:
        consumer = self.consumer
        assert isinstance(consumer, BatchConsumer)
        return consumer

    def subscribe(self, topic: str) -> None:
        """Have Faust's conductor subscribe ``topic`` (an agent would have done it; we have none)."""
        self.topics.add(self.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"))

    async def positions(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The consumer's fetch positions; a partition whose position isn't known yet is left out."""
        positions = {}
        for tp in partitions:
            try:
                position = await self.consumer.position(tp)
            except Exception:  # noqa: BLE001 - e.g. revoked meanwhile
                continue
            if position is not None:
                positions[tp] = position
        return positions

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition) for tp in self.consumer.assignment()]


class BoundedWorker(faust.Worker):
    """Faust's Worker, whose shutdown ends within SHUTDOWN_TIMEOUT_S however it begins.

    A signal arms the deadline with status 0 (asked to stop); any other way out
    (a start that failed, an app that stopped on its own) with status 1. A crash
    arms it before it gets here (``worker.service``).
    """

    def __init__(self, *args: Any, deadline: ExitDeadline, **kwargs: Any) -> None:
        self._deadline = deadline
        super().__init__(*args, **kwargs)

    def _on_sigterm(self) -> None:
        self._deadline.arm("SIGTERM", 0)
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._deadline.arm("SIGINT", 0)
        super()._on_sigint()

    def finish(self, reason: str) -> None:
        """A bounded run is done: the shutdown a SIGTERM starts (drain, commit, leave the group), status 0."""
        self._deadline.arm(reason, 0)
        super()._on_sigterm()

    def on_worker_shutdown(self) -> None:
        self._deadline.arm("the worker stopped without a signal", 1)
        super().on_worker_shutdown()
