"""Bad input goes to the dead-letter topic unchanged, with its reason; good input around it is scored."""

from __future__ import annotations

import random

import orjson
import pytest

from tests.kafka_helpers import consume_all, create_topic, end_offsets, produce, wait_committed
from worker.pipeline.dead_letter import REASON_HEADER

pytestmark = pytest.mark.kafka


def nested(depth: int) -> dict:
    doc: dict = {}
    for _ in range(depth):
        doc = {"x": doc}
    return doc


BAD = {
    "not_json": b"{not json",
    "not_object": orjson.dumps([1, 2, 3]),
    "text_missing": orjson.dumps({"id": "x", "note": "do-not-log-c0ffee"}),
    "text_null": orjson.dumps({"text": None}),
    "text_not_string": orjson.dumps({"text": ["a"]}),
    "text_empty": orjson.dumps({"text": ""}),
    "whitespace": orjson.dumps({"text": " \t\n "}),
    "invalid_utf8": b'{"text": "caf\xe9"}',
    "too_deep": b'{"text": "deep", "metadata": ' + b'{"x": ' * 5000 + b"1" + b"}" * 5000 + b"}",
    "tombstone": None,
}
EXPECTED_REASON = {
    "not_json": "not_json",
    "not_object": "not_object",
    "text_missing": "text_missing",
    "text_null": "text_null",
    "text_not_string": "text_not_string",
    "text_empty": "text_empty",
    "whitespace": "text_empty",
    "invalid_utf8": "invalid_utf8",
    "too_deep": "not_json",
    "tombstone": "empty_value",
}


async def test_dead_letters_keep_bytes_and_carry_connect_headers(worker_factory, bootstrap, topics) -> None:
    await create_topic(bootstrap, topics["input_topic"], 2)
    dlt = f"{topics['input_topic']}-dlt"
    worker = worker_factory(**topics, max_length=64, batch_max_size=16).wait_ready()
    good = [
        orjson.dumps({"text": "fine text", "id": "good-1"}),
        orjson.dumps({"text": "with \x00 NUL \x00 bytes", "id": "good-nul"}),
        orjson.dumps({"text": "big " * 250_000, "id": "good-1mb"}),  # 1 MB: scored after truncation
        orjson.dumps({"text": "moderately nested", "id": "good-nested", "metadata": nested(100)}),
    ]
    records = [(f"k-{name}".encode(), value) for name, value in BAD.items()] + [(b"k-good", v) for v in good]
    random.Random(3).shuffle(records)  # good and bad mixed within batches
    sent = await produce(bootstrap, topics["input_topic"], records, partition=0)
    by_key_value = {(s.key, s.value): s for s in sent}

    scored = await consume_all(bootstrap, topics["output_topic"], expected=len(good))
    assert sorted(r.doc["id"] for r in scored) == sorted(["good-1", "good-nul", "good-1mb", "good-nested"])
    assert {r.doc["id"]: r.doc["truncated"] for r in scored}["good-1mb"] is True
    assert {r.doc["id"]: r.doc["metadata"] for r in scored}["good-nested"] == nested(100)

    dead = await consume_all(bootstrap, dlt, expected=len(BAD))
    assert len(dead) == len(BAD)
    for record in dead:
        name = record.key.decode()[2:]
        headers = {k: v.decode() for k, v in record.headers}
        original = by_key_value[(record.key, record.value)]  # key and value bytes unchanged
        assert record.value == BAD[name]
        assert headers["__connect.errors.topic"] == topics["input_topic"]
        assert headers["__connect.errors.partition"] == str(original.partition)
        assert headers["__connect.errors.offset"] == str(original.offset)
        assert headers["__connect.errors.exception.class.name"] == "DecodeError"
        assert headers["__connect.errors.exception.message"]
        assert headers[REASON_HEADER] == EXPECTED_REASON[name], name

    ends = await end_offsets(bootstrap, topics["input_topic"])
    assert await wait_committed(bootstrap, topics["group_id"], topics["input_topic"], ends) == ends
    assert "do-not-log-c0ffee" not in worker.log_text()  # a rejected record's content never reaches the log


async def test_ten_thousand_bad_records_in_a_row(worker_factory, bootstrap, topics) -> None:
    await create_topic(bootstrap, topics["input_topic"], 1)
    worker_factory(**topics, batch_max_size=256).wait_ready()
    bad = [(None, b"garbage %d" % i) for i in range(10_000)]
    await produce(bootstrap, topics["input_topic"], [*bad, (None, orjson.dumps({"text": "after the storm", "id": "last"}))])
    scored = await consume_all(bootstrap, topics["output_topic"], expected=1, timeout_s=120)
    assert [r.doc["id"] for r in scored] == ["last"]
    dead = await consume_all(bootstrap, f"{topics['input_topic']}-dlt", expected=10_000, timeout_s=120)
    assert len(dead) == 10_000
    ends = await end_offsets(bootstrap, topics["input_topic"])
    assert await wait_committed(bootstrap, topics["group_id"], topics["input_topic"], ends) == ends


async def test_inference_error_splits_batch_and_dead_letters_only_the_culprit(
    worker_factory, bootstrap, topics
) -> None:
    """A 'GPU out of memory' on long batches: halves are retried, the one text too long alone is set aside."""
    await create_topic(bootstrap, topics["input_topic"], 1)
    worker = worker_factory(
        **topics, faulty=True, fault_max_padded_tokens=400, max_length=512, max_batch_tokens=100_000, batch_max_size=64,
        batch_max_wait_ms=500,
    ).wait_ready()
    texts = [("ok-%d" % i, "word " * 40) for i in range(20)] + [("too-long", "word " * 480)]
    sent = await produce(
        bootstrap, topics["input_topic"], [(k.encode(), orjson.dumps({"text": t, "id": k})) for k, t in texts]
    )
    scored = await consume_all(bootstrap, topics["output_topic"], expected=20)
    assert sorted(r.doc["id"] for r in scored) == sorted(k for k, _ in texts[:-1])
    dead = await consume_all(bootstrap, f"{topics['input_topic']}-dlt", expected=1)
    assert [r.key for r in dead] == [b"too-long"]
    headers = {k: v.decode() for k, v in dead[0].headers}
    assert headers[REASON_HEADER] == "inference_failed"
    assert "out of memory" in headers["__connect.errors.exception.message"]
    assert worker.proc.poll() is None, "a record-specific failure must not stop the worker"
    ends = await end_offsets(bootstrap, topics["input_topic"])
    assert await wait_committed(bootstrap, topics["group_id"], topics["input_topic"], ends) == ends
    assert headers["__connect.errors.offset"] == str(sent[-1].offset)  # the culprit is the last record sent
