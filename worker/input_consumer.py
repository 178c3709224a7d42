"""The Faust app and its Kafka consumer: configured only by us, reading committed records only.

Faust reads ``read_uncommitted`` unless its own exactly-once mode is on, which
does not cover our output topic (see ``worker.publisher``). Producers that
write the input topic in transactions would then have their aborted records
scored, and their open transactions scored before they commit. Both
guarantees therefore read ``read_committed``; for producers that don't use
transactions it changes nothing.
"""

from __future__ import annotations

import logging
from typing import Any

import aiokafka
import faust
from faust.app import base as faust_app
from faust.transport.drivers import aiokafka as faust_aiokafka

ISOLATION_LEVEL = "read_committed"


# mode names a service's logger after the module of its class: name ours under Faust's,
# so that its chatter stays under the "faust" log level (worker.logs). (Faust's own
# logger objects can't be reused: mode marks them, and renames the subclass's.)
_FAUST_DRIVER_LOG = logging.getLogger(f"{faust_aiokafka.__name__}.read_committed")


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    logger = _FAUST_DRIVER_LOG

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka hands this to its fetcher in start(), which has not run yet;
        # Faust offers no setting for it.
        consumer._isolation_level = ISOLATION_LEVEL  # noqa: SLF001
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    logger = _FAUST_DRIVER_LOG

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class InputApp(faust.App):
    """A Faust app configured by its arguments alone, whose input consumer reads ``read_committed``."""

    logger = logging.getLogger(f"{faust_app.__name__}.input")

    def __init__(self, id: str, **options: Any) -> None:
        # Faust also reads settings from environment variables, several named like ours
        # (PROCESSING_GUARANTEE, TOPIC_PARTITIONS, WEB_PORT...), and lets them override
        # its arguments. With PROCESSING_GUARANTEE=exactly_once in the environment it ran
        # transactions of its own next to ours and committed stale offsets over our
        # commits (duplicates after a crash). It is given no environment at all.
        options.setdefault("env", {})
        super().__init__(id, **options)

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
