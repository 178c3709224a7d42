"""Faults during a steady stream: nothing lost under either guarantee, nothing duplicated in exactly-once.

Each scenario streams 10,000 events over 6 partitions while the fault happens,
then reads the output back with an independent read_committed consumer:
produced = distinct ids the broker acknowledged; scored = distinct ids in the
output; lost = produced - scored; duplicated = outputs beyond one per input
record (topic, partition, offset). The figures are printed at the end of the
run (see conftest.pytest_terminal_summary) and written to .cache/test-reports/.
"""

from __future__ import annotations

import asyncio
import json
import contextlib
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import FAULT_ROWS, REPO
from tests.kafka_helpers import committed_offsets, consume_all, create_topic
from worker.bench.harness import WorkerProcess

pytestmark = pytest.mark.kafka

EVENTS = 10_000
PARTITIONS = 6
STREAM_SECONDS = 20.0


class Fleet:
    """Worker replicas of one group; a supervisor restarts any that exit on their own."""

    def __init__(self, factory: Callable[..., WorkerProcess], settings: dict[str, Any]) -> None:
        self._factory = factory
        self._settings = settings
        self.workers: list[WorkerProcess] = []
        self.stopped: set[int] = set()  # ids of workers we stopped on purpose
        self.restarts = 0

    async def add(self) -> WorkerProcess:
        worker = self._factory(**self._settings)
        self.workers.append(worker)
        # Joined, not necessarily ready: with more replicas than partitions some stay idle.
        await asyncio.to_thread(worker.wait_joined)
        return worker

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.proc.poll() is None]

    async def kill(self, worker: WorkerProcess) -> None:
        self.stopped.add(id(worker))
        worker.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(worker.proc.wait)

    async def terminate(self, worker: WorkerProcess) -> float:
        """SIGTERM and the seconds until the process exited."""
        self.stopped.add(id(worker))
        t0 = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.proc.wait, 60)
        return time.monotonic() - t0

    async def supervise(self, until: asyncio.Event) -> None:
        while not until.is_set():
            for worker in list(self.workers):
                if worker.proc.poll() is not None and id(worker) not in self.stopped:
                    self.stopped.add(id(worker))
                    self.restarts += 1
                    await self.add()
            await asyncio.sleep(0.5)


@dataclass
class Produced:
    ids: set[str]
    chunks_retried: int = 0


async def stream(bootstrap: str, topic: str, produced: Produced, done: asyncio.Event) -> None:
    """EVENTS records at a steady rate, riding out broker outages by resending a failed chunk.

    Each chunk goes out through a producer of its own, every step bounded: after a
    broker restart a long-lived aiokafka producer can stay stuck (OutOfOrderSequenceNumber,
    or no answer at all), which would stop the input rather than test the worker.
    """
    chunk = 50
    interval = STREAM_SECONDS / (EVENTS / chunk)
    try:
        for start in range(0, EVENTS, chunk):
            ids = [f"e{i}" for i in range(start, start + chunk)]
            while not await _send_chunk(bootstrap, topic, ids):
                produced.chunks_retried += 1
                await asyncio.sleep(0.5)
            produced.ids.update(ids)
            await asyncio.sleep(interval)
    finally:
        done.set()


async def _send_chunk(bootstrap: str, topic: str, ids: list[str]) -> bool:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5, request_timeout_ms=5000
    )
    try:
        await asyncio.wait_for(producer.start(), 10)
        futures = [
            await asyncio.wait_for(
                producer.send(topic, orjson.dumps({"text": f"event {i} was great", "id": i}), key=i.encode()), 10
            )
            for i in ids
        ]
        await asyncio.wait_for(asyncio.gather(*futures), 15)
        return True
    except Exception:  # noqa: BLE001 - broker away: the caller sends the chunk again
        return False
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 5)


def kafka_script(kafka_env: dict[str, str], command: str) -> None:
    subprocess.run([str(REPO / "deploy" / "local" / "kafka"), command], env=kafka_env, check=True,
                   capture_output=True, timeout=180)


async def run_scenario(
    scenario: str, fleet: Fleet, kafka_env: dict[str, str], rng: random.Random, topics: dict[str, str]
) -> dict[str, Any]:
    notes: dict[str, Any] = {}
    if scenario == "sigkill":
        for _ in range(5):
            await asyncio.sleep(rng.uniform(1.5, 3.0))
            for worker in fleet.alive():
                await fleet.kill(worker)
            await fleet.add()
    elif scenario == "replicas":
        await asyncio.sleep(2)
        await fleet.terminate(fleet.alive()[0])  # graceful leave
        await fleet.add()  # join
        await asyncio.sleep(rng.uniform(1, 2))
        await fleet.kill(fleet.alive()[0])  # crash
        await fleet.add()
        await asyncio.sleep(rng.uniform(1, 2))
        await fleet.add()  # scale up to four
        await asyncio.sleep(rng.uniform(1, 2))
        await fleet.kill(fleet.alive()[-1])
        await fleet.terminate(fleet.alive()[0])
    elif scenario == "broker_restart":
        await asyncio.sleep(rng.uniform(3, 5))
        await asyncio.to_thread(kafka_script, kafka_env, "stop")
        await asyncio.sleep(2)  # the outage itself
        await asyncio.to_thread(kafka_script, kafka_env, "start")
    elif scenario == "sigterm":
        await asyncio.sleep(rng.uniform(3, 5))
        worker = fleet.alive()[0]
        notes["stop_seconds"] = round(await fleet.terminate(worker), 2)
        notes["exit_code"] = worker.proc.returncode
        # No worker runs now: what the stopped one published must all be committed.
        bootstrap = kafka_env["BOOTSTRAP"]
        committed = await committed_offsets(bootstrap, topics["group_id"], topics["input_topic"])
        published = await consume_all(bootstrap, topics["output_topic"], expected=0, timeout_s=10, settle_s=1)
        notes["committed_at_stop"] = sum(committed.values())
        notes["beyond_commit"] = sum(
            1 for r in published if r.doc["source"]["offset"] >= committed.get(r.doc["source"]["partition"], 0)
        )
        await fleet.add()
    elif scenario == "pause":
        # Frozen (a GC or CPU-throttling pause) for longer than the transaction timeout, shorter
        # than the session timeout: the broker aborts the open transaction, the worker keeps its
        # partitions. Each pause lets a backlog build up, so the next one finds a transaction open.
        worker = fleet.alive()[0]
        await asyncio.sleep(2)
        for _ in range(PAUSES):
            await asyncio.sleep(rng.uniform(0.2, 0.6))
            worker.proc.send_signal(signal.SIGSTOP)
            await asyncio.sleep(PAUSE_SECONDS)
            worker.proc.send_signal(signal.SIGCONT)
        notes["pauses"] = PAUSES
    return notes


