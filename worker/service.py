"""One worker process assembled: the pipeline, the Faust app around it, and its timers and pages.

The data flow (README, "Data flow"): the Faust consumer's fetch loop hands
whole fetches to the intake (``worker.pipeline.intake``), which cuts batches
and submits them to the pipeline (decode, tokenise, infer, build outputs,
publish); the ledger (``worker.pipeline.ledger``) hears what is stored, and
the committer, the lag probe and the watchdog read it. Nothing here is on
the per-event path.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

import faust
from aiokafka import TopicPartition

from worker.kafka.committer import Committer
from worker.kafka.faust_adapter import InputApp
from worker.kafka.publisher import BATCH_BYTES, AtLeastOncePublisher, Publisher, TransactionalPublisher
from worker.kafka.security import aiokafka_options, faust_credentials
from worker.kafka.topics import TopicInfo
from worker.model.engine import SentimentEngine
from worker.ops import logs, metrics
from worker.ops.aio import bounded
from worker.ops.lag import LagProbe
from worker.ops.memory import jemalloc_loaded
from worker.ops.telemetry import Telemetry
from worker.ops.watchdog import StallWatchdog
from worker.ops.web import install_pages
from worker.pipeline.batcher import Batcher
from worker.pipeline.delivery import Deliverer
from worker.pipeline.headers import HeaderPolicy
from worker.pipeline.intake import Intake
from worker.pipeline.ledger import OffsetLedger
from worker.pipeline.outputs import SIZE_MARGIN, OutputBuilder
from worker.pipeline.scoring import BatchScorer
from worker.pipeline.stages import Pipeline
from worker.settings import Guarantee, Settings

log = logs.get_logger(__name__)

DRAIN_TIMEOUT_S = 20.0  # shutdown: finish what is in flight (within Kubernetes' 30 s default grace)
REVOKE_DRAIN_S = 20.0  # rebalance: finish the revoked partitions' batches (rebalance timeout is 60 s)
LAG_INTERVAL_S = 5.0
PROBE_TIMEOUT_S = 10.0


def make_publisher(settings: Settings, ledger: OffsetLedger, topics: TopicInfo) -> Publisher:
    """The sink of the configured guarantee, with record batches no larger than the topics accept."""
    limits = [topics.max_message_bytes[t] for t in (settings.output_topic, settings.dead_letter_topic_name)
              if t in topics.max_message_bytes]
    batch_bytes = min([BATCH_BYTES, *(limit - SIZE_MARGIN for limit in limits)])
    request_timeout_ms = int(settings.kafka_request_timeout_s * 1000)
    if settings.processing_guarantee is Guarantee.exactly_once:
        return TransactionalPublisher(
            settings.kafka_bootstrap_servers,
            group_id=settings.group_id,
            floors=ledger,
            transaction_timeout_ms=settings.transaction_timeout_ms,
            request_timeout_ms=request_timeout_ms,
            batch_bytes=batch_bytes,
            options=aiokafka_options(settings),
        )
    return AtLeastOncePublisher(
        settings.kafka_bootstrap_servers,
        client_id=f"{settings.group_id}-publisher",
        request_timeout_ms=request_timeout_ms,
        batch_bytes=batch_bytes,
        options=aiokafka_options(settings),
    )


def make_tracing(settings: Settings) -> Optional[Any]:
    """OpenTelemetry's tracer with TRACING=true, else None (and OpenTelemetry is not even imported)."""
    if not settings.tracing:
        return None
    from worker.ops.tracing import Tracing

    return Tracing()


def make_app(settings: Settings) -> InputApp:
    return InputApp(
        settings.group_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap_list],
        store="memory://",
        processing_guarantee="at_least_once",  # Faust's own; ours is worker.kafka.publisher
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset=settings.auto_offset_reset,
        broker_max_poll_records=settings.batch_max_size,
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_in_thread=False,
        builtin_pages=settings.web_builtin_pages,
        datadir=str(settings.data_dir),
        broker_credentials=faust_credentials(settings),
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        consumer_group_instance_id=settings.group_instance_id,
        key_serializer="raw",
        value_serializer="raw",
    )


