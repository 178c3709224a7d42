"""The benchmark's report: ratios between runs measured side by side, the targets, a table, a chart.

Targets are reported, never asserted: machines are noisy, and a ratio of two
runs on the same machine in the same invocation is the figure that travels.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from worker.bench.workloads import WORKLOADS
from worker.ops.memory import find_jemalloc

TARGETS = {
    "e2e_vs_ceiling": 0.95,
    "e2e_vs_naive_short_fp32": 2.5,
    "e2e_fastest_vs_naive_short": 6.0,
    "e2e_vs_batched_mixed": 1.5,
    "padding_efficiency_mixed": 0.85,
    "noop_vs_limit": 0.8,
    "noop_cpu_us_per_event_max": 80.0,
    "soak_rss_growth_max": 0.05,
    # --device sim: a fast device (CPU-bound) must not slow the worker below its no-op run;
    # a slow one (device-bound) must be kept busy, on well-packed calls.
    "sim_fast_e2e_vs_noop": 0.9,
    "sim_slow_device_busy": 0.95,
    "sim_slow_padding_efficiency": 0.9,
    "sweep_adaptive_vs_best_fixed": 0.95,
    # --runtimes torch,onnxruntime: ONNX Runtime end to end against torch end to end, same precision
    "onnxruntime_vs_torch_e2e_short_fp32": 1.6,
    "onnxruntime_vs_torch_e2e_short_int8": 1.3,
}
DRAIN_SECONDS = 30.0  # the scale-out target of the KEDA hint (deploy/OPERATIONS.md, "Autoscaling")

Row = dict[str, Any]


def find(results: Sequence[Row], run: str, workload: Optional[str] = None, precision: Optional[str] = None,
         **match: Any) -> Optional[Row]:
    for row in results:
        if row["run"] != run or not row.get("events_per_s"):
            continue
        if workload is not None and row.get("workload") != workload:
            continue
        if precision is not None and row.get("precision") != precision:
            continue
        if all(runtime_of(row) == v if k == "runtime" else row.get(k) == v for k, v in match.items()):
            return row
    return None


def runtime_of(row: Row) -> Optional[str]:
    """The RUNTIME a ceiling or e2e row asked for (torch in results from before --runtimes)."""
    return row.get("runtime", "torch") if row["run"] in ("ceiling", "e2e") else row.get("runtime")


def _ratio(a: Optional[Row], b: Optional[Row]) -> Optional[float]:
    if a and b and a.get("events_per_s") and b.get("events_per_s"):
        return round(a["events_per_s"] / b["events_per_s"], 3)
    return None


def sweep_rows(results: Sequence[Row]) -> tuple[list[Row], Optional[Row]]:
    """The sweep's fixed runs (with a throughput) and its adaptive run."""
    fixed = [r for r in results if r["run"] == "sweep" and r.get("mode") == "fixed" and r.get("events_per_s")]
    return fixed, find(results, "sweep", mode="adaptive")


def fastest(results: Sequence[Row], workload: str) -> Optional[Row]:
    """The fastest e2e run of the workload, whatever its precision and runtime."""
    rows = [r for r in results if r["run"] == "e2e" and r["workload"] == workload and r.get("events_per_s")
            and r.get("sim_profile") in (None, "fast")]
    return max(rows, key=lambda r: r["events_per_s"]) if rows else None


def _name(row: Optional[Row]) -> Optional[str]:
    """precision, and the runtime where it is not torch: "int8", "int8 onnxruntime"."""
    if row is None:
        return None
    runtime = runtime_of(row)
    return f"{row.get('precision')}" + ("" if runtime in (None, "torch") else f" {runtime}")


