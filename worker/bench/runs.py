"""The benchmark's runs, one after another on the same machine, each scoring in a process of its own.

* ``ceiling``  - the engine alone on pre-tokenised batches of ``BATCH_MAX_SIZE`` events;
* ``e2e``      - the real worker through Kafka, input pre-loaded, from its first partition
                 assignment to the broker's append time of its last output;
* ``naive``    - an aiokafka consumer calling transformers' ``pipeline`` once per message;
* ``batched``  - the same consumer calling ``pipeline(texts, batch_size=N)`` per fetch;
* ``noop``     - the real worker with only the forward pass replaced by zeros (per
                 guarantee and partition count asked for);
* ``limit``    - the no-op worker's work in a plain aiokafka loop, no Faust (per partition count);
* ``trickle``  - the real worker fed a few events per second: latency at low load;
* ``soak``     - (``--soak-minutes``) the worker at full load, its RSS sampled.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from worker.bench import report
from worker.bench.harness import OutputReader, Outputs, WorkerProcess, create_topics, free_port, produce_texts
from worker.bench.roles import percentile
from worker.bench.workloads import make_texts

REPO = Path(__file__).resolve().parents[2]
RUNS = ("ceiling", "e2e", "naive", "batched", "noop", "limit", "trickle")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def child_env(**extra: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    env.setdefault("PYTHONPATH", str(REPO))
    env["TOKENIZERS_PARALLELISM"] = env.get("TOKENIZERS_PARALLELISM", "false")
    env.update({k.upper(): str(v) for k, v in extra.items() if v is not None})
    return env


def ensure_model(cache: Path, size: str) -> Path:
    """The random DistilBERT model of the bench, written once into the cache."""
    directory = cache / "models" / size
    if not (directory / "config.json").exists():
        from worker.model.random_model import write_random_model

        write_random_model(directory, size)  # type: ignore[arg-type]
    return directory


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
    partitions: list[int]  # of the bench topics; noop and limit run once per count
    guarantees: list[str]  # of the noop run
    processes: list[int]  # WORKER_PROCESSES of the noop run; one run per count
    work: Path
    out: Path
    ceiling_passes: int = 2
    tracing: bool = False  # also a noop run with TRACING=true (spans made, then dropped)

    def as_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items() if k not in ("work", "out")}


def _padding_from_metrics(m: dict[str, float]) -> Optional[float]:
    real = m.get('sentiment_worker_tokens_total{kind="real"}')
    padded = m.get('sentiment_worker_tokens_total{kind="padded"}')
    return round(real / padded, 4) if real and padded else None


def _infer_mean_from_metrics(m: dict[str, float]) -> Optional[float]:
    total = m.get("sentiment_worker_inference_seconds_sum")
    count = m.get("sentiment_worker_inference_seconds_count")
    return total / count if total is not None and count else None


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 1)


def _latency(out: Outputs) -> dict[str, Any]:
    lat = out.latencies_ms
    return {"p50_ms": _round(percentile(lat, 50)), "p95_ms": _round(percentile(lat, 95)), "p99_ms": _round(percentile(lat, 99))}


def _throughput(n: int, start_s: float, out: Outputs) -> dict[str, Any]:
    end_ms = out.last_append_ms or 0.0
    seconds = max(end_ms / 1000 - start_s, 1e-6)
    return {"seconds": round(seconds, 2), "events_per_s": round(n / seconds, 2), **_latency(out)}


class Bench:
    def __init__(self, cfg: Config, bootstrap: str) -> None:
        self.cfg = cfg
        self.bootstrap = bootstrap
        self.results: list[dict[str, Any]] = []

    # -- helpers -------------------------------------------------------------------

    def _topics(self, label: str) -> tuple[str, str, str]:
        run = f"{label}-{uuid.uuid4().hex[:6]}"
        return f"bench-in-{run}", f"bench-out-{run}", f"bench-g-{run}"

    def _preload(self, workload: str, n: int, partitions: Optional[int] = None) -> tuple[str, str, str]:
        topic_in, topic_out, group = self._topics(workload)
        count = partitions or self.cfg.partitions[0]
        asyncio.run(create_topics(self.bootstrap, [topic_in, topic_out, f"{topic_in}-dlt"], count, log_append=[topic_out]))
        asyncio.run(produce_texts(self.bootstrap, topic_in, make_texts(workload, n), prefix=workload))
        return topic_in, topic_out, group

    def _progress(self, total: int, desc: str, unit: str = "ev") -> Any:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)

    def _record(self, row: dict[str, Any]) -> dict[str, Any]:
        # Other work on the machine skews timings: keep the load next to each figure.
        row["loadavg_1m_after"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        self.results.append(row)
        eps = row.get("events_per_s")
        say(f"  -> {row['run']:<8} {row['workload']:<6} {row.get('precision') or '':<5} "
            f"{(f'{eps:,.1f} ev/s' if eps else row.get('error', '-'))}")
        self.cfg.out.mkdir(parents=True, exist_ok=True)
        (self.cfg.out / "bench.json").write_text(json.dumps(self.report(), indent=2))
        return row

    def report(self) -> dict[str, Any]:
        return report.build(self.cfg.as_dict(), self.results, self.cfg.precisions)

    def _read_outputs(self, topic_out: str, n: int, label: str, alive: Any, idle_timeout_s: float = 300) -> Outputs:
        reader = OutputReader(self.bootstrap, topic_out)

        async def read() -> Outputs:
            await reader.start()
            with self._progress(n, label) as bar:
                try:
                    return await reader.wait_for(n, idle_timeout_s=idle_timeout_s, progress=bar, alive=alive)
                finally:
                    await reader.stop()

        return asyncio.run(read())

    # -- ceiling ---------------------------------------------------------------------

    def ceiling(self, workload: str, precision: str) -> dict[str, Any]:
        import subprocess

        n = self.cfg.events[workload]
        cmd = [
            sys.executable, "-m", "worker.bench.roles", "ceiling", "--model", str(self.cfg.model), "--workload", workload,
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
                      batch_max_size: int, partitions: int, guarantee: str = "at_least_once",
                      processes: int = 1, tracing: bool = False) -> WorkerProcess:
        env = child_env(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap, INPUT_TOPIC=topic_in, OUTPUT_TOPIC=topic_out, GROUP_ID=group,
            MODEL=str(self.cfg.model), DEVICE=self.cfg.device, PRECISION=precision, BATCH_MAX_SIZE=batch_max_size,
            BATCH_MAX_WAIT_MS=self.cfg.batch_max_wait_ms, MAX_BATCH_TOKENS=self.cfg.max_batch_tokens,
            PROCESSING_GUARANTEE=guarantee, WORKER_PROCESSES=processes, WEB_PORT=free_port(), WEB_HOST="127.0.0.1", LOG_FORMAT="json",
            LOG_LEVEL="info", STATS_INTERVAL_S=5, TOPIC_PARTITIONS=partitions, DATA_DIR=self.cfg.work / f"data-{group}",
            TRACING=str(tracing).lower(), OTEL_TRACES_EXPORTER="none" if tracing else None,
        )
        module = ["-m", "worker.bench.roles", "noop_worker"] if noop else ["-m", "worker", "run"]
        return WorkerProcess([sys.executable, *module], env, log_path=self.cfg.work / f"worker-{label}-{group}.log")

    def e2e(self, workload: str, precision: str, *, noop: bool = False, partitions: Optional[int] = None,
            guarantee: str = "at_least_once", processes: int = 1, tracing: bool = False) -> dict[str, Any]:
        run = "noop" if noop else "e2e"
        n = self.cfg.noop_events if noop else self.cfg.events[workload]
        batch = self.cfg.noop_batch_size if noop else self.cfg.batch_max_size
        count = partitions or self.cfg.partitions[0]
        row: dict[str, Any] = {"run": run, "workload": workload, "precision": None if noop else precision, "events": n,
                               "batch_max_size": batch, "partitions": count, "guarantee": guarantee,
                               "processes": processes, "tracing": tracing}
        # Comparing process counts, the input arrives once every process holds partitions: with
        # pre-loaded input the first process would drain it before the others joined.
        live = max(self.cfg.processes) > 1
        row["input"] = "produced once ready" if live else "pre-loaded"
        if live:
            topic_in, topic_out, group = self._topics(workload)
            asyncio.run(create_topics(self.bootstrap, [topic_in, topic_out, f"{topic_in}-dlt"], count,
                                      log_append=[topic_out]))
        else:
            topic_in, topic_out, group = self._preload(workload, n, count)
        worker = self._start_worker(run, topic_in, topic_out, group, precision=precision, noop=noop,
                                    batch_max_size=batch, partitions=count, guarantee=guarantee, processes=processes,
                                    tracing=tracing)
        try:
            worker.wait_ready()
            cpu_before = worker.cpu_seconds() or 0.0
            start = time.time()
            if live:
                asyncio.run(produce_texts(self.bootstrap, topic_in, make_texts(workload, n), prefix=workload))
            else:
                start = worker.assigned_at() or start
            out = self._read_outputs(topic_out, n, f"{run} {workload}", worker.alive)
            cpu = (worker.cpu_seconds() or 0.0) - cpu_before
            metrics = worker.metrics()
            row.update(_throughput(n, start, out))
            row["cpu_us_per_event"] = round(cpu / n * 1e6, 1)
            row["padding_efficiency"] = _padding_from_metrics(metrics)
            row["peak_rss_mib"] = worker.peak_rss_mib()
            mean_infer = _infer_mean_from_metrics(metrics)
            row["mean_batch_infer_ms"] = round(mean_infer * 1000, 1) if mean_infer else None
        except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others
            row["error"] = f"{exc}"[-2000:]
        finally:
            worker.stop()
        return self._record(row)

    def limit(self, partitions: int) -> dict[str, Any]:
        """The plain aiokafka batch loop (``worker.bench.roles.limit``) over the no-op run's input."""
        n = self.cfg.noop_events
        row: dict[str, Any] = {"run": "limit", "workload": "short", "precision": None, "events": n,
                               "batch_max_size": self.cfg.noop_batch_size, "partitions": partitions,
                               "padding_efficiency": None}  # no model calls to pad
        topic_in, topic_out, group = self._preload("short", n, partitions)
        cmd = [sys.executable, "-m", "worker.bench.roles", "limit", "--model", str(self.cfg.model),
               "--bootstrap", self.bootstrap, "--input-topic", topic_in, "--output-topic", topic_out, "--group", group,
               "--events", str(n), "--batch-size", str(self.cfg.noop_batch_size)]
        child = self._role(cmd, f"limit-{group}", topic_out, n, "limit short", row)
        if child is not None:
            row["peak_rss_mib"] = child.get("peak_rss_mib")
            cpu = child.get("cpu_seconds")
            row["cpu_us_per_event"] = round(cpu / n * 1e6, 1) if cpu else None
        return self._record(row)

    def _role(self, cmd: list[str], name: str, topic_out: str, n: int, label: str, row: dict[str, Any],
              idle_timeout_s: float = 300) -> Optional[dict[str, Any]]:
        """Run a scoring subprocess of ``worker.bench.roles`` (it writes a result file), read its outputs;
        its throughput goes into ``row``, its result file's content is returned (None on an error)."""
        import subprocess

        result_file = self.cfg.work / f"{name}.json"
        log_path = self.cfg.work / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen([*cmd, "--result", str(result_file)], env=child_env(), cwd=REPO, stdout=log,
                                    stderr=subprocess.STDOUT)
            try:
                out = self._read_outputs(topic_out, n, label, lambda: proc.poll() in (None, 0), idle_timeout_s)
                proc.wait(timeout=120)
                child: dict[str, Any] = json.loads(result_file.read_text())
                row.update(_throughput(n, child["assigned_at"], out))
                return child
            except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others
                row["error"] = f"{exc}\n{log_path.read_text(errors='replace')[-1500:]}"
                return None
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def trickle(self, precision: str) -> dict[str, Any]:
        rate, seconds = self.cfg.trickle_rate, self.cfg.trickle_seconds
        n = max(1, int(rate * seconds))
        count = self.cfg.partitions[0]
        row: dict[str, Any] = {"run": "trickle", "workload": "short", "precision": precision, "events": n,
                               "events_per_s": None,  # the input rate decides it: a latency run
                               "rate_per_s": rate, "batch_max_wait_ms": self.cfg.batch_max_wait_ms}
        topic_in, topic_out, group = self._topics("trickle")
        asyncio.run(create_topics(self.bootstrap, [topic_in, topic_out, f"{topic_in}-dlt"], count, log_append=[topic_out]))
        worker = self._start_worker("trickle", topic_in, topic_out, group, precision=precision, noop=False,
                                    batch_max_size=self.cfg.batch_max_size, partitions=count)
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
                            bar.update(await reader.poll(timeout_ms=0))
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
                row["latency_bound_ms"] = round(self.cfg.batch_max_wait_ms + mean_infer * 1000 + 50, 1)
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
        cmd = [
            sys.executable, "-m", "worker.bench.roles", "baseline", "--mode", mode, "--model", str(self.cfg.model),
            "--bootstrap", self.bootstrap, "--input-topic", topic_in, "--output-topic", topic_out, "--group", group,
            "--events", str(n), "--batch-size", str(self.cfg.baseline_batch_size), "--device", self.cfg.device,
            "--fetch-max", str(self.cfg.batch_max_size),
        ]
        child = self._role(cmd, f"baseline-{group}", topic_out, n, f"{mode} {workload}", row, idle_timeout_s=600)
        if child is not None:
            row["padding_efficiency"] = child.get("padding_efficiency")
            row["peak_rss_mib"] = child.get("peak_rss_mib")
        return self._record(row)

    # -- soak ----------------------------------------------------------------------------

    def soak(self, minutes: float, precision: str, warmup_fraction: float = 0.2) -> dict[str, Any]:
        """Full load for ``minutes``: the input is kept topped up; the worker's RSS is sampled every 5 s."""
        row: dict[str, Any] = {"run": "soak", "workload": "short", "precision": precision, "minutes": minutes}
        topic_in, topic_out, group = self._topics("soak")
        count = self.cfg.partitions[0]
        asyncio.run(create_topics(self.bootstrap, [topic_in, topic_out, f"{topic_in}-dlt"], count, log_append=[topic_out]))
        worker = self._start_worker("soak", topic_in, topic_out, group, precision=precision, noop=False,
                                    batch_max_size=self.cfg.batch_max_size, partitions=count)
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
