"""Any sequence classifier: each family and head scores through the engine exactly as transformers scores it alone.

For BERT, RoBERTa, XLM-R, DeBERTa-v2 and ModernBERT (random weights, tokenizers
generated in tests/model_builders.py) and each head (single-label: softmax;
multi-label: a sigmoid per label; regression: the raw value), the engine's
batched, length-sorted, padded calls must give what the model gives for each
text alone, unpadded: |delta| < 1e-4 in fp32, with torch and with ONNX Runtime.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import orjson
import pytest
import torch

from tests.model_builders import FAMILIES
from worker.model.engine import SentimentEngine
from worker.model.loading import Head
from worker.pipeline.codec import InputRecord

TOL = 1e-4
TEXTS = [
    "the movie was great", "terrible service, never again", "ok", "I love this product, but the price is bad",
    " ".join(["quite good film"] * 20), "word", "Ünïcödé tëxt with ✓ marks!", "a b c d e f g h i j k l m n o p",
]
# ONNX Runtime (RUNTIME=onnxruntime, extra onnx) must score every family and head as torch does.
RUNTIMES = ["torch", pytest.param("onnxruntime", marks=pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None, reason="extra onnx not installed"))]
HEADS = {
    "single": (3, None, Head.single_label),
    "multi": (4, "multi_label_classification", Head.multi_label),
    "regression": (1, "regression", Head.regression),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    built = {}
    for family, build in FAMILIES.items():
        for head, (num_labels, problem_type, _) in HEADS.items():
            path = tmp_path_factory.mktemp(f"{family}-{head}")
            build(path, num_labels, problem_type)
            built[(family, head)] = path
    return built


def reference(path: Path, texts: list[str], max_length: int) -> list[list[float]]:
    """transformers alone: one text at a time, no padding; softmax, sigmoid or the raw value by head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            inputs = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            logits = model(**inputs).logits[0]
            if model.config.problem_type == "multi_label_classification":
                values = torch.sigmoid(logits)
            elif model.config.num_labels == 1 or model.config.problem_type == "regression":
                values = logits
            else:
                values = torch.softmax(logits, dim=-1)
            out.append(values.tolist())
    return out


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_engine_matches_transformers(models, family: str, head: str, runtime: str) -> None:
    path = models[(family, head)]
    max_length = 32
    engine = SentimentEngine.load(
        str(path), device="cpu", precision="fp32", max_length=max_length, max_batch_tokens=128, runtime=runtime
    )
    assert engine.info.head is HEADS[head][2]
    assert engine.info.runtime == runtime, "ONNX Runtime fell back to torch"
    scores = engine.infer(engine.encode(TEXTS))
    assert scores.report.model_calls > 1, "the batch should be cut into padded calls"
    want = reference(path, TEXTS, max_length)
    delta = max(abs(a - b) for got, exp in zip(scores.values.tolist(), want, strict=True) for a, b in zip(got, exp, strict=True))
    assert delta < TOL, f"{family}/{head}: |delta| {delta:.2e}"
    # No two texts may score alike, or a mix-up of rows would pass unnoticed.
    gaps = [max(abs(a - b) for a, b in zip(want[i], want[j])) for i in range(len(want)) for j in range(i + 1, len(want))]
    assert min(gaps) > 10 * TOL, f"{family}/{head}: texts score alike ({min(gaps):.1e})"
    assert scores.truncated[4] is True and not any(scores.truncated[i] for i in (0, 1, 2, 3, 5))


def test_token_type_ids_are_passed_where_the_model_takes_them(models) -> None:
    bert = SentimentEngine.load(str(models[("bert", "single")]), device="cpu", max_length=32)
    roberta = SentimentEngine.load(str(models[("roberta", "single")]), device="cpu", max_length=32)
    assert bert.encode(["a text"]).type_ids == [[0] * len(bert.encode(["a text"]).input_ids[0])]
    assert roberta.encode(["a text"]).type_ids is None


def test_roberta_positions_leave_room_for_the_padding_offset(models) -> None:
    from worker.model.loading import ModelLoadError

    SentimentEngine.load(str(models[("roberta", "single")]), device="cpu", max_length=512)
    with pytest.raises(ModelLoadError, match="513"):
        SentimentEngine.load(str(models[("roberta", "single")]), device="cpu", max_length=513)


@pytest.mark.parametrize("head", list(HEADS))
def test_outputs_of_each_head(models, head: str) -> None:
    """What a reader gets per head: labels above the threshold for multi-label, a value for regression."""
    from worker.pipeline.outputs import OutputBuilder
    from worker.pipeline.scoring import Scored

    engine = SentimentEngine.load(str(models[("deberta-v2", head)]), device="cpu", max_length=32)
    scores = engine.infer(engine.encode(TEXTS[:3]))

    class Nobody:
        def dead_lettered(self, *args: object) -> None:
            raise AssertionError(args)

    builder = OutputBuilder(output_topic="out", dead_letter_topic="dlt", model=engine.info, max_bytes={},
                            include_text=False, scored_text=lambda t: t, observer=Nobody(), threshold=0.5)

    class Rec:
        topic, partition, key, value, timestamp, headers = "in", 0, None, b"x", 0, ()

        def __init__(self, offset: int) -> None:
            self.offset = offset

    (delivery,) = builder.build([Rec(i) for i in range(3)], [InputRecord(t) for t in TEXTS[:3]], Scored(scores))
    docs = [orjson.loads(r.value) for r in delivery.records]
    for doc, row in zip(docs, scores.values.tolist(), strict=True):
        assert doc["head"] == HEADS[head][2].value
        if head == "regression":
            assert doc["value"] == pytest.approx(row[0]) and "label" not in doc
        else:
            assert doc["score"] == pytest.approx(max(row)) and doc["scores"][doc["label"]] == doc["score"]
        if head == "multi":
            assert doc["labels"] == [label for label, p in sorted(doc["scores"].items(), key=lambda kv: -kv[1]) if p >= 0.5]
    assert len(docs) == 3
    assert [d["source"] for d in docs] == [{"topic": "in", "partition": 0, "offset": i, "timestamp": "1970-01-01T00:00:00.000+00:00"} for i in range(3)]
