"""The worker against a real Kafka broker: outputs, order, commits, failures, batch bounds."""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from pathlib import Path

import jsonschema
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import REPO
from tests.kafka_helpers import (
    committed_offsets,
    committed_offsets_cli,
    consume_all,
    create_topic,
    end_offsets,
    produce,
    until,
    wait_committed,
)
from worker.model.engine import SentimentEngine

pytestmark = pytest.mark.kafka
OUTPUT_SCHEMA = json.loads((REPO / "schemas" / "sentiment-output.v2.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(OUTPUT_SCHEMA, format_checker=jsonschema.FormatChecker())
WORDS = "the movie was great terrible boring amazing and i love hate it not very good bad service".split()


def sample_texts(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60))) for _ in range(n)]


async def test_thousand_events_scored_once_in_order_and_committed(
    worker_factory, bootstrap, kafka_env, topics, tiny_model
) -> None:
    await create_topic(bootstrap, topics["input_topic"], 3)
    texts = sample_texts(1000)
    records = [
        (f"key-{i % 37}".encode(), orjson.dumps({"text": t, "id": f"e{i}", "metadata": {"n": i}}))
        for i, t in enumerate(texts)
    ]
    sent = await produce(bootstrap, topics["input_topic"], records)
    worker = worker_factory(**topics, batch_max_size=32, batch_max_wait_ms=100, max_length=64).wait_ready()

    received = await consume_all(bootstrap, topics["output_topic"], expected=1000)

    # Exactly once each, no duplicates, every output valid against the schema.
    ids = [r.doc["id"] for r in received]
    assert len(received) == 1000, f"{len(received)} outputs"
    assert sorted(ids) == sorted(f"e{i}" for i in range(1000))
    for r in received:
        VALIDATOR.validate(r.doc)

    # Same label and scores as the model run directly, one text at a time.
    engine = SentimentEngine.load(str(tiny_model), max_length=64)
    direct = {f"e{i}": p for i, p in enumerate(engine.predict(texts))}
    by_id = {r.doc["id"]: r for r in received}
    max_delta = 0.0
    for i in range(0, 1000, 50):  # one-at-a-time reference on a sample, batched reference on all
        single = engine.predict([texts[i]])[0]
        assert single.label == by_id[f"e{i}"].doc["label"]
        for label, score in single.scores.items():
            max_delta = max(max_delta, abs(score - by_id[f"e{i}"].doc["scores"][label]))
    for key, prediction in direct.items():
        doc = by_id[key].doc
        assert doc["label"] == prediction.label
        for label, score in prediction.scores.items():
            max_delta = max(max_delta, abs(score - doc["scores"][label]))
    print(f"\nmax |score delta| vs direct model: {max_delta:.2e}")
    assert max_delta < 1e-4

    # Keys kept; per input partition, outputs in input offset order.
    sent_by_id = {f"e{i}": s for i, s in enumerate(sent)}
    for r in received:
        src = sent_by_id[r.doc["id"]]
        assert r.key == src.key
        assert (r.doc["source"]["partition"], r.doc["source"]["offset"]) == (src.partition, src.offset)
        assert r.doc["metadata"] == {"n": int(r.doc["id"][1:])}
    # Records of one input partition share an output partition only when their keys hash
    # together, so compare order per (output partition, input partition): offsets must rise.
    for out_partition in {r.partition for r in received}:
        rows = sorted((r for r in received if r.partition == out_partition), key=lambda r: r.offset)
        by_src: dict[int, list[int]] = defaultdict(list)
        for r in rows:
            by_src[r.doc["source"]["partition"]].append(r.doc["source"]["offset"])
        for src_partition, src_offsets in by_src.items():
            assert src_offsets == sorted(src_offsets), f"out-of-order outputs from input partition {src_partition}"

    # Committed offsets, read by the broker's admin API and by Kafka's own tool, equal the end offsets.
    ends = await end_offsets(bootstrap, topics["input_topic"])
    committed = await wait_committed(bootstrap, topics["group_id"], topics["input_topic"], ends)
    assert committed == ends
    assert committed_offsets_cli(kafka_env, topics["group_id"], topics["input_topic"]) == ends

    # It ran on jemalloc (ALLOCATOR=auto; installed here), re-executed under the pid it was started with.
    assert worker.events("worker.starting")[0]["allocator"] == "jemalloc"
    assert "libjemalloc" in Path(f"/proc/{worker.proc.pid}/maps").read_text()

    # Batch bounds, from the worker's per-batch debug lines.
    sizes = [e["size"] for e in worker.events("batch.done")]
    print(f"batches: {len(sizes)}, largest {max(sizes)}, mean {sum(sizes) / len(sizes):.1f}")
    assert max(sizes) <= 32
    assert sizes.count(32) > 0

    # The planner's costs were measured at warm-up and refitted from the batches; the model's busy time counted.
    costs = worker.events("planner.costs")[0]
    assert costs["source"] == "probe" and costs["probes"] >= 3 and costs["model"].endswith("/cpu/fp32")
    assert costs["call_ms"] > 0 and costs["token_us"] > 0
    page = (worker.get("/metrics") or b"").decode()
    gauges = {line.split("}")[0].split('"')[1]: float(line.split()[-1])
              for line in page.splitlines() if line.startswith("sentiment_worker_planner_cost{")}
    assert gauges["token_seconds"] > 0 and gauges["call_overhead_tokens"] > 0, gauges
    busy = next(float(line.split()[-1]) for line in page.splitlines()
                if line.startswith("sentiment_worker_model_busy_seconds_total "))
    assert 0 < busy


