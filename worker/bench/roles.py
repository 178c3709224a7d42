"""The benchmark's subprocesses: ``python -m worker.bench.roles ceiling|baseline|noop_worker|sim_worker|limit ...``.

Each run scores in a process of its own, so peak RSS and CPU time are per run.

- ``ceiling``: the engine alone on pre-tokenised batches: the most the model can do here;
- ``baseline``: what a user writes first, a consumer loop around transformers' ``pipeline()``;
- ``noop_worker``: the real worker with only the transformer's forward pass replaced by zeros;
- ``sim_worker``: the real worker with the forward pass replaced by a simulated accelerator
  (:class:`worker.model.simulated.SimulatedDevice`, its speed from ``SIM_*`` variables);
- ``limit``: the same work as the no-op worker in a plain aiokafka batch loop, no Faust: what
  one process can carry here (the tokenizer is the limit), so that noop / limit is the
  worker's own overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from worker.bench.harness import proc_status_kib
from worker.bench.workloads import make_texts


def percentile(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def rounded(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 1)


class FirstAssignment:
    """A rebalance listener that notes when (and at what CPU time) partitions were first assigned."""

    def __init__(self) -> None:
        self.assigned_at: Optional[float] = None
        self.cpu_at_assign: Optional[float] = None

    def listener(self) -> Any:
        from aiokafka.abc import ConsumerRebalanceListener

        first = self

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            def on_partitions_revoked(self, revoked: Any) -> None:
                pass

            def on_partitions_assigned(self, assigned: Any) -> None:
                if assigned and first.assigned_at is None:
                    first.assigned_at = time.time()
                    first.cpu_at_assign = time.process_time()

        return Listener()


def self_peak_rss_mib() -> Optional[float]:
    import os

    kib = proc_status_kib(os.getpid(), "VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kib / 1024, 1)


# ----------------------------------------------------------------------------- ceiling


def ceiling(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    for name in ("--model", "--workload", "--precision", "--device"):
        parser.add_argument(name, required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--max-batch-tokens", type=int, required=True)
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--runtime", default="torch", help="torch, onnxruntime or auto (RUNTIME)")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--sim-ns-per-token", type=float, default=None,
                        help="replace the forward pass by a simulated device of this speed")
    parser.add_argument("--sim-ms-per-call", type=float, default=2.0)
    args = parser.parse_args(argv)

    from worker.model.engine import Encoded, SentimentEngine
    from worker.ops.memory import use_allocator

    allocator = use_allocator(os.environ.get("ALLOCATOR", "auto"))  # the worker's: like with like
    engine = SentimentEngine.load(
        args.model, device=args.device, precision=args.precision, max_batch_tokens=args.max_batch_tokens,
        max_batch_rows=args.batch_size, attention=args.attention, runtime=args.runtime,
    )
    sim = None
    if args.sim_ns_per_token is not None:
        from worker.model.simulated import SimulatedDevice

        sim = SimulatedDevice(len(engine.info.labels), ms_per_call=args.sim_ms_per_call,
                              ns_per_token=args.sim_ns_per_token)
        engine = engine.with_forward(sim)
    engine.warmup()
    texts = make_texts(args.workload, args.events)
    batches = [engine.encode(texts[i: i + args.batch_size]) for i in range(0, len(texts), args.batch_size)]
    engine.infer(batches[0])  # shapes of this workload
    # The ceiling is the best the engine does: the fastest of ``passes`` passes over the
    # same batches (a pass hit by other work on the machine is not the model's limit).
    pass_seconds: list[float] = []
    pass_busy: list[float] = []
    times: list[float] = []
    real = padded = 0
    for _ in range(max(1, args.passes)):
        times_now, real, padded, busy = [], 0, 0, 0.0
        t_all = time.perf_counter()
        for encoded in batches:
            t0 = time.perf_counter()
            report = engine.infer(encoded).report
            times_now.append(time.perf_counter() - t0)
            real += report.real_tokens
            padded += report.padded_tokens
            busy += report.forward_s
        if engine.info.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        pass_seconds.append(time.perf_counter() - t_all)
        pass_busy.append(busy)
        if pass_seconds[-1] == min(pass_seconds):
            times = times_now
    total = min(pass_seconds)
    single = []
    one = engine.encode(make_texts("short", 20, seed=3))
    for i in range(20):
        t0 = time.perf_counter()
        engine.infer(Encoded(input_ids=[one.input_ids[i]], truncated=[one.truncated[i]]))
        single.append(time.perf_counter() - t0)
    print(json.dumps({
        "seconds": round(total, 2),
        "events_per_s": round(args.events / total, 2),
        "pass_events_per_s": [round(args.events / sec, 2) for sec in pass_seconds],
        "batch_infer_p50_ms": rounded((percentile(times, 50) or 0) * 1000),
        "batch_infer_p99_ms": rounded((percentile(times, 99) or 0) * 1000),
        "single_infer_p50_ms": rounded((percentile(single, 50) or 0) * 1000),
        "single_infer_p99_ms": rounded((percentile(single, 99) or 0) * 1000),
        "padding_efficiency": round(real / padded, 4) if padded else None,
        "device_busy": round(pass_busy[pass_seconds.index(total)] / total, 4),
        "planner_cost": planner_cost(engine.costs.current),
        "peak_rss_mib": self_peak_rss_mib(),
        "attention": engine.info.attention,
        "runtime": engine.info.runtime,
        "allocator": allocator,
    }))


def planner_cost(fit: Any) -> dict[str, Optional[float]]:
    """The planner's cost model, named as the worker's ``sentiment_worker_planner_cost`` gauges (inf: null)."""
    terms = {
        "call_seconds": fit.call_s,
        "token_seconds": fit.token_s,
        "token_position_seconds": fit.token_position_s,
        "call_overhead_tokens": fit.call_overhead_tokens,
        "attention_scale": fit.attention_scale,
    }
    return {name: value if math.isfinite(value) else None for name, value in terms.items()}


# ----------------------------------------------------------------------------- baselines


def baseline(argv: list[str]) -> None:
    """What a user writes first: a consumer loop around transformers' pipeline()."""
    parser = argparse.ArgumentParser()
    for name in ("--mode", "--model", "--bootstrap", "--input-topic", "--output-topic", "--group", "--device", "--result"):
        parser.add_argument(name, required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--fetch-max", type=int, default=64)
    args = parser.parse_args(argv)

    import orjson
    import torch
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    clf = pipeline("text-classification", model=args.model, device=device,
                   dtype=torch.float16 if device.type == "cuda" else torch.float32)
    clf("warm up the model")
    tokenizer = clf.tokenizer
    state: dict[str, Any] = {"real": 0, "padded": 0}
    first = FirstAssignment()

    def padding(texts: list[str], chunk: int) -> None:
        lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=512)["input_ids"]]
        for i in range(0, len(lengths), chunk):
            part = lengths[i: i + chunk]
            state["real"] += sum(part)
            state["padded"] += max(part) * len(part)

    async def main() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=args.bootstrap, group_id=args.group, auto_offset_reset="earliest",
                                    enable_auto_commit=True, max_poll_records=args.fetch_max)
        consumer.subscribe([args.input_topic], listener=first.listener())
        producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all", linger_ms=5)
        await consumer.start()
        await producer.start()
        done = 0
        try:
            while done < args.events:
                batch = await consumer.getmany(timeout_ms=1000, max_records=args.fetch_max)
                messages = [m for records in batch.values() for m in records]
                if not messages:
                    continue
                texts = [orjson.loads(m.value)["text"] for m in messages]
                if args.mode == "naive":
                    results = [clf(text, truncation=True, max_length=512)[0] for text in texts]
                    padding(texts, 1)
                else:
                    results = clf(texts, batch_size=args.batch_size, truncation=True, max_length=512)
                    padding(texts, args.batch_size)
                futures = []
                for m, res in zip(messages, results):
                    ts = datetime.fromtimestamp(m.timestamp / 1000).astimezone().isoformat(timespec="milliseconds")
                    doc = {"label": res["label"], "score": res["score"],
                           "source": {"topic": m.topic, "partition": m.partition, "offset": m.offset, "timestamp": ts}}
                    futures.append(await producer.send(args.output_topic, orjson.dumps(doc), key=m.key))
                await asyncio.gather(*futures)
                done += len(messages)
        finally:
            await producer.stop()
            await consumer.stop()

    asyncio.run(main())
    Path(args.result).write_text(json.dumps({
        "assigned_at": first.assigned_at,
        "padding_efficiency": round(state["real"] / state["padded"], 4) if state["padded"] else None,
        "peak_rss_mib": self_peak_rss_mib(),
    }))


