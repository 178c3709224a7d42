"""The Faust app: consume the input topic, hand batches to the pipeline, ack what it confirms.

Faust's ``take()`` acks a batch even when its body raises (see
shared notes, offset-safety); ``noack_take()`` leaves every ack to us, and the
pipeline acks only after the broker stored the batch's outputs. The agent
crashes the whole worker on failure (CrashingSupervisor), so a failed batch is
never skipped by a restarted agent: the process exits non-zero and the
orchestrator restarts it from the last committed offset.
"""

from __future__ import annotations

import time
from typing import Any

import faust
from aiokafka import TopicPartition
from mode import CrashingSupervisor

from worker import logs, metrics
from worker.aio import bounded
from worker.codec import Source
from worker.commits import OffsetCommitter
from worker.input_consumer import InputApp
from worker.pipeline import BatchPipeline, Consumed
from worker.publisher import Publisher, TransactionalPublisher
from worker.security import aiokafka_options, faust_credentials
from worker.watchdog import LagProbe, StallWatchdog
from worker.settings import Settings

log = logs.get_logger(__name__)

DRAIN_TIMEOUT_S = 20.0
PROBE_TIMEOUT_S = 10.0


def _consumed(event: Any) -> Consumed:
    message = event.message
    timestamp = message.timestamp
    return Consumed(
        source=Source(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            timestamp_ms=round(timestamp * 1000) if timestamp else None,
        ),
        key=message.key,
        value=message.value,
        handle=event,
    )


async def _no_commit(offsets: Any) -> bool:
    return True