def ratios(results: Sequence[Row], precisions: Sequence[str], runtimes: Sequence[str] = ("torch",)) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ref = runtimes[0] if runtimes else "torch"
    for w in WORKLOADS:
        for p in precisions:
            e2e = find(results, "e2e", w, p, runtime=ref)
            out[f"e2e_vs_ceiling_{w}_{p}"] = _ratio(e2e, find(results, "ceiling", w, p, runtime=ref))
            out[f"e2e_vs_naive_{w}_{p}"] = _ratio(e2e, find(results, "naive", w))
            out[f"e2e_vs_batched_{w}_{p}"] = _ratio(e2e, find(results, "batched", w))
            for rt in runtimes[1:]:  # each other runtime: against its own ceiling, and against the reference
                other = find(results, "e2e", w, p, runtime=rt)
                out[f"e2e_vs_ceiling_{w}_{p}_{rt}"] = _ratio(other, find(results, "ceiling", w, p, runtime=rt))
                out[f"{rt}_vs_{ref}_e2e_{w}_{p}"] = _ratio(other, e2e)
                out[f"{rt}_vs_{ref}_ceiling_{w}_{p}"] = _ratio(find(results, "ceiling", w, p, runtime=rt),
                                                                find(results, "ceiling", w, p, runtime=ref))
        out[f"batched_vs_naive_{w}"] = _ratio(find(results, "batched", w), find(results, "naive", w))
    for limit in (r for r in results if r["run"] == "limit" and r.get("events_per_s")):
        noop = find(results, "noop", partitions=limit.get("partitions"), guarantee="at_least_once", processes=1,
                    tracing=False)
        out[f"noop_vs_limit_p{limit.get('partitions')}"] = _ratio(noop, limit)
    traced = find(results, "noop", guarantee="at_least_once", processes=1, tracing=True)
    if traced:
        out["noop_traced_vs_untraced"] = _ratio(traced, find(results, "noop", partitions=traced.get("partitions"),
                                                             guarantee="at_least_once", processes=1, tracing=False))
    for row in results:
        if row["run"] == "e2e" and row.get("sim_profile") and row.get("events_per_s"):
            prof, w = row["sim_profile"], row["workload"]
            noop = find(results, "noop", guarantee="at_least_once", processes=1, tracing=False,
                        partitions=row.get("partitions"))
            out.setdefault(f"sim_{prof}_e2e_vs_noop_{w}", _ratio(row, noop))
            out.setdefault(f"sim_{prof}_e2e_vs_ceiling_{w}",
                           _ratio(row, find(results, "ceiling", w, row.get("precision"), sim_profile=prof,
                                            runtime=runtime_of(row))))
            out.setdefault(f"sim_{prof}_device_busy_{w}", row.get("device_busy"))
    fixed, adaptive = sweep_rows(results)
    if fixed:
        best_fixed = max(fixed, key=lambda r: r["events_per_s"])
        out["sweep_best_fixed"] = f"{best_fixed['batch_max_size']}x{best_fixed['batch_max_wait_ms']}ms"
        out["sweep_adaptive_vs_best_fixed"] = _ratio(adaptive, best_fixed)
    best = fastest(results, "short")
    out["e2e_fastest_vs_naive_short"] = _ratio(best, find(results, "naive", "short")) if best else None
    out["fastest_precision_short"] = _name(best)
    out["base_precision"] = precisions[0] if precisions else None
    if len(runtimes) > 1:
        out["base_runtime"] = ref
    return out


