"""RUNTIME=onnxruntime and auto: int8 labels, the export cache, fallbacks to torch, `model export`, the auto pick.

fp32 parity with transformers for every family and head, through the worker's
batching, is in tests/test_model_architectures.py (parametrized over both runtimes).
"""

from __future__ import annotations

import copy
import json
import logging
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO
from tests.model_builders import FAMILIES
from worker.model import onnx_runtime
from worker.model.engine import SentimentEngine
from worker.model.loading import Head, ModelInfo, load_pretrained
from worker.model.random_model import _WORDS
from worker.settings import Settings

pytest.importorskip("onnxruntime")

TEXTS = ["the movie was great", "terrible service, never again", "ok", " ".join(["quite good film"] * 20)]
ENGINE_LOG = "worker.model.engine"


@pytest.fixture(scope="module")
def roberta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random RoBERTa whose texts score clearly apart (median top-2 gap ~0.3), so label agreement means something."""
    path = tmp_path_factory.mktemp("roberta") / "model"
    FAMILIES["roberta"](path, 3, None)
    return path


@pytest.fixture
def bert(tmp_path: Path) -> Path:
    """A fresh BERT (token types, fusable by the optimizer) with an empty export cache."""
    path = tmp_path / "bert"
    FAMILIES["bert"](path, 3, None)
    return path


def load(path: Path, **kwargs: object) -> SentimentEngine:
    options: dict = dict(device="cpu", precision="fp32", max_length=64, max_batch_tokens=256)
    options.update(kwargs)
    return SentimentEngine.load(str(path), **options)  # type: ignore[arg-type]


def exports(path: Path) -> list[str]:
    return sorted(p.name for p in (path / "onnx").glob("*")) if (path / "onnx").is_dir() else []


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == ENGINE_LOG and r.levelno >= logging.WARNING]


# ----------------------------------------------------------------------------- int8


def test_int8_keeps_the_fp32_label_on_99_percent_of_texts(roberta: Path) -> None:
    rng = random.Random(7)
    texts = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 30))) for _ in range(300)]
    values = {}
    for runtime in ("torch", "onnxruntime"):
        for precision in ("fp32", "int8"):
            engine = load(roberta, precision=precision, runtime=runtime)
            assert (engine.info.runtime, engine.info.precision) == (runtime, precision)
            values[(runtime, precision)] = engine.infer(engine.encode(texts)).values
    reference = values[("torch", "fp32")]
    agreement = {}
    for (runtime, precision), got in values.items():
        delta = np.abs(got - reference)
        agreement[(runtime, precision)] = float((got.argmax(1) == reference.argmax(1)).mean())
        print(f"{runtime:12s} {precision}: label agreement {agreement[(runtime, precision)]:.3f}, "
              f"|delta| max {delta.max():.2e} mean {delta.mean():.2e}")
    assert np.abs(values[("onnxruntime", "fp32")] - reference).max() < 1e-4
    assert agreement[("onnxruntime", "int8")] >= 0.99
    # quantised for real: the scores move, by about what torch's int8 moves them
    int8_delta = np.abs(values[("onnxruntime", "int8")] - reference).max()
    assert 1e-4 < int8_delta < 0.05, int8_delta


# ----------------------------------------------------------------------------- cache


def test_second_load_reuses_the_export(bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load(bert, runtime="onnxruntime")
    files = exports(bert)
    assert first.info.runtime == "onnxruntime" and files, files
    assert not [name for name in files if name.endswith(".tmp")]

    def no_export(*args: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_runtime, "_export", no_export)
    monkeypatch.setattr(onnx_runtime, "_optimize", no_export)
    second = load(bert, runtime="onnxruntime")
    assert second.info.runtime == "onnxruntime"
    assert exports(bert) == files
    assert np.array_equal(second.infer(second.encode(TEXTS)).values, first.infer(first.encode(TEXTS)).values)


def test_the_key_changes_with_precision_weights_and_versions(bert: Path, tmp_path: Path) -> None:
    load(bert, runtime="onnxruntime", precision="fp32")
    fp32 = set(exports(bert))
    load(bert, runtime="onnxruntime", precision="int8")
    int8 = set(exports(bert)) - fp32
    assert int8 and all(name.startswith("int8-") for name in int8), int8

    info = load_pretrained(str(bert), device="cpu", precision="fp32", defer_torch=True).info
    names = ("input_ids", "attention_mask")
    key = onnx_runtime.cache_key(info, "fp32", names, True)
    assert key == onnx_runtime.cache_key(info, "fp32", names, True)
    assert key != onnx_runtime.cache_key(info, "int8", names, True)
    assert key != onnx_runtime.cache_key(info, "fp32", names, False)
    other_weights = ModelInfo(info.name, "sha256:0123456789abcdef", info.device, info.precision, info.labels, False)
    assert key != onnx_runtime.cache_key(other_weights, "fp32", names, True)
    real = onnx_runtime.versions
    try:
        onnx_runtime.versions = lambda: {**real(), "onnxruntime": "0.0.0"}  # type: ignore[assignment]
        assert key != onnx_runtime.cache_key(info, "fp32", names, True)
    finally:
        onnx_runtime.versions = real  # type: ignore[assignment]


def test_read_only_model_directory_exports_under_hf_home(bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(onnx_runtime, "_writable", lambda directory: directory != bert / "onnx")
    engine = load(bert, runtime="onnxruntime")
    assert engine.info.runtime == "onnxruntime"
    assert not (bert / "onnx").exists()
    made = list((tmp_path / "hf" / "sentiment-worker" / "onnx" / "local-bert").glob("*.onnx"))
    assert made, list((tmp_path / "hf").rglob("*"))


def test_a_read_only_cache_is_read_and_what_it_lacks_is_exported_into_scratch(
        bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A model volume mounted read-only (the chart's pvc and image sources): its exports are used, a
    missing one is made in the process's temporary directory, never a fallback to torch."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    load(bert, runtime="onnxruntime", precision="fp32")  # pre-exported while writable (`model export`)
    cached = exports(bert)
    monkeypatch.setattr(onnx_runtime, "_writable", lambda directory: False)  # now mounted read-only
    writes: list[Path] = []
    real_atomic = onnx_runtime._atomic
    monkeypatch.setattr(onnx_runtime, "_atomic", lambda target, write: (writes.append(target), real_atomic(target, write)))
    fp32 = load(bert, runtime="onnxruntime", precision="fp32")
    assert fp32.info.runtime == "onnxruntime" and writes == [] and exports(bert) == cached
    with caplog.at_level(logging.WARNING, logger=onnx_runtime.__name__):
        int8 = load(bert, runtime="onnxruntime", precision="int8")
    assert int8.info.runtime == "onnxruntime"
    scratch = tmp_path / "scratch" / "sentiment-worker-onnx" / "local-bert"
    assert writes and all(w.parent == scratch for w in writes), writes
    assert [p.name for p in scratch.glob("*.onnx")] == [p.name for p in writes] and all(p.name.startswith("int8-") for p in writes)
    assert exports(bert) == cached  # the fp32 graph it quantised was read from the read-only cache
    assert any("is read-only" in r.getMessage() for r in caplog.records), caplog.text
    loaded = load_pretrained(str(bert), device="cpu", precision="int8", defer_torch=True)
    with pytest.raises(onnx_runtime.OnnxUnavailable, match="not writable"):  # what `model export` asks for
        onnx_runtime.exported(loaded.model, loaded.tokenizer, loaded.info, scratch=False)
    assert onnx_runtime.exported(loaded.model, loaded.tokenizer, loaded.info).parent == scratch  # found there next time


def test_a_failed_write_leaves_neither_file_nor_temporary(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "model.onnx"

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"half a graph")
        raise OSError("disk full")

    with pytest.raises(OSError):
        onnx_runtime._atomic(target, half_then_fail)
    assert list(target.parent.iterdir()) == []


def test_concurrent_exports_of_one_model_are_safe(bert: Path, base_env: dict[str, str]) -> None:
    """Two `model export` processes at once (replicas starting together): both succeed, one whole file, no temporaries."""
    env = {**base_env, "MODEL": str(bert), "PRECISION": "int8", "DEVICE": "cpu"}
    procs = [
        subprocess.Popen([sys.executable, "-m", "worker", "model", "export"], env=env, cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [proc.communicate(timeout=240) for proc in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
    paths = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(paths) == 1, paths
    path = Path(paths.pop())
    assert path.parent == bert / "onnx" and path.name.startswith("int8-")
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]


# ----------------------------------------------------------------------------- `model export`


def test_model_export_writes_the_file_the_worker_then_reads(bert: Path, base_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**base_env, "MODEL": str(bert), "DEVICE": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "worker", "model", "export", "--precision", "fp32"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.parent == bert / "onnx" and path.name.startswith("fp32-")
    made = exports(bert)
    monkeypatch.setattr(onnx_runtime, "_export", lambda *args: pytest.fail("exported again"))
    engine = load(bert, runtime="onnxruntime", precision="fp32")
    assert engine.info.runtime == "onnxruntime"
    check = subprocess.run([sys.executable, "-m", "worker", "model", "check", "--runtime", "onnxruntime"], env=env,
                           cwd=REPO, capture_output=True, text=True, timeout=240)
    assert check.returncode == 0, check.stderr[-3000:]
    assert "(fp32, onnxruntime)" in check.stdout
    assert exports(bert) == made, "check exported again"


def test_model_export_refuses_what_onnx_runtime_cannot_run(bert: Path, base_env: dict[str, str]) -> None:
    env = {**base_env, "MODEL": str(bert), "DEVICE": "cpu", "PRECISION": "bf16"}
    proc = subprocess.run([sys.executable, "-m", "worker", "model", "export"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "bf16" in proc.stderr and "Traceback" not in proc.stderr
    assert exports(bert) == []


def test_the_bench_ceiling_runs_on_onnx_runtime(tiny_model: Path, tmp_path: Path, base_env: dict[str, str]) -> None:
    model = shutil.copytree(tiny_model, tmp_path / "tiny")
    proc = subprocess.run(
        [sys.executable, "-m", "worker.bench.roles", "ceiling", "--model", str(model), "--workload", "short",
         "--events", "64", "--precision", "int8", "--device", "cpu", "--batch-size", "32",
         "--max-batch-tokens", "4096", "--passes", "1", "--runtime", "onnxruntime"],
        env=base_env, cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["runtime"] == "onnxruntime" and row["events_per_s"] > 0
    assert list((model / "onnx").glob("int8-*.onnx"))


# ----------------------------------------------------------------------------- fallback


def test_bf16_falls_back_to_torch_with_one_line(bert: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    engine = load(bert, runtime="onnxruntime", precision="bf16")
    lines = warnings_of(caplog)
    assert len(lines) == 1 and "torch" in lines[0] and "bf16" in lines[0], lines
    assert (engine.info.runtime, engine.info.precision) == ("torch", "bf16")
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    reference = load(bert, runtime="torch", precision="bf16")
    assert np.array_equal(engine.infer(engine.encode(TEXTS)).values, reference.infer(reference.encode(TEXTS)).values)


def test_a_failing_export_falls_back_to_torch_with_one_line(
    bert: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cannot_trace(*args: object) -> None:
        raise RuntimeError("Unsupported: an operator the exporter does not know")

    monkeypatch.setattr(onnx_runtime, "_export", cannot_trace)
    caplog.set_level(logging.INFO)
    engine = load(bert, runtime="onnxruntime", precision="int8")
    lines = warnings_of(caplog)
    assert len(lines) == 1 and "export failed" in lines[0] and "operator the exporter" in lines[0], lines
    assert (engine.info.runtime, engine.info.precision) == ("torch", "int8")
    assert any(type(m).__module__.startswith("torch.ao") for m in engine.model.modules()), "torch int8 not quantised"
    assert not [name for name in exports(bert) if name.endswith((".onnx", ".tmp"))]
    assert len(engine.predict(TEXTS)) == len(TEXTS)


def test_an_export_that_scores_differently_is_not_used(
    bert: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export is checked against torch on a shape it was not traced with: a graph that gets it wrong is dropped."""
    real = onnx_runtime._export

    def traced_with_other_weights(model, names, path):  # type: ignore[no-untyped-def]
        other = copy.deepcopy(model)
        torch.nn.init.normal_(other.classifier.weight, std=1.0)
        real(other, names, path)

    monkeypatch.setattr(onnx_runtime, "_export", traced_with_other_weights)
    caplog.set_level(logging.INFO)
    engine = load(bert, runtime="onnxruntime")
    lines = warnings_of(caplog)
    assert len(lines) == 1 and "scores differently" in lines[0], lines
    assert engine.info.runtime == "torch"
    assert not list((bert / "onnx").glob("*.onnx"))


