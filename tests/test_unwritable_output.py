"""An output topic that can't be written: offsets stay put, the worker retries, nothing is lost."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.kafka_helpers import (
    committed_offsets,
    consume_all,
    create_topic,
    end_offsets,
    produce,
    start_broker,
    stop_broker,
    wait_committed,
)

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def strict_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker that never creates topics on its own, so a deleted output topic stays missing."""
    env = start_broker(tmp_path_factory.mktemp("kafka-strict"), "auto.create.topics.enable=false")
    try:
        yield env["BOOTSTRAP"]
    finally:
        stop_broker(env)


async def delete_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_missing_output_topic_holds_offsets_until_it_is_back(
    worker_factory, strict_broker, topics, guarantee
) -> None:
    await create_topic(strict_broker, topics["input_topic"], 1)
    worker = worker_factory(
        **topics, kafka_bootstrap_servers=strict_broker, processing_guarantee=guarantee,
        kafka_request_timeout_s=3, publish_backoff_max_s=1,
    ).wait_ready()
    await produce(strict_broker, topics["input_topic"], [(None, orjson.dumps({"text": "before", "id": "b"}))])
    assert len(await consume_all(strict_broker, topics["output_topic"], expected=1)) == 1
    before = await wait_committed(strict_broker, topics["group_id"], topics["input_topic"], {0: 1})
    assert before == {0: 1}

    await delete_topic(strict_broker, topics["output_topic"])
    await produce(strict_broker, topics["input_topic"], [(None, orjson.dumps({"text": f"t{i}", "id": f"d{i}"})) for i in range(10)])
    deadline = time.monotonic() + 60
    while not worker.events("publish.failed") and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
    assert worker.events("publish.failed"), "the failed publish must be logged"
    assert 'sentiment_worker_publish_errors_total{topic="%s"}' % topics["output_topic"] in scrape(worker.web_port)
    assert await committed_offsets(strict_broker, topics["group_id"], topics["input_topic"]) == {0: 1}
    assert worker.proc.poll() is None, "an unwritable output is retried, not a crash"

    await create_topic(strict_broker, topics["output_topic"], 1)
    received = await consume_all(strict_broker, topics["output_topic"], expected=10)
    assert sorted(r.doc["id"] for r in received) == sorted(f"d{i}" for i in range(10))
    ends = await end_offsets(strict_broker, topics["input_topic"])
    assert await wait_committed(strict_broker, topics["group_id"], topics["input_topic"], ends) == ends