# ----------------------------------------------------------------------------- the worker, no model


def noop_worker(argv: list[str]) -> None:
    """The real worker with the model's forward pass replaced by a no-op (settings from the environment).

    Kept: consuming, decoding, the tokenizer, the sub-batch plan, padded id and mask
    tensors, the softmax, output encoding, publishing with awaited deliveries, the
    ledger and commits. Skipped: only the transformer's forward pass (logits are zeros).
    """
    import torch

    from worker.model.engine import SentimentEngine
    from worker.service import main
    from worker.settings import Settings

    def noop_engine(settings: Settings) -> SentimentEngine:
        engine = SentimentEngine.from_settings(settings)
        labels = len(engine.info.labels)

        class _Out:
            def __init__(self, logits: torch.Tensor) -> None:
                self.logits = logits

        def forward(*, input_ids: torch.Tensor, **_: Any) -> Any:
            return _Out(torch.zeros((input_ids.shape[0], labels)))

        return engine.with_forward(forward, learn_costs=False)  # a free model: nothing to learn; plan as before

    child = [sys.executable, "-m", "worker.bench.roles", "noop_worker"]
    sys.exit(main(Settings(), engine_factory=noop_engine, child_argv=child))


# ----------------------------------------------------------------------------- the worker, simulated device


def sim_worker(argv: list[str]) -> None:
    """The real worker with the forward pass replaced by a simulated accelerator.

    Everything runs for real (Kafka, decoding, the tokenizer, the plan, padding, outputs,
    publishing, commits); the forward pass is a :class:`SimulatedDevice` that sleeps as
    long as a device of the speed in ``SIM_NS_PER_TOKEN`` / ``SIM_MS_PER_CALL`` (read only
    here, not worker settings) would take, and returns zeros. The device's busy time is
    the worker's own ``sentiment_worker_model_busy_seconds_total``.
    """
    from worker.model.engine import SentimentEngine
    from worker.model.simulated import SimulatedDevice
    from worker.service import main
    from worker.settings import Settings

    def sim_engine(settings: Settings) -> SentimentEngine:
        engine = SentimentEngine.from_settings(settings)
        device = SimulatedDevice(
            len(engine.info.labels),
            ms_per_call=float(os.environ.get("SIM_MS_PER_CALL", "2")),
            ns_per_token=float(os.environ.get("SIM_NS_PER_TOKEN", "30")),
            ns_per_token_position=float(os.environ.get("SIM_NS_PER_TOKEN_POSITION", "0")),
        )
        return engine.with_forward(device)

    child = [sys.executable, "-m", "worker.bench.roles", "sim_worker"]
    sys.exit(main(Settings(), engine_factory=sim_engine, child_argv=child))


