"""``sentiment-worker bench``: the engine's ceiling, the worker end to end, and what a user would write first.

Every run scores the same synthetic workloads with the same model on the same
machine, one after another, each in its own process (so peak RSS is per run):

* ``ceiling``  - the engine alone on pre-tokenised batches of ``BATCH_MAX_SIZE``
                 events (length-sorted, token-budget sub-batches): the most the
                 model itself can do here;
* ``e2e``      - the real worker (``python -m worker run``) through the local Kafka
                 broker, input pre-loaded, from its first partition assignment to
                 the broker's append time of its last output;
* ``naive``    - an aiokafka consumer calling transformers' ``pipeline`` once per message;
* ``batched``  - the same consumer calling ``pipeline(texts, batch_size=N)`` on each
                 fetched batch, in arrival order (no length bucketing);
* ``noop``     - the real worker with the model's forward pass replaced by a no-op:
                 decode, tokenise, plan, pad, publish, await acks and ack offsets all
                 still run; shows what the Kafka + Python path alone can carry;
* ``trickle``  - the real worker fed 10 events/s: latency at low load.

Workloads (token counts include [CLS]/[SEP]): short 8-48, mixed 80 % short +
20 % 100-512, long 200-512. Results: a table on stdout, ``bench.json`` and
``bench.png`` in ``--out``. ``--soak-minutes M`` instead runs the worker at full
load for M minutes and reports its RSS over time.

The subprocess roles (``python -m worker.bench _ceiling|_baseline|_noop_worker``)
are internal.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import typer

from worker.bench.workloads import WORKLOADS, make_texts, token_lengths

REPO = Path(__file__).resolve().parents[1]
KAFKA_SCRIPT = REPO / "deploy" / "local" / "kafka"
DEFAULT_CACHE = REPO / ".cache" / "bench"
RUNS = ("ceiling", "e2e", "naive", "batched", "noop", "trickle")
# Words that are single tokens in the bench models' vocabulary (and in BERT's).

# The issue's targets; checked (reported, never asserted) after a run.
TARGETS = {
    "e2e_vs_ceiling_short": 0.90,
    "e2e_vs_ceiling_mixed": 0.90,
    "e2e_vs_naive_short_fp32": 2.5,
    "e2e_fastest_vs_naive_short": 6.0,
    "e2e_vs_batched_mixed": 1.5,
    "padding_efficiency_mixed": 0.85,
    "noop_events_per_s": 10000.0,
    "trickle_p99_within_bound": 1.0,
    "soak_rss_growth_max": 0.05,
}


# ----------------------------------------------------------------------------- small helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def proc_status_kib(pid: int, key: str) -> Optional[int]:
    """VmHWM (peak RSS) or VmRSS of a live process, in KiB (Linux)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def self_peak_rss_mib() -> Optional[float]:
    kib = proc_status_kib(os.getpid(), "VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kib / 1024, 1)


def iso_ms(value: str) -> float:
    return datetime.fromisoformat(value).timestamp() * 1000


def ensure_model(cache: Path, size: str) -> Path:
    """The random DistilBERT model of the bench, written once into the cache."""
    directory = cache / "models" / size
    if not (directory / "config.json").exists():
        from worker.model.random_model import write_random_model

        write_random_model(directory, size)  # type: ignore[arg-type]
    return directory


def child_env(**extra: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    env.setdefault("PYTHONPATH", str(REPO))
    env["TOKENIZERS_PARALLELISM"] = env.get("TOKENIZERS_PARALLELISM", "false")
    env.update({k.upper(): str(v) for k, v in extra.items() if v is not None})
    return env


@contextmanager
def kafka_broker(bootstrap: Optional[str], work: Path) -> Iterator[str]:
    """The given broker, or a fresh one of our own via deploy/local/kafka (stopped at the end)."""
    if bootstrap:
        yield bootstrap
        return
    env = {
        **os.environ,
        "KAFKA_DATA_DIR": str(work / "kafka-data"),
        "KAFKA_PORT": str(free_port()),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
    }
    _say("starting a local Kafka broker (deploy/local/kafka start) ...")
    started = subprocess.run([str(KAFKA_SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        raise RuntimeError(f"local Kafka did not start:\n{started.stdout}\n{started.stderr}")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(KAFKA_SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- Kafka I/O


async def create_topics(bootstrap: str, names: Sequence[str], partitions: int, *, log_append: Sequence[str] = ()) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=partitions,
                    replication_factor=1,
                    topic_configs={"message.timestamp.type": "LogAppendTime"} if name in log_append else {},
                )
                for name in names
            ]
        )
    finally:
        await admin.close()
    await _wait_for_leaders(bootstrap, names, partitions)


async def _wait_for_leaders(bootstrap: str, names: Sequence[str], partitions: int, timeout_s: float = 30.0) -> None:
    """New topics take a moment to get partition leaders; producing before that only logs retries."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001 - no public call refreshes it
            leaders = [cluster.leader_for_partition(TopicPartition(n, p)) for n in names for p in range(partitions)]
            if all(leader is not None and leader >= 0 for leader in leaders):
                return
            await asyncio.sleep(0.2)
    finally:
        await consumer.stop()


async def produce_texts(bootstrap: str, topic: str, texts: Sequence[str], prefix: str, start: int = 0) -> None:
    import orjson
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=256 * 1024, enable_idempotence=True
    )
    await producer.start()
    try:
        futures = []
        for i, text in enumerate(texts, start):
            futures.append(await producer.send(topic, orjson.dumps({"text": text, "id": f"{prefix}-{i}"})))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@dataclass
class Outputs:
    count: int = 0
    first_append_ms: Optional[float] = None
    last_append_ms: Optional[float] = None
    latencies_ms: list[float] = field(default_factory=list)


class OutputReader:
    """Reads the output topic (read_committed) and keeps append times and end-to-end latencies."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.out = Outputs()
        self._consumer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            max_poll_records=5000,
        )
        await self._consumer.start()
        partitions = None
        for _ in range(100):
            partitions = self._consumer.partitions_for_topic(self.topic)
            if partitions:
                break
            await self._consumer._client.force_metadata_update()  # noqa: SLF001
            await asyncio.sleep(0.1)
        assert partitions, f"topic {self.topic} not found"
        tps = [TopicPartition(self.topic, p) for p in partitions]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)

    async def poll(self, timeout_ms: int = 200) -> int:
        import orjson

        batch = await self._consumer.getmany(timeout_ms=timeout_ms)
        got = 0
        for records in batch.values():
            for record in records:
                got += 1
                append = float(record.timestamp)
                out = self.out
                out.first_append_ms = append if out.first_append_ms is None else min(out.first_append_ms, append)
                out.last_append_ms = append if out.last_append_ms is None else max(out.last_append_ms, append)
                try:
                    doc = orjson.loads(record.value)
                    ts = doc.get("source", {}).get("timestamp")
                    if ts:
                        out.latencies_ms.append(append - iso_ms(ts))
                except (orjson.JSONDecodeError, ValueError, AttributeError):
                    pass
        self.out.count += got
        return got

    async def wait_for(self, expected: int, *, idle_timeout_s: float, progress: Any = None, alive: Any = None) -> Outputs:
        last_progress = time.monotonic()
        while self.out.count < expected:
            got = await self.poll()
            if got:
                last_progress = time.monotonic()
                if progress is not None:
                    progress.update(got)
            elif time.monotonic() - last_progress > idle_timeout_s:
                raise RuntimeError(f"no output for {idle_timeout_s:.0f}s: {self.out.count} of {expected} arrived")
            if alive is not None and not alive():
                raise RuntimeError(f"the scoring process exited: {self.out.count} of {expected} arrived")
        return self.out

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


# ----------------------------------------------------------------------------- worker processes


class WorkerProc:
    """``python -m worker run`` (or the no-op entry) as a subprocess, with its JSON log in a file."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.web_port = int(env["WEB_PORT"])
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def get(self, path: str) -> Optional[bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}{path}", timeout=2) as resp:
                return resp.read() if resp.status == 200 else None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return None

    def wait_ready(self, timeout_s: float = 300.0) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.get("/ready") is not None:
                return time.time()
            time.sleep(0.05)
        raise RuntimeError(f"worker not ready after {timeout_s}s:\n{self.log_tail()}")

    def assigned_at(self) -> Optional[float]:
        """When the worker first got partitions (its own log), i.e. when consuming began."""
        for line in self.log_path.read_text(errors="replace").splitlines():
            if '"partitions.assigned"' in line:
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if doc.get("count") and doc.get("timestamp"):
                    return datetime.fromisoformat(doc["timestamp"].replace("Z", "+00:00")).timestamp()
        return None

    def metrics(self) -> dict[str, float]:
        body = self.get("/metrics")
        out: dict[str, float] = {}
        if body:
            for line in body.decode().splitlines():
                if line and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    try:
                        out[name] = float(value)
                    except ValueError:
                        pass
        return out

    def peak_rss_mib(self) -> Optional[float]:
        kib = proc_status_kib(self.proc.pid, "VmHWM")
        return round(kib / 1024, 1) if kib else None

    def rss_mib(self) -> Optional[float]:
        kib = proc_status_kib(self.proc.pid, "VmRSS")
        return round(kib / 1024, 1) if kib else None

    def stop(self) -> Optional[int]:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log_tail(self, n: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-n:]


def _padding_from_metrics(m: dict[str, float]) -> Optional[float]:
    real = m.get('sentiment_worker_tokens_total{kind="real"}')
    padded = m.get('sentiment_worker_tokens_total{kind="padded"}')
    return round(real / padded, 4) if real and padded else None


def _infer_mean_from_metrics(m: dict[str, float]) -> Optional[float]:
    total = m.get("sentiment_worker_inference_seconds_sum")
    count = m.get("sentiment_worker_inference_seconds_count")
    return total / count if total is not None and count else None


# ----------------------------------------------------------------------------- the bench


@dataclass
class Config:
    model: Path
    model_size: str
    device: str
    precisions: list[str]
    workloads: list[str]
    runs: list[str]
    events: dict[str, int]
    baseline_events: dict[str, int]
    noop_events: int
    batch_max_size: int
    batch_max_wait_ms: int
    max_batch_tokens: int
    baseline_batch_size: int
    noop_batch_size: int
    trickle_rate: float
    trickle_seconds: float
    partitions: int
    work: Path
    out: Path
    ceiling_passes: int = 2


class Bench:
    def __init__(self, cfg: Config, bootstrap: str) -> None:
        self.cfg = cfg
        self.bootstrap = bootstrap
        self.results: list[dict[str, Any]] = []

    # -- helpers -------------------------------------------------------------------

    def _topics(self, label: str) -> tuple[str, str, str]:
        run = f"{label}-{uuid.uuid4().hex[:6]}"
        return f"bench-in-{run}", f"bench-out-{run}", f"bench-g-{run}"

    def _preload(self, workload: str, n: int) -> tuple[str, str, str]:
        topic_in, topic_out, group = self._topics(workload)
        asyncio.run(create_topics(self.bootstrap, [topic_in, topic_out], self.cfg.partitions, log_append=[topic_out]))
        texts = make_texts(workload, n)
        asyncio.run(produce_texts(self.bootstrap, topic_in, texts, prefix=workload))
        return topic_in, topic_out, group

    def _progress(self, total: int, desc: str, unit: str = "ev") -> Any:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)

    def _record(self, row: dict[str, Any]) -> dict[str, Any]:
        # Other work on the machine skews timings: keep the load next to each figure.
        row["loadavg_1m_after"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        self.results.append(row)
        eps = row.get("events_per_s")
        _say(
            f"  -> {row['run']:<8} {row['workload']:<6} {row.get('precision') or '':<5} "
            f"{(f'{eps:,.1f} ev/s' if eps else row.get('error', '-'))}"
        )
        self._save()
        return row

    def _save(self) -> None:
        self.cfg.out.mkdir(parents=True, exist_ok=True)
        (self.cfg.out / "bench.json").write_text(json.dumps(self.report(), indent=2))

    # -- ceiling ---------------------------------------------------------------------

    def ceiling(self, workload: str, precision: str) -> dict[str, Any]:
        n = self.cfg.events[workload]
        cmd = [
            sys.executable, "-m", "worker.bench", "_ceiling", "--model", str(self.cfg.model), "--workload", workload,
            "--events", str(n), "--precision", precision, "--device", self.cfg.device,
            "--batch-size", str(self.cfg.batch_max_size), "--max-batch-tokens", str(self.cfg.max_batch_tokens),
            "--passes", str(self.cfg.ceiling_passes),
        ]
        row = {"run": "ceiling", "workload": workload, "precision": precision, "events": n}
        result = subprocess.run(cmd, env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=3600)
        if result.returncode != 0:
            row["error"] = result.stderr[-2000:]
            return self._record(row)
        row.update(json.loads(result.stdout.strip().splitlines()[-1]))
        row.update(p50_ms=None, p95_ms=None, p99_ms=None)  # no Kafka, no end-to-end latency
        return self._record(row)

    # -- the worker, end to end (and with a no-op model) ------------------------------

    def _start_worker(self, label: str, topic_in: str, topic_out: str, group: str, *, precision: str, noop: bool,
                      batch_max_size: int) -> WorkerProc:
        env = child_env(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap,
            INPUT_TOPIC=topic_in,
            OUTPUT_TOPIC=topic_out,
            GROUP_ID=group,
            MODEL=str(self.cfg.model),
            DEVICE=self.cfg.device,
            PRECISION=precision,
            BATCH_MAX_SIZE=batch_max_size,
            BATCH_MAX_WAIT_MS=self.cfg.batch_max_wait_ms,
            MAX_BATCH_TOKENS=self.cfg.max_batch_tokens,
            WEB_PORT=free_port(),
            WEB_HOST="127.0.0.1",
            LOG_FORMAT="json",
            LOG_LEVEL="info",
            STATS_INTERVAL_S=5,
            TOPIC_PARTITIONS=self.cfg.partitions,
            DATA_DIR=self.cfg.work / f"data-{group}",
        )
        module = ["-m", "worker.bench", "_noop_worker", "run"] if noop else ["-m", "worker", "run"]
        return WorkerProc([sys.executable, *module], env, self.cfg.work / f"worker-{label}-{group}.log")

    def e2e(self, workload: str, precision: str, *, noop: bool = False) -> dict[str, Any]:
        run = "noop" if noop else "e2e"
        n = self.cfg.noop_events if noop else self.cfg.events[workload]
        batch = self.cfg.noop_batch_size if noop else self.cfg.batch_max_size
        row: dict[str, Any] = {"run": run, "workload": workload, "precision": None if noop else precision, "events": n,
                               "batch_max_size": batch}
        topic_in, topic_out, group = self._preload(workload, n)
        worker = self._start_worker(run, topic_in, topic_out, group, precision=precision, noop=noop,
                                    batch_max_size=batch)
        reader = OutputReader(self.bootstrap, topic_out)
        try:
            ready_at = worker.wait_ready()

            async def read() -> Outputs:
                await reader.start()
                with self._progress(n, f"{run} {workload}") as bar:
                    try:
                        return await reader.wait_for(n, idle_timeout_s=300, progress=bar, alive=worker.alive)
                    finally:
                        await reader.stop()

            out = asyncio.run(read())
            metrics = worker.metrics()
            start = worker.assigned_at() or ready_at
            row.update(_throughput(n, start, out))
            row["padding_efficiency"] = _padding_from_metrics(metrics)
            row["peak_rss_mib"] = worker.peak_rss_mib()
            mean_infer = _infer_mean_from_metrics(metrics)
            row["mean_batch_infer_ms"] = round(mean_infer * 1000, 1) if mean_infer else None
        except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others
            row["error"] = f"{exc}"[-2000:]
        finally:
            worker.stop()
        return self._record(row)

    def trickle(self, precision: str) -> dict[str, Any]:
        rate, seconds = self.cfg.trickle_rate, self.cfg.trickle_seconds
        n = max(1, int(rate * seconds))
        row: dict[str, Any] = {"run": "trickle", "workload": "short", "precision": precision, "events": n,
                               "events_per_s": None,  # the input rate decides it: a latency run
                               "rate_per_s": rate, "batch_max_wait_ms": self.cfg.batch_max_wait_ms}
        topic_in, topic_out, group = self._topics("trickle")
        asyncio.run(create_topics(self.bootstrap, [topic_in, topic_out], self.cfg.partitions, log_append=[topic_out]))
        worker = self._start_worker("trickle", topic_in, topic_out, group, precision=precision, noop=False,
                                    batch_max_size=self.cfg.batch_max_size)
        texts = make_texts("short", n, seed=7)
        try:
            worker.wait_ready()

            async def go() -> Outputs:
                import orjson
                from aiokafka import AIOKafkaProducer

                reader = OutputReader(self.bootstrap, topic_out)
                await reader.start()
                producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=0)
                await producer.start()
                try:
                    with self._progress(n, "trickle") as bar:
                        t0 = time.monotonic()
                        for i, text in enumerate(texts):
                            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
                            await producer.send(topic_in, orjson.dumps({"text": text, "id": f"t-{i}"}))
                            got = await reader.poll(timeout_ms=0)
                            bar.update(got)
                        await producer.flush()
                        return await reader.wait_for(n, idle_timeout_s=60, progress=bar, alive=worker.alive)
                finally:
                    await producer.stop()
                    await reader.stop()

            out = asyncio.run(go())
            metrics = worker.metrics()
            row.update(_latency(out))
            row["padding_efficiency"] = _padding_from_metrics(metrics)
            row["peak_rss_mib"] = worker.peak_rss_mib()
            mean_infer = _infer_mean_from_metrics(metrics)
            row["mean_batch_infer_ms"] = round(mean_infer * 1000, 1) if mean_infer else None
            if mean_infer is not None and row.get("p99_ms") is not None:
                bound = self.cfg.batch_max_wait_ms + mean_infer * 1000 + 50
                row["latency_bound_ms"] = round(bound, 1)
        except Exception as exc:  # noqa: BLE001
            row["error"] = f"{exc}"[-2000:]
        finally:
            worker.stop()
        return self._record(row)

    # -- the baselines -----------------------------------------------------------------

    def baseline(self, workload: str, mode: str) -> dict[str, Any]:
        n = self.cfg.baseline_events[workload]
        row: dict[str, Any] = {"run": mode, "workload": workload, "precision": "fp32", "events": n}
        if mode == "batched":
            row["pipeline_batch_size"] = self.cfg.baseline_batch_size
        topic_in, topic_out, group = self._preload(workload, n)
        result_file = self.cfg.work / f"baseline-{group}.json"
        cmd = [
            sys.executable, "-m", "worker.bench", "_baseline", "--mode", mode, "--model", str(self.cfg.model),
            "--bootstrap", self.bootstrap, "--input-topic", topic_in, "--output-topic", topic_out, "--group", group,
            "--events", str(n), "--batch-size", str(self.cfg.baseline_batch_size), "--device", self.cfg.device,
            "--fetch-max", str(self.cfg.batch_max_size), "--result", str(result_file),
        ]
        log_path = self.cfg.work / f"baseline-{group}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(cmd, env=child_env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
            reader = OutputReader(self.bootstrap, topic_out)
            try:
                async def read() -> Outputs:
                    await reader.start()
                    with self._progress(n, f"{mode} {workload}") as bar:
                        try:
                            return await reader.wait_for(n, idle_timeout_s=600, progress=bar,
                                                         alive=lambda: proc.poll() in (None, 0))
                        finally:
                            await reader.stop()

                out = asyncio.run(read())
                proc.wait(timeout=120)
                child = json.loads(result_file.read_text())
                row.update(_throughput(n, child["assigned_at"], out))
                row["padding_efficiency"] = child.get("padding_efficiency")
                row["peak_rss_mib"] = child.get("peak_rss_mib")
            except Exception as exc:  # noqa: BLE001
                row["error"] = f"{exc}\n{log_path.read_text(errors='replace')[-1500:]}"
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return self._record(row)

    # -- soak ----------------------------------------------------------------------------

    def soak(self, minutes: float, precision: str, warmup_fraction: float = 0.2) -> dict[str, Any]:
        """Full load for ``minutes``: the input is kept topped up; the worker's RSS is sampled every 5 s."""
        row: dict[str, Any] = {"run": "soak", "workload": "short", "precision": precision, "minutes": minutes}
        topic_in, topic_out, group = self._topics("soak")
        asyncio.run(create_topics(self.bootstrap, [topic_in, topic_out], self.cfg.partitions, log_append=[topic_out]))
        worker = self._start_worker("soak", topic_in, topic_out, group, precision=precision, noop=False,
                                    batch_max_size=self.cfg.batch_max_size)
        samples: list[tuple[float, float]] = []
        try:
            worker.wait_ready()

            async def go() -> None:
                reader = OutputReader(self.bootstrap, topic_out)
                await reader.start()
                produced = 0
                chunk = 4 * self.cfg.batch_max_size
                t0 = time.monotonic()
                next_sample = t0
                total = minutes * 60
                with self._progress(int(total), "soak", unit="s") as bar:
                    try:
                        while time.monotonic() - t0 < total:
                            if produced - reader.out.count < 4 * chunk:
                                await produce_texts(self.bootstrap, topic_in, make_texts("short", chunk, seed=produced),
                                                    prefix="soak", start=produced)
                                produced += chunk
                            await reader.poll(timeout_ms=500)
                            now = time.monotonic()
                            if now >= next_sample:
                                rss = worker.rss_mib()
                                if rss is not None:
                                    samples.append((round(now - t0, 1), rss))
                                next_sample += 5
                                bar.n = int(now - t0)
                                bar.refresh()
                            if not worker.alive():
                                raise RuntimeError("worker exited during the soak")
                    finally:
                        row["events"] = reader.out.count
                        await reader.stop()

            asyncio.run(go())
            after = [rss for t, rss in samples if t >= minutes * 60 * warmup_fraction]
            if after:
                row["rss_after_warmup_mib"] = after[0]
                row["rss_end_mib"] = after[-1]
                row["rss_max_mib"] = max(after)
                row["rss_growth"] = round((max(after) - after[0]) / after[0], 4)
            row["rss_samples"] = samples
            row["events_per_s"] = round(row["events"] / (minutes * 60), 1)
            row["peak_rss_mib"] = worker.peak_rss_mib()
        except Exception as exc:  # noqa: BLE001
            row["error"] = f"{exc}"[-2000:]
        finally:
            worker.stop()
        return self._record(row)

    # -- report --------------------------------------------------------------------------

    def find(self, run: str, workload: str, precision: Optional[str] = None) -> Optional[dict[str, Any]]:
        for row in self.results:
            if row["run"] == run and row["workload"] == workload and (precision is None or row.get("precision") == precision):
                if row.get("events_per_s"):
                    return row
        return None

    def ratios(self) -> dict[str, Optional[float]]:
        def r(a: Optional[dict[str, Any]], b: Optional[dict[str, Any]]) -> Optional[float]:
            if a and b and a.get("events_per_s") and b.get("events_per_s"):
                return round(a["events_per_s"] / b["events_per_s"], 3)
            return None

        out: dict[str, Optional[float]] = {}
        base = self.cfg.precisions[0]
        for w in WORKLOADS:
            for p in self.cfg.precisions:
                out[f"e2e_vs_ceiling_{w}_{p}"] = r(self.find("e2e", w, p), self.find("ceiling", w, p))
                out[f"e2e_vs_naive_{w}_{p}"] = r(self.find("e2e", w, p), self.find("naive", w))
                out[f"e2e_vs_batched_{w}_{p}"] = r(self.find("e2e", w, p), self.find("batched", w))
            out[f"batched_vs_naive_{w}"] = r(self.find("batched", w), self.find("naive", w))
        fastest = self._fastest("short")
        out["e2e_fastest_vs_naive_short"] = r(self.find("e2e", "short", fastest), self.find("naive", "short")) if fastest else None
        out["fastest_precision_short"] = fastest  # type: ignore[assignment]
        out["base_precision"] = base  # type: ignore[assignment]
        return out

    def _fastest(self, workload: str) -> Optional[str]:
        rows = [row for row in self.results if row["run"] == "e2e" and row["workload"] == workload and row.get("events_per_s")]
        return max(rows, key=lambda row: row["events_per_s"])["precision"] if rows else None

    def targets(self) -> list[dict[str, Any]]:
        ratios = self.ratios()
        base = self.cfg.precisions[0]
        checks: list[dict[str, Any]] = []
        soak_only = bool(self.results) and all(row["run"] == "soak" for row in self.results)

        def add(name: str, value: Optional[float], target: float, higher_is_better: bool = True, note: str = "") -> None:
            met = None if value is None else (value >= target if higher_is_better else value <= target)
            checks.append({"target": name, "value": value, "goal": (">= " if higher_is_better else "<= ") + str(target),
                           "met": met, "note": note})

        if soak_only:
            soak_row = next((row for row in self.results if "rss_growth" in row), None)
            add("soak RSS growth after warm-up", soak_row["rss_growth"] if soak_row else None,
                TARGETS["soak_rss_growth_max"], higher_is_better=False)
            return checks
        add(f"e2e / ceiling, short ({base})", ratios.get(f"e2e_vs_ceiling_short_{base}"), TARGETS["e2e_vs_ceiling_short"])
        add(f"e2e / ceiling, mixed ({base})", ratios.get(f"e2e_vs_ceiling_mixed_{base}"), TARGETS["e2e_vs_ceiling_mixed"])
        add(f"e2e / naive, short ({base})", ratios.get(f"e2e_vs_naive_short_{base}"), TARGETS["e2e_vs_naive_short_fp32"])
        add(f"e2e fastest ({ratios.get('fastest_precision_short')}) / naive, short",
            ratios.get("e2e_fastest_vs_naive_short"), TARGETS["e2e_fastest_vs_naive_short"])
        add(f"e2e / batched, mixed ({base})", ratios.get(f"e2e_vs_batched_mixed_{base}"), TARGETS["e2e_vs_batched_mixed"])
        e2e_mixed = self.find("e2e", "mixed", base)
        add("padding efficiency, mixed (e2e)", e2e_mixed.get("padding_efficiency") if e2e_mixed else None,
            TARGETS["padding_efficiency_mixed"])
        noop = next((row for row in self.results if row["run"] == "noop" and row.get("events_per_s")), None)
        add("no-op worker events/s", noop["events_per_s"] if noop else None, TARGETS["noop_events_per_s"])
        trickle = next((row for row in self.results if row["run"] == "trickle" and row.get("p99_ms")), None)
        if trickle and trickle.get("latency_bound_ms"):
            add("trickle p99 latency ms (bound = wait + mean batch inference + 50 ms)", trickle["p99_ms"],
                trickle["latency_bound_ms"], higher_is_better=False)
        else:
            add("trickle p99 latency ms", None, 0.0, higher_is_better=False)
        soak = next((row for row in self.results if row["run"] == "soak" and "rss_growth" in row), None)
        if soak:
            add("soak RSS growth after warm-up", soak["rss_growth"], TARGETS["soak_rss_growth_max"], higher_is_better=False)
        return checks

    def report(self) -> dict[str, Any]:
        import platform

        import torch

        cfg = self.cfg
        return {
            "created": datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": {
                "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            },
            "config": {
                "model": str(cfg.model), "model_size": cfg.model_size, "device": cfg.device, "precisions": cfg.precisions,
                "workloads": cfg.workloads, "runs": cfg.runs, "events": cfg.events, "baseline_events": cfg.baseline_events,
                "noop_events": cfg.noop_events, "batch_max_size": cfg.batch_max_size,
                "batch_max_wait_ms": cfg.batch_max_wait_ms, "max_batch_tokens": cfg.max_batch_tokens,
                "baseline_batch_size": cfg.baseline_batch_size, "noop_batch_size": cfg.noop_batch_size,
                "partitions": cfg.partitions, "ceiling_passes": cfg.ceiling_passes,
            },
            "results": self.results,
            "ratios": self.ratios(),
            "targets": self.targets(),
        }


def _throughput(n: int, start_s: float, out: Outputs) -> dict[str, Any]:
    end_ms = out.last_append_ms or 0.0
    seconds = max(end_ms / 1000 - start_s, 1e-6)
    return {"seconds": round(seconds, 2), "events_per_s": round(n / seconds, 2), **_latency(out)}


def _latency(out: Outputs) -> dict[str, Any]:
    lat = out.latencies_ms
    return {
        "p50_ms": _round(percentile(lat, 50)),
        "p95_ms": _round(percentile(lat, 95)),
        "p99_ms": _round(percentile(lat, 99)),
    }


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 1)


