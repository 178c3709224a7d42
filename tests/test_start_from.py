"""START_FROM against the real broker: where a group with no committed offset begins, and that
committed offsets always win."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from tests.kafka_helpers import consume_all, create_topic, end_offsets, produce_at, produce_history, wait_committed
from worker.kafka.positions import StartAt, place_uncommitted
from worker.settings import Settings

pytestmark = pytest.mark.kafka
DAY_MS = 86_400_000


def _iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


@pytest.mark.parametrize(
    "text",
    ["earliest", "latest", "2026-12-01T00:00:00Z", "2026-12-01T00:00:00+01:00", "@1764547200000", " latest "],
)
def test_start_from_accepts_the_documented_forms(text: str) -> None:
    assert Settings(start_from=text).start_from == text.strip()


@pytest.mark.parametrize(
    "text,why",
    [("2026-12-01T00:00:00", "no time zone"), ("12", "not a start"), ("-5", "not a start"), ("yesterday", "not a start")],
)
def test_start_from_refuses_what_it_cannot_place(text: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        Settings(start_from=text)


async def test_uncommitted_partitions_start_at_the_time_and_a_committed_one_stays(bootstrap: str, topics: dict) -> None:
    """Partition 0 is committed (stays), 1 has records on both sides of the time (first at or after it),
    2 has only records before it (its end)."""
    topic, group = topics["input_topic"], topics["group_id"]
    await create_topic(bootstrap, topic, 3)
    base = int(time.time() * 1000) - DAY_MS
    cut = base + 5_000
    await produce_at(bootstrap, topic, [(p, base + i * 1_000, f"{p}-{i}") for p in (0, 1) for i in range(10)]
                      + [(2, base + i * 100, f"2-{i}") for i in range(10)])
    tps = [TopicPartition(topic, p) for p in range(3)]
    client = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                              isolation_level="read_committed")
    await client.start()
    try:
        client.assign(tps)
        await client.commit({tps[0]: 2})
        placed = await place_uncommitted(client, tps, StartAt("time", cut))
        assert placed == {tps[1]: 5, tps[2]: 10}
        assert [await client.position(tp) for tp in tps[1:]] == [5, 10]
        assert await place_uncommitted(client, tps, StartAt("beginning")) == {tps[1]: 0, tps[2]: 0}
        assert await place_uncommitted(client, tps, StartAt("end")) == {tps[1]: 10, tps[2]: 10}
    finally:
        await client.stop()


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_a_new_group_scores_exactly_the_records_from_the_time_on_then_committed_offsets_win(
    worker_factory, bootstrap: str, topics: dict, guarantee: str
) -> None:
    topic, group = topics["input_topic"], topics["group_id"]
    base, records = await produce_history(bootstrap, topic, 2, 30, 1_000)
    cut = base + 20_000
    wanted = sorted(record_id for _, ts, record_id in records if ts >= cut)
    assert len(wanted) == 20

    worker = worker_factory(**topics, processing_guarantee=guarantee, start_from=_iso(cut)).wait_ready()
    received = await consume_all(bootstrap, topics["output_topic"], expected=len(wanted), settle_s=1.5)
    assert sorted(r.doc["id"] for r in received) == wanted
    assert await wait_committed(bootstrap, group, topic, {0: 30, 1: 30}) == {0: 30, 1: 30}
    (started,) = worker.events("partitions.start_from")
    assert started["offsets"] == {f"{topic}:0": 20, f"{topic}:1": 20}
    assert worker.events("worker.starting")[0]["settings"]["start_from"] == _iso(cut)
    assert worker.stop() == 0

    # The group has committed: a later start, whatever START_FROM says, goes on from its commits,
    # and scores records older than any START_FROM time.
    await produce_at(bootstrap, topic, [(0, base - DAY_MS, "old-0"), (1, base - DAY_MS, "old-1")])
    worker = worker_factory(**topics, processing_guarantee=guarantee, start_from="latest").wait_ready()
    received = await consume_all(bootstrap, topics["output_topic"], expected=len(wanted) + 2, settle_s=1.5)
    assert sorted(r.doc["id"] for r in received) == sorted([*wanted, "old-0", "old-1"])
    assert not worker.events("partitions.start_from")
    assert await end_offsets(bootstrap, topic) == {0: 31, 1: 31}