class WorkerService:
    """The pipeline of one process and the Faust app that feeds it."""

    def __init__(self, settings: Settings, engine: SentimentEngine, topics: TopicInfo, registry: Any = None) -> None:
        self.settings = settings
        self.registry = registry  # worker.registry.serde.RegistrySerde, for the json_schema and avro formats
        self.ledger = OffsetLedger()
        self.telemetry = Telemetry(settings.dead_letter_topic_name)
        self.tracing = make_tracing(settings)
        self.publisher = make_publisher(settings, self.ledger, topics)
        builder = OutputBuilder(
            output_topic=settings.output_topic,
            dead_letter_topic=settings.dead_letter_topic_name,
            model=engine.info,
            max_bytes=topics.max_message_bytes,
            include_text=settings.include_text,
            scored_text=engine.scored_text,
            observer=self.telemetry,
            schema_version=settings.output_schema_version,
            threshold=settings.multi_label_threshold,
            copy_headers=HeaderPolicy(
                settings.copy_headers,
                settings.drop_headers,
                schema_version=settings.output_schema_version,
                replace_trace=self.tracing is not None,
            ),
            serialize=registry.serializer if registry is not None else None,
        )
        deliverer = Deliverer(
            self.publisher,
            builder,
            self.ledger,
            self.telemetry,
            backoff_max_s=settings.publish_backoff_max_s,
            retry_budget_s=settings.publish_retry_budget_s,
        )
        self.pipeline = Pipeline(
            scorer=BatchScorer(engine),
            builder=builder,
            deliverer=deliverer,
            ledger=self.ledger,
            observer=self.telemetry,
            input_format=settings.input_format,
            tracer=self.tracing,
            decoder=registry.decoder if registry is not None else None,
        )
        self.app = make_app(settings)
        self.intake = Intake(
            Batcher(settings.batch_max_size, settings.batch_max_wait_ms / 1000),
            self.pipeline,
            self.ledger,
            self._rewind,
        )
        self.app.intake = self.intake
        self.committer = Committer(self.ledger, self._commit_offsets, self.tracing)
        self.probe = LagProbe(settings.kafka_bootstrap_servers, settings.group_id, aiokafka_options(settings))
        self.watchdog = StallWatchdog(settings.stall_timeout_s)
        self._started = False
        self._stalled: Optional[str] = None
        self._lagging: set[TopicPartition] = set()
        self._model = engine.info
        info = engine.info
        metrics.MODEL_INFO.labels(info.name, info.revision or "", info.device, info.precision).set(1)
        metrics.set_build_info()
        self._wire()

    def _wire(self) -> None:
        app, settings = self.app, self.settings
        app.subscribe(settings.input_topic)
        app.on_partitions_assigned.connect(self._assigned)
        app.on_partitions_revoked.connect(self._revoked)
        app.on_before_shutdown.connect(self._shutdown)
        app.task(self._start)
        if not self.publisher.transactional:
            app.timer(settings.commit_interval_s, name="commit")(self._commit)
        app.timer(LAG_INTERVAL_S, name="lag")(self._check)
        app.timer(settings.stats_interval_s, name="throughput")(self._log_throughput)
        install_pages(app, self.readiness)

    # -- lifecycle ------------------------------------------------------------------

    async def _start(self) -> None:
        await self.publisher.start()
        self.pipeline.start(self._fail)
        self._started = True

    async def _fail(self, exc: BaseException) -> None:
        """Stop the worker (exit status non-zero); its replacement resumes from the committed offsets."""
        await self.app.crash(exc)

    async def _assigned(self, app: faust.App, assigned: set, **_: Any) -> None:
        partitions = [TopicPartition(tp.topic, tp.partition) for tp in assigned]
        self.ledger.assigned(partitions)
        metrics.ASSIGNED_PARTITIONS.set(len(partitions))
        metrics.REBALANCES.inc()
        log.info("partitions.assigned", count=len(partitions), partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in partitions))

    async def _revoked(self, app: faust.App, revoked: set, **_: Any) -> None:
        """Finish the revoked partitions' batches (bounded) and commit them while they are still ours."""
        partitions = [TopicPartition(tp.topic, tp.partition) for tp in revoked]
        self.intake.clear()
        started = time.monotonic()
        drained = await self.pipeline.drain(REVOKE_DRAIN_S)
        if not self.publisher.transactional:
            await self.committer.commit()
        in_flight = self.ledger.in_flight_events
        self.ledger.revoked(partitions)
        if not drained:
            self.pipeline.abandon()
            log.warning("rebalance.drain_timeout", seconds=REVOKE_DRAIN_S, abandoned_events=in_flight)
        self.publisher.release(partitions)
        metrics.ASSIGNED_PARTITIONS.set(len(self.ledger.owned))
        log.info("partitions.revoked", count=len(partitions), drained=drained, seconds=round(time.monotonic() - started, 3))

    async def _shutdown(self, app: faust.App, **_: Any) -> None:
        """Faust has stopped fetching: finish what is in flight (bounded), commit it, close up."""
        self.intake.clear()
        drained = await self.pipeline.stop(DRAIN_TIMEOUT_S)
        if not drained:
            log.error("shutdown.drain_timeout", seconds=DRAIN_TIMEOUT_S, in_flight=self.ledger.in_flight_events)
        if not self.publisher.transactional:
            await self.committer.commit()
        await self.publisher.stop()
        await self.probe.stop()
        if self.registry is not None:
            await self.registry.close()
        if self.tracing is not None:
            self.tracing.shutdown()  # flushes the spans still buffered

    async def _rewind(self, offsets: Any) -> None:
        await self.app.batch_consumer.rewind(offsets)

    async def _commit_offsets(self, offsets: Any) -> bool:
        return await self.app.batch_consumer.commit_offsets(offsets)

    # -- timers ----------------------------------------------------------------------

    async def _commit(self) -> None:
        await self.committer.commit()

    async def _check(self) -> None:
        """Every few seconds: lag (events and seconds) per partition, GPU memory, and the stall watchdog's verdict."""
        self._gpu_memory()
        app, ledger = self.app, self.ledger
        assigned = app.assignment()
        try:
            fetched = await bounded(app.positions(assigned), PROBE_TIMEOUT_S)
            lag = await bounded(self.probe.lag(assigned, ledger.positions(), fetched, ages=True), PROBE_TIMEOUT_S)
            orphaned = 0 if assigned else await bounded(self.probe.orphaned_lag(self.settings.input_topic), PROBE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the broker may be away; reconnect next tick
            log.warning("lag.unavailable", error=repr(exc))
            await self.probe.stop()
            return
        for tp, behind in lag.behind.items():
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(behind)
            metrics.CONSUMER_LAG_SECONDS.labels(tp.topic, str(tp.partition)).set(lag.age_s.get(tp, 0.0))
        for tp in self._lagging - set(lag.behind):
            metrics.CONSUMER_LAG.remove(tp.topic, str(tp.partition))
            metrics.CONSUMER_LAG_SECONDS.remove(tp.topic, str(tp.partition))
        self._lagging = set(lag.behind)
        waiting = lag.unfetched + orphaned
        oldest = ledger.oldest_in_flight()
        stage_age = time.monotonic() - oldest.stage_since if oldest is not None else None
        if self.watchdog.stalled(consumed=ledger.consumed_total, pending=ledger.in_flight_events, lag=waiting):
            reason = f"{waiting} records waiting, none consumed for {self.settings.stall_timeout_s:.0f} s"
        elif self.watchdog.stuck(stage_age_s=stage_age, retrying=self.pipeline.retrying_since is not None):
            reason = f"a batch has been {oldest.stage if oldest else '?'} for {stage_age:.0f} s"
        else:
            return
        self._stalled = reason
        log.error("worker.stalled", reason=reason, lag=waiting, seconds=self.settings.stall_timeout_s)
        await self._fail(RuntimeError(f"stalled: {reason}"))

    async def _log_throughput(self) -> None:
        self.telemetry.log_throughput(self.ledger.in_flight_events)

    def _gpu_memory(self) -> None:
        if not self._model.device.startswith("cuda"):
            return
        import torch

        device = torch.device(self._model.device)
        metrics.GPU_MEMORY_BYTES.labels(str(device), "allocated").set(torch.cuda.memory_allocated(device))
        metrics.GPU_MEMORY_BYTES.labels(str(device), "reserved").set(torch.cuda.memory_reserved(device))

    # -- pages ------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        owned = len(self.ledger.owned)
        failure = self.pipeline.failure
        ok = self._started and owned > 0 and failure is None and self._stalled is None
        body: dict[str, Any] = {"assigned_partitions": owned, "model": self._model.name}
        if failure is not None:
            body["error"] = type(failure).__name__
        if self._stalled is not None:
            body["error"] = "stalled"
        return ok, body


class StartupError(RuntimeError):
    """The worker can't start as configured; the message is one line an operator can act on."""


def use_tokenizer_threads(threads: int) -> None:
    """The Rust tokenizer's thread pool (rayon) is sized once, at its first parallel call: set it first."""
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    os.environ["RAYON_NUM_THREADS"] = str(threads)


def check_kafka(settings: Settings, loop: Any) -> TopicInfo:
    """Brokers reachable and topics there (or created), before anything slow starts."""
    from worker.kafka.topics import KafkaSetupError, ensure_topics

    try:
        return loop.run_until_complete(
            ensure_topics(
                settings.kafka_bootstrap_servers,
                [settings.input_topic, settings.output_topic, settings.dead_letter_topic_name],
                create=settings.create_topics,
                partitions=settings.topic_partitions,
                replication_factor=settings.topic_replication_factor,
                min_insync_replicas=settings.min_insync_replicas,
                timeout_s=settings.kafka_timeout_s,
                options=aiokafka_options(settings),
            )
        )
    except KafkaSetupError as exc:
        log.error("kafka.setup_failed", error=str(exc))
        raise StartupError(str(exc)) from None


def open_registry(settings: Settings, loop: Any) -> Any:
    """The Schema Registry serde for the json_schema / avro formats (None when unused); the output schema registered."""
    if settings.schema_registry_url is None:
        return None
    from worker.registry.serde import RegistrySetupError, open_serde

    try:
        return loop.run_until_complete(open_serde(settings))
    except RegistrySetupError as exc:
        log.error("registry.setup_failed", error=str(exc))
        raise StartupError(str(exc)) from None


def close_registry(registry: Any, loop: Any) -> None:
    if registry is not None:
        loop.run_until_complete(registry.close())


def run_worker(settings: Settings, child_argv: Optional[list[str]] = None) -> int:
    """Check Kafka, load the model, run the worker until stopped (Faust's Worker handles signals).

    Kafka is checked first: a wrong address or a missing topic is reported in
    seconds, not after minutes of loading a model onto a GPU. With
    WORKER_PROCESSES > 1 the children (``child_argv``, default ``sentiment-worker
    run``) do the rest (``worker.supervisor``). Returns the exit status.
    """
    import asyncio

    from worker.model.loading import ModelLoadError

    log.info("worker.starting", settings=settings.summary(), allocator="jemalloc" if jemalloc_loaded() else "glibc")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    topics = check_kafka(settings, loop)
    registry = open_registry(settings, loop)
    if settings.worker_processes > 1:
        from worker.supervisor import supervise

        close_registry(registry, loop)  # checked here to fail fast; each child opens its own
        loop.close()
        return supervise(settings, child_argv)
    use_tokenizer_threads(settings.tokenizer_threads)
    log.info("topics.ready", partitions=topics.partitions, max_message_bytes=topics.max_message_bytes,
             guarantee=settings.processing_guarantee.value)
    started = time.perf_counter()
    try:
        engine = SentimentEngine.from_settings(settings)
        engine.warmup()
    except ModelLoadError as exc:
        log.error("model.load_failed", error=str(exc))
        close_registry(registry, loop)
        raise StartupError(str(exc)) from None
    info = engine.info
    if settings.output_schema_version == "1" and info.head.value != "single_label":
        message = f"OUTPUT_SCHEMA_VERSION=1 has no room for a {info.head.value} model: use 2"
        log.error("model.load_failed", error=message)
        close_registry(registry, loop)
        raise StartupError(message)
    seconds = time.perf_counter() - started
    metrics.MODEL_LOAD_SECONDS.set(seconds)
    log.info(
        "model.loaded",
        name=info.name,
        revision=info.revision,
        device=info.device,
        precision=info.precision,
        head=info.head.value,
        labels=list(info.labels),
        seconds=round(seconds, 2),
    )
    if info.random_weights:
        log.warning("model.random_weights", message="RANDOM WEIGHTS: this model's predictions mean nothing")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        service = WorkerService(settings, engine, topics, registry)
    except (RuntimeError, ValueError) as exc:  # TRACING without the otel extra, OTEL_* values it can't use
        log.error("worker.setup_failed", error=str(exc))
        close_registry(registry, loop)
        raise StartupError(str(exc)) from None
    worker = faust.Worker(
        service.app,
        loop=loop,
        loglevel=settings.log_level,
        logging_config=logs.logging_config(settings.log_level, settings.log_format.value),
        redirect_stdouts=False,
        quiet=True,
        override_logging=True,
    )
    worker.execute_from_commandline()
    return 0  # Faust's Worker exits the process itself
