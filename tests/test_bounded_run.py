"""RUN_UNTIL against the real broker: backfills that end, with one replica or several, in both guarantees."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition
from pydantic import ValidationError

from tests.kafka_helpers import committed_offsets, consume_all, end_offsets, produce_history
from worker.pipeline.bounds import RunBounds
from worker.settings import Settings

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


def _records(tp: TopicPartition, offsets: range) -> list[SimpleNamespace]:
    return [SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=o) for o in offsets]


# ------------------------------------------------------------------------------ the logic


def test_records_at_or_past_the_stop_are_not_taken_and_the_partition_is_reached() -> None:
    bounds = RunBounds()
    bounds.add_stops({TP0: 5, TP1: 100})
    bounds.add_stops({TP0: 9})  # a later assignment's end does not move the stop
    kept = bounds.take({TP0: _records(TP0, range(3, 8)), TP1: _records(TP1, range(0, 4))})
    assert [r.offset for r in kept[TP0]] == [3, 4] and len(kept[TP1]) == 4
    assert bounds.reached == {TP0}
    assert bounds.take({TP0: _records(TP0, range(8, 10))}) == {}


def test_a_partition_is_done_when_fetched_to_its_stop_and_all_it_took_is_committed() -> None:
    bounds = RunBounds()
    bounds.add_stops({TP0: 5, TP1: 3})
    bounds.take({TP0: _records(TP0, range(0, 5))})
    assert not bounds.progress(TP0, position=5, committed=4).done  # offset 4 not committed yet
    assert bounds.progress(TP0, position=5, committed=5).done
    assert not bounds.progress(TP1, position=2, committed=None).done  # not fetched to its stop
    assert bounds.progress(TP1, position=3, committed=None).done  # nothing to take: done at once
    assert bounds.progress(TopicPartition("t", 9), position=0, committed=None) is None
    bounds.revoked([TP0])  # the next owner commits what this replica took, or fetches it again
    assert bounds.progress(TP0, position=5, committed=None).done and bounds.stops[TP0] == 5


@pytest.mark.parametrize("text", ["end", "2020-01-01T00:00:00Z", "@1577836800000"])
def test_run_until_accepts_end_and_past_times(text: str) -> None:
    assert Settings(run_until=text).run_until == text


@pytest.mark.parametrize(
    "text,why",
    [("latest", "not a stop"), ("beginning", "not a stop"), ("100", "not a stop"), ("2020-01-01T00:00:00", "no time zone"),
     ("2999-01-01T00:00:00Z", "in the future")],
)
def test_run_until_refuses_what_it_cannot_stop_at(text: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        Settings(run_until=text)


# ------------------------------------------------------------------------------ on the broker


def _iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


async def _wait_exits(workers: list, timeout_s: float) -> list[int]:
    return await asyncio.gather(*(asyncio.to_thread(w.wait_exit, timeout_s) for w in workers))


@pytest.mark.kafka
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_a_backfill_from_a_time_with_three_replicas_scores_exactly_that_and_every_replica_exits_0(
    worker_factory, bootstrap: str, topics: dict, guarantee: str
) -> None:
    topic, group = topics["input_topic"], topics["group_id"]
    base, records = await produce_history(bootstrap, topic, 6, 200, 1_000)
    cut = base + 100_000
    wanted = sorted(rid for _, ts, rid in records if ts >= cut)

    workers = [worker_factory(**topics, processing_guarantee=guarantee, start_from=_iso(cut), run_until="end",
                              batch_max_size=32) for _ in range(3)]
    assert await _wait_exits(workers, 240) == [0, 0, 0], [w.log_text()[-2000:] for w in workers]
    received = await consume_all(bootstrap, topics["output_topic"], expected=len(wanted), settle_s=1.0)
    ids = Counter(r.doc["id"] for r in received)
    assert sorted(ids) == wanted  # none lost, none before the time
    if guarantee == "exactly_once":
        assert max(ids.values()) == 1
    assert await committed_offsets(bootstrap, group, topic) == {p: 200 for p in range(6)}
    finished = [e for w in workers for e in w.events("run.finished")]
    assert len(finished) == 3 and all(p["done"] for e in finished for p in e["partitions"].values())


@pytest.mark.kafka
async def test_partitions_moved_mid_run_are_finished_by_their_new_owner(worker_factory, bootstrap: str, topics: dict) -> None:
    """A second replica joins while the first is scoring: partitions move, both runs end, nothing is lost."""
    topic = topics["input_topic"]
    _, records = await produce_history(bootstrap, topic, 4, 1500, 1)
    first = worker_factory(**topics, run_until="end", batch_max_size=16).wait_joined()
    second = worker_factory(**topics, run_until="end", batch_max_size=16)
    assert await _wait_exits([first, second], 300) == [0, 0], [w.log_text()[-2000:] for w in (first, second)]
    assert first.events("partitions.revoked"), "no partition moved: the test proves nothing"
    received = await consume_all(bootstrap, topics["output_topic"], expected=len(records), settle_s=1.0)
    assert {r.doc["id"] for r in received} == {rid for _, _, rid in records}
    assert await committed_offsets(bootstrap, topics["group_id"], topic) == {p: 1500 for p in range(4)}


@pytest.mark.kafka
async def test_run_until_a_time_stops_at_the_first_record_at_or_after_it(worker_factory, bootstrap: str, topics: dict) -> None:
    topic = topics["input_topic"]
    base, records = await produce_history(bootstrap, topic, 2, 50, 1_000)
    stop = base + 30_000
    worker = worker_factory(**topics, run_until=_iso(stop))
    assert await _wait_exits([worker], 120) == [0], worker.log_text()[-2000:]
    wanted = sorted(rid for _, ts, rid in records if ts < stop)
    received = await consume_all(bootstrap, topics["output_topic"], expected=len(wanted), settle_s=1.0)
    assert sorted(r.doc["id"] for r in received) == wanted
    assert await committed_offsets(bootstrap, topics["group_id"], topic) == {0: 30, 1: 30}
    assert await end_offsets(bootstrap, topic) == {0: 50, 1: 50}
    (stops,) = worker.events("run.stops")
    assert stops["offsets"] == {f"{topic}:0": 30, f"{topic}:1": 30}