def create_app(
    settings: Settings, pipeline: BatchPipeline, publisher: "Publisher | TransactionalPublisher"
) -> faust.App:
    """Wire a Faust app around an already loaded pipeline.

    Faust's own offset commits are switched off (see ``worker.commits``): in
    at-least-once mode an :class:`OffsetCommitter` commits what the pipeline
    has published; in exactly-once mode each output transaction commits its
    input offsets (``send_offsets_to_transaction``).
    """
    app = InputApp(
        settings.group_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap_list],
        store="memory://",
        processing_guarantee="at_least_once",
        stream_wait_empty=True,
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset=settings.auto_offset_reset,
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_in_thread=False,
        datadir=str(settings.data_dir),
        broker_credentials=faust_credentials(settings),
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        consumer_group_instance_id=settings.group_instance_id,
        key_serializer="raw",
        value_serializer="raw",
    )
    topic = app.topic(
        settings.input_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
        allow_empty=True,
    )
    state = {"assigned": 0, "started": False}
    committer = OffsetCommitter(pipeline.next_offsets)
    wait_s = settings.batch_max_wait_ms / 1000

    async def fail(exc: BaseException) -> None:
        await app.crash(exc)

    @app.agent(topic, name="score", concurrency=1, supervisor_strategy=CrashingSupervisor)
    async def score(stream: faust.StreamT) -> None:
        if not publisher.transactional:
            committer.bind(app.consumer._commit)  # noqa: SLF001 - see worker.commits
        app.consumer._commit = _no_commit  # noqa: SLF001
        await publisher.start()
        state["started"] = True
        pipeline.start(stream.ack, fail)
        async for events in stream.noack_take(settings.batch_max_size, within=wait_s):
            await pipeline.submit([_consumed(event) for event in events])

    @app.on_partitions_assigned.connect
    async def _assigned(app_: faust.App, assigned: set, **_: Any) -> None:
        state["assigned"] = len(assigned)
        metrics.ASSIGNED_PARTITIONS.set(len(assigned))
        committer.forget((tp.topic, tp.partition) for tp in assigned)
        log.info("partitions.assigned", count=len(assigned), partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))

    @app.on_partitions_revoked.connect
    async def _revoked(app_: faust.App, revoked: set, **_: Any) -> None:
        state["assigned"] = 0
        # Faust has waited for every consumed event to be acked (published): commit them
        # while the partitions are still ours.
        await committer.commit()
        publisher.release(list(revoked))

    @app.on_before_shutdown.connect
    async def _shutdown(app_: faust.App, **_: Any) -> None:
        # Faust has stopped fetching and waited for every consumed event to be
        # acked, i.e. published (stream_wait_empty): commit those, then close up.
        await pipeline.drain(DRAIN_TIMEOUT_S)
        await committer.commit()
        await publisher.stop()
        await probe.stop()

    @app.timer(settings.commit_interval_s)
    async def _commit_published() -> None:
        await committer.commit()

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        body, content_type = metrics.render()
        # aiohttp takes the charset separately; the exposition format is UTF-8 anyway.
        return web.bytes(body, content_type=content_type.split(";")[0] + "; version=0.0.4")

    info = pipeline.model_info
    metrics.MODEL_INFO.labels(info.name, info.revision or "", info.device, info.precision).set(1)

    probe = LagProbe(settings.kafka_bootstrap_servers, settings.group_id, aiokafka_options(settings))
    watchdog = StallWatchdog(settings.stall_timeout_s)
    lagging: set[tuple[str, int]] = set()

    async def fetch_positions(partitions: list[TopicPartition]) -> dict[tuple[str, int], int]:
        """The consumer's fetch positions; a partition whose position isn't known yet is left out."""
        positions = {}
        for tp in partitions:
            try:
                position = await app.consumer.position(tp)
            except Exception:  # noqa: BLE001 - e.g. revoked meanwhile; the lag probe falls back
                continue
            if position is not None:
                positions[(tp.topic, tp.partition)] = position
        return positions

    @app.timer(5.0)
    async def _lag() -> None:
        assigned = [TopicPartition(tp.topic, tp.partition) for tp in app.consumer.assignment()]
        try:
            fetched = await bounded(fetch_positions(assigned), PROBE_TIMEOUT_S)
            lag = await bounded(probe.lag(assigned, pipeline.next_offsets, fetched), PROBE_TIMEOUT_S)
            orphaned = 0 if assigned else await bounded(probe.orphaned_lag(settings.input_topic), PROBE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the broker may be away; reconnect next tick
            log.warning("lag.unavailable", error=repr(exc))
            await probe.stop()
            return
        current = {(tp.topic, tp.partition) for tp in lag.behind}
        for tp, behind in lag.behind.items():
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(behind)
        for topic, partition in lagging - current:
            metrics.CONSUMER_LAG.remove(topic, str(partition))
        lagging.clear()
        lagging.update(current)
        waiting = lag.unfetched + orphaned
        if watchdog.stalled(consumed=pipeline.stats.consumed, pending=pipeline.in_flight, lag=waiting):
            exc = RuntimeError(
                f"consumer stalled: {waiting} records waiting, none consumed for {settings.stall_timeout_s:.0f} s"
            )
            log.error("consumer.stalled", lag=waiting, seconds=settings.stall_timeout_s)
            pipeline.failure = exc
            await app.crash(exc)

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        ok = bool(state["started"] and state["assigned"] and pipeline.failure is None)
        body = {"ready": ok, "assigned_partitions": state["assigned"], "model": pipeline.model_info.name}
        return web.json(body, status=200 if ok else 503)

    last = {"t": time.monotonic(), "scored": 0}

    @app.timer(settings.stats_interval_s)
    async def _throughput() -> None:
        now = time.monotonic()
        stats = pipeline.stats
        rate = (stats.scored - last["scored"]) / max(now - last["t"], 1e-9)
        last.update(t=now, scored=stats.scored)
        log.info(
            "throughput",
            events_per_s=round(rate, 1),
            scored=stats.scored,
            rejected=stats.rejected,
            batches=stats.batches,
            padding_efficiency=round(stats.real_tokens / stats.padded_tokens, 3) if stats.padded_tokens else None,
            in_flight=pipeline.in_flight,
        )

    return app
