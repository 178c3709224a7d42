"""Every record shape Kafka allows, generated: each one ends scored or dead-lettered, once, and nothing stalls.

Hypothesis draws batches of records (null / empty / huge keys; null / empty /
valid / invalid / escape-heavy values around the topics' size limits; many
or huge headers) and produces them to a running worker; an independent
read_committed consumer then finds every input record exactly once among the
outputs and dead letters, and the committed offsets at the end.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.kafka_helpers import consume_all, create_topic, end_offsets, wait_committed

pytestmark = pytest.mark.kafka

OUTPUT_LIMIT = 200_000
DEAD_LETTER_LIMIT = 250_000

keys = st.one_of(
    st.none(),
    st.just(b""),
    st.binary(min_size=1, max_size=40),
    st.integers(min_value=50_000, max_value=120_000).map(lambda n: b"k" * n),
)
texts = st.text(min_size=1, max_size=200).filter(lambda t: t.strip())
values = st.one_of(
    st.none(),
    st.just(b""),
    st.binary(max_size=64),  # mostly not JSON
    texts.map(lambda t: orjson.dumps({"text": t})),
    st.builds(lambda t, i: orjson.dumps({"text": t, "id": i}), texts, st.text(max_size=20)),
    # Escaping doubles these in the output: around and over the output topic's limit.
    st.integers(min_value=80_000, max_value=130_000).map(
        lambda n: orjson.dumps({"text": "escapes", "metadata": {"blob": '"\\' * (n // 2)}})
    ),
    # Around the dead-letter topic's limit.
    st.integers(min_value=240_000, max_value=260_000).map(lambda n: orjson.dumps({"text": "x " * (n // 2)})),
)
headers = st.one_of(
    st.just([]),
    st.lists(st.tuples(st.text(min_size=1, max_size=10), st.binary(max_size=10)), min_size=50, max_size=200),
    st.just([("big", b"h" * 60_000)]),
)
record_lists = st.lists(st.tuples(keys, values, headers, st.integers(0, 1)), min_size=1, max_size=6)


async def produce_any(bootstrap: str, topic: str, records: list) -> list[tuple[int, int]]:  # type: ignore[type-arg]
    """Produce each record and return (partition, offset) of each, in order.

    aiokafka refuses a record with neither key nor value in ``send()``, a client-side check:
    such records are appended to its accumulator directly, as Kafka and other clients allow.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=4_000_000)
    await producer.start()
    try:
        futures = []
        for key, value, record_headers, partition in records:
            if key is None and value is None:
                await producer.partitions_for(topic)
                future = await producer._message_accumulator.add_message(  # noqa: SLF001
                    TopicPartition(topic, partition), None, None, 30, headers=record_headers
                )
            else:
                future = await producer.send(topic, value, key=key, partition=partition, headers=record_headers)
            futures.append(future)
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metas]


def origins(outputs: list, dead: list) -> Counter[tuple[int, int]]:  # type: ignore[type-arg]
    found: Counter[tuple[int, int]] = Counter()
    for r in outputs:
        doc = r.doc
        found[(doc["source"]["partition"], doc["source"]["offset"])] += 1
    for r in dead:
        h = {k: v for k, v in r.headers}
        found[(int(h["__connect.errors.partition"]), int(h["__connect.errors.offset"]))] += 1
    return found


@pytest.mark.timeout(900)
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_every_record_shape_is_scored_or_dead_lettered_once(worker_factory, bootstrap, topics, guarantee) -> None:
    dlt = f"{topics['input_topic']}-dlt"
    await create_topic(bootstrap, topics["input_topic"], 2)
    await create_topic(bootstrap, topics["output_topic"], 2, {"max.message.bytes": str(OUTPUT_LIMIT)})
    await create_topic(bootstrap, dlt, 2, {"max.message.bytes": str(DEAD_LETTER_LIMIT)})
    worker = worker_factory(**topics, processing_guarantee=guarantee, batch_max_size=8, max_length=64).wait_ready()
    seen: set[tuple[int, int]] = set()

    @settings(max_examples=10, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(records=record_lists)
    # The shapes that once stalled a worker, always among the examples.
    @example(records=[(None, None, [], 0), (b"k", orjson.dumps({"text": "after"}), [], 0)])
    @example(records=[(None, orjson.dumps({"text": "escapes", "metadata": {"blob": '"\\' * 60_000}}), [], 1)])
    @example(records=[(b"k" * 100_000, orjson.dumps({"text": "y " * 100_000}), [("big", b"h" * 60_000)], 0)])
    @example(records=[(b"", b"", [(f"h{i}", b"v") for i in range(200)], 1)])
    def run_example(records: list) -> None:  # type: ignore[type-arg]
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(check(records))
        finally:
            loop.close()

    async def check(records: list) -> None:  # type: ignore[type-arg]
        where = await produce_any(bootstrap, topics["input_topic"], records)
        seen.update(where)
        outputs = await consume_all(bootstrap, topics["output_topic"], expected=0, timeout_s=60, settle_s=0.5)
        dead = await consume_all(bootstrap, dlt, expected=0, timeout_s=60, settle_s=0.5)
        ends = await end_offsets(bootstrap, topics["input_topic"])
        committed = await wait_committed(bootstrap, topics["group_id"], topics["input_topic"], ends, timeout_s=60)
        assert committed == ends, (committed, ends)
        found = origins(await consume_all(bootstrap, topics["output_topic"], expected=len(outputs), timeout_s=30, settle_s=0.5),
                        await consume_all(bootstrap, dlt, expected=len(dead), timeout_s=30, settle_s=0.5))
        missing = [w for w in seen if found[w] == 0]
        assert not missing, f"records never scored nor dead-lettered: {missing}"
        repeated = {w: n for w, n in found.items() if n > 1}
        assert not repeated, f"records written more than once: {repeated}"
        assert worker.proc.poll() is None and worker.ready(), worker.log_text()[-3000:]

    await asyncio.to_thread(run_example)
