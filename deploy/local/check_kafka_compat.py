"""Check that aiokafka works against a Kafka broker: produce, consume, group
commits, and transactions (commit and abort).

Usage:  python deploy/local/check_kafka_compat.py 127.0.0.1:9092
Exits non-zero on the first failure and prints each check that passed.

Why deploy/local/kafka pins KAFKA_VERSION=4.4.0: results of this script with
aiokafka 0.14.0 against brokers from deploy/local/kafka (single-node KRaft,
Java 17, 2 cores):
  4.4.0  all checks pass (newest 4.x served; finalizes transaction.version=2,
         metadata.version 4.4-IV2)  -> chosen
  4.0.0  all checks pass
  3.9.1  all checks pass (fallback; KAFKA_VERSION=3.9.1 works with the script)
The first use of a group right after a fresh start logs a transient
GroupCoordinatorNotAvailableError / "Marking the coordinator dead" from
aiokafka while __consumer_offsets is created; the client retries by itself.
"""

from __future__ import annotations

import asyncio
import sys
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

TIMEOUT = 30.0


def ok(msg: str) -> None:
    print(f"PASS {msg}", flush=True)


async def read_all(bootstrap: str, topic: str, want: int, **kw) -> list[bytes]:
    """Read `topic` from the beginning until `want` records or a quiet second."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, **kw,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            got = [m.value for msgs in batch.values() for m in msgs]
            values += got
            if len(values) >= want and not got:
                break
    finally:
        await consumer.stop()
    return values


async def main(bootstrap: str) -> None:
    run = uuid.uuid4().hex[:8]
    t_in, t_out = f"compat-in-{run}", f"compat-out-{run}"
    group, tx_group = f"compat-group-{run}", f"compat-tx-group-{run}"
    n = 10

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 1, 1) for t in (t_in, t_out)])
        ok(f"admin create_topics {t_in}, {t_out}")

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for i in range(n):
                await producer.send_and_wait(t_in, f"m{i}".encode(), key=b"k")
        finally:
            await producer.stop()
        ok(f"produce {n} records (acks=all)")

        tp = TopicPartition(t_in, 0)
        consumer = AIOKafkaConsumer(
            t_in, bootstrap_servers=bootstrap, group_id=group,
            auto_offset_reset="earliest", enable_auto_commit=False,
        )
        await consumer.start()
        try:
            got: list[bytes] = []
            while len(got) < n:
                batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), TIMEOUT)
                got += [m.value for msgs in batch.values() for m in msgs]
            assert got == [f"m{i}".encode() for i in range(n)], got
            ok(f"consume {n} records in a consumer group")
            await consumer.commit()
            committed = await consumer.committed(tp)
            assert committed == n, committed
            ok(f"group commit; committed() reads back offset {committed}")
        finally:
            await consumer.stop()
        offsets = await admin.list_consumer_group_offsets(group)
        assert offsets[tp].offset == n, offsets
        ok(f"admin list_consumer_group_offsets -> {offsets[tp].offset}")

        # Transactions: consume-transform-produce with offsets in the transaction.
        tx = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"compat-tx-{run}")
        await tx.start()
        try:
            async with tx.transaction():
                for i in range(3):
                    await tx.send(t_out, f"committed{i}".encode())
                await tx.send_offsets_to_transaction({tp: OffsetAndMetadata(n, "")}, tx_group)
            ok("transaction: begin, send, send_offsets_to_transaction, commit")
            await tx.begin_transaction()
            for i in range(2):
                await tx.send(t_out, f"aborted{i}".encode())
            await tx.send_offsets_to_transaction({tp: OffsetAndMetadata(1, "")}, tx_group)
            await tx.abort_transaction()
            ok("transaction: begin, send, send_offsets_to_transaction, abort")
            async with tx.transaction():
                await tx.send(t_out, b"committed3")
            ok("transaction after abort commits")
        finally:
            await tx.stop()

        seen = await read_all(bootstrap, t_out, 4, isolation_level="read_committed")
        want = [f"committed{i}".encode() for i in range(4)]
        assert seen == want, seen
        ok(f"read_committed sees exactly the {len(want)} committed records")
        seen = await read_all(bootstrap, t_out, 6, isolation_level="read_uncommitted")
        assert sum(v.startswith(b"aborted") for v in seen) == 2, seen
        ok("read_uncommitted also sees the 2 aborted records")
        offsets = await admin.list_consumer_group_offsets(tx_group)
        assert offsets[tp].offset == n, offsets
        ok(f"transactional group offset is {n} (aborted offset commit discarded)")
    finally:
        await admin.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} BOOTSTRAP (e.g. 127.0.0.1:9092)")
    try:
        asyncio.run(asyncio.wait_for(main(sys.argv[1]), 120))
    except Exception as exc:  # report any failure as a non-zero exit
        print(f"FAIL {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
    print("ALL PASSED")