# ----------------------------------------------------------------------------- table and chart


def format_table(report: dict[str, Any]) -> str:
    head = f"{'run':<8} {'workload':<8} {'prec':<5} {'events':>6} {'ev/s':>10} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'pad eff':>7} {'RSS MiB':>8}"
    lines = [head, "-" * len(head)]

    def fmt(value: Any, spec: str) -> str:
        return format(value, spec) if isinstance(value, (int, float)) else "-"

    for row in report["results"]:
        if row["run"] == "soak":
            continue
        lines.append(
            f"{row['run']:<8} {row['workload']:<8} {row.get('precision') or '-':<5} {row.get('events', 0):>6} "
            f"{fmt(row.get('events_per_s'), ',.1f'):>10} {fmt(row.get('p50_ms'), ',.0f'):>9} {fmt(row.get('p95_ms'), ',.0f'):>9} "
            f"{fmt(row.get('p99_ms'), ',.0f'):>9} {fmt(row.get('padding_efficiency'), '.3f'):>7} {fmt(row.get('peak_rss_mib'), ',.0f'):>8}"
            + ("  ERROR" if row.get("error") else "")
        )
    for row in report["results"]:
        if row["run"] == "soak":
            lines.append(
                f"soak {row.get('minutes')} min: {row.get('events', 0)} events, {fmt(row.get('events_per_s'), '.1f')} ev/s, "
                f"RSS after warm-up {row.get('rss_after_warmup_mib')} MiB -> max {row.get('rss_max_mib')} MiB "
                f"(growth {fmt(row.get('rss_growth'), '.2%')})"
            )
    lines.append("")
    lines.append("ratios: " + ", ".join(f"{k}={v}" for k, v in report["ratios"].items() if v is not None))
    lines.append("")
    lines.append(f"{'target':<72} {'goal':>10} {'value':>10}  met")
    for check in report["targets"]:
        value = check["value"]
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        met = {True: "yes", False: "NO", None: "n/a"}[check["met"]]
        lines.append(f"{check['target']:<72} {check['goal']:>10} {shown:>10}  {met}")
    return "\n".join(lines)


