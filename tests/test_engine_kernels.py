"""Precision, attention kernels, long-text windows and the sub-batch planner, on the tiny random model.

The tiny model's scores mean nothing, so these check that every mode loads,
produces valid probabilities, agrees with fp32 where it should, and that windows
combine as documented; the accuracy cost on the real checkpoint is quoted in
the README, not measured here.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from worker.model.batching import padding_efficiency, plan_sub_batches
from worker.model.engine import ModelLoadError, SentimentEngine
from worker.model.loading import resolve_precision
from worker.model.shapes import bucket, bucket_rows, bucket_width
from worker.settings import Settings

SHORT = ["what a lovely film", "terrible service, never again", "ok"]
LONG = " ".join(["the movie was good but the service was slow and the price was bad"] * 12)  # ~190 tokens


def _scores(predictions):  # type: ignore[no-untyped-def]
    return [p.scores["POSITIVE"] for p in predictions]


def _valid(predictions, n: int) -> None:  # type: ignore[no-untyped-def]
    assert len(predictions) == n
    for p in predictions:
        assert set(p.scores) == {"NEGATIVE", "POSITIVE"}
        assert abs(sum(p.scores.values()) - 1.0) < 1e-4
        assert p.label == max(p.scores, key=p.scores.__getitem__)
        assert 0.0 <= p.score <= 1.0


@pytest.fixture(scope="module")
def fp32(tiny_model: Path) -> SentimentEngine:
    return SentimentEngine.load(str(tiny_model), device="cpu", precision="fp32")


@pytest.mark.parametrize("precision,tol", [("int8", 0.02), ("bf16", 0.02)])
def test_reduced_precision_close_to_fp32(tiny_model: Path, fp32: SentimentEngine, precision: str, tol: float) -> None:
    engine = SentimentEngine.load(str(tiny_model), device="cpu", precision=precision)
    engine.warmup()
    assert engine.info.precision == precision
    predictions = engine.predict(SHORT + [LONG])
    _valid(predictions, 4)
    for got, want in zip(_scores(predictions), _scores(fp32.predict(SHORT + [LONG])), strict=True):
        assert abs(got - want) < tol
    if precision == "int8":
        assert any(type(m).__module__.startswith("torch.ao") for m in engine.model.modules()), "Linear layers not quantised"
    else:
        assert next(engine.model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_attention_kernels_agree(tiny_model: Path, fp32: SentimentEngine, attention: str) -> None:
    engine = SentimentEngine.load(str(tiny_model), device="cpu", attention=attention)
    assert engine.info.attention == attention
    # Padded rows (mixed lengths in one call) must not change results: the mask works in both kernels.
    texts = SHORT + [LONG]
    for got, want in zip(_scores(engine.predict(texts)), _scores(fp32.predict(texts)), strict=True):
        assert abs(got - want) < 1e-4


def test_auto_attention_is_sdpa_for_distilbert(fp32: SentimentEngine) -> None:
    assert fp32.info.attention == "sdpa"


def test_fp16_on_cpu_and_int8_on_gpu_are_refused() -> None:
    with pytest.raises(ModelLoadError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ModelLoadError, match="int8"):
        resolve_precision("int8", torch.device("cuda"))
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"


def test_windows_combine_long_texts_and_leave_short_ones_alone(tiny_model: Path) -> None:
    truncating = SentimentEngine.load(str(tiny_model), device="cpu", max_length=32)
    windows = SentimentEngine.load(str(tiny_model), device="cpu", max_length=32, long_text="windows", window_stride=8)
    texts = SHORT + [LONG]
    encoded = windows.encode(texts)
    assert encoded.text_of_row is not None and encoded.texts == 4
    long_rows = [r for r, t in enumerate(encoded.text_of_row) if t == 3]
    assert len(long_rows) > 3, "the long text should span several windows"
    assert all(len(encoded.input_ids[r]) <= 32 for r in long_rows)
    # Consecutive windows share window_stride tokens (after [CLS], before [SEP]).
    first, second = encoded.input_ids[long_rows[0]], encoded.input_ids[long_rows[1]]
    assert first[-9:-1] == second[1:9]

    predictions = windows.infer(encoded).predictions()
    _valid(predictions, 4)
    assert predictions[3].truncated is False
    assert truncating.predict([LONG])[0].truncated is True
    # The long text's probabilities are the token-weighted mean of its windows' probabilities.
    rows, _ = windows.infer_rows(encoded)
    weights = [len(encoded.input_ids[r]) for r in long_rows]
    expected = sum(rows[r][1] * w for r, w in zip(long_rows, weights)) / sum(weights)
    assert predictions[3].scores["POSITIVE"] == pytest.approx(expected, abs=1e-6)
    # Texts within max_length score exactly as with truncation.
    for got, want in zip(predictions[:3], truncating.predict(SHORT), strict=True):
        assert got.scores == pytest.approx(want.scores, abs=1e-5)
        assert got.truncated is want.truncated is False


def test_window_stride_too_large_is_capped(tiny_model: Path) -> None:
    engine = SentimentEngine.load(str(tiny_model), device="cpu", max_length=16, long_text="windows", window_stride=128)
    assert engine.window_stride <= 7
    _valid(engine.predict([LONG]), 1)


def test_from_settings_maps_the_kernel_settings(tiny_model: Path) -> None:
    settings = Settings(
        model=str(tiny_model), device="cpu", precision="int8", attention="eager", long_text="windows",
        window_stride=8, max_length=32, torch_threads=1, batch_max_size=7, max_batch_tokens=100,
    )
    engine = SentimentEngine.from_settings(settings)
    assert (engine.info.precision, engine.info.attention, engine.info.long_text) == ("int8", "eager", "windows")
    assert (engine.window_stride, engine.max_batch_rows, engine.max_batch_tokens) == (8, 7, 100)
    assert torch.get_num_threads() == 1
    _valid(engine.predict(SHORT + [LONG]), 4)
    torch.set_num_threads(max(1, len(__import__("os").sched_getaffinity(0))))


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_torch_compile_scores_like_eager(tiny_model: Path, fp32: SentimentEngine, mode: str) -> None:
    pytest.importorskip("torch._inductor")
    engine = SentimentEngine.load(str(tiny_model), device="cpu", compile=True, compile_mode=mode)
    assert (engine.info.compiled, engine.info.compile_mode, engine.graph_shapes) == (True, mode, mode != "default")
    engine.warmup()
    for got, want in zip(_scores(engine.predict(SHORT + [LONG])), _scores(fp32.predict(SHORT + [LONG])), strict=True):
        assert abs(got - want) < 1e-4


def test_an_unknown_compile_mode_is_refused(tiny_model: Path) -> None:
    with pytest.raises(ModelLoadError, match="COMPILE_MODE='max-autotune'"):
        SentimentEngine.load(str(tiny_model), device="cpu", compile=True, compile_mode="max-autotune")


# ------------------------------------------------------------------ graph shapes


def test_buckets_are_powers_of_two_and_their_midpoints() -> None:
    assert [bucket(n) for n in range(1, 18)] == [1, 2, 3, 4, 6, 6, 8, 8, 12, 12, 12, 12, 16, 16, 16, 16, 24]
    for n in range(1, 2049):
        assert n <= bucket(n) < max(3, n * 1.5)  # under a half more
    assert len({bucket(n) for n in range(1, 513)}) == 18
    assert bucket_width(100, max_width=110) == 110  # never past the model's limit
    assert bucket_width(120, max_width=110) == 120  # (a row is never cut)
    assert bucket_rows(5, width=64, max_rows=64, max_tokens=16384) == 6
    assert bucket_rows(5, width=64, max_rows=5, max_tokens=16384) == 5  # within the row budget
    assert bucket_rows(9, width=100, max_rows=64, max_tokens=1000) == 10  # within the token budget


def test_with_graph_shapes_every_call_takes_a_bucketed_shape_and_scores_are_unchanged(
    tiny_model: Path, fp32: SentimentEngine
) -> None:
    """The captured-graph path without a compiler: shapes come from the series, extra rows are dropped."""
    seen: list[tuple[int, ...]] = []

    def recording(**inputs: Any) -> Any:
        seen.append(tuple(inputs["input_ids"].shape))
        return fp32.model(**inputs)

    graphed = dataclasses.replace(fp32.info, compiled=True, compile_mode="reduce-overhead")
    engine = SentimentEngine(
        fp32.model, fp32.tokenizer, graphed, max_length=128, max_batch_tokens=4096, max_batch_rows=64,
        forward=recording,
    )
    assert engine.graph_shapes and not fp32.graph_shapes
    rng = random.Random(7)
    texts = [" ".join(rng.choice(["good", "bad", "slow", "film", "service", "price"]) for _ in range(rng.randint(1, 60)))
             for _ in range(41)]
    got = engine.infer(engine.encode(texts))
    want = fp32.infer(fp32.encode(texts))
    assert seen and all(rows == bucket(rows) and width == min(bucket(width), 128) for rows, width in seen), seen
    assert got.report.padded_tokens == sum(rows * width for rows, width in seen)
    assert got.report.real_tokens == want.report.real_tokens
    assert abs(got.values - want.values).max() < 1e-5


# ------------------------------------------------------------------ the planner


@pytest.mark.parametrize("seed", range(20))
def test_plan_covers_every_row_once_within_limits(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(3, 48), rng.randint(100, 512)]) for _ in range(rng.randint(1, 200))]
    max_tokens, max_rows = rng.choice([512, 4096, 16384]), rng.choice([1, 8, 64])
    plan = plan_sub_batches(lengths, max_tokens=max_tokens, max_rows=max_rows)
    assert sorted(i for sub in plan for i in sub.indices) == list(range(len(lengths)))
    for sub in plan:
        assert sub.width == max(lengths[i] for i in sub.indices)
        assert len(sub.indices) <= max_rows
        assert sub.padded_tokens <= max_tokens or len(sub.indices) == 1


def test_plan_trades_calls_against_padding() -> None:
    lengths = [10, 12, 40, 41, 300, 310, 11, 305]
    no_overhead = plan_sub_batches(lengths, max_tokens=10**6, max_rows=100, call_overhead=0)
    assert padding_efficiency(lengths, no_overhead) == 1.0  # one call per distinct length
    huge = plan_sub_batches(lengths, max_tokens=10**6, max_rows=100, call_overhead=1e9)
    assert len(huge) == 1  # plain "fill up to the budget"
    default = plan_sub_batches(lengths, max_tokens=10**6, max_rows=100)
    assert [sorted(lengths[i] for i in sub.indices) for sub in default] == [[10, 11, 12], [40, 41], [300, 305, 310]]


def test_plan_mixed_workload_padding_efficiency() -> None:
    rng = random.Random(0)
    effs = []
    for _ in range(20):
        lengths = [rng.randint(8, 48) if rng.random() < 0.8 else rng.randint(100, 512) for _ in range(64)]
        effs.append(padding_efficiency(lengths, plan_sub_batches(lengths, max_tokens=16384, max_rows=64)))
    assert sum(effs) / len(effs) >= 0.85


def test_plan_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        plan_sub_batches([1], max_tokens=0, max_rows=1)
    assert plan_sub_batches([], max_tokens=10, max_rows=1) == []
