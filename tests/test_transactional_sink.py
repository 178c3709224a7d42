"""The exactly-once sink against the real broker: ownership changes never duplicate or drop a share.

These drive :class:`TransactionalSink` directly, the way the pipeline does
around rebalances, so each ownership race is reproduced deterministically
rather than hoped for in a fault run.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest
from aiokafka import TopicPartition

from tests.kafka_helpers import committed_offsets, consume_all, create_topic
from worker.kafka.records import Delivery, Outbound, PartitionFenced
from worker.kafka.transactional import TransactionalSink
from worker.pipeline.ledger import OffsetLedger

pytestmark = pytest.mark.kafka


@pytest.fixture
async def publishers(bootstrap: str, topics: dict[str, str]) -> AsyncIterator[Callable[[], TransactionalSink]]:
    """Publishers of one consumer group (as replicas would have); all stopped at the end."""
    await create_topic(bootstrap, topics["input_topic"], 2)
    await create_topic(bootstrap, topics["output_topic"], 1)
    made: list[TransactionalSink] = []

    def make() -> TransactionalSink:
        ledger = OffsetLedger()  # each replica has its own; this one owns both input partitions
        ledger.assigned([TopicPartition(topics["input_topic"], p) for p in (0, 1)])
        publisher = TransactionalSink(
            bootstrap, group_id=topics["group_id"], floors=ledger, transaction_timeout_ms=10000, request_timeout_ms=5000
        )
        made.append(publisher)
        return publisher

    yield make
    for publisher in made:
        await publisher.stop()


def share(topics: dict[str, str], offsets: range, partition: int = 0) -> Delivery:
    """What the pipeline hands over for an input partition: one output per input offset (value p:offset)."""
    delivery = Delivery(TopicPartition(topics["input_topic"], partition))
    for offset in offsets:
        value = str(offset).encode() if partition == 0 else f"{partition}:{offset}".encode()
        delivery.add(offset, Outbound(topics["output_topic"], value, value))
    return delivery


async def outputs_per_offset(bootstrap: str, topics: dict[str, str], expected: int) -> Counter[int]:
    received = await consume_all(bootstrap, topics["output_topic"], expected=expected, settle_s=1.0)
    return Counter(int(r.value) for r in received)


async def test_partition_back_after_revocation_skips_what_was_committed(bootstrap, topics, publishers) -> None:
    """After a rebalance the consumer may re-read a committed offset from before our last
    transaction settled, and hand the same records over again: none is published twice."""
    publisher = publishers()
    await publisher.start()
    await publisher.deliver([share(topics, range(0, 10))])
    publisher.release([TopicPartition(topics["input_topic"], 0)])  # revoked, then assigned back
    await publisher.deliver([share(topics, range(0, 15))])  # re-consumed from a stale offset

    per_offset = await outputs_per_offset(bootstrap, topics, expected=15)
    assert per_offset == Counter(range(15))
    assert await committed_offsets(bootstrap, topics["group_id"], topics["input_topic"]) == {0: 15}


async def test_same_owner_never_republishes_below_its_own_commits(bootstrap, topics, publishers) -> None:
    publisher = publishers()
    await publisher.start()
    await publisher.deliver([share(topics, range(0, 10))])
    await publisher.deliver([share(topics, range(5, 15))])
    await publisher.deliver([share(topics, range(0, 15))])  # all of it committed already: nothing sent

    assert await outputs_per_offset(bootstrap, topics, expected=15) == Counter(range(15))
    assert await committed_offsets(bootstrap, topics["group_id"], topics["input_topic"]) == {0: 15}


async def test_zombie_is_fenced_and_a_returning_owner_starts_fresh(bootstrap, topics, publishers) -> None:
    """A takes the partition, B takes it over (fencing A's producer), then it comes back to A."""
    first, second = publishers(), publishers()
    tp = TopicPartition(topics["input_topic"], 0)
    await first.start()
    await second.start()
    await first.deliver([share(topics, range(0, 10))])
    await second.deliver([share(topics, range(0, 20))])  # B re-consumed A's records too: skips them

    # A still believes it owns the partition (it missed the rebalance): fenced, nothing written.
    with pytest.raises(PartitionFenced):
        await first.deliver([share(topics, range(10, 25))])

    # The partition is assigned back to A after a revocation: it must publish, not drop, the share.
    second.release([tp])
    first.release([tp])
    await first.deliver([share(topics, range(20, 30))])

    assert await outputs_per_offset(bootstrap, topics, expected=30) == Counter(range(30))
    assert await committed_offsets(bootstrap, topics["group_id"], topics["input_topic"]) == {0: 30}


async def test_returning_owner_with_a_fenced_producer_does_not_drop_the_share(bootstrap, topics, publishers) -> None:
    """Revoked from A, owned by B for a while, assigned back to A: A's old producer is fenced,
    and reusing it would drop (and the pipeline would acknowledge) this share unpublished."""
    first, second = publishers(), publishers()
    tp = TopicPartition(topics["input_topic"], 0)
    await first.start()
    await second.start()
    await first.deliver([share(topics, range(0, 10))])
    first.release([tp])
    await second.deliver([share(topics, range(10, 20))])
    second.release([tp])
    await first.deliver([share(topics, range(20, 30))])

    assert await outputs_per_offset(bootstrap, topics, expected=30) == Counter(range(30))
    assert await committed_offsets(bootstrap, topics["group_id"], topics["input_topic"]) == {0: 30}


async def test_concurrent_units_after_a_revocation_each_start_on_a_fresh_producer(bootstrap, topics, publishers) -> None:
    """The deliverer runs one unit per input partition concurrently. After a revocation, the
    first unit to run must not leave the released producers in the map while it closes them:
    a second unit would take one that is about to be closed and begin a transaction on it
    (a spurious abort, and a transaction that does not start on a fresh producer)."""
    publisher = publishers()
    tps = [TopicPartition(topics["input_topic"], p) for p in (0, 1)]
    await publisher.start()
    first = await asyncio.gather(*(publisher.deliver([share(topics, range(0, 5), p)]) for p in (0, 1)), return_exceptions=True)
    assert first == [None, None]
    before = {tp: publisher.producer_of(tp) for tp in tps}
    assert all(before.values())

    publisher.release(tps)  # revoked, and assigned straight back
    again = await asyncio.gather(*(publisher.deliver([share(topics, range(5, 10), p)]) for p in (0, 1)), return_exceptions=True)

    assert again == [None, None], again
    after = {tp: publisher.producer_of(tp) for tp in tps}
    assert all(after[tp] is not None and after[tp] is not before[tp] for tp in tps)
    received = await consume_all(bootstrap, topics["output_topic"], expected=20, settle_s=1.0)
    assert sorted(r.value for r in received) == sorted(
        [str(o).encode() for o in range(10)] + [f"1:{o}".encode() for o in range(10)]
    )
    committed = await committed_offsets(bootstrap, topics["group_id"], topics["input_topic"])
    assert committed == {0: 10, 1: 10}