def test_cuda_without_its_provider_is_unavailable() -> None:
    info = ModelInfo("m", "r", "cuda", "fp16", ("A", "B"), False)
    with pytest.raises(onnx_runtime.OnnxUnavailable, match="CUDAExecutionProvider"):
        onnx_runtime.supported(info)
    with pytest.raises(onnx_runtime.OnnxUnavailable, match="mps"):
        onnx_runtime.supported(ModelInfo("m", "r", "mps", "fp32", ("A", "B"), False))


# ----------------------------------------------------------------------------- weights, settings


def test_onnx_runtime_frees_the_torch_weights(bert: Path) -> None:
    engine = load(bert, runtime="onnxruntime")
    assert {p.device.type for p in engine.model.parameters()} == {"meta"}
    scores = engine.infer(engine.encode(TEXTS))
    assert scores.head is Head.single_label and np.allclose(scores.values.sum(axis=1), 1.0)


def test_onnx_runtime_threads_sleep_between_calls(bert: Path) -> None:
    """Spinning intra-op threads would hold the cores the worker's tokenizer and output threads need."""
    forward = load(bert, runtime="onnxruntime")._forward
    assert isinstance(forward, onnx_runtime.OnnxForward)
    options = forward.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads >= 1 and options.inter_op_num_threads == 1


