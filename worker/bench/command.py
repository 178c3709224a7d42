"""``sentiment-worker bench``: its options, and the order the runs go in."""

from __future__ import annotations

import json
import signal
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import typer

from worker.bench import report
from worker.bench.harness import REPO, kafka_broker
from worker.bench.runs import DEFAULT_RUNS, RUNS, SIM_PROFILES, Bench, Config, ensure_model, say
from worker.bench.workloads import WORKLOADS

DEFAULT_CACHE = REPO / ".cache" / "bench"
GUARANTEES = ("at_least_once", "exactly_once")
RUNTIMES = ("torch", "onnxruntime", "auto")


def _csv(value: str, allowed: Optional[Sequence[str]], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if allowed is not None and v not in allowed]
    if bad or not items:
        raise typer.BadParameter(f"unknown {what} {', '.join(bad)}; choose from {', '.join(allowed or ())}")
    return items


def bench(
    runs: str = typer.Option(",".join(DEFAULT_RUNS), "--runs",
                             help=f"Comma-separated runs: {', '.join(RUNS)} (sweep is not in the default list)."),
    workloads: str = typer.Option(",".join(WORKLOADS), "--workloads", help="Comma-separated: short, mixed, long."),
    precisions: Optional[str] = typer.Option(
        None, "--precisions", help="Precisions of the ceiling and e2e runs, first is the reference "
        "(default: fp32,int8 on CPU; fp16,bf16 on CUDA). The baselines always run fp32 (fp16 on CUDA)."),
    runtimes: str = typer.Option(
        "torch", "--runtimes", help="RUNTIME of the ceiling and e2e runs, comma-separated (torch, onnxruntime, auto): "
        "each runtime and precision side by side, the first the reference (the other runs use it)."),
    events: Optional[int] = typer.Option(None, "--events", help="Events per ceiling/e2e run (default per workload: 1024/512/128)."),
    baseline_events: Optional[int] = typer.Option(None, "--baseline-events", help="Events per baseline run (default 256/256/64)."),
    noop_events: int = typer.Option(20000, "--noop-events", help="Events of the no-op and limit runs."),
    batch_max_size: Optional[int] = typer.Option(
        None, "--batch-max-size", help="BATCH_MAX_SIZE of the worker and ceiling (default 64; --device sim: --noop-batch-size)."),
    batch_max_wait_ms: int = typer.Option(50, "--batch-max-wait-ms", help="BATCH_MAX_WAIT_MS of the worker."),
    max_batch_tokens: int = typer.Option(16384, "--max-batch-tokens", help="MAX_BATCH_TOKENS of the worker and ceiling."),
    baseline_batch_size: int = typer.Option(32, "--baseline-batch-size", help="batch_size of the batched baseline's pipeline()."),
    noop_batch_size: int = typer.Option(512, "--noop-batch-size", help="BATCH_MAX_SIZE of the no-op and limit runs."),
    trickle_rate: float = typer.Option(10.0, "--trickle-rate", help="Events per second of the trickle run."),
    trickle_seconds: float = typer.Option(30.0, "--trickle-seconds", help="Length of the trickle run."),
    partitions: str = typer.Option("6", "--partitions", help="Partitions of the bench topics; a list (6,24,60) runs noop and limit once per count."),
    guarantees: str = typer.Option("at_least_once", "--guarantees", help="PROCESSING_GUARANTEE of the no-op run; a list runs it once per guarantee."),
    processes: str = typer.Option("1", "--processes", help="WORKER_PROCESSES of the no-op run; a list (1,2) runs it once per count."),
    tracing: bool = typer.Option(False, "--tracing/--no-tracing", help="Also run the no-op worker with TRACING=true (spans made, then dropped): what tracing costs."),
    ceiling_passes: int = typer.Option(2, "--ceiling-passes", help="Passes of the ceiling run over its batches; the fastest counts."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model directory (default: a random DistilBERT, written once into the cache)."),
    model_size: str = typer.Option("base", "--model-size", help="base (full DistilBERT compute) or tiny, for the default random model."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (the worker's DEVICE), or sim: the real worker on "
                               "the CPU with a simulated accelerator for its forward pass (tiny model unless --model)."),
    sim_ns_per_token: float = typer.Option(30.0, "--sim-ns-per-token", help="--device sim: the fast profile's cost per padded token."),
    sim_ms_per_call: float = typer.Option(2.0, "--sim-ms-per-call", help="--device sim: the cost of one model call (every profile)."),
    sim_slow_ns_per_token: float = typer.Option(10000.0, "--sim-slow-ns-per-token", help="--device sim: the slow profile's cost per padded token."),
    sim_profiles: str = typer.Option("fast", "--sim-profiles", help="--device sim: fast (CPU-bound) and/or slow "
                                     "(device-bound); the ceiling and e2e runs go once per profile, the others take the first."),
    sweep_sizes: str = typer.Option("32,64,128,256,512", "--sweep-sizes", help="sweep: the fixed BATCH_MAX_SIZEs tried."),
    sweep_waits_ms: str = typer.Option("5,20,50", "--sweep-waits-ms", help="sweep: the fixed BATCH_MAX_WAIT_MSs tried."),
    sweep_events: Optional[int] = typer.Option(None, "--sweep-events", help="sweep: events per run (default: --events of the short workload)."),
    latency_target_ms: Optional[int] = typer.Option(
        None, "--latency-target-ms", help="LATENCY_TARGET_MS of the trickle run (its p99 is reported against it) and of "
        "the sweep's adaptive run (default 500 there)."),
    bootstrap: Optional[str] = typer.Option(None, "--bootstrap", help="Use this Kafka broker instead of starting one."),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for bench.json and bench.png (default .cache/bench/results/<time>)."),
    cache: Path = typer.Option(DEFAULT_CACHE, "--cache", help="Where the bench model and scratch files live."),
    quick: bool = typer.Option(False, "--quick", help="Smoke test: tiny model, a few events, short workload, 8 s trickle."),
    soak_minutes: Optional[float] = typer.Option(None, "--soak-minutes", help="Soak mode only: e2e at full load for this long, RSS sampled."),
    keep_work: bool = typer.Option(False, "--keep-work", help="Keep the scratch directory (broker data, worker logs)."),
) -> None:
    """Benchmark the engine ceiling, the worker end to end, the baselines, a no-op worker and its limit."""
    import logging

    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # retries while new topics settle
    run_list = _csv(runs, RUNS, "run")
    workload_list = _csv(workloads, WORKLOADS, "workload")
    guarantee_list = _csv(guarantees, GUARANTEES, "guarantee")
    profile_list = _csv(sim_profiles, SIM_PROFILES, "simulated-device profile")
    runtime_list = _csv(runtimes, RUNTIMES, "runtime")
    try:
        partition_list = [int(p) for p in _csv(partitions, None, "partition count")]
        process_list = [int(p) for p in _csv(processes, None, "process count")]
        size_list = [int(p) for p in _csv(sweep_sizes, None, "batch size")]
        wait_list = [int(p) for p in _csv(sweep_waits_ms, None, "wait")]
    except ValueError:
        raise typer.BadParameter("--partitions, --processes and --sweep-* take numbers, e.g. 6,24,60") from None
    sim = device == "sim"
    if sim:
        if model is None:
            model_size = "tiny"  # the forward pass is simulated: only the tokenizer and labels matter
        # A simulated device is fast: e2e runs as long and as batched as the no-op run it is compared with.
        events = events or noop_events
        batch_max_size = batch_max_size or noop_batch_size
        if runtime_list != ["torch"]:
            say("--device sim: --runtimes ignored (the simulated device replaces the forward pass of any runtime)")
            runtime_list = ["torch"]
        for baseline in ("naive", "batched"):
            if baseline in run_list:
                say(f"--device sim: no {baseline} run (transformers' pipeline() has no simulated device)")
                run_list.remove(baseline)
    if quick:
        model_size = "tiny"
        if workloads == ",".join(WORKLOADS):
            workload_list = ["short"]
        events = events or 64
        baseline_events = baseline_events or 32
        noop_events = min(noop_events, 500)
        trickle_seconds = min(trickle_seconds, 8.0)
        if sim:
            events = min(events, noop_events)
        sweep_events = sweep_events or min(events, 500)
    if precisions is None:
        precisions = "fp16,bf16" if device.startswith("cuda") else ("fp32" if quick or sim else "fp32,int8")
    precision_list = _csv(precisions, ("fp32", "fp16", "bf16", "int8"), "precision")
    cache = cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    model_dir = model.resolve() if model else ensure_model(cache, model_size)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = (out or cache / "results" / stamp).resolve()
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=cache))
    default_events = {"short": 1024, "mixed": 512, "long": 128}
    batch_max_size = batch_max_size or 64
    default_baseline = {"short": 256, "mixed": 256, "long": 64}
    cfg = Config(
        model=model_dir, model_size=model_size if model is None else model_dir.name, device=device,
        precisions=precision_list, workloads=workload_list, runs=run_list,
        events={w: events or default_events[w] for w in WORKLOADS},
        baseline_events={w: baseline_events or default_baseline[w] for w in WORKLOADS},
        noop_events=noop_events, batch_max_size=batch_max_size, batch_max_wait_ms=batch_max_wait_ms,
        max_batch_tokens=max_batch_tokens, baseline_batch_size=baseline_batch_size, noop_batch_size=noop_batch_size,
        trickle_rate=trickle_rate, trickle_seconds=trickle_seconds, partitions=partition_list,
        guarantees=guarantee_list, processes=process_list, tracing=tracing, work=work, out=out_dir, ceiling_passes=1 if quick else ceiling_passes,
        sim_profiles=tuple(profile_list), sim_ns_per_token=sim_ns_per_token, sim_ms_per_call=sim_ms_per_call,
        sim_slow_ns_per_token=sim_slow_ns_per_token, sweep_sizes=tuple(size_list), sweep_waits_ms=tuple(wait_list),
        sweep_events=sweep_events or events or default_events["short"], latency_target_ms=latency_target_ms,
        runtimes=tuple(runtime_list),
    )
    if sim:
        speeds = ", ".join(f"{p} {cfg.sim_speed(p)[0]:g} ns/token + {cfg.sim_speed(p)[1]:g} ms/call" for p in profile_list)
        say(f"bench: simulated device: {speeds}")
    say(f"bench: model {model_dir} ({cfg.model_size}), device {device}, precisions {precision_list}, "
        f"runtimes {runtime_list}, "
        f"workloads {workload_list}, runs {run_list}; results in {out_dir}")

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # so the finally blocks stop workers and the broker

    signal.signal(signal.SIGTERM, _terminate)
    try:
        _run(cfg, bootstrap, soak_minutes)
    except KeyboardInterrupt:
        say("interrupted; partial results are in " + str(out_dir / "bench.json"))
        raise typer.Exit(130) from None
    finally:
        if not keep_work:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


