"""SentimentEngine against transformers run directly: same scores, order, truncation, reports, load errors."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from worker.model.engine import CHARS_PER_TOKEN_LIMIT, ModelLoadError, SentimentEngine
from worker.model.loading import RANDOM_WEIGHTS_MARKER
from worker.model.random_model import _WORDS

TOL = 1e-5


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def sharp_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its dense weights scaled up, so that different texts get clearly different scores.

    The plain tiny model scores every text within ~1e-5 of 0.4987, which would let a mix-up of rows
    or of padding pass a 1e-5 comparison unnoticed.
    """
    from safetensors.torch import load_file, save_file

    path = _copy_model(tiny_model, tmp_path_factory.mktemp("sharp") / "model")
    weights = load_file(path / "model.safetensors")
    for name, tensor in weights.items():
        if name.endswith(".weight") and tensor.ndim == 2 and "embeddings" not in name:
            weights[name] = tensor * 10
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return path


class Reference:
    """The model run the plain transformers way, one text at a time."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]

    def n_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, truncation=False)["input_ids"])

    @torch.no_grad()
    def logits(self, text: str, max_length: int) -> torch.Tensor:
        enc = self.tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
        return self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[0]

    def scores(self, text: str, max_length: int) -> dict[str, float]:
        probs = torch.softmax(self.logits(text, max_length), dim=-1).tolist()
        return dict(zip(self.labels, probs))


@pytest.fixture(scope="module")
def sharp_reference(sharp_model: Path) -> Reference:
    return Reference(sharp_model)


@pytest.fixture(scope="module")
def tiny_reference(tiny_model: Path) -> Reference:
    return Reference(tiny_model)


def sample_texts(n: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    sizes = [1, 2, 3, 5, 8, 13, 21, 34, 60, 90, 150]
    texts = [" ".join(rng.choice(_WORDS) for _ in range(rng.choice(sizes))) for _ in range(n)]
    texts += ["Great!", "ünïcödé tëxt ✓ with 😀 emoji", "x", "NOT GOOD. not good, NOT good?!"]
    return texts


class CallRecorder:
    """Watches the model's forward calls: (rows, width, real tokens) of each, independent of the engine's report."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        mask = kwargs.get("attention_mask")
        real = int(mask.sum()) if mask is not None else ids.numel()
        self.calls.append((ids.shape[0], ids.shape[1], real))

    def __enter__(self) -> "CallRecorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def assert_close(got: dict[str, float], want: dict[str, float]) -> float:
    assert got.keys() == want.keys()
    delta = max(abs(got[k] - want[k]) for k in want)
    assert delta < TOL, f"scores differ by {delta}: {got} vs {want}"
    return delta


# ----------------------------------------------------------------------------- scores and order


def test_split_batch_matches_the_model_run_one_text_at_a_time(sharp_model: Path, sharp_reference: Reference) -> None:
    max_length = 64
    budget = 64
    engine = SentimentEngine.load(str(sharp_model), max_length=max_length, max_batch_tokens=budget)
    texts = sample_texts(36)
    with CallRecorder(engine.model) as recorder:
        scores = engine.infer(engine.encode(texts))
    predictions = scores.predictions()

    assert len(recorder.calls) > 5, "the batch should have been cut into several model calls"
    assert sum(rows for rows, _, _ in recorder.calls) == len(texts)
    for rows, width, _ in recorder.calls:
        assert rows == 1 or rows * width <= budget, recorder.calls
    assert any(rows > 1 for rows, _, _ in recorder.calls), "some calls should carry padded rows"
    assert scores.report.model_calls == len(recorder.calls)

    reference = [sharp_reference.scores(text, max_length) for text in texts]
    # The comparison can only catch a mix-up if the texts score differently.
    positive = sorted(r["POSITIVE"] for r in reference)
    assert min(b - a for a, b in zip(positive, positive[1:])) > 10 * TOL

    for text, prediction, want in zip(texts, predictions, reference, strict=True):
        assert_close(prediction.scores, want)
        assert prediction.label == max(want, key=want.__getitem__)
        assert prediction.score == prediction.scores[prediction.label]
        assert abs(sum(prediction.scores.values()) - 1.0) < 1e-5


def test_results_follow_input_order_whatever_the_lengths(sharp_model: Path) -> None:
    engine = SentimentEngine.load(str(sharp_model), max_length=64, max_batch_tokens=64)
    texts = sample_texts(20, seed=5)
    forward = engine.predict(texts)
    backward = engine.predict(texts[::-1])[::-1]
    singles = [engine.predict([text])[0] for text in texts]
    for a, b, c in zip(forward, backward, singles, strict=True):
        assert_close(a.scores, b.scores)
        assert_close(a.scores, c.scores)
    # Length-sorted inference must not reorder: the longest text first and last gives the same.
    longest = max(texts, key=len)
    shortest = min(texts, key=len)
    both = engine.predict([longest, shortest, longest])
    assert_close(both[0].scores, both[2].scores)
    assert_close(both[1].scores, engine.predict([shortest])[0].scores)
    assert abs(both[0].scores["POSITIVE"] - both[1].scores["POSITIVE"]) > 10 * TOL


