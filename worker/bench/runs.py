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
* ``sweep``    - (not in the default list) the worker at saturation over a grid of fixed
                 batch sizes x waits, then once adapting to ``LATENCY_TARGET_MS``;
* ``soak``     - (``--soak-minutes``) the worker at full load, its RSS sampled.

With ``--device sim`` the worker runs (e2e, trickle, sweep, soak) start the ``sim_worker``
role: the real worker whose forward pass is a simulated accelerator
(:class:`worker.model.simulated.SimulatedDevice`), and the ceiling times the engine with
the same simulated forward. Profiles: ``fast`` (``--sim-ns-per-token``, default 30 ns,
and ``--sim-ms-per-call``, default 2 ms: the worker's CPU path is the limit) and ``slow``
(``--sim-slow-ns-per-token``, default 10 µs: the device is the limit).
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
RUNS = ("ceiling", "e2e", "naive", "batched", "noop", "limit", "trickle", "sweep")
DEFAULT_RUNS = ("ceiling", "e2e", "naive", "batched", "noop", "limit", "trickle")
SIM_PROFILES = ("fast", "slow")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def child_env(**extra: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "LATENCY_TARGET_MS", "SIM_"))}
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
    # --device sim: the simulated accelerator's speed per profile (fast: CPU-bound, slow: device-bound)
    sim_profiles: tuple[str, ...] = ("fast",)
    sim_ns_per_token: float = 30.0
    sim_ms_per_call: float = 2.0
    sim_slow_ns_per_token: float = 10000.0
    # the sweep run: fixed BATCH_MAX_SIZE x BATCH_MAX_WAIT_MS at saturation, then LATENCY_TARGET_MS
    sweep_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    sweep_waits_ms: tuple[int, ...] = (5, 20, 50)
    sweep_events: int = 5000
    latency_target_ms: Optional[int] = None  # given: passed to the trickle run (and the sweep's adaptive run)
    sweep_latency_target_ms: int = 500  # the sweep's adaptive run when latency_target_ms is not given
    # RUNTIME of the ceiling and e2e runs, each side by side with the others; the first one is the
    # reference, and the one the other runs (trickle, sweep, soak) use
    runtimes: tuple[str, ...] = ("torch",)

    @property
    def sim(self) -> bool:
        return self.device == "sim"

    @property
    def worker_device(self) -> str:
        """The worker's DEVICE: the simulated device's tensors live on the CPU."""
        return "cpu" if self.sim else self.device

    def sim_speed(self, profile: str) -> tuple[float, float]:
        """(ns per token, ms per call) of a simulated-device profile."""
        ns = self.sim_slow_ns_per_token if profile == "slow" else self.sim_ns_per_token
        return ns, self.sim_ms_per_call

    def as_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items() if k not in ("work", "out")}


def _padding_from_metrics(m: dict[str, float]) -> Optional[float]:
    real = m.get('sentiment_worker_tokens_total{kind="real"}')
    padded = m.get('sentiment_worker_tokens_total{kind="padded"}')
    return round(real / padded, 4) if real and padded else None