SCENARIOS = [
    *((scenario, guarantee) for scenario in ("sigkill", "replicas", "broker_restart", "sigterm")
      for guarantee in ("at_least_once", "exactly_once")),
    ("pause", "exactly_once"),
]
PAUSES = 4
PAUSE_SECONDS = 5.0
PAUSE_TRANSACTION_TIMEOUT_MS = 3000  # < PAUSE_SECONDS - the broker's abort check interval (1 s, conftest)


@pytest.mark.timeout(480)
@pytest.mark.parametrize(("scenario", "guarantee"), SCENARIOS)
async def test_no_loss_under_faults(scenario, guarantee, worker_factory, bootstrap, kafka_env, topics) -> None:
    await create_topic(bootstrap, topics["input_topic"], PARTITIONS)
    settings = dict(
        # A short session speeds up recovery from SIGKILL; the broker restart and the pauses keep
        # a longer one, so that members outlive the outage, as they would in production.
        topics, processing_guarantee=guarantee, session_timeout_s=30 if scenario in ("broker_restart", "pause") else 8,
        batch_max_size=64, batch_max_wait_ms=50, kafka_request_timeout_s=5, publish_backoff_max_s=2,
        log_level="info", topic_partitions=PARTITIONS, stall_timeout_s=15,
    )
    if scenario == "pause":
        settings.update(transaction_timeout_ms=PAUSE_TRANSACTION_TIMEOUT_MS, kafka_request_timeout_s=2)
    fleet = Fleet(worker_factory, settings)
    replicas = 3 if scenario == "replicas" else 1
    for _ in range(replicas):
        await fleet.add()

    produced = Produced(set())
    done = asyncio.Event()
    t0 = time.monotonic()
    producer_task = asyncio.create_task(stream(bootstrap, topics["input_topic"], produced, done))
    supervisor = asyncio.create_task(fleet.supervise(done))
    try:
        rng = random.Random(hash((scenario, guarantee)) & 0xFFFF)
        notes = await run_scenario(scenario, fleet, kafka_env, rng, topics)
        if scenario == "sigterm":
            # What the stopped worker published is committed: no output lies beyond the committed offsets.
            assert notes["exit_code"] == 0 and notes["stop_seconds"] < 30, notes
            assert notes["beyond_commit"] == 0, notes
        await asyncio.wait_for(asyncio.shield(producer_task), STREAM_SECONDS + 120)
    finally:
        done.set()
        await supervisor
        producer_task.cancel()
    if not fleet.alive():
        await fleet.add()

    received = await consume_all(bootstrap, topics["output_topic"], expected=len(produced.ids), timeout_s=180, settle_s=3)
    elapsed = time.monotonic() - t0
    scored_ids = {r.doc["id"] for r in received}
    per_input = Counter((r.doc["source"]["partition"], r.doc["source"]["offset"]) for r in received)
    result = {
        "scenario": scenario,
        "guarantee": guarantee,
        "produced": len(produced.ids),
        "scored": len(scored_ids & produced.ids),
        "lost": len(produced.ids - scored_ids),
        "duplicated": sum(n - 1 for n in per_input.values()),
        "duplicated_examples": sorted(k for k, n in per_input.items() if n > 1)[:10],
        "lost_examples": sorted(produced.ids - scored_ids, key=lambda i: int(i[1:]))[:10],
        "restarts_by_supervisor": fleet.restarts,
        "seconds": round(elapsed, 1),
        **notes,
    }
    if scenario == "pause":
        # The pauses must have made the broker abort open transactions, or this proved nothing.
        # (fenced: the broker bumped the producer's epoch; aborted: the attempt ran out of time first.)
        result["transactions_interrupted"] = sum(
            e.get("count", 1) for w in fleet.workers for name in ("transaction.fenced", "transaction.aborted")
            for e in w.events(name)
        )
        result["worker_restarts"] = fleet.restarts
    FAULT_ROWS.mkdir(parents=True, exist_ok=True)
    (FAULT_ROWS / f"{scenario}-{guarantee}.json").write_text(json.dumps(result))
    print(f"\n{result}")
    assert result["produced"] == EVENTS
    assert result["lost"] == 0, result
    if guarantee == "exactly_once":
        assert result["duplicated"] == 0, result
    if scenario == "sigterm":
        assert result["duplicated"] == 0, result
    if scenario == "pause":
        assert result["transactions_interrupted"] > 0, result
        assert fleet.restarts == 0, "a pause shorter than the session timeout must not cost the worker"