def test_row_limit_splits_calls_without_changing_scores(sharp_model: Path, sharp_reference: Reference) -> None:
    engine = SentimentEngine.load(str(sharp_model), max_length=32, max_batch_rows=3)
    texts = ["good", "bad", "the movie", "love it", "hate it", "never again", "x"]
    with CallRecorder(engine.model) as recorder:
        predictions = engine.predict(texts)
    assert len(recorder.calls) >= 3
    assert all(rows <= 3 for rows, _, _ in recorder.calls)
    for text, prediction in zip(texts, predictions, strict=True):
        assert_close(prediction.scores, sharp_reference.scores(text, 32))


# ----------------------------------------------------------------------------- truncation


def test_truncated_exactly_when_longer_than_max_length_tokens(tiny_model: Path, tiny_reference: Reference) -> None:
    max_length = 16
    engine = SentimentEngine.load(str(tiny_model), max_length=max_length, max_batch_tokens=64)
    # Words of the vocabulary are one token each; [CLS] and [SEP] make two more.
    texts = [" ".join(["good"] * n) for n in range(1, 30)]
    texts += ["unbelievably", "good, bad; ugly!" * 3, "é" * 40]
    predictions = engine.predict(texts)
    counts = [tiny_reference.n_tokens(text) for text in texts]
    assert max_length in counts and max_length + 1 in counts
    for text, count, prediction in zip(texts, counts, predictions, strict=True):
        assert prediction.truncated is (count > max_length), (text, count)


def test_truncated_scores_are_those_of_the_first_max_length_tokens(sharp_model: Path, sharp_reference: Reference) -> None:
    engine = SentimentEngine.load(str(sharp_model), max_length=16)
    text = "love the movie " * 10 + "hate hate hate terrible awful"
    prediction = engine.predict([text])[0]
    assert prediction.truncated
    assert_close(prediction.scores, sharp_reference.scores(text, 16))


def test_texts_over_the_character_limit_are_flagged(tiny_model: Path) -> None:
    max_length = 16
    limit = max_length * CHARS_PER_TOKEN_LIMIT
    assert limit == max_length * 64
    engine = SentimentEngine.load(str(tiny_model), max_length=max_length)
    # One long "word" is a single [UNK] token: only the character limit can flag it.
    at_limit, over_limit = "a" * limit, "a" * (limit + 1)
    predictions = engine.predict([at_limit, over_limit, "ok"])
    assert [p.truncated for p in predictions] == [False, True, False]


