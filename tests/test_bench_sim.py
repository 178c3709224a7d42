"""``sentiment-worker bench --device sim``: the real worker with a simulated accelerator, and the sweep run.

A mechanism test (no timing assertions): a short simulated-device bench completes, its
e2e rows carry the device's busy fraction and the padding efficiency, the sweep tries
its grid and the adaptive run, and the report names the targets. Plus the pure helpers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from worker.bench import report
from worker.bench.runs import _planner_costs_from_metrics


def test_planner_costs_are_read_from_the_gauges() -> None:
    metrics = {
        'sentiment_worker_planner_cost{term="call_seconds"}': 0.002,
        'sentiment_worker_planner_cost{term="token_seconds"}': 3e-8,
        'sentiment_worker_planner_cost{term="attention_scale"}': float("inf"),
        'sentiment_worker_tokens_total{kind="real"}': 10.0,
    }
    assert _planner_costs_from_metrics(metrics) == {"call_seconds": 0.002, "token_seconds": 3e-8,
                                                    "attention_scale": None}
    assert _planner_costs_from_metrics({}) is None


def test_report_targets_of_the_simulated_device_and_the_sweep() -> None:
    sim = {"device": "sim", "sim_ns_per_token": 30.0, "sim_ms_per_call": 2.0, "partitions": 6, "precision": "fp32"}
    rows = [
        {"run": "e2e", "workload": "short", "events_per_s": 950.0, "sim_profile": "fast", "device_busy": 0.2,
         "padding_efficiency": 0.97, **sim},
        {"run": "e2e", "workload": "short", "events_per_s": 300.0, "sim_profile": "slow", "device_busy": 0.97,
         "padding_efficiency": 0.93, **sim},
        {"run": "noop", "workload": "short", "precision": None, "events_per_s": 1000.0, "partitions": 6,
         "guarantee": "at_least_once", "processes": 1, "tracing": False},
        {"run": "sweep", "workload": "short", "mode": "fixed", "batch_max_size": 64, "batch_max_wait_ms": 5,
         "events_per_s": 800.0},
        {"run": "sweep", "workload": "short", "mode": "fixed", "batch_max_size": 256, "batch_max_wait_ms": 5,
         "events_per_s": 1000.0},
        {"run": "sweep", "workload": "short", "mode": "adaptive", "batch_max_size": 256, "batch_max_wait_ms": 5,
         "latency_target_ms": 500, "events_per_s": 960.0},
        {"run": "trickle", "workload": "short", "precision": "fp32", "p99_ms": 120.0, "latency_target_ms": 100},
    ]
    checks = {c["target"]: c for c in report.targets(rows, ["fp32"])}
    assert checks["sim fast: e2e / no-op worker, short"]["value"] == 0.95
    assert checks["sim fast: e2e / no-op worker, short"]["met"] is True
    assert checks["sim slow: device busy (e2e short)"]["met"] is True
    assert checks["sim slow: padding efficiency (e2e short)"]["met"] is True
    assert checks["sweep: adaptive / best fixed (256x5ms)"]["value"] == 0.96
    assert checks["trickle p99 latency ms <= LATENCY_TARGET_MS"]["met"] is False
    table = report.format_table({"results": rows, "ratios": report.ratios(rows, ["fp32"]),
                                 "targets": list(checks.values())})
    assert "sweep (ev/s at saturation)" in table and "adaptive (LATENCY_TARGET_MS 500" in table
    assert "sim slow (30 ns/token + 2 ms/call) e2e short" in table


@pytest.mark.kafka
def test_sim_bench_reports_device_busy_padding_and_the_sweep(bootstrap: str, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "bench", "--device", "sim", "--quick", "--model", str(tiny_model),
         "--runs", "ceiling,e2e,noop,sweep", "--noop-events", "200", "--sweep-sizes", "16,64", "--sweep-waits-ms", "5",
         "--sweep-events", "200", "--latency-target-ms", "400",
         "--bootstrap", bootstrap, "--out", str(out), "--cache", str(tmp_path / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((out / "bench.json").read_text())
    rows = result["results"]
    for row in rows:
        assert "error" not in row, (row["run"], row.get("error"))
    assert result["config"]["device"] == "sim"
    e2e = next(row for row in rows if row["run"] == "e2e")
    assert e2e["sim_profile"] == "fast" and e2e["sim_ns_per_token"] == 30.0 and e2e["sim_ms_per_call"] == 2.0
    assert e2e["events_per_s"] > 0
    assert 0 < e2e["device_busy"] <= 1, e2e
    assert 0 < e2e["padding_efficiency"] <= 1, e2e
    assert e2e["batches"] > 0
    costs = e2e["planner_cost"]  # what the planner learnt of the simulated device
    assert costs["call_seconds"] > 0 and costs["token_seconds"] > 0, costs
    ceiling = next(row for row in rows if row["run"] == "ceiling")
    assert 0 < ceiling["device_busy"] <= 1, ceiling
    sweep = [row for row in rows if row["run"] == "sweep"]
    assert sorted((row["mode"], row["batch_max_size"], row["batch_max_wait_ms"]) for row in sweep) == [
        ("adaptive", 64, 5), ("fixed", 16, 5), ("fixed", 64, 5)]
    assert next(row for row in sweep if row["mode"] == "adaptive")["latency_target_ms"] == 400
    assert result["ratios"]["sim_fast_e2e_vs_noop_short"] is not None
    assert result["ratios"]["sweep_adaptive_vs_best_fixed"] is not None
    targets = {check["target"] for check in result["targets"]}
    assert "sim fast: e2e / no-op worker, short" in targets
    assert any(t.startswith("sweep: adaptive / best fixed") for t in targets)
    assert "sweep (ev/s at saturation)" in proc.stdout