def write_chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in report["results"] if row.get("events_per_s") and row["run"] not in ("soak", "trickle")]
    workloads = [w for w in WORKLOADS if any(row["workload"] == w for row in rows)]
    series = []
    for row in rows:
        key = row["run"] + (f" {row['precision']}" if row["run"] in ("ceiling", "e2e") else "")
        if key not in series:
            series.append(key)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / max(1, len(series))
    for k, key in enumerate(series):
        values = []
        for w in workloads:
            match = [row for row in rows if row["workload"] == w and
                     (row["run"] + (f" {row['precision']}" if row["run"] in ("ceiling", "e2e") else "")) == key]
            values.append(match[0]["events_per_s"] if match else 0)
        bars = ax.bar([i + k * width for i in range(len(workloads))], values, width, label=key)
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v else "" for v in values], fontsize=7, rotation=90, padding=2)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(workloads))], workloads)
    ax.set_yscale("log")
    ax.set_ylabel("events / s (log)")
    cpus = report["machine"]["cpus"]
    ax.set_title(f"sentiment-worker bench: {report['config']['model_size']} DistilBERT, {report['config']['device']}, {cpus} CPUs")
    ax.legend(fontsize=8, ncol=2)
    pad = [(f"{row['run']} {row['workload']}", row["padding_efficiency"]) for row in report["results"]
           if row.get("padding_efficiency") and row["run"] in ("e2e", "batched") and row.get("precision") in (None, "fp32", report["config"]["precisions"][0])]
    if pad:
        ax2.barh([p[0] for p in pad], [p[1] for p in pad], color="tab:gray")
        ax2.axvline(TARGETS["padding_efficiency_mixed"], color="tab:red", linestyle="--", linewidth=1)
        ax2.set_xlim(0, 1)
        ax2.set_title("padding efficiency (real / padded tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- the command


def _csv(value: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad:
        raise typer.BadParameter(f"unknown {what} {', '.join(bad)}; choose from {', '.join(allowed)}")
    return items


def bench(
    runs: str = typer.Option(",".join(RUNS), "--runs", help=f"Comma-separated runs: {', '.join(RUNS)}."),
    workloads: str = typer.Option(",".join(WORKLOADS), "--workloads", help="Comma-separated: short, mixed, long."),
    precisions: Optional[str] = typer.Option(
        None, "--precisions", help="Precisions of the ceiling and e2e runs, first is the reference "
        "(default: fp32,int8 on CPU; fp16,bf16 on CUDA). The baselines always run fp32 (fp16 on CUDA)."),
    events: Optional[int] = typer.Option(None, "--events", help="Events per ceiling/e2e run (default per workload: 1024/512/128)."),
    baseline_events: Optional[int] = typer.Option(None, "--baseline-events", help="Events per baseline run (default 256/256/64)."),
    noop_events: int = typer.Option(20000, "--noop-events", help="Events of the no-op run."),
    batch_max_size: int = typer.Option(64, "--batch-max-size", help="BATCH_MAX_SIZE of the worker and ceiling."),
    batch_max_wait_ms: int = typer.Option(50, "--batch-max-wait-ms", help="BATCH_MAX_WAIT_MS of the worker."),
    max_batch_tokens: int = typer.Option(16384, "--max-batch-tokens", help="MAX_BATCH_TOKENS of the worker and ceiling."),
    baseline_batch_size: int = typer.Option(32, "--baseline-batch-size", help="batch_size of the batched baseline's pipeline()."),
    noop_batch_size: int = typer.Option(512, "--noop-batch-size", help="BATCH_MAX_SIZE of the no-op run."),
    trickle_rate: float = typer.Option(10.0, "--trickle-rate", help="Events per second of the trickle run."),
    trickle_seconds: float = typer.Option(30.0, "--trickle-seconds", help="Length of the trickle run."),
    partitions: int = typer.Option(6, "--partitions", help="Partitions of the bench topics."),
    ceiling_passes: int = typer.Option(2, "--ceiling-passes", help="Passes of the ceiling run over its batches; the fastest counts."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model directory (default: a random DistilBERT, written once into the cache)."),
    model_size: str = typer.Option("base", "--model-size", help="base (full DistilBERT compute) or tiny, for the default random model."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (the worker's DEVICE)."),
    bootstrap: Optional[str] = typer.Option(None, "--bootstrap", help="Use this Kafka broker instead of starting one."),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for bench.json and bench.png (default .cache/bench/results/<time>)."),
    cache: Path = typer.Option(DEFAULT_CACHE, "--cache", help="Where the bench model and scratch files live."),
    quick: bool = typer.Option(False, "--quick", help="Smoke test: tiny model, a few events, short workload, 8 s trickle."),
    soak_minutes: Optional[float] = typer.Option(None, "--soak-minutes", help="Soak mode only: e2e at full load for this long, RSS sampled."),
    keep_work: bool = typer.Option(False, "--keep-work", help="Keep the scratch directory (broker data, worker logs)."),
) -> None:
    """Benchmark the engine ceiling, the worker end to end, naive and batched baselines and a no-op worker."""
    import logging

    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # retries while new topics settle
    run_list = _csv(runs, RUNS, "run")
    workload_list = _csv(workloads, WORKLOADS, "workload")
    if quick:
        model_size = "tiny"
        if workloads == ",".join(WORKLOADS):
            workload_list = ["short"]
        events = events or 64
        baseline_events = baseline_events or 32
        noop_events = min(noop_events, 500)
        trickle_seconds = min(trickle_seconds, 8.0)
    if precisions is None:
        precisions = "fp16,bf16" if device.startswith("cuda") else ("fp32" if quick else "fp32,int8")
    precision_list = _csv(precisions, ("fp32", "fp16", "bf16", "int8"), "precision")
    cache = cache.resolve()
    model_dir = model.resolve() if model else ensure_model(cache, model_size)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = (out or cache / "results" / stamp).resolve()
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=cache))
    default_events = {"short": 1024, "mixed": 512, "long": 128}
    default_baseline = {"short": 256, "mixed": 256, "long": 64}
    cfg = Config(
        model=model_dir, model_size=model_size if model is None else model_dir.name, device=device,
        precisions=precision_list, workloads=workload_list, runs=run_list,
        events={w: events or default_events[w] for w in WORKLOADS},
        baseline_events={w: baseline_events or default_baseline[w] for w in WORKLOADS},
        noop_events=noop_events, batch_max_size=batch_max_size, batch_max_wait_ms=batch_max_wait_ms,
        max_batch_tokens=max_batch_tokens, baseline_batch_size=baseline_batch_size, noop_batch_size=noop_batch_size,
        trickle_rate=trickle_rate, trickle_seconds=trickle_seconds, partitions=partitions, work=work, out=out_dir,
        ceiling_passes=1 if quick else ceiling_passes,
    )
    _say(f"bench: model {model_dir} ({cfg.model_size}), device {device}, precisions {precision_list}, "
         f"workloads {workload_list}, runs {run_list}; results in {out_dir}")
    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # so the finally blocks stop workers and the broker

    signal.signal(signal.SIGTERM, _terminate)
    try:
        _run_bench(cfg, bootstrap, soak_minutes, run_list, workload_list, precision_list)
    except KeyboardInterrupt:
        _say("interrupted; partial results are in " + str(out_dir / "bench.json"))
        raise typer.Exit(130) from None
    finally:
        if not keep_work:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


def _run_bench(cfg: Config, bootstrap: Optional[str], soak_minutes: Optional[float], run_list: list[str],
               workload_list: list[str], precision_list: list[str]) -> None:
    out_dir = cfg.out
    with kafka_broker(bootstrap, cfg.work) as server:
        b = Bench(cfg, server)
        if soak_minutes:
            b.soak(soak_minutes, precision_list[0])
        else:
            plan: list[tuple[str, Any]] = []
            for w in workload_list:  # the issue's priority: short and mixed first, then long
                for p in precision_list:
                    if "ceiling" in run_list:
                        plan.append((f"ceiling {w} {p}", lambda w=w, p=p: b.ceiling(w, p)))
                    if "e2e" in run_list:
                        plan.append((f"e2e {w} {p}", lambda w=w, p=p: b.e2e(w, p)))
                for mode in ("naive", "batched"):
                    if mode in run_list:
                        plan.append((f"{mode} {w}", lambda w=w, mode=mode: b.baseline(w, mode)))
                if w == "short" and "noop" in run_list:
                    plan.append(("noop short", lambda: b.e2e("short", precision_list[0], noop=True)))
                if w == "short" and "trickle" in run_list:
                    plan.append(("trickle short", lambda: b.trickle(precision_list[0])))
            if "noop" in run_list and "short" not in workload_list:
                plan.append(("noop short", lambda: b.e2e("short", precision_list[0], noop=True)))
            for i, (name, step) in enumerate(plan, 1):
                _say(f"[{i}/{len(plan)}] {name}")
                step()
        report = b.report()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2))
    if not soak_minutes:
        write_chart(report, out_dir / "bench.png")
    print(format_table(report))
    print(f"\nwrote {out_dir / 'bench.json'}" + ("" if soak_minutes else f" and {out_dir / 'bench.png'}"))


# ----------------------------------------------------------------------------- subprocess roles


def _ceiling_main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    for name in ("--model", "--workload", "--precision", "--device"):
        parser.add_argument(name, required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--max-batch-tokens", type=int, required=True)
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args(argv)

    from worker.model.engine import SentimentEngine

    engine = SentimentEngine.load(
        args.model, device=args.device, precision=args.precision, max_batch_tokens=args.max_batch_tokens,
        max_batch_rows=args.batch_size, attention=args.attention,
    )
    engine.warmup()
    texts = make_texts(args.workload, args.events)
    batches = [engine.encode(texts[i: i + args.batch_size]) for i in range(0, len(texts), args.batch_size)]
    engine.infer(batches[0])  # shapes of this workload
    # The ceiling is the best the engine does: the fastest of ``passes`` passes over the
    # same batches (a pass hit by other work on the machine is not the model's limit).
    pass_seconds: list[float] = []
    times: list[float] = []
    real = padded = 0
    for _ in range(max(1, args.passes)):
        times_now, real, padded = [], 0, 0
        t_all = time.perf_counter()
        for encoded in batches:
            t0 = time.perf_counter()
            report = engine.infer(encoded).report
            times_now.append(time.perf_counter() - t0)
            real += report.real_tokens
            padded += report.padded_tokens
        if engine.info.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        pass_seconds.append(time.perf_counter() - t_all)
        if pass_seconds[-1] == min(pass_seconds):
            times = times_now
    total = min(pass_seconds)
    single = []
    one = engine.encode(make_texts("short", 20, seed=3))
    for i in range(20):
        part = type(one)(input_ids=[one.input_ids[i]], truncated=[one.truncated[i]])
        t0 = time.perf_counter()
        engine.infer(part)
        single.append(time.perf_counter() - t0)
    print(json.dumps({
        "seconds": round(total, 2),
        "events_per_s": round(args.events / total, 2),
        "pass_events_per_s": [round(args.events / sec, 2) for sec in pass_seconds],
        "batch_infer_p50_ms": _round(percentile(times, 50) * 1000),  # type: ignore[operator]
        "batch_infer_p99_ms": _round(percentile(times, 99) * 1000),  # type: ignore[operator]
        "single_infer_p50_ms": _round(percentile(single, 50) * 1000),  # type: ignore[operator]
        "single_infer_p99_ms": _round(percentile(single, 99) * 1000),  # type: ignore[operator]
        "padding_efficiency": round(real / padded, 4) if padded else None,
        "peak_rss_mib": self_peak_rss_mib(),
        "attention": engine.info.attention,
    }))


def _baseline_main(argv: list[str]) -> None:
    """What a user writes first: a consumer loop around transformers' pipeline()."""
    import argparse

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
    from aiokafka.abc import ConsumerRebalanceListener
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    clf = pipeline("text-classification", model=args.model, device=device,
                   dtype=torch.float16 if device.type == "cuda" else torch.float32)
    clf("warm up the model")
    tokenizer = clf.tokenizer
    state: dict[str, Any] = {"assigned_at": None, "real": 0, "padded": 0}

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked: Any) -> None:
            pass

        def on_partitions_assigned(self, assigned: Any) -> None:
            if assigned and state["assigned_at"] is None:
                state["assigned_at"] = time.time()

    def padding(texts: list[str], chunk: int) -> None:
        lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=512)["input_ids"]]
        for i in range(0, len(lengths), chunk):
            part = lengths[i: i + chunk]
            state["real"] += sum(part)
            state["padded"] += max(part) * len(part)

    async def main() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=args.bootstrap, group_id=args.group, auto_offset_reset="earliest",
                                    enable_auto_commit=True, max_poll_records=args.fetch_max)
        consumer.subscribe([args.input_topic], listener=Listener())
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
        "assigned_at": state["assigned_at"],
        "padding_efficiency": round(state["real"] / state["padded"], 4) if state["padded"] else None,
        "peak_rss_mib": self_peak_rss_mib(),
    }))