def test_megabyte_text_is_scored_quickly(sharp_model: Path, sharp_reference: Reference) -> None:
    engine = SentimentEngine.load(str(sharp_model), max_length=512)
    sentence = "the movie was great but the service was slow and i want my money back "
    big = (sentence * (1_000_000 // len(sentence) + 1))[:1_000_000]
    assert len(big.encode()) == 1_000_000
    started = time.perf_counter()
    scores = engine.infer(engine.encode([big, "short one"]))
    elapsed = time.perf_counter() - started
    predictions = scores.predictions()
    assert elapsed < 3.0, f"1 MB text took {elapsed:.2f}s"
    assert predictions[0].truncated is True and predictions[1].truncated is False
    assert scores.report.real_tokens == 512 + len(engine.encode(["short one"]).input_ids[0])
    # The same as the model on the text's beginning (plenty of tokens past max_length).
    assert_close(predictions[0].scores, sharp_reference.scores(big[:20_000], 512))


# ----------------------------------------------------------------------------- reports and info


def test_report_counts_rows_tokens_padding_and_calls(tiny_model: Path, tiny_reference: Reference) -> None:
    max_length, budget, rows = 32, 64, 4
    engine = SentimentEngine.load(str(tiny_model), max_length=max_length, max_batch_tokens=budget, max_batch_rows=rows)
    for seed in (3, 4):
        texts = sample_texts(15, seed=seed)
        with CallRecorder(engine.model) as recorder:
            report = engine.infer(engine.encode(texts)).report
        lengths = [min(tiny_reference.n_tokens(t), max_length) for t in texts]
        assert report.rows == len(texts)
        assert report.real_tokens == sum(lengths) == sum(real for _, _, real in recorder.calls)
        assert report.padded_tokens == sum(r * w for r, w, _ in recorder.calls)
        assert report.model_calls == len(recorder.calls)
        assert report.padded_tokens >= report.real_tokens
        assert report.padding_efficiency == pytest.approx(sum(lengths) / report.padded_tokens)
        assert all(r <= rows for r, _, _ in recorder.calls)

    # One short text: one call, no padding.
    report = engine.infer(engine.encode(["the movie was great and i love it"])).report
    assert tiny_reference.n_tokens("the movie was great and i love it") == 10
    assert (report.rows, report.real_tokens, report.padded_tokens, report.model_calls) == (1, 10, 10, 1)


def test_labels_come_from_the_config(tiny_model: Path, tmp_path: Path) -> None:
    assert SentimentEngine.load(str(tiny_model)).info.labels == ("NEGATIVE", "POSITIVE")
    path = _copy_model(tiny_model, tmp_path / "relabelled")
    config = json.loads((path / "config.json").read_text())
    config["id2label"] = {"0": "sad", "1": "glad"}
    config["label2id"] = {"sad": 0, "glad": 1}
    (path / "config.json").write_text(json.dumps(config))
    engine = SentimentEngine.load(str(path))
    assert engine.info.labels == ("sad", "glad")
    prediction = engine.predict(["hello there"])[0]
    assert set(prediction.scores) == {"sad", "glad"}
    assert prediction.label in {"sad", "glad"}


def test_multi_label_models_use_sigmoid(sharp_model: Path, sharp_reference: Reference, tmp_path: Path) -> None:
    path = _copy_model(sharp_model, tmp_path / "multi")
    config = json.loads((path / "config.json").read_text())
    config["problem_type"] = "multi_label_classification"
    (path / "config.json").write_text(json.dumps(config))
    engine = SentimentEngine.load(str(path), max_length=64)
    text = "i love this movie but the price is bad"
    prediction = engine.predict([text])[0]
    want = dict(zip(sharp_reference.labels, torch.sigmoid(sharp_reference.logits(text, 64)).tolist()))
    assert_close(prediction.scores, want)
    assert abs(sum(prediction.scores.values()) - 1.0) > 1e-3


def test_model_info(tiny_model: Path, tmp_path: Path) -> None:
    info = SentimentEngine.load(str(tiny_model)).info
    assert info.random_weights is True
    assert info.revision is not None and info.revision.startswith("sha256:")
    digest = hashlib.sha256((tiny_model / "model.safetensors").read_bytes()).hexdigest()
    assert info.revision == "sha256:" + digest[:16]
    assert info.name == str(tiny_model)
    assert info.device == "cpu" and info.precision == "fp32"
    assert info.as_output() == {"name": str(tiny_model), "revision": info.revision}

    unmarked = _copy_model(tiny_model, tmp_path / "unmarked")
    (unmarked / RANDOM_WEIGHTS_MARKER).unlink()
    other = SentimentEngine.load(str(unmarked)).info
    assert other.random_weights is False
    assert other.revision == info.revision  # same weights, same revision


def test_different_weights_have_different_revisions(tiny_model: Path, sharp_model: Path) -> None:
    assert SentimentEngine.load(str(tiny_model)).info.revision != SentimentEngine.load(str(sharp_model)).info.revision


def test_warmup_runs(tiny_model: Path) -> None:
    engine = SentimentEngine.load(str(tiny_model))
    with CallRecorder(engine.model) as recorder:
        engine.warmup()
    assert recorder.calls, "warm-up must run the model"


# ----------------------------------------------------------------------------- precision and device


def test_bf16_on_cpu_is_close_to_fp32(sharp_model: Path) -> None:
    texts = sample_texts(12, seed=2)
    fp32 = SentimentEngine.load(str(sharp_model), precision="fp32", max_length=64).predict(texts)
    engine = SentimentEngine.load(str(sharp_model), precision="bf16", max_length=64)
    assert engine.info.precision == "bf16"
    assert next(engine.model.parameters()).dtype == torch.bfloat16
    bf16 = engine.predict(texts)
    for a, b in zip(fp32, bf16, strict=True):
        assert max(abs(a.scores[k] - b.scores[k]) for k in a.scores) < 0.05
        assert all(isinstance(v, float) for v in b.scores.values())


def test_fp16_on_cpu_is_refused(tiny_model: Path) -> None:
    with pytest.raises(ModelLoadError, match="fp16"):
        SentimentEngine.load(str(tiny_model), device="cpu", precision="fp16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_refused(tiny_model: Path, device: str) -> None:
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        SentimentEngine.load(str(tiny_model), device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto picks CUDA there")
def test_auto_device_on_cpu_machine(tiny_model: Path) -> None:
    info = SentimentEngine.load(str(tiny_model), device="auto", precision="auto").info
    assert (info.device, info.precision) == ("cpu", "fp32")


def test_max_length_above_model_positions_is_refused(tiny_model: Path) -> None:
    SentimentEngine.load(str(tiny_model), max_length=512)  # exactly the limit is fine
    with pytest.raises(ModelLoadError, match="512"):
        SentimentEngine.load(str(tiny_model), max_length=513)


# ----------------------------------------------------------------------------- load errors

PROVIDE_HINT = ("init-random", "save_pretrained", "hf download")


def test_missing_local_directory(tmp_path: Path) -> None:
    missing = str(tmp_path / "nonexistent" / "model")
    for source in ("/nonexistent/model", missing, "./not-here", "~/no-such-model-dir"):
        with pytest.raises(ModelLoadError) as info:
            SentimentEngine.load(source)
        assert source in str(info.value)
        assert "no such directory" in str(info.value)


def test_missing_local_directory_says_how_to_provide_weights() -> None:
    with pytest.raises(ModelLoadError) as info:
        SentimentEngine.load("/nonexistent/model")
    assert any(hint in str(info.value) for hint in PROVIDE_HINT)


def test_directory_without_model_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError) as info:
        SentimentEngine.load(str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message
    assert "config.json" in message and "safetensors" in message and "save_pretrained" in message


def test_directory_without_weights(tiny_model: Path, tmp_path: Path) -> None:
    path = _copy_model(tiny_model, tmp_path / "no-weights")
    (path / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="safetensors"):
        SentimentEngine.load(str(path))


def test_hub_id_while_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants as hub_constants

    home = tmp_path / "hf-home"
    home.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    # huggingface_hub reads these once, at import (already done by the fixtures): patch its copies too.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(home / "hub"))
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        SentimentEngine.load("distilbert-base-uncased-finetuned-sst-2-english")
    assert time.perf_counter() - started < 20, "offline mode must not wait on the network"
    message = str(info.value)
    assert "distilbert-base-uncased-finetuned-sst-2-english" in message
    assert "init-random" in message
    assert "hf download" in message and str(home) in message
    assert not any(home.rglob("*.safetensors"))


# Load failures that escape as other exceptions: the CLI then dies with a traceback and exit 1
# instead of a one-line error and exit 2 (engine.py catches only OSError and ValueError).


def test_corrupt_weights_raise_model_load_error(tiny_model: Path, tmp_path: Path) -> None:
    path = _copy_model(tiny_model, tmp_path / "corrupt")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError):
        SentimentEngine.load(str(path))


def test_corrupt_tokenizer_raises_model_load_error(tiny_model: Path, tmp_path: Path) -> None:
    path = _copy_model(tiny_model, tmp_path / "bad-tokenizer")
    (path / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelLoadError):
        SentimentEngine.load(str(path))


def test_directory_without_tokenizer_files_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    path = _copy_model(tiny_model, tmp_path / "no-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (path / name).unlink()
    with pytest.raises(ModelLoadError):
        SentimentEngine.load(str(path))


def test_checkpoint_without_classifier_head_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import DistilBertConfig, DistilBertModel

    path = tmp_path / "base-model"
    DistilBertModel(DistilBertConfig.from_pretrained(str(tiny_model))).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model / name, path / name)
    with pytest.raises(ModelLoadError):
        SentimentEngine.load(str(path))


def test_empty_batch(tiny_model: Path) -> None:
    assert SentimentEngine.load(str(tiny_model)).predict([]) == []


async def test_calls_are_planned_and_padded_in_the_tokenizer_thread_and_only_run_in_the_inference_thread(
    tiny_model: Path, tiny_reference: Reference
) -> None:
    """The device's thread must not plan or pad: that host work would leave the device idle between batches."""
    import threading

    from worker.pipeline.scoring import BatchScorer

    engine = SentimentEngine.load(str(tiny_model), device="cpu", max_batch_rows=8)
    where: dict[str, set[str]] = {"pad": set(), "forward": set()}
    pad, forward = engine.pad, engine._forward

    def recorded_pad(*args: Any, **kwargs: Any) -> Any:
        where["pad"].add(threading.current_thread().name.split("_")[0])
        return pad(*args, **kwargs)

    def recorded_forward(**inputs: Any) -> Any:
        where["forward"].add(threading.current_thread().name.split("_")[0])
        return forward(**inputs)

    engine.pad, engine._forward = recorded_pad, recorded_forward  # type: ignore[method-assign]
    scorer = BatchScorer(engine)
    try:
        texts = sample_texts(30)
        scored = await scorer.score(texts)
    finally:
        scorer.close()
    assert where == {"pad": {"tokenize"}, "forward": {"infer"}}
    assert scored.scores.report.model_calls >= 4 and not scored.failures
    for prediction, text in zip(scored.scores.predictions(), texts, strict=True):
        assert_close(prediction.scores, tiny_reference.scores(text, engine.max_length))
