"""Every Faust / aiokafka internal the adapter relies on, checked so that an upgrade fails here, loudly.

Behaviour against the broker (whole fetches scored, read_committed, commits
refused after a rebalance) is covered by the end-to-end, poison and fault tests.
"""

from __future__ import annotations

import inspect

import faust
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka

from worker.kafka.committer import Committer
from worker.kafka.faust_adapter import BatchConsumer, BoundedWorker, InputApp, _ConsumerThread
from worker.ops.logs import logging_config
from worker.ops.shutdown import ExitDeadline
from worker.pipeline.ledger import OffsetLedger


def make_app(tmp_path, **options) -> InputApp:  # type: ignore[no-untyped-def]
    return InputApp("g-test", broker="kafka://127.0.0.1:9", datadir=str(tmp_path), web_enabled=False, **options)


def test_faust_services_keep_faust_logger_names() -> None:
    """Otherwise mode names them after our module, and Faust's info chatter escapes its WARNING level."""
    assert logging_config("info")["loggers"]["faust"]["level"] == "WARNING"
    for cls in (InputApp, BatchConsumer, _ConsumerThread):
        assert cls.logger.name.startswith("faust."), cls


def test_fetcher_runs_the_consumers_drain_messages() -> None:
    """Our fetch loop replaces Consumer._drain_messages(fetcher), which Faust's Fetcher service runs."""
    assert "consumer._drain_messages(self)" in inspect.getsource(faust_consumer.Fetcher._fetcher.fun)
    params = list(inspect.signature(faust_consumer.Consumer._drain_messages).parameters)
    assert params == ["self", "fetcher"]
    assert BatchConsumer._drain_messages is not faust_consumer.Consumer._drain_messages


def test_the_rebalance_listener_calls_the_threads_on_partitions_assigned_before_faust_hears_of_it() -> None:
    """START_FROM places partitions in the consumer thread's on_partitions_assigned: aiokafka's listener
    awaits it (nothing of the new assignment is fetched before it returns), and Faust's part comes after."""
    listener = inspect.getsource(faust_aiokafka.ConsumerRebalanceListener.on_partitions_assigned)
    assert "await self._thread.on_partitions_assigned(" in listener
    params = list(inspect.signature(faust_aiokafka.AIOKafkaConsumerThread.on_partitions_assigned).parameters)
    assert params == ["self", "assigned", "generation_id"]
    assert "super().on_partitions_assigned(assigned, generation_id)" in inspect.getsource(_ConsumerThread.on_partitions_assigned)
    assert list(inspect.signature(AIOKafkaConsumer.committed).parameters) == ["self", "partition"]


def test_wait_next_records_is_one_fetch_honouring_flow_control() -> None:
    source = inspect.getsource(faust_consumer.Consumer._wait_next_records)
    assert list(inspect.signature(faust_consumer.Consumer._wait_next_records).parameters) == ["self", "timeout"]
    assert "can_resume_flow" in source and "_get_active_partitions" in source and "_getmany" in source


def test_generation_and_flow_flags_exist(tmp_path) -> None:
    app = make_app(tmp_path)
    assert hasattr(app, "consumer_generation_id")
    assert isinstance(app.consumer, BatchConsumer)
    assert app.consumer.flow_active is True
    assert hasattr(app.consumer, "_stopped") and hasattr(app.consumer, "should_stop")


async def test_worker_consumer_reads_committed(tmp_path) -> None:
    app = make_app(tmp_path)
    thread = app.consumer._thread  # noqa: SLF001
    consumer = thread._create_worker_consumer(app.transport)  # noqa: SLF001 - built, never started
    assert consumer._isolation_level == "read_committed"  # noqa: SLF001
    assert consumer._group_id == "g-test"  # noqa: SLF001 - the rest of Faust's configuration is kept
    # aiokafka hands the attribute to its fetcher when it starts.
    assert "self._isolation_level" in inspect.getsource(AIOKafkaConsumer.start)


async def test_the_fetch_limit_is_read_by_every_fetch(tmp_path) -> None:
    """LATENCY_TARGET_MS moves the batch size; each fetch brings at most one batch (Intake.fetch_max_records)."""
    assert "max_records=_consumer._max_poll_records" in inspect.getsource(faust_aiokafka.AIOKafkaConsumerThread.getmany)
    app = make_app(tmp_path, broker_max_poll_records=64)
    thread = app.consumer._thread  # noqa: SLF001
    thread._consumer = thread._create_worker_consumer(app.transport)  # noqa: SLF001 - built, never started
    assert thread._consumer._max_poll_records == 64  # noqa: SLF001
    app.consumer._limit_fetch(24)  # noqa: SLF001
    assert thread._consumer._max_poll_records == 24  # noqa: SLF001