async def test_failed_batch_is_not_committed_and_is_scored_after_restart(
    worker_factory, bootstrap, topics, tmp_path
) -> None:
    await create_topic(bootstrap, topics["input_topic"], 3)
    flag = tmp_path / "fail-inference"
    flag.touch()
    worker = worker_factory(**topics, fault_flag=flag).wait_ready()
    sent = await produce(bootstrap, topics["input_topic"], [(None, orjson.dumps({"text": f"text {i}"})) for i in range(20)])

    assert worker.wait_exit(60) != 0, "a failed batch must stop the worker"
    assert any(e["event"] == "pipeline.failed" for e in worker.events())
    committed = await committed_offsets(bootstrap, topics["group_id"], topics["input_topic"])
    assert sum(committed.values()) == 0, f"offsets moved past a failed batch: {committed}"
    assert await consume_all(bootstrap, topics["output_topic"], expected=0, timeout_s=3, settle_s=1) == []
    assert await consume_all(bootstrap, f"{topics['input_topic']}-dlt", expected=0, timeout_s=3, settle_s=1) == []

    flag.unlink()
    worker_factory(**topics, fault_flag=flag).wait_ready()
    received = await consume_all(bootstrap, topics["output_topic"], expected=20)
    assert sorted((r.doc["source"]["partition"], r.doc["source"]["offset"]) for r in received) == sorted(
        (s.partition, s.offset) for s in sent
    )
    ends = await end_offsets(bootstrap, topics["input_topic"])
    assert await wait_committed(bootstrap, topics["group_id"], topics["input_topic"], ends) == ends


async def test_trickle_is_published_within_wait_bound(worker_factory, bootstrap, topics) -> None:
    wait_ms = 300
    worker = worker_factory(**topics, batch_max_size=64, batch_max_wait_ms=wait_ms).wait_ready()
    latencies = []
    for i in range(5):
        sent = await produce(bootstrap, topics["input_topic"], [(None, orjson.dumps({"text": f"trickle {i}"}))])
        t_sent = time.time()
        received = await consume_all(bootstrap, topics["output_topic"], expected=i + 1, settle_s=0.05)
        mine = [r for r in received if r.doc["source"]["offset"] == sent[0].offset and r.doc["source"]["partition"] == sent[0].partition]
        assert len(mine) == 1
        latencies.append(mine[0].timestamp_ms / 1000 - t_sent)
    infer_ms = max(e["infer_ms"] + e["encode_ms"] for e in worker.events("batch.done"))
    bound_s = (wait_ms + infer_ms + 100) / 1000
    print(f"\ntrickle latencies (s): {[round(x, 3) for x in latencies]}; bound {bound_s:.3f}")
    assert max(latencies) <= bound_s


async def test_plain_text_input_mode(worker_factory, bootstrap, topics) -> None:
    worker_factory(**topics, input_format="text", include_text="true").wait_ready()
    lines = ["I really liked it", "  not so great  ", "ünïcödé is fine ✓"]
    sent = await produce(bootstrap, topics["input_topic"], [(None, line.encode()) for line in lines])
    received = await consume_all(bootstrap, topics["output_topic"], expected=3)
    assert sorted(r.doc["text"] for r in received) == sorted(lines)
    for r in received:
        VALIDATOR.validate(r.doc)
        src = r.doc["source"]
        assert r.doc["id"] == f"{topics['input_topic']}:{src['partition']}:{src['offset']}"
    assert {(s.partition, s.offset) for s in sent} == {(r.doc["source"]["partition"], r.doc["source"]["offset"]) for r in received}


