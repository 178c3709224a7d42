"""An output topic that can't be written: offsets stay put, the worker retries, nothing is lost."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Optional

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.kafka_helpers import (
    broker,
    committed_offsets,
    consume_all,
    create_topic,
    end_offsets,
    produce,
    until,
    wait_committed,
)

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def strict_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker that never creates topics on its own, so a deleted output topic stays missing."""
    with broker(tmp_path_factory.mktemp("kafka-strict"), "auto.create.topics.enable=false") as env:
        yield env["BOOTSTRAP"]


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
    await until(lambda: worker.events("publish.failed"), 60, "the failed publish to be logged")
    assert 'sentiment_worker_publish_errors_total{topic="%s"}' % topics["output_topic"] in scrape(worker.web_port)
    assert await committed_offsets(strict_broker, topics["group_id"], topics["input_topic"]) == {0: 1}
    assert worker.proc.poll() is None, "an unwritable output is retried, not a crash"

    await create_topic(strict_broker, topics["output_topic"], 1)
    received = await consume_all(strict_broker, topics["output_topic"], expected=10)
    assert sorted(r.doc["id"] for r in received) == sorted(f"d{i}" for i in range(10))
    ends = await end_offsets(strict_broker, topics["input_topic"])
    assert await wait_committed(strict_broker, topics["group_id"], topics["input_topic"], ends) == ends


async def committed_or_zero(bootstrap: str, group: str, topic: str) -> int:
    return sum((await committed_offsets(bootstrap, group, topic)).values())


def unready(port: int) -> Optional[dict]:
    """/ready's body when it answers 503."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5):
            return None
    except urllib.error.HTTPError as exc:
        return orjson.loads(exc.read()) if exc.code == 503 else None
    except OSError:
        return None


def get_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_retry_budget_ends_a_batch_that_cannot_be_published(worker_factory, strict_broker, topics) -> None:
    """No silent stall: after PUBLISH_RETRY_BUDGET_S /ready says 503, the worker exits 1, offsets stay put."""
    await create_topic(strict_broker, topics["input_topic"], 1)
    worker = worker_factory(
        **topics, kafka_bootstrap_servers=strict_broker, kafka_request_timeout_s=2, publish_backoff_max_s=1,
        publish_retry_budget_s=8,
    ).wait_ready()
    await delete_topic(strict_broker, topics["output_topic"])
    await produce(strict_broker, topics["input_topic"], [(None, orjson.dumps({"text": "stuck", "id": "s"}))])
    body = await until(lambda: unready(worker.web_port), 60, "/ready to say 503 while publishing fails")
    assert body["error"] == "publish_failing", body
    assert worker.alive(), "unready while it still retries, before the budget ends it"
    assert await asyncio.to_thread(worker.wait_exit, 90) == 1, worker.log_text()[-3000:]
    assert any("retry budget" in e.get("error", "") for e in worker.events("pipeline.failed"))
    assert await committed_or_zero(strict_broker, topics["group_id"], topics["input_topic"]) == 0


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_sigterm_and_rebalance_finish_with_a_batch_that_cannot_be_published(
    worker_factory, strict_broker, topics, guarantee
) -> None:
    """A stuck batch holds neither a rebalance nor a shutdown beyond their bounds; nothing is lost."""
    await create_topic(strict_broker, topics["input_topic"], 2)
    settings = dict(topics, kafka_bootstrap_servers=strict_broker, processing_guarantee=guarantee,
                    kafka_request_timeout_s=2, publish_backoff_max_s=1, session_timeout_s=10)
    first = worker_factory(**settings).wait_ready()
    await delete_topic(strict_broker, topics["output_topic"])
    await produce(strict_broker, topics["input_topic"], [(None, orjson.dumps({"text": f"t{i}", "id": f"d{i}"})) for i in range(10)])
    await until(lambda: bool(first.events("publish.failed")), 60, "the first failed publish")

    # A second replica joins: the rebalance completes although the first one's batch can't be published.
    second = worker_factory(**settings)
    joined = time.monotonic()
    await until(lambda: bool(second.events("partitions.assigned")) and second.events("partitions.assigned")[-1]["count"] > 0
                   or bool(first.events("partitions.revoked")), 90, "the rebalance")
    await until(lambda: any(e["count"] > 0 for e in second.events("partitions.assigned")), 90, "an assignment for the newcomer")
    assert time.monotonic() - joined < 60

    # SIGTERM: the first replica exits within the grace period of a Kubernetes pod (30 s).
    stopped = time.monotonic()
    first.terminate()
    assert first.wait_exit(45) == 0, first.log_text()[-3000:]
    assert time.monotonic() - stopped < 30, first.log_text()[-3000:]

    await create_topic(strict_broker, topics["output_topic"], 1)
    received = await consume_all(strict_broker, topics["output_topic"], expected=10, timeout_s=120)
    assert sorted({r.doc["id"] for r in received}) == sorted(f"d{i}" for i in range(10))
    if guarantee == "exactly_once":
        assert len(received) == 10
    ends = await end_offsets(strict_broker, topics["input_topic"])
    assert await wait_committed(strict_broker, topics["group_id"], topics["input_topic"], ends, timeout_s=60) == ends


async def test_created_topics_get_min_insync_replicas_and_pages_are_few(worker_factory, bootstrap, topics) -> None:
    """Topics the worker creates carry min.insync.replicas (capped at their replication factor);
    its web server answers /health, /ready and /metrics, not Faust's pages with hosts and assignments."""
    from tests.kafka_helpers import topic_config_entries

    worker = worker_factory(**topics, min_insync_replicas=3, topic_replication_factor=1).wait_ready()
    for topic in (topics["input_topic"], topics["output_topic"], f"{topics['input_topic']}-dlt"):
        entry = (await topic_config_entries(bootstrap, topic))["min.insync.replicas"]
        assert entry.value == "1" and entry.topic_level, (topic, entry)
    assert [get_status(worker.web_port, p) for p in ("/health", "/ready", "/metrics")] == [200, 200, 200]
    assert [get_status(worker.web_port, p) for p in ("/router/topics", "/table", "/graph", "/stats")] == [404] * 4