# ----------------------------------------------------------------------------- the limit


def limit(argv: list[str]) -> None:
    """The no-op worker's work in a plain aiokafka loop: what one process can carry here.

    Per fetched batch (up to ``--batch-size`` records): orjson decode, one tokenizer call
    in a thread (overlapping the Kafka I/O of the previous batch), the same output bytes
    as the worker (scores of a model that outputs zeros), one record batch per output
    partition (``send_batch``), every delivery awaited, the input offsets committed.
    """
    parser = argparse.ArgumentParser()
    for name in ("--model", "--bootstrap", "--input-topic", "--output-topic", "--group", "--result"):
        parser.add_argument(name, required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args(argv)

    import numpy as np
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from worker.kafka.partitioner import KeyPartitioner
    from worker.model.engine import SentimentEngine
    from worker.ops.memory import use_allocator
    from worker.pipeline.codec import Source, decode, encode_output
    from worker.settings import InputFormat

    use_allocator(os.environ.get("ALLOCATOR", "auto"))  # as the worker's `run` does
    engine = SentimentEngine.load(args.model, device="cpu", max_length=args.max_length)
    labels = engine.info.labels
    model_block = engine.info.as_output()
    first = FirstAssignment()
    tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
    partitioner = KeyPartitioner()

    async def main() -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=args.bootstrap, group_id=args.group, auto_offset_reset="earliest",
            enable_auto_commit=False, isolation_level="read_committed", max_poll_records=args.batch_size,
        )
        consumer.subscribe([args.input_topic], listener=first.listener())
        producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all", enable_idempotence=True,
                                    linger_ms=5, max_batch_size=1 << 20)
        await consumer.start()
        await producer.start()
        out_partitions = len(await producer.partitions_for(args.output_topic))
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=2)

        async def intake() -> None:
            fetched = 0
            while fetched < args.events:
                batch = await consumer.getmany(timeout_ms=1000, max_records=args.batch_size)
                records = [r for rs in batch.values() for r in rs]
                if not records:
                    continue
                fetched += len(records)
                decoded = [decode(r.value, InputFormat.json) for r in records]
                encoding = loop.run_in_executor(tokenize_pool, engine.encode, [d.text for d in decoded])
                await queue.put((records, decoded, encoding))
            await queue.put(None)

        async def publish() -> None:
            while (item := await queue.get()) is not None:
                records, decoded, encoding = item
                encoded = await encoding
                probs = np.full((len(records), len(labels)), 1 / len(labels)).tolist()
                processed_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
                builders: dict[int, tuple[Any, list[int]]] = {}
                for i, (record, doc, row) in enumerate(zip(records, decoded, probs)):
                    source = Source(record.topic, record.partition, record.offset, record.timestamp)
                    value = encode_output(doc, source, label=labels[0], score=row[0], scores=dict(zip(labels, row)),
                                          truncated=encoded.truncated[i], model=model_block, processed_at=processed_at,
                                          head="single_label")
                    key = record.key or (doc.id or source.default_id).encode()
                    partition = partitioner(key, out_partitions)
                    builder = builders.get(partition)
                    if builder is None:
                        builder = builders[partition] = (producer.create_batch(), [])
                    if builder[0].append(timestamp=None, key=key, value=value, headers=[]) is None:
                        raise RuntimeError("a batch filled up; raise max_batch_size")
                futures = [await producer.send_batch(b, args.output_topic, partition=p) for p, (b, _) in builders.items()]
                await asyncio.gather(*futures)
                ends: dict[TopicPartition, int] = {}
                for record in records:
                    ends[TopicPartition(record.topic, record.partition)] = record.offset + 1
                await consumer.commit(ends)

        try:
            await asyncio.gather(intake(), publish())
        finally:
            await producer.stop()
            await consumer.stop()

    asyncio.run(main())
    cpu = time.process_time() - first.cpu_at_assign if first.cpu_at_assign is not None else None
    Path(args.result).write_text(json.dumps(
        {"assigned_at": first.assigned_at, "cpu_seconds": cpu, "peak_rss_mib": self_peak_rss_mib()}
    ))


ROLES = {"ceiling": ceiling, "baseline": baseline, "noop_worker": noop_worker, "sim_worker": sim_worker, "limit": limit}

if __name__ == "__main__":
    ROLES[sys.argv[1]](sys.argv[2:])