def _planner_costs_from_metrics(m: dict[str, float]) -> Optional[dict[str, Optional[float]]]:
    """The ``sentiment_worker_planner_cost{term=...}`` gauges (the planner's fitted cost model), when present."""
    import math
    import re

    costs: dict[str, Optional[float]] = {}
    for key, value in m.items():
        if key.startswith("sentiment_worker_planner_cost{"):
            term = re.search(r'term="([^"]+)"', key)
            if term:  # inf (attention_scale with no attention term) is no JSON number
                costs[term.group(1)] = value if math.isfinite(value) else None
    return costs or None


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

    def ceiling(self, workload: str, precision: str, profile: Optional[str] = None,
                runtime: Optional[str] = None) -> dict[str, Any]:
        import subprocess

        n = self.cfg.events[workload]
        runtime = runtime or self.cfg.runtimes[0]
        cmd = [
            sys.executable, "-m", "worker.bench.roles", "ceiling", "--model", str(self.cfg.model), "--workload", workload,
            "--events", str(n), "--precision", precision, "--device", self.cfg.worker_device,
            "--batch-size", str(self.cfg.batch_max_size), "--max-batch-tokens", str(self.cfg.max_batch_tokens),
            "--passes", str(self.cfg.ceiling_passes), "--runtime", runtime,
        ]
        row = {"run": "ceiling", "workload": workload, "precision": precision, "runtime": runtime, "events": n,
               **self._sim_fields(profile)}
        if self.cfg.sim:
            cmd += ["--sim-ns-per-token", str(row["sim_ns_per_token"]), "--sim-ms-per-call", str(row["sim_ms_per_call"])]
        result = subprocess.run(cmd, env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=3600)
        if result.returncode != 0:
            row["error"] = result.stderr[-2000:]
            return self._record(row)
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        measured["runtime_used"] = measured.pop("runtime", None)  # what RUNTIME=auto chose
        row.update(measured)
        row.update(p50_ms=None, p95_ms=None, p99_ms=None)  # no Kafka, no end-to-end latency
        return self._record(row)

    # -- the worker, end to end (and with a no-op model) ------------------------------

    def _start_worker(self, label: str, topic_in: str, topic_out: str, group: str, *, precision: str, noop: bool,
                      batch_max_size: int, partitions: int, guarantee: str = "at_least_once",
                      processes: int = 1, tracing: bool = False, batch_max_wait_ms: Optional[int] = None,
                      latency_target_ms: Optional[int] = None, profile: Optional[str] = None,
                      runtime: Optional[str] = None) -> WorkerProcess:
        """The worker (``-m worker run``), or the bench's no-op or simulated-device worker role."""
        sim = self.cfg.sim and not noop
        sim_env: dict[str, Any] = {}
        if sim:
            ns, ms = self.cfg.sim_speed(profile or self.cfg.sim_profiles[0])
            sim_env = {"SIM_NS_PER_TOKEN": ns, "SIM_MS_PER_CALL": ms}
        env = child_env(
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap, INPUT_TOPIC=topic_in, OUTPUT_TOPIC=topic_out, GROUP_ID=group,
            MODEL=str(self.cfg.model), DEVICE=self.cfg.worker_device, PRECISION=precision, BATCH_MAX_SIZE=batch_max_size,
            RUNTIME=runtime or self.cfg.runtimes[0],
            BATCH_MAX_WAIT_MS=self.cfg.batch_max_wait_ms if batch_max_wait_ms is None else batch_max_wait_ms,
            LATENCY_TARGET_MS=latency_target_ms, MAX_BATCH_TOKENS=self.cfg.max_batch_tokens, **sim_env,
            PROCESSING_GUARANTEE=guarantee, WORKER_PROCESSES=processes, WEB_PORT=free_port(), WEB_HOST="127.0.0.1", LOG_FORMAT="json",
            LOG_LEVEL="info", STATS_INTERVAL_S=5, TOPIC_PARTITIONS=partitions, DATA_DIR=self.cfg.work / f"data-{group}",
            TRACING=str(tracing).lower(), OTEL_TRACES_EXPORTER="none" if tracing else None,
        )
        if noop:
            module = ["-m", "worker.bench.roles", "noop_worker"]
        elif sim:
            module = ["-m", "worker.bench.roles", "sim_worker"]
        else:
            module = ["-m", "worker", "run"]
        return WorkerProcess([sys.executable, *module], env, log_path=self.cfg.work / f"worker-{label}-{group}.log")

    def _sim_fields(self, profile: Optional[str]) -> dict[str, Any]:
        if not self.cfg.sim:
            return {}
        profile = profile or self.cfg.sim_profiles[0]
        ns, ms = self.cfg.sim_speed(profile)
        return {"device": "sim", "sim_profile": profile, "sim_ns_per_token": ns, "sim_ms_per_call": ms}

    def _device_figures(self, row: dict[str, Any], metrics: dict[str, float], group: str, processes: int = 1,
                        busy_before: float = 0.0) -> None:
        """device_busy (Δ model busy seconds / the run's seconds, per process) and the planner's costs."""
        seconds = row.get("seconds")
        busy = metrics.get("sentiment_worker_model_busy_seconds_total")
        row["model_busy_s"] = None if busy is None else round(busy - busy_before, 3)
        row["planner_cost"] = _planner_costs_from_metrics(metrics)
        # Where the batcher ended (LATENCY_TARGET_MS moves them) and how many batches it cut.
        limit = metrics.get("sentiment_worker_batch_limit_events")
        wait = metrics.get("sentiment_worker_batch_wait_seconds")
        batches = metrics.get("sentiment_worker_inference_seconds_count")
        row["batch_limit_events_end"] = None if limit is None else int(limit)
        row["batch_wait_ms_end"] = None if wait is None else round(wait * 1000, 1)
        row["batches"] = None if batches is None else int(batches)
        row["device_busy"] = round(row["model_busy_s"] / seconds / processes, 4) if row["model_busy_s"] and seconds else None

    def e2e(self, workload: str, precision: str, *, noop: bool = False, partitions: Optional[int] = None,
            guarantee: str = "at_least_once", processes: int = 1, tracing: bool = False, profile: Optional[str] = None,
            run: Optional[str] = None, events: Optional[int] = None, batch_max_size: Optional[int] = None,
            batch_max_wait_ms: Optional[int] = None, latency_target_ms: Optional[int] = None,
            extra: Optional[dict[str, Any]] = None, runtime: Optional[str] = None) -> dict[str, Any]:
        run = run or ("noop" if noop else "e2e")
        n = events or (self.cfg.noop_events if noop else self.cfg.events[workload])
        batch = batch_max_size or (self.cfg.noop_batch_size if noop else self.cfg.batch_max_size)
        count = partitions or self.cfg.partitions[0]
        row: dict[str, Any] = {"run": run, "workload": workload, "precision": None if noop else precision, "events": n,
                               "batch_max_size": batch, "partitions": count, "guarantee": guarantee,
                               "processes": processes, "tracing": tracing, **(extra or {})}
        if not noop:
            runtime = runtime or self.cfg.runtimes[0]
            row["runtime"] = runtime
            row.update(self._sim_fields(profile))
        if batch_max_wait_ms is not None:
            row["batch_max_wait_ms"] = batch_max_wait_ms
        if latency_target_ms is not None:
            row["latency_target_ms"] = latency_target_ms
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
                                    tracing=tracing, batch_max_wait_ms=batch_max_wait_ms,
                                    latency_target_ms=latency_target_ms, profile=profile, runtime=runtime)
        try:
            worker.wait_ready()
            cpu_before = worker.cpu_seconds() or 0.0
            # With pre-loaded input the work starts at the assignment, before /ready: count from zero.
            busy_before = 0.0
            if live:
                busy_before = worker.metrics().get("sentiment_worker_model_busy_seconds_total", 0.0)
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
            if not noop:
                self._device_figures(row, metrics, group, processes, busy_before)
        except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others
            row["error"] = f"{exc}"[-2000:]
        finally:
            worker.stop()
        return self._record(row)

    # -- the sweep -----------------------------------------------------------------------

    def sweep(self, precision: str, workload: str = "short") -> list[dict[str, Any]]:
        """At saturation (input pre-loaded): each fixed BATCH_MAX_SIZE x BATCH_MAX_WAIT_MS of the grid,
        then the worker adapting to LATENCY_TARGET_MS within the grid's largest size and wait."""
        sizes, waits = self.cfg.sweep_sizes, self.cfg.sweep_waits_ms
        n = self.cfg.sweep_events
        rows = []
        for size in sizes:
            for wait in waits:
                say(f"  sweep: BATCH_MAX_SIZE {size}, BATCH_MAX_WAIT_MS {wait}")
                rows.append(self.e2e(workload, precision, run="sweep", events=n, batch_max_size=size,
                                     batch_max_wait_ms=wait, extra={"mode": "fixed"}))
        target = self.cfg.latency_target_ms or self.cfg.sweep_latency_target_ms
        say(f"  sweep: LATENCY_TARGET_MS {target} (BATCH_MAX_SIZE {max(sizes)}, BATCH_MAX_WAIT_MS {max(waits)})")
        rows.append(self.e2e(workload, precision, run="sweep", events=n, batch_max_size=max(sizes),
                             batch_max_wait_ms=max(waits), latency_target_ms=target, extra={"mode": "adaptive"}))
        return rows

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
                               "rate_per_s": rate, "batch_max_wait_ms": self.cfg.batch_max_wait_ms,
                               "latency_target_ms": self.cfg.latency_target_ms, **self._sim_fields(None)}
        topic_in, topic_out, group = self._topics("trickle")
        asyncio.run(create_topics(self.bootstrap, [topic_in, topic_out, f"{topic_in}-dlt"], count, log_append=[topic_out]))
        worker = self._start_worker("trickle", topic_in, topic_out, group, precision=precision, noop=False,
                                    batch_max_size=self.cfg.batch_max_size, partitions=count,
                                    latency_target_ms=self.cfg.latency_target_ms)
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
        row: dict[str, Any] = {"run": "soak", "workload": "short", "precision": precision, "minutes": minutes,
                               **self._sim_fields(None)}
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
