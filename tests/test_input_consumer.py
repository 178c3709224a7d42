"""The Faust app and consumer subclasses: our settings only, read_committed, Faust's own log names.

Behaviour against the broker (aborted upstream records never scored) is in
tests/test_end_to_end.py::test_aborted_upstream_transactions_are_not_scored.
"""

from __future__ import annotations

from worker.input_consumer import InputApp, _Consumer, _ConsumerThread
from worker.logs import logging_config


def test_faust_services_keep_faust_logger_names() -> None:
    """Otherwise mode names them after our module, and Faust's info chatter escapes its WARNING level."""
    assert logging_config("info")["loggers"]["faust"]["level"] == "WARNING"
    for cls in (InputApp, _Consumer, _ConsumerThread):
        assert cls.logger.name.startswith("faust."), cls


async def test_worker_consumer_reads_committed(tmp_path) -> None:
    app = InputApp("g-test", broker="kafka://127.0.0.1:9", datadir=str(tmp_path), web_enabled=False)
    thread = app.consumer._thread  # noqa: SLF001
    consumer = thread._create_worker_consumer(app.transport)  # noqa: SLF001 - built, never started
    assert consumer._isolation_level == "read_committed"  # noqa: SLF001
    assert consumer._group_id == "g-test"  # noqa: SLF001 - the rest of Faust's configuration is kept


def test_faust_ignores_environment_variables_named_like_ours(monkeypatch, tmp_path) -> None:
    """Faust reads PROCESSING_GUARANTEE & co. from the environment, where our own settings live."""
    monkeypatch.setenv("PROCESSING_GUARANTEE", "exactly_once")
    monkeypatch.setenv("TOPIC_PARTITIONS", "12")
    monkeypatch.setenv("WEB_PORT", "1234")
    app = InputApp(
        "g-test", broker="kafka://127.0.0.1:9", datadir=str(tmp_path), web_enabled=False,
        processing_guarantee="at_least_once",
    )
    assert app.conf.processing_guarantee.value == "at_least_once"
    assert not app.in_transaction
    assert app.conf.topic_partitions == 8 and app.conf.web_port == 6066  # Faust's defaults