def test_runtime_setting_reaches_the_engine(bert: Path) -> None:
    settings = Settings(model=str(bert), device="cpu", precision="int8", runtime="onnxruntime", max_length=64)
    engine = SentimentEngine.from_settings(settings)
    assert (engine.info.runtime, engine.info.precision) == ("onnxruntime", "int8")
    assert engine.cost_key.endswith("/cpu/int8/onnxruntime")
    assert Settings().runtime.value == "torch"


# ----------------------------------------------------------------------------- auto


def test_auto_picks_the_faster_runtime_and_logs_both_timings(bert: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    started = time.perf_counter()
    engine = load(bert, runtime="auto")
    assert time.perf_counter() - started < 60
    picks = [r.getMessage() for r in caplog.records if r.name == ENGINE_LOG and "RUNTIME=auto picked" in r.getMessage()]
    assert len(picks) == 1, picks
    probe = engine.runtime_probe
    assert probe is not None and set(probe) == {"torch", "onnxruntime"} and all(ms > 0 for ms in probe.values())
    assert engine.info.runtime == min(probe, key=probe.__getitem__)
    assert f"picked {engine.info.runtime}" in picks[0] and "torch" in picks[0] and "onnxruntime" in picks[0]
    # the loser's resources are gone: ONNX Runtime picked means torch's weights were freed
    devices = {p.device.type for p in engine.model.parameters()}
    assert devices == ({"meta"} if engine.info.runtime == "onnxruntime" else {"cpu"})


def test_auto_keeps_torch_when_onnx_runtime_is_slower(bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = onnx_runtime.OnnxForward.__call__

    def slow(self, **inputs):  # type: ignore[no-untyped-def]
        time.sleep(0.2)
        return real(self, **inputs)

    monkeypatch.setattr(onnx_runtime.OnnxForward, "__call__", slow)
    engine = load(bert, runtime="auto")
    assert engine.info.runtime == "torch"
    assert engine.runtime_probe is not None and engine.runtime_probe["onnxruntime"] > engine.runtime_probe["torch"]
    assert {p.device.type for p in engine.model.parameters()} == {"cpu"}
    assert len(engine.predict(TEXTS)) == len(TEXTS)


def test_bad_runtime_is_refused(bert: Path) -> None:
    from worker.model.engine import ModelLoadError

    with pytest.raises(ModelLoadError, match="RUNTIME"):
        load(bert, runtime="tensorrt")


@pytest.fixture(autouse=True)
def _own_hf_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Exports of read-only or hub models must not land in the user's real cache."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


# ----------------------------------------------------------------------------- the worker


@pytest.mark.kafka
async def test_the_worker_scores_on_the_runtime_auto_picked(worker_factory, bootstrap, topics, tmp_path: Path) -> None:
    """RUNTIME=auto through Kafka: the start log names the pick and both probe times; outputs are the model's."""
    import orjson

    from tests.kafka_helpers import consume_all, create_topic, produce

    model = tmp_path / "bert"
    FAMILIES["bert"](model, 3, None)
    await create_topic(bootstrap, topics["input_topic"], 2)
    texts = [f"{a} {b} film" for a in ("good", "bad", "slow", "fast", "the", "love") for b in ("movie", "price", "day")]
    await produce(bootstrap, topics["input_topic"],
                  [(None, orjson.dumps({"text": t, "id": f"e{i}"})) for i, t in enumerate(texts)])
    worker = worker_factory(**topics, model=str(model), runtime="auto", max_length=64, device="cpu").wait_ready()
    received = await consume_all(bootstrap, topics["output_topic"], expected=len(texts))
    loaded = worker.events("model.loaded")[0]
    assert loaded["runtime"] in ("torch", "onnxruntime")
    probe = loaded["runtime_probe_ms"]
    assert set(probe) == {"torch", "onnxruntime"} and loaded["runtime"] == min(probe, key=probe.__getitem__)
    engine = load(model, runtime="torch")
    want = {f"e{i}": p for i, p in enumerate(engine.predict(texts))}
    assert len(received) == len(texts)
    for r in received:
        expected = want[r.doc["id"]]
        assert r.doc["label"] == expected.label
        assert max(abs(r.doc["scores"][k] - v) for k, v in expected.scores.items()) < 1e-4


def test_the_runtimes_bench_compares_every_runtime_and_precision(tiny_model: Path, tmp_path: Path, base_env: dict[str, str]) -> None:
    from worker.bench.runtimes import ENGINES

    assert set(ENGINES) == {f"{runtime} {precision}{fused}" for runtime, fused in
                            (("torch", ""), ("onnxruntime", ""), ("onnxruntime", " fused")) for precision in ("fp32", "int8")}
    model = shutil.copytree(tiny_model, tmp_path / "tiny")
    engines = ["torch fp32", "onnxruntime int8 fused"]  # each engine is a process per round: two of the six
    proc = subprocess.run(
        [sys.executable, "-m", "worker.bench.runtimes", str(model), "--events", "64", "--batch-size", "32",
         "--rounds", "2", "--threads", "1", "--engines", ",".join(engines)],
        env=base_env, cwd=REPO, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rounds = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["round"] for r in rounds] == [1, 2]
    best = rounds[-1]["best_events_per_s"]
    assert set(best) == set(engines) and all(rate > 0 for rate in best.values())
    assert list(model.joinpath("onnx").glob("int8-fused-*.onnx")), "ONNX Runtime ran the fused int8 export"
    assert all(f"{name:<26}" in proc.stdout for name in engines)  # the summary table


@pytest.mark.kafka
def test_the_bench_runs_ceiling_and_e2e_per_runtime(bootstrap: str, tiny_model: Path, tmp_path: Path) -> None:
    model = shutil.copytree(tiny_model, tmp_path / "tiny")  # its own export cache (model/onnx)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "bench", "--quick", "--model", str(model), "--runs", "ceiling,e2e",
         "--runtimes", "torch,onnxruntime", "--events", "48", "--bootstrap", bootstrap, "--out", str(out),
         "--cache", str(tmp_path / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((out / "bench.json").read_text())
    rows = {(r["run"], r["runtime"]): r for r in result["results"]}
    assert set(rows) == {(run, rt) for run in ("ceiling", "e2e") for rt in ("torch", "onnxruntime")}
    assert all("error" not in r and r["events_per_s"] > 0 and r["peak_rss_mib"] > 0 for r in rows.values())
    assert rows[("ceiling", "onnxruntime")]["runtime_used"] == "onnxruntime"  # not a silent fallback to torch
    assert list(model.joinpath("onnx").glob("*.onnx")), "the worker and the ceiling ran an exported model"
    ratios = result["ratios"]
    for key in ("onnxruntime_vs_torch_e2e_short_fp32", "onnxruntime_vs_torch_ceiling_short_fp32",
                "e2e_vs_ceiling_short_fp32_onnxruntime", "e2e_vs_ceiling_short_fp32"):
        assert ratios[key] is not None and ratios[key] > 0, key
    targets = {c["target"] for c in result["targets"]}
    assert {"e2e onnxruntime / e2e torch, short (fp32)", "e2e / ceiling, short (fp32 onnxruntime)"} <= targets
