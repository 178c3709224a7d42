"""Independent Kafka clients for the tests: produce inputs, read outputs, read committed offsets.

Nothing here asks the worker what it did; everything is read back from the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from worker.bench.harness import (  # noqa: F401 - one harness for the tests and the bench
    KAFKA_SCRIPT,
    broker_port,
    create_topics,
    ephemeral_ports,
    free_port,
    start_broker,
    stop_broker,
    topic_partitions,
)



@contextlib.contextmanager
def broker(data_dir: Path, extra_properties: str = "", **options: Any) -> Iterator[dict[str, str]]:
    """The one broker helper: a broker of the test's own (deploy/local/kafka), stopped at the end.

    Yields its environment, with BOOTSTRAP; its ports lie below the ephemeral range, so it may
    be stopped and started again (``worker.bench.harness.broker_port``).
    """
    env = start_broker(data_dir, extra_properties, **options)
    try:
        yield env
    finally:
        stop_broker(env)


async def until(predicate: Callable[[], Any], timeout_s: float, what: str, *, interval_s: float = 0.05) -> Any:
    """The one polling helper: ``predicate`` (plain or async) until it gives something truthy, which is returned.

    For conditions no event object announces (a log line, a broker's answer); a test that
    gets no answer in time fails naming ``what`` it waited for.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(interval_s)


@dataclass(frozen=True)
class Sent:
    key: Optional[bytes]
    value: bytes
    partition: int
    offset: int


@dataclass(frozen=True)
class Received:
    key: Optional[bytes]
    value: bytes
    partition: int
    offset: int
    timestamp_ms: int
    received_at: float  # time.time() when the test's consumer got it
    headers: tuple = ()

    @property
    def doc(self) -> dict:
        return orjson.loads(self.value)


async def create_topic(bootstrap: str, topic: str, partitions: int, config: Optional[dict[str, str]] = None) -> None:
    """The one topic helper: a topic with ``config``, returned once every partition has a leader."""
    await create_topics(bootstrap, [topic], partitions, configs=config)


@dataclass(frozen=True)
class ConfigEntry:
    value: Optional[str]
    topic_level: bool  # set on the topic itself, not inherited from the broker


async def topic_config_entries(bootstrap: str, topic: str) -> dict[str, ConfigEntry]:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    (resource,) = response.resources
    # DescribeConfigs v1+: (name, value, read_only, config_source, is_sensitive, synonyms); source 1 = topic.
    return {entry[0]: ConfigEntry(entry[1], entry[3] == 1) for entry in resource[4]}


def kcat_produce(bootstrap: str, topic: str, lines: Sequence[str], *, partition: int, headers: Sequence[str] = ()) -> None:
    """Produce ``key:value`` lines with kcat, a client that is not ours; an empty key or value is sent as NULL.

    aiokafka refuses a record without key and value; Kafka and kcat (-Z) allow it.
    """
    argv = ["kcat", "-P", "-b", bootstrap, "-t", topic, "-p", str(partition), "-K", ":", "-Z", "-X", "acks=all"]
    for header in headers:
        argv += ["-H", header]
    subprocess.run(argv, input="\n".join(lines) + "\n", text=True, check=True, timeout=60, capture_output=True)


async def produce(
    bootstrap: str, topic: str, records: Sequence[tuple[Optional[bytes], Optional[bytes]]], partition: Optional[int] = None
) -> list[Sent]:
    """Send and wait for every acknowledgement; returns where each record landed."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key, partition=partition) for key, value in records]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [Sent(k, v, m.partition, m.offset) for (k, v), m in zip(records, metas)]


async def produce_at(bootstrap: str, topic: str, records: Sequence[tuple[int, int, str]]) -> None:
    """Input events ``{"text", "id"}`` with the given (partition, timestamp ms, id); every acknowledgement awaited."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, orjson.dumps({"text": f"text {rid}", "id": rid}), partition=p, timestamp_ms=ts)
            for p, ts, rid in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def produce_history(
    bootstrap: str, topic: str, partitions: int, per_partition: int, step_ms: int
) -> tuple[int, list[tuple[int, int, str]]]:
    """A topic of ``partitions`` created and filled with a day-old history: per partition,
    ``per_partition`` events ``{p}-{i}`` ``step_ms`` apart from ``base``. Returns base and the events."""
    await create_topic(bootstrap, topic, partitions)
    base = int(time.time() * 1000) - 86_400_000
    records = [(p, base + i * step_ms, f"{p}-{i}") for p in range(partitions) for i in range(per_partition)]
    await produce_at(bootstrap, topic, records)
    return base, records


async def consume_all(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0, settle_s: float = 1.0
) -> list[Received]:
    """Read a topic from the start (read_committed) until ``expected`` records and ``settle_s`` of quiet."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    out: list[Received] = []
    try:
        deadline = time.monotonic() + timeout_s
        partitions = await topic_partitions(bootstrap, topic, timeout_s=timeout_s)
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        quiet_since = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            now = time.time()
            for records in batch.values():
                out.extend(
                    Received(r.key, r.value, r.partition, r.offset, r.timestamp, now, tuple(r.headers or ()))
                    for r in records
                )
            if batch:
                quiet_since = None
            elif len(out) >= expected:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle_s:
                    break
        return out
    finally:
        await consumer.stop()


async def topic_names(bootstrap: str) -> set[str]:
    """The topics the broker has (asking for them by name would create them, on brokers that auto-create)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await topic_partitions(bootstrap, topic, timeout_s=10)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets as the broker has them (admin API)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}


async def wait_committed(bootstrap: str, group: str, topic: str, target: dict[int, int], timeout_s: float = 30.0) -> dict[int, int]:
    """Poll until the committed offsets reach ``target`` (the commit timer runs every second).

    Returns the committed offset of every partition in ``target`` (0 where none is committed),
    reached or not: the caller's assertion shows the difference.
    """
    current: dict[int, int] = {}

    async def reached() -> bool:
        nonlocal current
        current = await committed_offsets(bootstrap, group, topic)
        return all(current.get(p, 0) >= o for p, o in target.items())

    with contextlib.suppress(AssertionError):
        await until(reached, timeout_s, "the committed offsets", interval_s=0.3)
    return {p: current.get(p, 0) for p in target}


def committed_offsets_cli(kafka_env: dict[str, str], group: str, topic: str) -> dict[int, int]:
    """Committed offsets read by Kafka's own consumer-group tool, a client that isn't ours."""
    out = subprocess.run(
        [str(KAFKA_SCRIPT), "groups", "--bootstrap-server", kafka_env["BOOTSTRAP"],
         "--describe", "--group", group],
        env=kafka_env, capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    offsets: dict[int, int] = {}
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[0] == group and cols[1] == topic and cols[3].isdigit():
            offsets[int(cols[2])] = int(cols[3])
    return offsets
