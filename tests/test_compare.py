"""``compare``'s arithmetic on output documents built by the worker's own codec (no broker here).

The broker side (read_committed, windows, the command's output and exit codes) is in
tests/test_compare_kafka.py.
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional

import jsonschema
import orjson
import pytest

from tests.conftest import REPO
from worker.pipeline.codec import InputRecord, Source, output_document
from worker.registry.wire import frame
from worker.tools.compare import Side, Spread, compare, confusion_table, parse_time, report, scored

OUTPUT_SCHEMA = json.loads((REPO / "schemas" / "sentiment-output.v2.json").read_text())
T0 = 1_700_000_000_000  # input events' time, epoch ms


def doc(
    event_id: str,
    label: Optional[str] = None,
    scores: Optional[dict[str, float]] = None,
    *,
    head: str = "single_label",
    labels: Optional[list[str]] = None,
    value: Optional[float] = None,
    model: str = "m-a",
    revision: Optional[str] = "r1",
    offset: int = 0,
    event_ms: Optional[int] = T0,
    version: str = "2",
) -> dict[str, Any]:
    """An output document as the worker writes it."""
    return output_document(
        InputRecord(text="t", id=event_id), Source("in", 0, offset, event_ms), truncated=False,
        model={"name": model, "revision": revision}, processed_at="2026-01-01T00:00:00.000+00:00",
        label=label, score=max(scores.values()) if scores else None, scores=scores, labels=labels, value=value,
        head=head, version=version,
    )


def single(event_id: str, positive: float, **kwargs: Any) -> dict[str, Any]:
    scores = {"NEGATIVE": round(1 - positive, 6), "POSITIVE": positive}
    return doc(event_id, max(scores, key=scores.__getitem__), scores, **kwargs)


def side(topic: str, docs: list[dict[str, Any]], window: tuple[Optional[int], Optional[int]] = (None, None)) -> Side:
    out = Side(topic)
    for d in docs:
        out.add_value(orjson.dumps(d), window=window)
    return out


def test_the_fixture_documents_follow_the_output_schema() -> None:
    validator = jsonschema.Draft202012Validator(OUTPUT_SCHEMA)
    for d in (single("a", 0.7), single("b", 0.2, version="1"),
              doc("c", "x", {"x": 0.9, "y": 0.6}, head="multi_label", labels=["x", "y"]),
              doc("d", head="regression", value=3.5)):
        validator.validate(d)


def test_counts_agreement_confusion_and_score_deltas() -> None:
    a = side("A", [single(f"e{i}", 0.9 if i < 6 else 0.1) for i in range(10)] + [single("only-a", 0.5)])
    # e0, e1 flip to NEGATIVE; e6 flips to POSITIVE; the rest agree with small moves.
    b_docs = [single("e0", 0.3), single("e1", 0.4), single("e6", 0.8)]
    b_docs += [single(f"e{i}", 0.85 if i < 6 else 0.1, model="m-b", revision="r2") for i in (2, 3, 4, 5, 7, 8, 9)]
    b_docs += [single("only-b1", 0.5), single("only-b2", 0.5)]
    result = compare(a, side("B", b_docs))

    assert (result.both, result.only_a, result.only_b) == (10, 1, 2)
    assert result.agreement == pytest.approx(7 / 10)
    assert {k: dict(v) for k, v in result.confusion.items()} == {
        "POSITIVE": {"NEGATIVE": 2, "POSITIVE": 4},
        "NEGATIVE": {"POSITIVE": 1, "NEGATIVE": 3},
    }
    # Per event, max over labels of |pA - pB| (both labels move alike in a two-label softmax).
    expected = sorted([0.6, 0.5, 0.7] + [0.05] * 4 + [0.0] * 3)
    assert sorted(result.score_deltas) == pytest.approx(expected)
    spread = Spread.of(result.score_deltas)
    assert spread is not None
    assert spread.mean == pytest.approx(sum(expected) / 10)
    assert spread.p95 == pytest.approx(0.7)  # nearest rank: the 10th of 10
    assert result.b.models() == {("m-a", "r1"): 5, ("m-b", "r2"): 7}
    assert result.value_deltas == [] and result.per_label == {}


def test_nearest_rank_p95() -> None:
    spread = Spread.of([float(i) for i in range(1, 101)])
    assert spread is not None and (spread.p95, spread.max, spread.mean) == (95.0, 100.0, 50.5)
    assert Spread.of([]) is None
    assert Spread.of([0.25]).p95 == 0.25  # type: ignore[union-attr]


def test_duplicates_keep_the_last_document_and_are_counted() -> None:
    a = side("A", [single("x", 0.9, offset=1), single("x", 0.2, offset=2), single("y", 0.9)])
    b = side("B", [single("x", 0.2), single("y", 0.9), single("y", 0.9)])
    assert (a.records, len(a.events), a.duplicates) == (3, 2, 1)
    assert (b.duplicates, len(b.events)) == (1, 2)
    result = compare(a, b)
    assert result.both == 2 and result.agreement == 1.0  # the later "x" (NEGATIVE) is the one compared
    assert result.score_deltas == [0.0, 0.0]


def test_multi_label_per_label_membership_and_deltas() -> None:
    def multi(event_id: str, probs: dict[str, float]) -> dict[str, Any]:
        return doc(event_id, max(probs, key=probs.__getitem__), probs, head="multi_label",
                   labels=sorted((k for k, p in probs.items() if p >= 0.5), key=lambda k: -probs[k]))

    a = side("A", [multi("1", {"joy": 0.9, "anger": 0.6, "fear": 0.1}), multi("2", {"joy": 0.2, "anger": 0.7, "fear": 0.4})])
    b = side("B", [multi("1", {"joy": 0.8, "anger": 0.3, "fear": 0.1}), multi("2", {"joy": 0.1, "anger": 0.75, "fear": 0.6})])
    result = compare(a, b)
    assert result.agreement == 1.0  # top labels: joy/joy, anger/anger
    stats = result.per_label
    assert (stats["joy"].compared, stats["joy"].agreeing) == (2, 2)
    assert (stats["anger"].agreeing, stats["fear"].agreeing) == (1, 1)  # anger leaves 1's set, fear joins 2's
    assert stats["anger"].delta.mean == pytest.approx((0.3 + 0.05) / 2)  # type: ignore[union-attr]
    assert stats["fear"].delta.p95 == pytest.approx(0.2)  # type: ignore[union-attr]
    assert sorted(result.score_deltas) == pytest.approx([0.2, 0.3])
    text = report(result)
    assert "per label (multi-label)" in text and "anger" in text and "50.00%" in text


def test_regression_compares_values_and_has_no_label_agreement() -> None:
    a = side("A", [doc(str(i), head="regression", value=float(i)) for i in range(4)])
    b = side("B", [doc(str(i), head="regression", value=float(i) + d) for i, d in enumerate([0.5, -1.0, 0.0, 2.0])])
    result = compare(a, b)
    assert result.agreement is None and result.confusion == {} and result.score_deltas == []
    assert sorted(result.value_deltas) == [0.0, 0.5, 1.0, 2.0]
    out = result.as_dict()
    assert out["labels"]["agreement"] is None
    assert out["value_delta"] == {"count": 4, "mean": 0.875, "p95": 2.0, "max": 2.0}
    assert "label agreement" not in report(result) and "|Δvalue|: mean 0.875" in report(result)


def test_heads_that_differ_are_counted_not_compared() -> None:
    a = side("A", [single("1", 0.9), single("2", 0.9)])
    b = side("B", [doc("1", head="regression", value=1.0), single("2", 0.9)])
    result = compare(a, b)
    assert (result.both, result.head_mismatch, result.labelled) == (2, 1, 1)
    assert "heads differ on 1 event(s)" in report(result)


def test_version_1_documents_are_single_label() -> None:
    result = compare(side("A", [single("1", 0.9, version="1")]), side("B", [single("1", 0.4)]))
    assert result.agreement == 0.0 and result.head_mismatch == 0
    assert result.score_deltas == pytest.approx([0.5])


def test_unreadable_records_and_framed_values() -> None:
    s = Side("A")
    s.add_value(None)  # tombstone
    s.add_value(b"not json")
    s.add_value(b'{"no": "id"}')
    s.add_value(frame(7, b"\x02\x00avro-bytes"))  # Avro: counted, not decoded
    s.add_value(frame(7, orjson.dumps(single("json-schema", 0.9))))  # OUTPUT_FORMAT=json_schema: read
    assert (s.records, s.unreadable, s.avro, list(s.events)) == (5, 4, 1, ["json-schema"])
    assert "4 unreadable (1 Avro, not supported)" in report(compare(s, Side("B")))


def test_window_selects_by_input_event_time() -> None:
    docs = [single("early", 0.9, event_ms=T0 - 1), single("start", 0.9, event_ms=T0),
            single("late", 0.9, event_ms=T0 + 999), single("end", 0.9, event_ms=T0 + 1000)]
    s = side("A", docs, window=(T0, T0 + 1000))
    assert list(s.events) == ["start", "late"] and s.outside == 2
    # Without a source timestamp, the record's own timestamp decides.
    s = Side("A")
    s.add_value(orjson.dumps(single("x", 0.9, event_ms=None)), record_ms=T0 - 5, window=(T0, None))
    assert s.outside == 1 and not s.events


def test_report_and_json_name_models_and_counts() -> None:
    a = side("A", [single("1", 0.9), single("2", 0.1, model="m-a2", revision=None)])
    b = side("B", [single("1", 0.2, model="m-b")])
    result = compare(a, b)
    text = report(result)
    assert "A: A: 2 record(s), 2 event(s), 0 duplicate(s)" in text
    assert "model m-a revision r1: 1 event(s)" in text and "model m-a2 revision -: 1 event(s)" in text
    assert "events: 1 in both, 1 only in A, 0 only in B" in text
    assert "label agreement: 0.00% (0 of 1)" in text
    out = result.as_dict()
    assert out["events"] == {"both": 1, "only_a": 1, "only_b": 0, "head_mismatch": 0}
    assert out["labels"]["confusion"] == {"NEGATIVE": {"NEGATIVE": 0, "POSITIVE": 0}, "POSITIVE": {"NEGATIVE": 1, "POSITIVE": 0}}
    assert out["b"]["models"] == [{"name": "m-b", "revision": "r1", "events": 1}]
    assert math.isclose(out["score_delta"]["max"], 0.7)
    orjson.dumps(out)  # JSON all the way down


def test_confusion_table_is_square_over_both_sides_labels_and_lines_up() -> None:
    a = side("A", [single(str(i), 0.9) for i in range(123)] + [single(f"n{i}", 0.1) for i in range(45)])
    b = side("B", [single(str(i), 0.8) for i in range(123)] + [single(f"n{i}", 0.2 if i < 40 else 0.6) for i in range(45)])
    result = compare(a, b)
    assert result.label_names() == ["NEGATIVE", "POSITIVE"]
    assert result.matrix() == [[40, 5], [0, 123]]  # rows: A NEGATIVE, A POSITIVE
    assert confusion_table(result.label_names(), result.matrix()) == [
        "          NEGATIVE  POSITIVE",
        "NEGATIVE        40         5",
        "POSITIVE         0       123",
    ]
    # One label on each side: still square, the diagonal is where they agree.
    one = compare(side("A", [single("1", 0.9)]), side("B", [single("1", 0.2)]))
    assert one.matrix() == [[0, 0], [1, 0]]


def test_parse_time_takes_the_tail_spellings_of_a_time_only() -> None:
    assert parse_time("@1700000000000") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000_000
    for bad in ("beginning", "12", "-3", "yesterday"):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_scored_refuses_what_is_not_an_output_document() -> None:
    for bad in ([], {"id": 3}, {"id": "x", "head": "ranking"}, {"id": "x", "head": "regression"}, {"id": "x"}):
        with pytest.raises(ValueError):
            scored(bad)