def targets(results: Sequence[Row], precisions: Sequence[str], runtimes: Sequence[str] = ("torch",)) -> list[dict[str, Any]]:
    r = ratios(results, precisions, runtimes)
    checks: list[dict[str, Any]] = []

    def add(name: str, value: Optional[float], goal: float, higher_is_better: bool = True) -> None:
        met = None if value is None else (value >= goal if higher_is_better else value <= goal)
        checks.append({"target": name, "value": value, "goal": (">= " if higher_is_better else "<= ") + str(goal), "met": met})

    soak = next((row for row in results if row["run"] == "soak" and "rss_growth" in row), None)
    if results and all(row["run"] == "soak" for row in results):
        add("soak RSS growth after warm-up", soak["rss_growth"] if soak else None, TARGETS["soak_rss_growth_max"], False)
        return checks
    base = precisions[0] if precisions else "fp32"
    ref = runtimes[0] if runtimes else "torch"
    for w in ("short", "mixed"):
        for p in precisions:
            shown = p if len(runtimes) < 2 else f"{p} {ref}"
            add(f"e2e / ceiling, {w} ({shown})", r.get(f"e2e_vs_ceiling_{w}_{p}"), TARGETS["e2e_vs_ceiling"])
            for rt in runtimes[1:]:
                add(f"e2e / ceiling, {w} ({p} {rt})", r.get(f"e2e_vs_ceiling_{w}_{p}_{rt}"), TARGETS["e2e_vs_ceiling"])
    for p in precisions:
        goal = TARGETS.get(f"onnxruntime_vs_torch_e2e_short_{p}")
        if goal and ref == "torch" and "onnxruntime" in runtimes:
            add(f"e2e onnxruntime / e2e torch, short ({p})", r.get(f"onnxruntime_vs_torch_e2e_short_{p}"), goal)
    add(f"e2e / naive, short ({base})", r.get(f"e2e_vs_naive_short_{base}"), TARGETS["e2e_vs_naive_short_fp32"])
    add(f"e2e fastest ({r.get('fastest_precision_short')}) / naive, short", r.get("e2e_fastest_vs_naive_short"),
        TARGETS["e2e_fastest_vs_naive_short"])
    add(f"e2e / batched, mixed ({base})", r.get(f"e2e_vs_batched_mixed_{base}"), TARGETS["e2e_vs_batched_mixed"])
    e2e_mixed = find(results, "e2e", "mixed", base, runtime=ref)
    add("padding efficiency, mixed (e2e)", e2e_mixed.get("padding_efficiency") if e2e_mixed else None,
        TARGETS["padding_efficiency_mixed"])
    for key, value in r.items():
        if key.startswith("noop_vs_limit_"):
            add(f"no-op worker / plain aiokafka loop ({key.rsplit('_', 1)[1]} partitions)", value, TARGETS["noop_vs_limit"])
    noop = find(results, "noop", guarantee="at_least_once", processes=1, tracing=False)
    add("no-op worker CPU µs per event (short)", noop.get("cpu_us_per_event") if noop else None,
        TARGETS["noop_cpu_us_per_event_max"], False)
    trickle = next((row for row in results if row["run"] == "trickle" and row.get("p99_ms")), None)
    if trickle and trickle.get("latency_bound_ms"):
        add("trickle p99 latency ms (bound = wait + mean batch inference + 50 ms)", trickle["p99_ms"],
            trickle["latency_bound_ms"], False)
    if trickle and trickle.get("latency_target_ms"):
        add("trickle p99 latency ms <= LATENCY_TARGET_MS", trickle["p99_ms"], trickle["latency_target_ms"], False)
    for w in WORKLOADS:
        if f"sim_fast_e2e_vs_noop_{w}" in r:
            add(f"sim fast: e2e / no-op worker, {w}", r[f"sim_fast_e2e_vs_noop_{w}"], TARGETS["sim_fast_e2e_vs_noop"])
        slow = find(results, "e2e", w, sim_profile="slow")
        if slow:
            add(f"sim slow: device busy (e2e {w})", slow.get("device_busy"), TARGETS["sim_slow_device_busy"])
            add(f"sim slow: padding efficiency (e2e {w})", slow.get("padding_efficiency"),
                TARGETS["sim_slow_padding_efficiency"])
    if "sweep_adaptive_vs_best_fixed" in r:
        add(f"sweep: adaptive / best fixed ({r.get('sweep_best_fixed')})", r["sweep_adaptive_vs_best_fixed"],
            TARGETS["sweep_adaptive_vs_best_fixed"])
    if soak:
        add("soak RSS growth after warm-up", soak["rss_growth"], TARGETS["soak_rss_growth_max"], False)
    return checks


