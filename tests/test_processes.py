"""WORKER_PROCESSES=2: two group members in one container, one set of pages, one fate."""

from __future__ import annotations

import os
import signal

import orjson
import pytest

from tests.kafka_helpers import consume_all, create_topic, end_offsets, produce, wait_committed

pytestmark = pytest.mark.kafka


async def test_two_processes_share_the_partitions_and_the_pages(worker_factory, bootstrap, topics) -> None:
    await create_topic(bootstrap, topics["input_topic"], 4)
    worker = worker_factory(**topics, worker_processes=2).wait_ready(timeout_s=180)
    children = [e["pid"] for e in worker.events("process.started")]
    assert len(children) == 2
    sent = await produce(bootstrap, topics["input_topic"], [(None, orjson.dumps({"text": f"t{i}"})) for i in range(40)])
    received = await consume_all(bootstrap, topics["output_topic"], expected=40)
    assert sorted((r.doc["source"]["partition"], r.doc["source"]["offset"]) for r in received) == sorted(
        (s.partition, s.offset) for s in sent
    )
    ends = await end_offsets(bootstrap, topics["input_topic"])
    assert await wait_committed(bootstrap, topics["group_id"], topics["input_topic"], ends) == ends
    # Each process owns two of the four partitions; the parent's /metrics adds them up.
    owners = {e["partitions"][0] for e in worker.events("partitions.assigned") if e.get("count") == 2}
    assert len(owners) == 2
    metrics = worker.metrics()
    assert metrics["sentiment_worker_assigned_partitions"] == 4
    assert metrics["sentiment_worker_events_scored_total"] == 40

    # One process dies: the container exits non-zero, so the orchestrator restarts all of it.
    os.kill(children[1], signal.SIGKILL)
    assert worker.wait_exit(30) != 0  # raises TimeoutExpired past the bound
    assert [e["index"] for e in worker.events("process.exited")] == [1]
    with pytest.raises(ProcessLookupError):
        os.kill(children[0], 0)  # the other one was stopped too