async def test_bad_records_do_not_stall_the_partition(worker_factory, bootstrap, topics) -> None:
    await create_topic(bootstrap, topics["input_topic"], 1)
    worker = worker_factory(**topics).wait_ready()
    values = [
        orjson.dumps({"text": "good one"}),
        orjson.dumps({"id": "no-text"}),
        b"not json at all",
        orjson.dumps(["a", "list"]),
        orjson.dumps({"text": None}),
        orjson.dumps({"text": 42}),
        orjson.dumps({"text": "   "}),
        b"\xff\xfe invalid utf-8",
        None,
        orjson.dumps({"text": "good two", "id": "g2"}),
    ]
    sent = await produce(bootstrap, topics["input_topic"], [(b"k", v) for v in values], partition=0)
    received = await consume_all(bootstrap, topics["output_topic"], expected=2)
    assert sorted(r.doc["source"]["offset"] for r in received) == [sent[0].offset, sent[-1].offset]
    ends = await end_offsets(bootstrap, topics["input_topic"])
    assert await wait_committed(bootstrap, topics["group_id"], topics["input_topic"], ends) == ends
    reasons = sorted(e["reason"] for e in worker.events("record.dead_lettered"))
    assert reasons == sorted(
        ["text_missing", "not_json", "not_object", "text_null", "text_not_string", "text_empty", "invalid_utf8", "empty_value"]
    )
    # The rejection line names the record, never its content.
    assert "not json at all" not in worker.log_text()


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_aborted_upstream_transactions_are_not_scored(worker_factory, bootstrap, topics, guarantee) -> None:
    """Producers that write the input in transactions: only what they commit is scored; neither the
    offsets their commit markers take nor a transaction left open trips the stall watchdog."""
    await create_topic(bootstrap, topics["input_topic"], 1)
    stall_timeout_s = 4
    worker = worker_factory(**topics, processing_guarantee=guarantee, stall_timeout_s=stall_timeout_s).wait_ready()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"upstream-{topics['group_id']}")
    await producer.start()

    async def transaction(n: int, outcome: str, size: int = 5) -> None:
        await producer.begin_transaction()
        for i in range(size):
            doc = {"text": f"{outcome} {i}", "id": f"{outcome}-{n}-{i}"}
            await producer.send_and_wait(topics["input_topic"], orjson.dumps(doc), partition=0)
        if outcome == "abort":
            await producer.abort_transaction()
        elif outcome == "commit":
            await producer.commit_transaction()

    try:
        for n, outcome in enumerate(("abort", "commit", "abort", "commit")):
            await transaction(n, outcome)
        received = await consume_all(bootstrap, topics["output_topic"], expected=10, settle_s=2.0)
        assert sorted(r.doc["id"] for r in received) == sorted(f"commit-{n}-{i}" for n in (1, 3) for i in range(5))
        # 4 x (5 records + 1 marker): the last scored record is at 22, the end is 24.
        assert await end_offsets(bootstrap, topics["input_topic"]) == {0: 24}
        assert await wait_committed(bootstrap, topics["group_id"], topics["input_topic"], {0: 23}) == {0: 23}

        # Now a transaction stays open: its records are on the broker but not readable yet.
        # Lag is 1 (the last commit marker) and nothing can be fetched, so this is no stall.
        # The watchdog gives its verdict on each monitor tick (5 s): three ticks span more
        # than the stall timeout.
        await transaction(4, "open", size=3)
        ticks = len(worker.events("monitor.checked"))
        await until(lambda: len(worker.events("monitor.checked")) >= ticks + 3 or not worker.alive(), 60,
                    "three watchdog ticks")
        assert worker.alive(), worker.log_text()[-3000:]
        assert not worker.events("worker.stalled")
        await producer.commit_transaction()
        received = await consume_all(bootstrap, topics["output_topic"], expected=13, settle_s=1.0)
        assert sorted(r.doc["id"] for r in received if r.doc["id"].startswith("open")) == [f"open-4-{i}" for i in range(3)]
    finally:
        await producer.stop()
