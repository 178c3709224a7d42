"""One worker process assembled: the pipeline, the Faust app around it, and its timers and pages.

The data flow (README, "Data flow"): the Faust consumer's fetch loop hands
whole fetches to the intake (``worker.pipeline.intake``), which cuts batches
and submits them to the pipeline (decode, tokenise, infer, build outputs,
publish); the ledger (``worker.pipeline.ledger``) hears what is stored, and
the committer, the lag probe and the watchdog read it. Nothing here is on
the per-event path.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Optional

import faust
from aiokafka import TopicPartition

from worker.kafka.faust_adapter import BoundedWorker, InputApp
from worker.kafka.guarantee import make_guarantee
from worker.kafka.positions import parse_start
from worker.kafka.security import aiokafka_options, faust_credentials
from worker.kafka.topics import TopicInfo
from worker.model.engine import SentimentEngine
from worker.ops import logs, metrics
from worker.ops.aio import bounded
from worker.ops.lag import LagProbe
from worker.ops.memory import AllocatorUnavailable, jemalloc_loaded, use_allocator
from worker.ops.monitor import Monitor
from worker.ops.shutdown import ExitDeadline
from worker.ops.telemetry import Telemetry, set_planner_costs
from worker.ops.watchdog import StallWatchdog
from worker.ops.web import StartupPages, install_pages
from worker.pipeline.batcher import Batcher
from worker.pipeline.bounds import PartitionProgress, RunBounds
from worker.pipeline.delivery import Deliverer
from worker.pipeline.headers import HeaderPolicy
from worker.pipeline.intake import Intake
from worker.pipeline.ledger import OffsetLedger
from worker.pipeline.outputs import OutputBuilder
from worker.pipeline.pacing import Limits, Pacer, Pacing
from worker.pipeline.scoring import BatchScorer
from worker.pipeline.stages import Pipeline
from worker.settings import SchemaVersion, Settings

log = logs.get_logger(__name__)

RUN_CHECK_INTERVAL_S = 1.0  # RUN_UNTIL: how often a bounded run checks whether it is done
REVOKE_DRAIN_S = 20.0  # rebalance: finish the revoked partitions' batches (rebalance timeout is 60 s)
DRAIN_SHARE = 0.6  # of SHUTDOWN_TIMEOUT_S, for the batches in flight; the rest closes up
LAG_INTERVAL_S = 5.0
CLOSE_TIMEOUT_S = 5.0
UNREADY_AFTER_FAILING_S = 10.0  # publishing failing this long (or half the retry budget): /ready says 503
EXIT_CONFIG = 2  # start-up refused: bad settings, unreachable Kafka, missing topics, unusable model, busy port

EngineFactory = Callable[[Settings], SentimentEngine]


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
        processing_guarantee="at_least_once",  # Faust's own; ours is worker.kafka.guarantee
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset=settings.auto_offset_reset.value,
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


LimitsListener = Callable[[int, float, Optional[float]], None]  # size, wait_s, p99_s (None: at start)


def make_batching(settings: Settings, on_limits: Optional[LimitsListener] = None) -> tuple[Batcher, Optional[Pacing]]:
    """The batcher, and with LATENCY_TARGET_MS the pacing that moves its limits (else they stay fixed)."""
    batcher = Batcher(settings.batch_max_size, settings.batch_max_wait_ms / 1000)
    pacing = None
    if settings.latency_target_ms is not None:

        def changed(limits: Limits, p99_s: Optional[float]) -> None:
            if on_limits is not None:
                on_limits(limits.size, limits.wait_s, p99_s)

        pacer = Pacer(settings.latency_target_ms / 1000, settings.batch_max_size, settings.batch_max_wait_ms / 1000)
        pacing = Pacing(pacer, batcher, changed)
    if on_limits is not None:
        on_limits(batcher.max_size, batcher.max_wait_s, None)
    return batcher, pacing


class WorkerService:
    """The pipeline of one process and the Faust app that feeds it."""

    def __init__(
        self,
        settings: Settings,
        engine: SentimentEngine,
        topics: TopicInfo,
        deadline: ExitDeadline,
        registry: Any = None,
    ) -> None:
        self.settings = settings
        self.registry = registry  # worker.registry.serde.RegistrySerde, for the json_schema and avro formats
        self.deadline = deadline
        self.ledger = OffsetLedger()
        self.telemetry = Telemetry(settings.dead_letter_topic_name)
        self.tracing = make_tracing(settings)
        self.app = make_app(settings)
        if settings.start_from is not None:
            self.app.start_from = parse_start(settings.start_from)
        self.bounds: Optional[RunBounds] = None
        if settings.run_until is not None:
            self.app.run_until = parse_start(settings.run_until)
            self.bounds = RunBounds()
        self.finish: Optional[Callable[[str], None]] = None  # ends a bounded run (BoundedWorker.finish)
        self._finishing = False
        self._assigned_once = False
        self.guarantee = make_guarantee(settings, self.ledger, topics, self._commit_offsets, self.tracing)
        builder = OutputBuilder(
            output_topic=settings.output_topic,
            dead_letter_topic=settings.dead_letter_topic_name,
            model=engine.info,
            max_bytes=topics.max_message_bytes,
            include_text=settings.include_text,
            scored_text=engine.scored_text,
            observer=self.telemetry,
            schema_version=settings.output_schema_version.value,
            threshold=settings.multi_label_threshold,
            copy_headers=HeaderPolicy(
                settings.copy_headers,
                settings.drop_headers,
                schema_version=settings.output_schema_version.value,
                replace_trace=self.tracing is not None,
            ),
            serialize=registry.serializer if registry is not None else None,
        )
        deliverer = Deliverer(
            self.guarantee.sink,
            builder,
            self.ledger,
            self.telemetry,
            backoff_max_s=settings.publish_backoff_max_s,
            retry_budget_s=settings.publish_retry_budget_s,
        )
        batcher, self.pacing = make_batching(settings, self.telemetry.batch_limits)
        if settings.latency_target_ms is not None:
            log.info("batching.paced", latency_target_ms=settings.latency_target_ms, max_size=settings.batch_max_size,
                     max_wait_ms=settings.batch_max_wait_ms, start_size=batcher.max_size,
                     start_wait_ms=round(batcher.max_wait_s * 1000, 2))
        self.pipeline = Pipeline(
            scorer=BatchScorer(engine),
            builder=builder,
            deliverer=deliverer,
            ledger=self.ledger,
            observer=self.telemetry,
            input_format=settings.input_format,
            tracer=self.tracing,
            decoder=registry.decoder if registry is not None else None,
            on_stored=self.pacing.stored if self.pacing is not None else None,
        )
        self.intake = Intake(
            batcher,
            self.pipeline,
            self.ledger,
            self._rewind,
            bounds=self.bounds,
            pause=lambda partitions: self.app.consumer.pause_partitions(partitions),
        )
        self.app.intake = self.intake
        self.probe = LagProbe(settings.kafka_bootstrap_servers, settings.group_id, aiokafka_options(settings))
        self.monitor = Monitor(
            self.probe,
            StallWatchdog(settings.stall_timeout_s),
            self.ledger,
            self.app,
            group=settings.group_id,
            input_topic=settings.input_topic,
            retrying=lambda: self.pipeline.retrying_since is not None,
        )
        self._unready_after_s = min(UNREADY_AFTER_FAILING_S, settings.publish_retry_budget_s / 2)
        self._started = False
        self._stalled: Optional[str] = None
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
        for timer in self.guarantee.timers():
            app.timer(timer.interval_s, name=timer.name)(timer.run)
        app.timer(LAG_INTERVAL_S, name="monitor")(self._check)
        app.timer(settings.stats_interval_s, name="throughput")(self._log_throughput)
        if self.bounds is not None:
            app.timer(RUN_CHECK_INTERVAL_S, name="run_until")(self._check_run)
        install_pages(app, self.readiness)

    # -- lifecycle ------------------------------------------------------------------

    async def _start(self) -> None:
        await self.guarantee.start()
        self.pipeline.start(self._fail)
        self._started = True

    async def _fail(self, exc: BaseException) -> None:
        """Stop the worker (exit status non-zero); its replacement resumes from the committed offsets."""
        self.deadline.arm(f"failed: {type(exc).__name__}", 1)
        await self.app.crash(exc)

    async def _assigned(self, app: faust.App, assigned: set, **_: Any) -> None:
        partitions = [TopicPartition(tp.topic, tp.partition) for tp in assigned]
        self.ledger.assigned(partitions)
        self._assigned_once = True
        metrics.ASSIGNED_PARTITIONS.set(len(partitions))
        metrics.REBALANCES.inc()
        log.info("partitions.assigned", count=len(partitions), partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in partitions))
        if self.bounds is not None:
            self.bounds.add_stops({tp: self.app.stops_found.pop(tp) for tp in partitions if tp in self.app.stops_found})
            log.info("run.stops", until=self.settings.run_until,
                     offsets={f"{tp.topic}:{tp.partition}": self.bounds.stops[tp] for tp in sorted(partitions)
                              if tp in self.bounds.stops})
        started = {tp: self.app.started_at.pop(tp) for tp in partitions if tp in self.app.started_at}
        if started:  # START_FROM placed these: the group had no committed offset for them
            log.info("partitions.start_from", start=str(self.app.start_from),
                     offsets={f"{tp.topic}:{tp.partition}": offset for tp, offset in sorted(started.items())})

    async def _revoked(self, app: faust.App, revoked: set, **_: Any) -> None:
        """Finish the revoked partitions' batches (bounded) and commit them while they are still ours."""
        partitions = [TopicPartition(tp.topic, tp.partition) for tp in revoked]
        self.intake.clear()
        started = time.monotonic()
        drained = await self.pipeline.drain(REVOKE_DRAIN_S)
        await self.guarantee.settle()
        in_flight = self.ledger.in_flight_events
        self.ledger.revoked(partitions)
        if self.bounds is not None:
            self.bounds.revoked(partitions)
        if not drained:
            self.pipeline.abandon()
            log.warning("rebalance.drain_timeout", seconds=REVOKE_DRAIN_S, abandoned_events=in_flight)
        self.guarantee.release(partitions)
        metrics.ASSIGNED_PARTITIONS.set(len(self.ledger.owned))
        log.info("partitions.revoked", count=len(partitions), drained=drained, seconds=round(time.monotonic() - started, 3))

    async def _shutdown(self, app: faust.App, **_: Any) -> None:
        """Faust has stopped fetching: finish what is in flight (bounded), commit it, close up.

        Every step is bounded; the whole is bounded by the exit deadline besides.
        """
        self.intake.clear()
        drain_s = DRAIN_SHARE * self.settings.shutdown_timeout_s
        drained = await self.pipeline.stop(drain_s)
        if not drained:
            log.error("shutdown.drain_timeout", seconds=drain_s, in_flight=self.ledger.in_flight_events,
                      failed=self.pipeline.failure is not None)
        await self.guarantee.settle()
        if self.bounds is not None and not self._finishing:  # stopped before its stops: say how far it got
            log.warning("run.unfinished", until=self.settings.run_until, partitions={
                f"{tp.topic}:{tp.partition}": {"stop": stop, "committed": self.ledger.committed(tp)}
                for tp, stop in sorted(self.bounds.stops.items()) if tp in self.ledger.owned})
        await self.guarantee.stop()
        await self.probe.stop()
        if self.registry is not None:
            try:
                await bounded(self.registry.close(), CLOSE_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - closing anyway
                log.debug("registry.close_failed", error=repr(exc))
        if self.tracing is not None:
            self.tracing.shutdown()  # flushes the spans still buffered

    async def _rewind(self, offsets: Any) -> None:
        await self.app.batch_consumer.rewind(offsets)

    async def _commit_offsets(self, offsets: Any) -> bool:
        return await self.app.batch_consumer.commit_offsets(offsets)

    # -- timers ----------------------------------------------------------------------

    async def _check(self) -> None:
        """Every few seconds: GPU memory, lag, and the stall watchdog's verdict (a stall ends the worker)."""
        self.telemetry.gpu_memory(self._model.device)
        reason = await self.monitor.check()
        if reason is None:
            return
        self._stalled = reason
        log.error("worker.stalled", reason=reason, seconds=self.settings.stall_timeout_s)
        await self._fail(RuntimeError(f"stalled: {reason}"))

    async def run_progress(self) -> dict[TopicPartition, PartitionProgress]:
        """RUN_UNTIL: where each owned partition stands against its stop."""
        assert self.bounds is not None
        owned = sorted(self.ledger.owned)
        positions = await bounded(self.app.positions(owned), self.settings.kafka_request_timeout_s)
        found = {tp: self.bounds.progress(tp, positions.get(tp), self.ledger.committed(tp)) for tp in owned}
        return {tp: p for tp, p in found.items() if p is not None}

    async def _check_run(self) -> None:
        """RUN_UNTIL: once every owned partition is done, stop with status 0 (the group gets them back)."""
        if self.bounds is None or self._finishing or not self._assigned_once:
            return
        try:
            progress = await self.run_progress()
        except Exception as exc:  # noqa: BLE001 - e.g. the broker is away: ask again next tick
            log.debug("run.progress_unavailable", error=repr(exc))
            return
        reached = self.bounds.reached & self.ledger.owned
        if reached:  # Faust resumes every partition after a rebalance
            self.app.consumer.pause_partitions(reached)
        if len(progress) < len(self.ledger.owned) or not all(p.done for p in progress.values()):
            return
        self._finishing = True
        log.info("run.finished", until=self.settings.run_until, partitions=_describe(progress))
        if self.finish is not None:
            self.finish("the run reached its stops")

    async def _log_throughput(self) -> None:
        self.telemetry.log_throughput(self.ledger.in_flight_events)

    # -- pages ------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready: started, owns partitions, and nothing keeps it from doing its job."""
        owned = len(self.ledger.owned)
        body: dict[str, Any] = {"assigned_partitions": owned, "model": self._model.name}
        failure = self.pipeline.failure
        denied = self.pipeline.denied or self.guarantee.denied
        failing_since = self.pipeline.retrying_since
        failing_s = time.monotonic() - failing_since if failing_since is not None else 0.0
        if failure is not None:
            body["error"] = type(failure).__name__
        elif self._stalled is not None:
            body["error"] = "stalled"
        elif denied is not None:
            body["error"] = "access_denied"
            body["missing"] = denied
        elif failing_s > self._unready_after_s:  # a blip is not worth it; a run of failures is
            body["error"] = "publish_failing"
            body["failing_s"] = round(failing_s)
        ok = self._started and owned > 0 and "error" not in body
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


def open_startup_pages(settings: Settings) -> Optional[StartupPages]:
    """/health and /metrics from the first second (``worker.ops.web``); a busy WEB_PORT fails the start at once."""
    if not settings.web_enabled:
        return None
    pages = StartupPages(settings.web_host, settings.web_port)
    try:
        pages.start()
    except OSError as exc:
        message = f"WEB_PORT {settings.web_port} on {settings.web_host} can't be used: {exc.strerror or exc}"
        log.error("web.port_unavailable", error=message)
        raise StartupError(message) from None
    return pages


def run_worker(
    settings: Settings,
    *,
    engine_factory: EngineFactory = SentimentEngine.from_settings,
    child_argv: Optional[list[str]] = None,
) -> int:
    """Check Kafka, load the model, run the worker until stopped (Faust's Worker handles signals).

    Kafka is checked first: a wrong address or a missing topic is reported in
    seconds, not after minutes of loading a model onto a GPU; meanwhile the startup
    pages answer on WEB_PORT. ``engine_factory`` makes the engine (the bench's no-op
    worker and the fault tests give their own). With WORKER_PROCESSES > 1 the
    children (``child_argv``, default ``sentiment-worker run``) do the rest
    (``worker.supervisor``). Returns the exit status; once it runs, a shutdown takes
    at most SHUTDOWN_TIMEOUT_S.
    """
    log.info("worker.starting", settings=settings.summary(), allocator="jemalloc" if jemalloc_loaded() else "glibc")
    pages = open_startup_pages(settings)
    try:
        return _run(settings, pages, engine_factory, child_argv)
    finally:
        if pages is not None:
            pages.stop()


def _run(
    settings: Settings,
    pages: Optional[StartupPages],
    engine_factory: EngineFactory,
    child_argv: Optional[list[str]],
) -> int:
    import asyncio

    from worker.model.loading import ModelLoadError

    def stage(name: str) -> None:
        if pages is not None:
            pages.stage = name

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    stage("checking Kafka")
    topics = check_kafka(settings, loop)
    registry = open_registry(settings, loop)
    if settings.worker_processes > 1:
        from worker.supervisor import supervise

        close_registry(registry, loop)  # checked here to fail fast; each child opens its own
        loop.close()
        if pages is not None:
            pages.stop()  # the supervisor serves the pod's pages on WEB_PORT
        return supervise(settings, child_argv)
    use_tokenizer_threads(settings.tokenizer_threads)
    log.info("topics.ready", partitions=topics.partitions, max_message_bytes=topics.max_message_bytes,
             guarantee=settings.processing_guarantee.value)
    started = time.perf_counter()
    try:
        stage("loading the model")
        engine = engine_factory(settings)
        stage("warming the model up")
        engine.warmup()
    except ModelLoadError as exc:
        log.error("model.load_failed", error=str(exc))
        close_registry(registry, loop)
        raise StartupError(str(exc)) from None
    info = engine.info
    if settings.output_schema_version is SchemaVersion.v1 and info.head.value != "single_label":
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
        runtime=info.runtime,
        runtime_probe_ms={k: round(v, 2) for k, v in engine.runtime_probe.items()} if engine.runtime_probe else None,
        head=info.head.value,
        labels=list(info.labels),
        seconds=round(seconds, 2),
    )
    costs = engine.costs.current
    set_planner_costs(costs)
    log.info(
        "planner.costs",
        model=engine.cost_key,
        source=costs.source,
        probes=costs.observations,
        call_ms=round(costs.call_s * 1e3, 3),
        token_us=round(costs.token_s * 1e6, 4),
        call_overhead_tokens=_finite(costs.call_overhead_tokens),
        attention_scale=_finite(costs.attention_scale),  # None: no attention cost seen
    )
    if info.random_weights:
        log.warning("model.random_weights", message="RANDOM WEIGHTS: this model's predictions mean nothing")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    deadline = ExitDeadline(settings.shutdown_timeout_s)
    try:
        service = WorkerService(settings, engine, topics, deadline, registry)
    except (RuntimeError, ValueError) as exc:  # TRACING without the otel extra, OTEL_* values it can't use
        log.error("worker.setup_failed", error=str(exc))
        close_registry(registry, loop)
        raise StartupError(str(exc)) from None
    worker = BoundedWorker(
        service.app,
        deadline=deadline,
        loop=loop,
        loglevel=settings.log_level.value,
        logging_config=logs.logging_config(settings.log_level.value, settings.log_format.value),
        redirect_stdouts=False,
        quiet=True,
        override_logging=True,
    )
    if pages is not None:
        pages.stop()  # the app's own pages take WEB_PORT over now
    service.finish = worker.finish
    worker.execute_from_commandline()
    return 0  # Faust's Worker exits the process itself


def main(
    settings: Settings,
    *,
    engine_factory: EngineFactory = SentimentEngine.from_settings,
    child_argv: Optional[list[str]] = None,
) -> int:
    """What ``sentiment-worker run`` does, with any engine: the allocator, logging, the worker; its exit status.

    A start that can't go on prints one ``error:`` line and returns EXIT_CONFIG.
    """
    try:  # first: may re-execute this process with jemalloc (worker.ops.memory)
        use_allocator(settings.allocator.value)
    except AllocatorUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(settings.log_level.value, settings.log_format.value)
    try:
        return run_worker(settings, engine_factory=engine_factory, child_argv=child_argv)
    except StartupError as exc:  # already logged where it happened
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _describe(progress: dict[TopicPartition, PartitionProgress]) -> dict[str, dict[str, Any]]:
    """How far each partition of a bounded run got, for its log lines."""
    return {
        f"{tp.topic}:{tp.partition}": {"stop": p.stop, "position": p.position, "committed": p.committed, "done": p.done}
        for tp, p in sorted(progress.items())
    }


def _finite(value: float) -> Optional[float]:
    return round(value, 1) if math.isfinite(value) else None
