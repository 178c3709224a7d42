"""Records that can't be published as they are: never a stalled partition, never a lost or repeated event.

Each test mixes one hostile record among good ones on several partitions, then
checks with an independent read_committed consumer that every good record is
scored exactly once, the hostile one is dead-lettered (or scored) once, the
committed offsets reach the end, and the worker is alive and ready.
"""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from tests.kafka_helpers import (
    Received,
    consume_all,
    create_topic,
    end_offsets,
    kcat_produce,
    produce,
    wait_committed,
)
from worker.pipeline.dead_letter import REASON_HEADER

pytestmark = pytest.mark.kafka
GUARANTEES = ["at_least_once", "exactly_once"]
OMITTED_HEADER = "__sentiment.errors.value.omitted.bytes"


def good(i: int) -> str:
    return orjson.dumps({"text": f"good text {i}", "id": f"g{i}"}).decode()


def per_source(received: list[Received]) -> Counter[tuple[int, int]]:
    return Counter((r.doc["source"]["partition"], r.doc["source"]["offset"]) for r in received)


def headers_of(record: Received) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}


async def assert_all_committed(bootstrap: str, topics: dict[str, str]) -> None:
    ends = await end_offsets(bootstrap, topics["input_topic"])
    assert await wait_committed(bootstrap, topics["group_id"], topics["input_topic"], ends) == ends


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_record_without_key_and_value(worker_factory, bootstrap, topics, guarantee) -> None:
    """Legal in Kafka (kcat -Z, the Java clients): dead-lettered once, with a key; nothing else repeats."""
    await create_topic(bootstrap, topics["input_topic"], 3)
    worker = worker_factory(**topics, processing_guarantee=guarantee, batch_max_size=16).wait_ready()
    for partition in range(3):
        lines = [f"k{partition}-{i}:{good(partition * 100 + i)}" for i in range(10)]
        if partition == 0:
            lines.insert(5, ":")  # key and value both NULL
        kcat_produce(bootstrap, topics["input_topic"], lines, partition=partition)

    scored = await consume_all(bootstrap, topics["output_topic"], expected=30)
    assert len(scored) == 30 and set(per_source(scored).values()) == {1}, per_source(scored)
    dead = await consume_all(bootstrap, f"{topics['input_topic']}-dlt", expected=1)
    assert len(dead) == 1
    (letter,) = dead
    assert letter.value is None
    assert letter.key == f"{topics['input_topic']}:0:5".encode()  # keyed by where it came from
    headers = headers_of(letter)
    assert headers[REASON_HEADER] == "empty_value"
    assert headers["__sentiment.errors.key.null"] == "true"
    assert (headers["__connect.errors.partition"], headers["__connect.errors.offset"]) == ("0", "5")

    # The partition keeps flowing after it.
    kcat_produce(bootstrap, topics["input_topic"], [f"late:{good(999)}"], partition=0)
    scored = await consume_all(bootstrap, topics["output_topic"], expected=31)
    assert "g999" in {r.doc["id"] for r in scored} and len(scored) == 31
    await assert_all_committed(bootstrap, topics)
    assert worker.ready() and worker.proc.poll() is None


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_copied_text_is_capped_to_what_was_scored(worker_factory, bootstrap, topics, guarantee) -> None:
    """900 kB of tabs, quotes and backslashes: JSON escaping would double it past the broker's limit."""
    await create_topic(bootstrap, topics["input_topic"], 1)
    worker = worker_factory(
        **topics, processing_guarantee=guarantee, input_format="text", include_text="true", max_length=64
    ).wait_ready()
    hostile = ('\t"\\' * 300_000).encode()
    await produce(bootstrap, topics["input_topic"], [(None, b"before"), (None, hostile), (None, b"after")], partition=0)
    scored = await consume_all(bootstrap, topics["output_topic"], expected=3)
    assert sorted(r.doc["source"]["offset"] for r in scored) == [0, 1, 2]
    big = next(r for r in scored if r.doc["source"]["offset"] == 1)
    assert big.doc["truncated"] is True
    assert hostile.decode().startswith(big.doc["text"]) and 0 < len(big.doc["text"]) < 2_000
    assert len(big.value) < 10_000
    await assert_all_committed(bootstrap, topics)
    assert worker.ready()


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_output_over_the_topic_limit(worker_factory, bootstrap, topics, guarantee) -> None:
    """An output over the output topic's max.message.bytes is dead-lettered with the original bytes;
    a dead letter over the dead-letter topic's limit keeps its headers and drops the value."""
    dlt = f"{topics['input_topic']}-dlt"
    await create_topic(bootstrap, topics["input_topic"], 2)
    await create_topic(bootstrap, topics["output_topic"], 2, {"max.message.bytes": "100000"})
    await create_topic(bootstrap, dlt, 2, {"max.message.bytes": "150000"})
    worker = worker_factory(**topics, processing_guarantee=guarantee, batch_max_size=8).wait_ready()

    def doc(i: int, metadata_chars: int) -> bytes:
        return orjson.dumps({"text": f"text {i}", "id": f"d{i}", "metadata": {"blob": '"\\' * (metadata_chars // 2)}})

    medium = doc(1, 60_000)  # its output (escaped twice over) is ~120 kB > 100 kB
    large = doc(2, 200_000)  # its dead letter is > 150 kB too
    records = [(b"a", doc(0, 10)), (b"m", medium), (b"b", doc(3, 10)), (b"l", large), (b"c", doc(4, 10))]
    await produce(bootstrap, topics["input_topic"], records, partition=0)
    await produce(bootstrap, topics["input_topic"], [(b"x", doc(5, 10))], partition=1)

    scored = await consume_all(bootstrap, topics["output_topic"], expected=4)
    assert sorted(r.doc["id"] for r in scored) == ["d0", "d3", "d4", "d5"]
    dead = {r.key: r for r in await consume_all(bootstrap, dlt, expected=2)}
    assert set(dead) == {b"m", b"l"}
    assert dead[b"m"].value == medium
    assert headers_of(dead[b"m"])[REASON_HEADER] == "output_too_large"
    assert dead[b"l"].value == b""
    assert headers_of(dead[b"l"])[REASON_HEADER] == "output_too_large"
    assert headers_of(dead[b"l"])[OMITTED_HEADER] == str(len(large))
    await assert_all_committed(bootstrap, topics)
    assert worker.ready() and worker.proc.poll() is None


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_keyless_input_with_compacted_topics(worker_factory, bootstrap, topics, guarantee) -> None:
    """A compacted topic refuses keyless records: outputs are keyed by their id, dead letters by their origin."""
    dlt = f"{topics['input_topic']}-dlt"
    compact = {"cleanup.policy": "compact"}
    await create_topic(bootstrap, topics["input_topic"], 1)
    await create_topic(bootstrap, topics["output_topic"], 2, compact)
    await create_topic(bootstrap, dlt, 1, compact)
    worker = worker_factory(**topics, processing_guarantee=guarantee).wait_ready()
    values = [orjson.dumps({"text": "with id", "id": "the-id"}), orjson.dumps({"text": "no id"}), b"not json"]
    values += [orjson.dumps({"text": f"more {i}"}) for i in range(7)]
    await produce(bootstrap, topics["input_topic"], [(None, v) for v in values], partition=0)

    scored = await consume_all(bootstrap, topics["output_topic"], expected=9)
    assert len(scored) == 9 and set(per_source(scored).values()) == {1}
    assert all(r.key == r.doc["id"].encode() for r in scored)
    assert {r.doc["id"] for r in scored} >= {"the-id", f"{topics['input_topic']}:0:1"}
    (letter,) = await consume_all(bootstrap, dlt, expected=1)
    assert letter.key == f"{topics['input_topic']}:0:2".encode() and letter.value == b"not json"
    await assert_all_committed(bootstrap, topics)
    assert worker.ready()