def _plan(b: Bench, cfg: Config) -> list[tuple[str, Any]]:
    """Short and mixed first (what the targets are about), then long; per workload the model runs first."""
    plan: list[tuple[str, Any]] = []
    runs = cfg.runs
    base = cfg.precisions[0]
    profiles: tuple[Any, ...] = cfg.sim_profiles if cfg.sim else (None,)
    for w in cfg.workloads:
        for p in cfg.precisions:
            for rt in cfg.runtimes:
                for prof in profiles:
                    tag = (f" sim {prof}" if prof else "") + (f" {rt}" if len(cfg.runtimes) > 1 else "")
                    if "ceiling" in runs:
                        plan.append((f"ceiling {w} {p}{tag}",
                                     lambda w=w, p=p, prof=prof, rt=rt: b.ceiling(w, p, prof, runtime=rt)))
                    if "e2e" in runs:
                        plan.append((f"e2e {w} {p}{tag}",
                                     lambda w=w, p=p, prof=prof, rt=rt: b.e2e(w, p, profile=prof, runtime=rt)))
        for mode in ("naive", "batched"):
            if mode in runs:
                plan.append((f"{mode} {w}", lambda w=w, mode=mode: b.baseline(w, mode)))
        if w == "short" and "trickle" in runs:
            plan.append(("trickle short", lambda: b.trickle(base)))
        if w == cfg.workloads[0] and "sweep" in runs:
            grid = f"{len(cfg.sweep_sizes)} sizes x {len(cfg.sweep_waits_ms)} waits + adaptive"
            plan.append((f"sweep {w} ({grid})", lambda w=w: b.sweep(base, w)))
    for count in cfg.partitions:
        for g in cfg.guarantees:
            for n in cfg.processes:
                for traced in (False, True) if cfg.tracing else (False,):
                    if "noop" in runs:
                        plan.append((f"noop short {g} {count} partitions {n} process(es)" + (" traced" if traced else ""),
                                     lambda count=count, g=g, n=n, traced=traced: b.e2e(
                                         "short", base, noop=True, partitions=count, guarantee=g, processes=n,
                                         tracing=traced)))
        if "limit" in runs:
            plan.append((f"limit short {count} partitions", lambda count=count: b.limit(count)))
    return plan


def _run(cfg: Config, bootstrap: Optional[str], soak_minutes: Optional[float]) -> None:
    with kafka_broker(bootstrap, cfg.work) as server:
        b = Bench(cfg, server)
        if soak_minutes:
            b.soak(soak_minutes, cfg.precisions[0])
        else:
            plan = _plan(b, cfg)
            for i, (name, step) in enumerate(plan, 1):
                say(f"[{i}/{len(plan)}] {name}")
                step()
        result = b.report()
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "bench.json").write_text(json.dumps(result, indent=2))
    if not soak_minutes:
        try:
            report.write_chart(result, cfg.out / "bench.png")
        except ImportError:
            say("no chart: matplotlib is missing (pip install 'sentiment-worker[bench]')")
    print(report.format_table(result))
    print(f"\nwrote {cfg.out / 'bench.json'}" + ("" if soak_minutes else f" and {cfg.out / 'bench.png'}"))