async def test_commit_after_a_rebalance_returns_false(tmp_path, monkeypatch) -> None:
    """Faust's consumer thread swallows 'already rebalanced' and returns False: nothing was committed."""
    app = make_app(tmp_path)
    thread = app.consumer._thread  # noqa: SLF001
    tp = TopicPartition("in", 0)

    class Rebalanced:
        async def commit(self, offsets):  # type: ignore[no-untyped-def]
            raise CommitFailedError("Commit cannot be completed since the group has already rebalanced")

    monkeypatch.setattr(thread, "_consumer", Rebalanced())
    monkeypatch.setattr(thread, "assignment", lambda: {tp})
    assert await thread._commit({tp: 5}) is False  # noqa: SLF001
    assert list(inspect.signature(faust_aiokafka.AIOKafkaConsumerThread.commit).parameters) == ["self", "offsets"]


async def test_a_refused_commit_is_not_recorded() -> None:
    ledger = OffsetLedger()
    tp = TopicPartition("in", 0)
    ledger.assigned([tp])
    ledger.stored(tp, 7, ledger.epoch)
    answers = iter([False, True])

    async def commit(offsets):  # type: ignore[no-untyped-def]
        return next(answers)

    committer = Committer(ledger, commit, timeout_s=5)
    assert await committer.commit() is False
    assert ledger.committed(tp) is None and ledger.due() == {tp: 7}
    assert await committer.commit() is True
    assert ledger.committed(tp) == 7 and ledger.due() == {}


def test_faust_ignores_environment_variables_named_like_ours(monkeypatch, tmp_path) -> None:
    """Faust reads PROCESSING_GUARANTEE & co. from the environment, where our own settings live."""
    monkeypatch.setenv("PROCESSING_GUARANTEE", "exactly_once")
    monkeypatch.setenv("TOPIC_PARTITIONS", "12")
    monkeypatch.setenv("WEB_PORT", "1234")
    app = make_app(tmp_path, processing_guarantee="at_least_once")
    assert app.conf.processing_guarantee.value == "at_least_once"
    assert not app.in_transaction
    assert app.conf.topic_partitions == 8 and app.conf.web_port == 6066  # Faust's defaults


@pytest.mark.parametrize("builtin", [False, True])
def test_faust_pages_only_when_asked_for(tmp_path, builtin: bool) -> None:
    app = make_app(tmp_path, builtin_pages=builtin)
    served = {bp if isinstance(bp, str) else repr(bp) for _, bp in app.web._enabled_blueprints()}  # noqa: SLF001
    assert any("router" in bp for bp in served) is builtin
    assert any("tables" in bp for bp in served) is builtin
    assert any("stats" in bp for bp in served) is builtin


def test_subscribing_goes_through_the_conductor(tmp_path) -> None:
    app = make_app(tmp_path)
    app.subscribe("in-topic")
    assert any("in-topic" in topic.topics for topic in app.topics)


def test_every_way_out_of_faust_s_worker_passes_a_hook_that_arms_the_exit_deadline(tmp_path) -> None:
    """mode's signal handlers call Worker._on_sigterm / _on_sigint; execute_from_commandline calls
    on_worker_shutdown on every way out (a failed start too). BoundedWorker arms the deadline in each."""
    import mode.worker

    handlers = inspect.getsource(mode.worker.Worker._install_signal_handlers_unix)
    assert "self._on_sigterm" in handlers and "self._on_sigint" in handlers
    execute = inspect.getsource(mode.worker.Worker.execute_from_commandline)
    assert "finally:" in execute and "self.on_worker_shutdown()" in execute
    assert execute.index("self.on_worker_shutdown()") < execute.index("self.stop_and_shutdown()")

    armed: list[tuple[str, int]] = []

    class Recorder(ExitDeadline):
        def arm(self, reason: str, status: int) -> None:
            armed.append((reason, status))

    import asyncio

    loop = asyncio.new_event_loop()
    try:
        worker = BoundedWorker(make_app(tmp_path), deadline=Recorder(60), loop=loop, quiet=True, redirect_stdouts=False)
        worker.on_worker_shutdown()
        assert armed == [("the worker stopped without a signal", 1)]
        for hook in (BoundedWorker._on_sigterm, BoundedWorker._on_sigint):
            assert hook is not faust.Worker.__dict__.get(hook.__name__) and "self._deadline.arm" in inspect.getsource(hook)
    finally:
        loop.close()
