"""``sentiment-worker bench --quick`` as a smoke test (no timing assertions), plus its pure helpers.

The quick bench runs every run kind once on the tiny model against the session's
broker, and must leave a JSON report with the documented fields and a PNG chart.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from worker.bench import roles
from worker.bench.runs import DEFAULT_RUNS
from worker.bench.workloads import make_texts, token_lengths

ROW_FIELDS = {"run", "workload", "precision", "events", "events_per_s", "p50_ms", "p95_ms", "p99_ms",
              "padding_efficiency", "peak_rss_mib"}


def test_workload_lengths_follow_the_issue() -> None:
    short = token_lengths("short", 500)
    assert min(short) >= 8 and max(short) <= 48
    long = token_lengths("long", 200)
    assert min(long) >= 200 and max(long) <= 512
    mixed = token_lengths("mixed", 1000)
    share_long = sum(n >= 100 for n in mixed) / len(mixed)
    assert 0.15 < share_long < 0.25 and max(mixed) <= 512
    assert token_lengths("mixed", 50) == token_lengths("mixed", 50)  # deterministic


def test_texts_have_the_intended_token_counts(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    texts = make_texts("mixed", 100)
    got = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    assert got == token_lengths("mixed", 100)


def test_percentile() -> None:
    assert roles.percentile([], 50) is None
    assert roles.percentile([1, 2, 3, 4], 50) == 2.5
    assert roles.percentile(list(range(101)), 99) == 99


@pytest.mark.kafka
def test_quick_bench_writes_json_and_png(bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "bench", "--quick", "--bootstrap", bootstrap, "--out", str(out),
         "--cache", str(tmp_path / "cache"), "--events", "48", "--baseline-events", "16", "--noop-events", "300",
         "--trickle-seconds", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "bench.json").read_text())
    assert {"machine", "config", "results", "ratios", "targets"} <= set(report)
    runs = {row["run"]: row for row in report["results"]}
    assert set(runs) == set(DEFAULT_RUNS)
    for name, row in runs.items():
        assert "error" not in row, (name, row.get("error"))
        assert ROW_FIELDS <= set(row), name
        assert row["peak_rss_mib"] and row["peak_rss_mib"] > 0, name
    for name in ("ceiling", "e2e", "naive", "batched", "noop", "limit"):
        assert runs[name]["events_per_s"] > 0, name
    for name in ("noop", "limit"):
        assert runs[name]["cpu_us_per_event"] > 0, name
    assert report["ratios"]["noop_vs_limit_p6"] is not None
    for name in ("e2e", "naive", "batched", "noop", "trickle"):
        assert runs[name]["p99_ms"] is not None and runs[name]["p99_ms"] >= runs[name]["p50_ms"], name
    assert 0 < runs["e2e"]["padding_efficiency"] <= 1
    assert report["ratios"]["e2e_vs_ceiling_short_fp32"] is not None
    assert report["ratios"]["e2e_vs_naive_short_fp32"] is not None
    assert {check["target"] for check in report["targets"]}
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "target" in proc.stdout and "ceiling" in proc.stdout  # the table


def test_gpu_script_rehearses_on_cpu(tmp_path: Path) -> None:
    """deploy/gpu/bench.sh must work before a GPU machine is ever lent: rehearse it on the CPU."""
    result = tmp_path / "gpu.json"
    proc = subprocess.run(
        [str(REPO / "deploy" / "gpu" / "bench.sh"), "--device", "cpu", "--quick", "--overhead", "off",
         "--workloads", "short,mixed", "--batch-rows", "16", "--events", "32", "--seconds", "0",
         "--json", str(result)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(result.read_text())
    assert {(r["workload"], r["precision"]) for r in report["best"]} == {
        ("short", "fp32"), ("short", "bf16"), ("mixed", "fp32"), ("mixed", "bf16")}
    assert all(r["events_per_s"] > 0 for r in report["ceiling"])
    assert proc.stdout.strip().splitlines()[-1].startswith("total")
    assert "engine ceiling" in proc.stdout


def test_process_counts_are_timed_from_input_sent_once_every_process_holds_partitions(
    bootstrap: str, tmp_path: Path
) -> None:
    """With pre-loaded input the first process drained it before the second joined, and the run
    was timed from the supervisor's /ready, after the last output: 2e10 events/s."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "bench", "--quick", "--runs", "noop", "--processes", "1,2",
         "--bootstrap", bootstrap, "--out", str(out), "--cache", str(tmp_path / "cache"), "--noop-events", "300"],
        cwd=REPO, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads((out / "bench.json").read_text())["results"]
    assert sorted(row["processes"] for row in rows) == [1, 2]
    for row in rows:
        assert "error" not in row, row.get("error")
        assert row["input"] == "produced once ready"
        assert row["seconds"] > 0.01 and 0 < row["events_per_s"] < 1e6, row
        assert row["cpu_us_per_event"] > 0, row


def test_runtimes_are_compared_side_by_side_each_against_its_own_ceiling() -> None:
    from worker.bench import report

    def row(run: str, precision: str, rate: float, runtime: str | None) -> dict:
        return {"run": run, "workload": "short", "precision": precision, "events_per_s": rate,
                **({"runtime": runtime} if runtime else {})}

    rows = [row("ceiling", "fp32", 60.0, None), row("e2e", "fp32", 58.0, None),  # from before --runtimes: torch
            row("ceiling", "fp32", 110.0, "onnxruntime"), row("e2e", "fp32", 99.0, "onnxruntime"),
            row("ceiling", "int8", 200.0, "torch"), row("e2e", "int8", 190.0, "torch"),
            row("ceiling", "int8", 300.0, "onnxruntime"), row("e2e", "int8", 240.0, "onnxruntime")]
    ratios = report.ratios(rows, ["fp32", "int8"], ["torch", "onnxruntime"])
    assert ratios["e2e_vs_ceiling_short_fp32"] == round(58 / 60, 3)  # torch's e2e against torch's ceiling
    assert ratios["e2e_vs_ceiling_short_fp32_onnxruntime"] == 0.9
    assert ratios["onnxruntime_vs_torch_e2e_short_fp32"] == round(99 / 58, 3)
    assert ratios["onnxruntime_vs_torch_ceiling_short_int8"] == 1.5
    assert ratios["fastest_precision_short"] == "int8 onnxruntime"
    checks = {c["target"]: c for c in report.targets(rows, ["fp32", "int8"], ["torch", "onnxruntime"])}
    assert checks["e2e onnxruntime / e2e torch, short (fp32)"]["met"] is True  # 1.71 >= 1.6
    assert checks["e2e onnxruntime / e2e torch, short (int8)"]["met"] is False  # 1.26 < 1.3
    assert checks["e2e / ceiling, short (int8 onnxruntime)"]["value"] == 0.8
    assert checks["e2e / ceiling, short (fp32 torch)"]["met"] is True
    # One runtime: the targets read as before, and no runtime comparison
    alone = {c["target"] for c in report.targets(rows[:2], ["fp32"])}
    assert "e2e / ceiling, short (fp32)" in alone and not any("onnxruntime" in t for t in alone)
    table = report.format_table({"results": rows, "ratios": ratios, "targets": list(checks.values())})
    assert any(line.split()[:4] == ["e2e", "short", "int8", "ort"] for line in table.splitlines())
