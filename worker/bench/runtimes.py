"""Ceiling throughput of each runtime and precision side by side: ``python -m worker.bench.runtimes MODEL_DIR``.

torch fp32 and int8, ONNX Runtime fp32 and int8 unfused and fused (the transformers
optimizer), on the same length-sorted batches of a workload. All engines live in one
process and their passes take turns, the best pass of each counting: on a shared machine
each gets the same chances of a quiet pass, which runs one after another in separate
processes don't (``sentiment-worker bench`` and the ceiling role, ``--runtime``, give
the resident memory of one runtime alone). Prints one JSON line per round.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Optional

from worker.bench.workloads import make_texts
from worker.model import onnx_runtime
from worker.model.engine import Encoded, SentimentEngine
from worker.model.loading import default_threads, load_pretrained


def engines(model: str, threads: int, batch_size: int) -> dict[str, SentimentEngine]:
    """The engines compared, by name ("torch fp32", "onnxruntime int8 fused", ...)."""
    out: dict[str, SentimentEngine] = {}
    for precision in ("fp32", "int8"):
        torch_engine = SentimentEngine.load(
            model, device="cpu", precision=precision, threads=threads, max_batch_rows=batch_size
        )
        out[f"torch {precision}"] = torch_engine
        loaded = load_pretrained(model, device="cpu", precision=precision, threads=threads, defer_torch=True)
        for fused in (False, True):
            path = onnx_runtime.exported(loaded.model, loaded.tokenizer, loaded.info, optimize=fused)
            forward = onnx_runtime.OnnxForward(path, "cpu", threads)
            out[f"onnxruntime {precision}{' fused' if fused else ''}"] = torch_engine.with_forward(forward, learn_costs=False)
    for engine in out.values():
        engine.learn_costs = False
    return out


def best_events_per_s(compared: dict[str, SentimentEngine], batches: list[Encoded], rounds: int) -> dict[str, float]:
    """Round after round, one pass of each engine over the batches; the best pass of each, in events/s."""
    events = sum(b.texts for b in batches)
    for engine in compared.values():  # first calls of each shape are slow for reasons that don't recur
        engine.infer(batches[0])
        engine.infer(batches[-1])
    best = {name: 0.0 for name in compared}
    for round_no in range(1, rounds + 1):
        for name, engine in compared.items():
            started = time.perf_counter()
            for batch in batches:
                engine.infer(batch)
            best[name] = max(best[name], events / (time.perf_counter() - started))
        print(json.dumps({"round": round_no, "best_events_per_s": {k: round(v, 1) for k, v in best.items()}}), flush=True)
    return best


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a local model directory (sentiment-worker model init-random DIR --size base)")
    parser.add_argument("--workload", default="short")
    parser.add_argument("--events", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="default: the cores this process may use")
    args = parser.parse_args(argv)

    threads = args.threads or default_threads()
    compared = engines(args.model, threads, args.batch_size)
    texts = sorted(make_texts(args.workload, args.events), key=len)
    any_engine = next(iter(compared.values()))
    batches = [any_engine.encode(texts[i: i + args.batch_size]) for i in range(0, len(texts), args.batch_size)]
    best = best_events_per_s(compared, batches, args.rounds)
    for name, rate in best.items():
        print(f"{name:<26} {rate:8.1f} events/s")


if __name__ == "__main__":
    main()