def scaling_hint(results: Sequence[Row], precisions: Sequence[str], runtimes: Sequence[str] = ("torch",)) -> Optional[str]:
    """The KEDA lagThreshold that drains a replica's backlog in DRAIN_SECONDS at the measured rate."""
    base = precisions[0] if precisions else None
    row = find(results, "e2e", "short", base, runtime=runtimes[0] if runtimes else "torch") or find(results, "e2e")
    if row is None:
        return None
    rate = row["events_per_s"]
    threshold = max(1, int(rate * DRAIN_SECONDS))
    return (f"autoscaling: {rate:,.1f} events/s per replica ({row['workload']}, {_name(row)}) -> KEDA "
            f"lagThreshold {threshold} drains a replica's backlog in {DRAIN_SECONDS:.0f} s (rate x seconds)")


def build(config: dict[str, Any], results: Sequence[Row], precisions: Sequence[str]) -> dict[str, Any]:
    import torch

    runtimes = tuple(config.get("runtimes") or ("torch",))
    return {
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            # What the worker, ceiling, no-op and limit runs use (ALLOCATOR=auto); the baselines use glibc's defaults.
            "allocator": "jemalloc" if find_jemalloc() else "glibc (1 MiB mmap threshold)",
        },
        "config": config,
        "results": list(results),
        "ratios": ratios(results, precisions, runtimes),
        "targets": targets(results, precisions, runtimes),
        "scaling_hint": scaling_hint(results, precisions, runtimes),
    }