def _noop_worker_main(argv: list[str]) -> None:
    """The real worker CLI with the model's forward pass replaced by a no-op.

    Kept: consuming, decoding, the tokenizer (engine.encode), the sub-batch plan,
    building the padded id/mask tensors, the softmax and Prediction objects,
    output encoding, publishing with awaited acks, in-order acks and commits.
    Skipped: only the transformer's forward pass (logits are zeros).
    """
    import torch

    from worker.cli import main
    from worker.model.engine import SentimentEngine

    original = SentimentEngine.from_settings.__func__  # type: ignore[attr-defined]

    def from_settings(cls: Any, settings: Any) -> Any:
        engine = original(cls, settings)
        labels = len(engine.info.labels)

        class _Out:
            def __init__(self, logits: torch.Tensor) -> None:
                self.logits = logits

        def forward(*, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
            return _Out(torch.zeros((input_ids.shape[0], labels)))

        return engine.with_forward(forward)

    SentimentEngine.from_settings = classmethod(from_settings)  # type: ignore[method-assign, assignment]
    sys.argv = ["sentiment-worker", *argv]
    profile = os.environ.get("BENCH_PROFILE")  # a file: cProfile of the event-loop thread, for finding overheads
    if profile:
        import atexit
        import cProfile

        profiler = cProfile.Profile()
        atexit.register(lambda: profiler.dump_stats(profile))
        profiler.enable()
    main()


def main() -> None:
    role, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if role == "_ceiling":
        _ceiling_main(rest)
    elif role == "_baseline":
        _baseline_main(rest)
    elif role == "_noop_worker":
        _noop_worker_main(rest)
    else:
        typer.run(bench)
