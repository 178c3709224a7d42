"""Engine ceiling on a GPU (fp16 and bf16; short and mixed), plus the worker through Kafka where Kafka can run.

Run through deploy/gpu/bench.sh. The ceiling part needs only torch and
transformers: it builds a randomly initialised DistilBERT-base (the real
checkpoint's compute) in memory and times ``worker.model.engine.SentimentEngine.infer``
-- the worker's own sub-batch planning, padding and forward path -- on
pre-tokenised batches of synthetic token ids whose lengths follow the bench
workloads (short: 8-48 tokens; mixed: 80 % short, 20 % 100-512). Several batch
sizes are tried, since a GPU wants far bigger batches than the CPU default of
64; the best one is the ceiling. On CUDA the first precision is also timed
with COMPILE_MODE=reduce-overhead (``--graphs``): CUDA graphs over the shapes the
planner buckets, each captured in the warm-up pass. The Kafka runs (``sentiment-worker bench
--runs e2e,noop,limit`` at BATCH_MAX_SIZE 512, on this device) show whether one
worker process feeds that ceiling: e2e / ceiling is the figure; they are skipped
with a note when the project's dependencies, Java or the Kafka jars are missing.
Beside them, the simulated-device runs (``sentiment-worker bench --device sim
--sim-profiles fast,slow --runs e2e,noop``): the same worker with its forward pass
replaced by a device of known speed, which tells apart this host's CPU path (fast: e2e /
noop) from feeding a busy device (slow: device busy, padding efficiency).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from worker.model.engine import Encoded, ModelInfo, SentimentEngine  # noqa: E402
from worker.bench.workloads import token_lengths  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_engine(device: torch.device, precision: str, rows: int, max_tokens: int, quick: bool,
                 graphs: bool = False) -> SentimentEngine:
    from transformers import AutoModelForSequenceClassification, DistilBertConfig

    dims = dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64) if quick else dict(dim=768, n_layers=6, n_heads=12, hidden_dim=3072)
    config = DistilBertConfig(vocab_size=30522, max_position_embeddings=512, num_labels=2, pad_token_id=0, **dims)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa", dtype=DTYPES[precision])
    model.eval().to(device)
    info = ModelInfo(
        name="random distilbert-" + ("tiny" if quick else "base"), revision=None, device=str(device),
        precision=precision, labels=("NEGATIVE", "POSITIVE"), random_weights=True,
        attention=str(getattr(model.config, "_attn_implementation", "sdpa")),
        compiled=graphs, compile_mode="reduce-overhead" if graphs else "default",
    )
    # COMPILE_MODE=reduce-overhead as the worker runs it: CUDA graphs over the planner's bucketed shapes.
    forward = torch.compile(model, dynamic=True, mode="reduce-overhead") if graphs else None
    return SentimentEngine(model, SimpleNamespace(pad_token_id=0), info, max_length=512,
                           max_batch_tokens=max_tokens, max_batch_rows=rows, forward=forward)


def encoded_batches(workload: str, events: int, rows: int) -> list[Encoded]:
    rng = random.Random(1)
    lengths = token_lengths(workload, events)
    ids = [[101] + [rng.randrange(1000, 30000) for _ in range(n - 2)] + [102] for n in lengths]
    return [Encoded(input_ids=ids[i: i + rows], truncated=[False] * len(ids[i: i + rows])) for i in range(0, len(ids), rows)]


def ceiling(device: torch.device, precision: str, workload: str, rows: int, max_tokens: int, events: int,
            seconds: float, quick: bool, graphs: bool = False) -> dict[str, Any]:
    engine = build_engine(device, precision, rows, max_tokens, quick, graphs)
    batches = encoded_batches(workload, events, rows)
    for encoded in batches if graphs else batches[:3]:  # kernels, allocator (and graphs) for these shapes
        engine.infer(encoded)
    if device.type == "cuda":
        torch.cuda.synchronize()
    done, real, padded, calls = 0, 0, 0, 0
    t0 = time.perf_counter()
    while True:
        for encoded in batches:
            report = engine.infer(encoded).report  # copies to the host: synchronises like the worker does
            done += encoded.texts
            real += report.real_tokens
            padded += report.padded_tokens
            calls += report.model_calls
        if time.perf_counter() - t0 >= seconds:
            break
    elapsed = time.perf_counter() - t0
    result = {
        "precision": precision, "workload": workload, "batch_rows": rows, "max_batch_tokens": max_tokens,
        "events": done, "seconds": round(elapsed, 2), "events_per_s": round(done / elapsed, 1),
        "tokens_per_s": round(real / elapsed), "padding_efficiency": round(real / padded, 4),
        "model_calls_per_batch": round(calls / (done / rows), 2), "attention": engine.info.attention,
        "graphs": graphs,
    }
    if device.type == "cuda":
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        torch.cuda.reset_peak_memory_stats()
    del engine
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def kafka_missing() -> Optional[str]:
    """Why the Kafka runs cannot run here, or None."""
    missing = [m for m in ("faust", "aiokafka", "orjson", "structlog", "pydantic_settings", "typer", "tqdm", "matplotlib")
               if importlib.util.find_spec(m) is None]
    if missing:
        return f"project dependencies missing: {', '.join(missing)}"
    if shutil.which("java") is None:
        return "no java on PATH (the local Kafka broker needs Java 17+)"
    if not any((REPO / ".cache" / "kafka").glob("*/libs/*.jar")) and shutil.which("mvn") is None:
        return "no Kafka jars in .cache/kafka and no Maven to fetch them"
    return None


def _bench(cmd: list[str], out: Path, timeout_s: float, what: str) -> dict[str, Any]:
    """Run a ``sentiment-worker bench`` command; its bench.json, or why there is none (``skipped``)."""
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    except subprocess.TimeoutExpired:
        return {"skipped": f"{what} took longer than {timeout_s:.0f}s"}
    if proc.returncode != 0:
        return {"skipped": f"{what} failed: {proc.stderr[-800:]}"}
    return json.loads((out / "bench.json").read_text())


def kafka_runs(events: int, timeout_s: float, device: torch.device, precision: str, batch: int) -> dict[str, Any]:
    """``sentiment-worker bench --runs e2e,noop,limit``: the worker through Kafka with the model (e2e),
    without it (noop), and the plain aiokafka loop (limit), at large batches, on this device."""
    why = kafka_missing()
    if why:
        return {"skipped": why}
    out = Path(tempfile.mkdtemp(prefix="gpu-kafka-"))
    cmd = [sys.executable, "-m", "worker", "bench", "--runs", "e2e,noop,limit", "--workloads", "short",
           "--events", str(events), "--noop-events", str(events), "--batch-max-size", str(batch),
           "--noop-batch-size", str(batch), "--max-batch-tokens", "65536", "--device", str(device),
           "--precisions", precision, "--out", str(out)]
    if device.type != "cuda":
        cmd += ["--model-size", "tiny"]
    report = _bench(cmd, out, timeout_s, "the Kafka runs")
    if "skipped" in report:
        return report
    keep = ("events", "events_per_s", "batch_max_size", "p50_ms", "p99_ms", "peak_rss_mib", "cpu_us_per_event", "error")
    return {row["run"]: {k: row.get(k) for k in keep} for row in report["results"]} | {"precision": precision}


def sim_runs(events: int, timeout_s: float, batch: int) -> dict[str, Any]:
    """``sentiment-worker bench --device sim --sim-profiles fast,slow --runs e2e,noop``: the worker with a
    simulated device, fast (30 ns/token + 2 ms/call: this host's CPU path is the limit) and slow
    (10 µs/token: the device is the limit)."""
    why = kafka_missing()
    if why:
        return {"skipped": why}
    out = Path(tempfile.mkdtemp(prefix="gpu-sim-"))
    cmd = [sys.executable, "-m", "worker", "bench", "--device", "sim", "--sim-profiles", "fast,slow",
           "--runs", "e2e,noop", "--workloads", "short", "--events", str(events), "--noop-events", str(events),
           "--batch-max-size", str(batch), "--noop-batch-size", str(batch), "--max-batch-tokens", "65536",
           "--out", str(out)]
    report = _bench(cmd, out, timeout_s, "the simulated-device runs")
    if "skipped" in report:
        return report
    keep = ("events", "events_per_s", "batch_max_size", "sim_ns_per_token", "sim_ms_per_call", "device_busy",
            "padding_efficiency", "planner_cost", "cpu_us_per_event", "error")
    rows = {(row.get("sim_profile") or row["run"]): {k: row.get(k) for k in keep} for row in report["results"]}
    ratios = report["ratios"]
    return rows | {"fast_e2e_vs_noop": ratios.get("sim_fast_e2e_vs_noop_short"),
                   "targets": [t for t in report["targets"] if t["target"].startswith("sim ")]}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (rehearsal)")
    parser.add_argument("--precisions", default=None, help="default fp16,bf16 on CUDA, fp32,bf16 on CPU")
    parser.add_argument("--workloads", default="short,mixed")
    parser.add_argument("--batch-rows", default=None, help="batch sizes to try (default 64,256,1024; quick: 16,64)")
    parser.add_argument("--max-batch-tokens", type=int, default=None, help="default 65536 (quick: 4096)")
    parser.add_argument("--events", type=int, default=None, help="events per pass (default 4096; quick 128)")
    parser.add_argument("--seconds", type=float, default=None, help="least time per configuration (default 4; quick 0.5)")
    parser.add_argument("--overhead", choices=("auto", "on", "off"), default="auto",
                        help="the worker through Kafka (e2e, noop, limit): auto = when Java/Kafka/deps are present")
    parser.add_argument("--overhead-events", type=int, default=50000)
    parser.add_argument("--kafka-batch", type=int, default=512, help="BATCH_MAX_SIZE of the Kafka runs")
    parser.add_argument("--sim", choices=("auto", "on", "off"), default="auto",
                        help="the worker with a simulated device (fast and slow), beside the real runs: "
                        "auto = when the Kafka runs run (not with --overhead off)")
    parser.add_argument("--sim-events", type=int, default=20000)
    parser.add_argument("--graphs", choices=("auto", "on", "off"), default="auto",
                        help="also the ceiling with COMPILE_MODE=reduce-overhead (CUDA graphs over bucketed shapes), "
                        "first precision; auto = on CUDA")
    parser.add_argument("--quick", action="store_true", help="tiny model, few events: a rehearsal of the script")
    parser.add_argument("--json", type=Path, default=None, help="also write all results here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device (use --device cpu to rehearse)", file=sys.stderr)
        return 2
    precisions = (args.precisions or ("fp16,bf16" if device.type == "cuda" else "fp32,bf16")).split(",")
    rows_list = [int(x) for x in (args.batch_rows or ("16,64" if args.quick else "64,256,1024")).split(",")]
    max_tokens = args.max_batch_tokens or (4096 if args.quick else 65536)
    events = args.events or (128 if args.quick else 4096)
    seconds = args.seconds if args.seconds is not None else (0.5 if args.quick else 4.0)
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"gpu bench: {name}, torch {torch.__version__}, precisions {precisions}, batch rows {rows_list}", file=sys.stderr)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    graphs = args.graphs == "on" or (args.graphs == "auto" and device.type == "cuda")
    results = []
    for workload in args.workloads.split(","):
        for precision in precisions:
            for graphed in (False, True) if graphs and precision == precisions[0] else (False,):
                for rows in rows_list:
                    r = ceiling(device, precision, workload, rows, max_tokens, events, seconds, args.quick, graphed)
                    results.append(r)
                    print(f"  ceiling {workload:<6} {precision:<5}{' graphs' if graphed else ''} rows {rows:>5}: "
                          f"{r['events_per_s']:>10,.1f} ev/s ({r['tokens_per_s']:,} tok/s, "
                          f"padding eff {r['padding_efficiency']:.3f})", file=sys.stderr, flush=True)

    overhead: dict[str, Any] = {"skipped": "--overhead off"}
    if args.overhead != "off":
        print("  the worker through Kafka (e2e, noop, limit) ...", file=sys.stderr, flush=True)
        overhead = kafka_runs(2000 if args.quick else args.overhead_events, timeout_s=420, device=device,
                              precision=precisions[0], batch=args.kafka_batch)
        if args.overhead == "on" and "skipped" in overhead:
            print(f"error: Kafka runs: {overhead['skipped']}", file=sys.stderr)
    sim: dict[str, Any] = {"skipped": f"--sim {args.sim}" + (" and --overhead off" if args.sim == "auto" else "")}
    if args.sim == "on" or (args.sim == "auto" and args.overhead != "off"):
        print("  the worker with a simulated device (fast, slow) ...", file=sys.stderr, flush=True)
        sim = sim_runs(2000 if args.quick else args.sim_events, timeout_s=420, batch=args.kafka_batch)
        if args.sim == "on" and "skipped" in sim:
            print(f"error: simulated-device runs: {sim['skipped']}", file=sys.stderr)

    best: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        key = (r["workload"], r["precision"] + (" graphs" if r["graphs"] else ""))
        if key not in best or r["events_per_s"] > best[key]["events_per_s"]:
            best[key] = r
    e2e = overhead.get("e2e", {}).get("events_per_s") if "skipped" not in overhead else None
    short = best.get(("short", overhead.get("precision", precisions[0])))
    ratio = round(e2e / short["events_per_s"], 3) if e2e and short else None
    report = {"device": name, "torch": torch.__version__, "quick": args.quick, "ceiling": results,
              "best": [best[k] for k in sorted(best)], "overhead": overhead, "e2e_vs_ceiling_short": ratio, "sim": sim,
              "seconds": round(time.perf_counter() - started, 1)}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))

    print()
    print(f"engine ceiling on {name} ({'tiny' if args.quick else 'DistilBERT-base'}, random weights), best batch size:")
    print(f"{'workload':<8} {'prec':<12} {'rows':>5} {'events/s':>11} {'tokens/s':>11} {'pad eff':>7}")
    for (workload, precision), r in sorted(best.items()):
        print(f"{workload:<8} {precision:<12} {r['batch_rows']:>5} {r['events_per_s']:>11,.1f} {r['tokens_per_s']:>11,} {r['padding_efficiency']:>7.3f}")
    if "skipped" in overhead:
        print(f"the worker through Kafka: skipped: {overhead['skipped']}")
    else:
        for run in ("e2e", "noop", "limit"):
            row = overhead.get(run, {})
            print(f"{run:<5} through Kafka (one process, batch {row.get('batch_max_size')}): {row.get('events_per_s')} "
                  f"events/s, {row.get('cpu_us_per_event')} CPU µs/event")
        print(f"e2e / ceiling (short, {overhead.get('precision')}): {ratio}")
    if "skipped" in sim:
        print(f"the worker with a simulated device: skipped: {sim['skipped']}")
    else:
        for profile in ("fast", "slow"):
            row = sim.get(profile, {})
            print(f"sim {profile} ({row.get('sim_ns_per_token')} ns/token + {row.get('sim_ms_per_call')} ms/call): "
                  f"{row.get('events_per_s')} events/s, device busy {row.get('device_busy')}, "
                  f"padding eff {row.get('padding_efficiency')}")
        for check in sim.get("targets", []):
            print(f"{check['target']}: {check['value']} (goal {check['goal']}, met: {check['met']})")
    print(f"total {report['seconds']} s")
    failed = (args.overhead == "on" and "skipped" in overhead) or (args.sim == "on" and "skipped" in sim)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