def format_table(report: dict[str, Any]) -> str:
    head = (f"{'run':<8} {'workload':<8} {'prec':<5} {'rt':<5} {'guar':<4} {'parts':>5} {'procs':>5} {'events':>6} {'ev/s':>10} "
            f"{'p50 ms':>9} {'p99 ms':>9} {'pad eff':>7} {'RSS MiB':>8} {'CPU µs/ev':>9}")
    lines = [head, "-" * len(head)]

    def fmt(value: Any, spec: str) -> str:
        return format(value, spec) if isinstance(value, (int, float)) else "-"

    short_guarantee = {"at_least_once": "alo", "exactly_once": "eos"}
    short_runtime = {"torch": "torch", "onnxruntime": "ort", "auto": "auto"}
    for row in report["results"]:
        if row["run"] in ("soak", "sweep"):  # below the table
            continue
        lines.append(
            f"{row['run']:<8} {row['workload']:<8} {row.get('precision') or '-':<5} "
            f"{short_runtime.get(runtime_of(row) or '', '-'):<5} "
            f"{short_guarantee.get(row.get('guarantee') or '', '-'):<4} {fmt(row.get('partitions'), 'd'):>5} "
            f"{fmt(row.get('processes'), 'd'):>5} "
            f"{row.get('events', 0):>6} {fmt(row.get('events_per_s'), ',.1f'):>10} {fmt(row.get('p50_ms'), ',.0f'):>9} "
            f"{fmt(row.get('p99_ms'), ',.0f'):>9} {fmt(row.get('padding_efficiency'), '.3f'):>7} "
            f"{fmt(row.get('peak_rss_mib'), ',.0f'):>8} {fmt(row.get('cpu_us_per_event'), ',.1f'):>9}"
            + ("  ERROR" if row.get("error") else "")
        )
    for row in report["results"]:
        if row.get("sim_profile") and row["run"] in ("ceiling", "e2e") and not row.get("error"):
            costs = row.get("planner_cost")
            fitted = ", ".join(f"{k}={fmt(v, '.4g')}" for k, v in costs.items()) if costs else "not reported"
            lines.append(
                f"sim {row['sim_profile']} ({row['sim_ns_per_token']:g} ns/token + {row['sim_ms_per_call']:g} ms/call) "
                f"{row['run']} {row['workload']}: {fmt(row.get('events_per_s'), ',.1f')} ev/s, device busy "
                f"{fmt(row.get('device_busy'), '.3f')}"
                + f", padding eff {fmt(row.get('padding_efficiency'), '.3f')}"
                + ("" if row["run"] == "ceiling" else f"; planner: {fitted}")
            )
    fixed, adaptive = sweep_rows(report["results"])
    if fixed or adaptive:
        waits = sorted({r["batch_max_wait_ms"] for r in fixed})
        lines.append("sweep (ev/s at saturation), BATCH_MAX_SIZE x BATCH_MAX_WAIT_MS: "
                     + "  ".join(f"{w} ms" for w in waits))
        for size in sorted({r["batch_max_size"] for r in fixed}):
            cells = [next((r for r in fixed if r["batch_max_size"] == size and r["batch_max_wait_ms"] == w), None)
                     for w in waits]
            lines.append(f"  {size:>5}: " + "  ".join(f"{fmt(c and c.get('events_per_s'), ',.1f'):>10}" for c in cells))
        if adaptive:
            lines.append(f"  adaptive (LATENCY_TARGET_MS {adaptive.get('latency_target_ms')}, up to "
                         f"{adaptive.get('batch_max_size')} x {adaptive.get('batch_max_wait_ms')} ms): "
                         f"{fmt(adaptive.get('events_per_s'), ',.1f')} ev/s")
    for row in report["results"]:
        if row["run"] == "soak":
            lines.append(
                f"soak {row.get('minutes')} min: {row.get('events', 0)} events, {fmt(row.get('events_per_s'), '.1f')} ev/s, "
                f"RSS after warm-up {row.get('rss_after_warmup_mib')} MiB -> max {row.get('rss_max_mib')} MiB "
                f"(growth {fmt(row.get('rss_growth'), '.2%')})"
            )
    lines.append("")
    lines.append("ratios: " + ", ".join(f"{k}={v}" for k, v in report["ratios"].items() if v is not None))
    if report.get("scaling_hint"):
        lines.append(report["scaling_hint"])
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

    rows = [row for row in report["results"] if row.get("events_per_s") and row["run"] not in ("soak", "trickle", "sweep")]
    workloads = [w for w in WORKLOADS if any(row["workload"] == w for row in rows)]

    def key(row: Row) -> str:
        label = row["run"] + (f" {_name(row)}" if row["run"] in ("ceiling", "e2e") else "")
        label += f" sim {row['sim_profile']}" if row.get("sim_profile") else ""
        if row["run"] in ("noop", "limit"):
            label += f" {row.get('partitions')}p" + (" eos" if row.get("guarantee") == "exactly_once" else "")
            label += f" x{row['processes']}" if (row.get("processes") or 1) > 1 else ""
            label += " traced" if row.get("tracing") else ""
        return label

    series: list[str] = []
    for row in rows:
        if key(row) not in series:
            series.append(key(row))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / max(1, len(series))
    for k, name in enumerate(series):
        values = []
        for w in workloads:
            match = [row for row in rows if row["workload"] == w and key(row) == name]
            values.append(match[0]["events_per_s"] if match else 0)
        bars = ax.bar([i + k * width for i in range(len(workloads))], values, width, label=name)
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v else "" for v in values], fontsize=7, rotation=90, padding=2)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(workloads))], workloads)
    ax.set_yscale("log")
    ax.set_ylabel("events / s (log)")
    cpus = report["machine"]["cpus"]
    ax.set_title(f"sentiment-worker bench: {report['config']['model_size']} DistilBERT, {report['config']['device']}, {cpus} CPUs")
    ax.legend(fontsize=8, ncol=2)
    base = report["config"]["precisions"][0]
    pad = [(f"{row['run']} {row['workload']}", row["padding_efficiency"]) for row in report["results"]
           if row.get("padding_efficiency") and row["run"] in ("e2e", "batched") and row.get("precision") in (None, "fp32", base)]
    if pad:
        ax2.barh([p[0] for p in pad], [p[1] for p in pad], color="tab:gray")
        ax2.axvline(TARGETS["padding_efficiency_mixed"], color="tab:red", linestyle="--", linewidth=1)
        ax2.set_xlim(0, 1)
        ax2.set_title("padding efficiency (real / padded tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
