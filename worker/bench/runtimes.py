"""Ceiling throughput of each runtime and precision side by side: ``python -m worker.bench.runtimes MODEL_DIR``.

torch fp32 and int8, ONNX Runtime fp32 and int8 unfused and fused (the transformers
optimizer), on the same length-sorted batches of a workload. Each engine runs alone in a
process of its own, as in the worker: with its own cost model (learnt at warm-up, so
each runtime gets the plan that suits it) and no other runtime's threads beside it (in
one process, torch's and ONNX Runtime's thread pools took turns spinning, which cost ONNX
Runtime about half its speed). The processes take turns, one pass each per round, and the
best pass of each counts: on a shared machine each gets the same chances of a quiet pass.
Prints one JSON line per round.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Optional

from worker.bench.workloads import make_texts
from worker.model.engine import SentimentEngine
from worker.model.loading import default_threads

ENGINES = ("torch fp32", "onnxruntime fp32", "onnxruntime fp32 fused",
           "torch int8", "onnxruntime int8", "onnxruntime int8 fused")


def engine(model: str, name: str, threads: int, batch_size: int) -> SentimentEngine:
    """One engine by name ("torch fp32", "onnxruntime int8 fused", ...), warmed up, its costs learnt."""
    runtime, precision, *fused = name.split()
    if runtime == "onnxruntime":
        from worker.model import onnx_runtime

        onnx_runtime.OPTIMIZE = bool(fused)  # this process runs this one engine
    built = SentimentEngine.load(model, device="cpu", precision=precision, threads=threads,
                                 max_batch_rows=batch_size, runtime=runtime)
    if built.info.runtime != runtime:
        raise SystemExit(f"{name}: {runtime} can't run this model here (the log says why)")
    built.warmup()
    return built


def one(model: str, name: str, threads: int, batch_size: int, workload: str, events: int, passes: int) -> float:
    """The best of ``passes`` passes of one engine over the workload's batches, in events/s."""
    built = engine(model, name, threads, batch_size)
    texts = sorted(make_texts(workload, events), key=len)
    batches = [built.encode(texts[i: i + batch_size]) for i in range(0, len(texts), batch_size)]
    built.infer(batches[0])  # first calls of a shape are slow for reasons that don't recur
    built.infer(batches[-1])
    best = 0.0
    for _ in range(passes):
        started = time.perf_counter()
        for batch in batches:
            built.infer(batch)
        best = max(best, events / (time.perf_counter() - started))
    return best


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a local model directory (sentiment-worker model init-random DIR --size base)")
    parser.add_argument("--workload", default="short")
    parser.add_argument("--events", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: the cores this process may use")
    parser.add_argument("--engines", default=",".join(ENGINES), help="which, comma-separated")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # a child: one engine, one pass
    args = parser.parse_args(argv)
    threads = args.threads or default_threads()
    if args.only:
        rate = one(args.model, args.only, threads, args.batch_size, args.workload, args.events, passes=2)
        print(json.dumps({"engine": args.only, "events_per_s": rate}), flush=True)
        return
    names = [n.strip() for n in args.engines.split(",") if n.strip()]
    best = {name: 0.0 for name in names}
    for round_no in range(1, args.rounds + 1):
        for name in names:
            out = subprocess.run(
                [sys.executable, "-m", "worker.bench.runtimes", args.model, "--only", name, "--threads", str(threads),
                 "--workload", args.workload, "--events", str(args.events), "--batch-size", str(args.batch_size)],
                capture_output=True, text=True, check=True,
            )
            best[name] = max(best[name], json.loads(out.stdout.strip().splitlines()[-1])["events_per_s"])
        print(json.dumps({"round": round_no, "best_events_per_s": {k: round(v, 1) for k, v in best.items()}}), flush=True)
    for name, rate in best.items():
        print(f"{name:<26} {rate:8.1f} events/s")


if __name__ == "__main__":
    main()
