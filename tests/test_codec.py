"""The wire contract: decode() accepts or rejects with a stable reason, encode_output() fits the schema."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import REPO
from worker.pipeline.codec import DecodeError, InputRecord, Source, decode, encode_input, encode_output, iso_utc
from worker.settings import InputFormat

OUTPUT_SCHEMA = json.loads((REPO / "schemas" / "sentiment-output.v2.json").read_text())
OUTPUT_SCHEMA_V1 = json.loads((REPO / "schemas" / "sentiment-output.v1.json").read_text())
INPUT_SCHEMA = json.loads((REPO / "schemas" / "sentiment-input.v1.json").read_text())
OUTPUT_VALIDATOR = jsonschema.Draft202012Validator(OUTPUT_SCHEMA, format_checker=jsonschema.FormatChecker())
OUTPUT_VALIDATOR_V1 = jsonschema.Draft202012Validator(OUTPUT_SCHEMA_V1, format_checker=jsonschema.FormatChecker())

JSON, TEXT = InputFormat.json, InputFormat.text
SOURCE = Source(topic="in-topic", partition=3, offset=41, timestamp_ms=1_700_000_000_123)
MODEL_BLOCK = {"name": "some/model", "revision": "sha256:0123456789abcdef"}
PROCESSED_AT = "2024-05-01T12:00:00.000+00:00"


def reason_of(value: bytes | None, fmt: InputFormat = JSON) -> str:
    with pytest.raises(DecodeError) as info:
        decode(value, fmt)
    assert str(info.value), "a DecodeError must carry a human-readable message"
    return info.value.reason


def encode(record: InputRecord, source: Source = SOURCE, *, include_text: bool = False, truncated: bool = False,
           version: str = "2") -> dict:
    raw = encode_output(
        record,
        source,
        label="POSITIVE",
        score=0.75,
        scores={"NEGATIVE": 0.25, "POSITIVE": 0.75},
        truncated=truncated,
        model=MODEL_BLOCK,
        processed_at=PROCESSED_AT,
        include_text=include_text,
        version=version,
    )
    assert isinstance(raw, bytes)
    return orjson.loads(raw)


# ----------------------------------------------------------------------------- rejections


@pytest.mark.parametrize("fmt", [JSON, TEXT])
def test_tombstone_is_empty_value(fmt: InputFormat) -> None:
    assert reason_of(None, fmt) == "empty_value"


@pytest.mark.parametrize("fmt", [JSON, TEXT])
@pytest.mark.parametrize("value", [b"\xff", b'{"text": "caf\xe9"}', b"ok \xed\xa0\x80 surrogate", b"\xc3"])
def test_invalid_utf8(value: bytes, fmt: InputFormat) -> None:
    assert reason_of(value, fmt) == "invalid_utf8"


@pytest.mark.parametrize(
    "value",
    [b"", b"not json at all", b'{"text": "x"', b"{'text': 'single quotes'}", b'{"text": NaN}', b"\xef\xbb\xbf{}",
     b'{"text": "x"} trailing', b'{"text": "\\ud800"}'],
)
def test_not_json(value: bytes) -> None:
    assert reason_of(value) == "not_json"


@pytest.mark.parametrize("value", [b"[]", b'["text"]', b'"text"', b"42", b"1.5", b"true", b"null"])
def test_not_object(value: bytes) -> None:
    assert reason_of(value) == "not_object"


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({}, "text_missing"),
        ({"id": "x", "Text": "wrong case"}, "text_missing"),
        ({"text": None}, "text_null"),
        ({"text": 42}, "text_not_string"),
        ({"text": 1.5}, "text_not_string"),
        ({"text": True}, "text_not_string"),
        ({"text": ["a"]}, "text_not_string"),
        ({"text": {"a": "b"}}, "text_not_string"),
        ({"text": "ok", "id": 5}, "invalid_id"),
        ({"text": "ok", "id": True}, "invalid_id"),
        ({"text": "ok", "id": ["a"]}, "invalid_id"),
        ({"text": "ok", "id": {}}, "invalid_id"),
        ({"text": "ok", "metadata": []}, "invalid_metadata"),
        ({"text": "ok", "metadata": "a"}, "invalid_metadata"),
        ({"text": "ok", "metadata": 3}, "invalid_metadata"),
        ({"text": "ok", "metadata": False}, "invalid_metadata"),
        ({"text": "ok", "ts": True}, "invalid_ts"),
        ({"text": "ok", "ts": False}, "invalid_ts"),
        ({"text": "ok", "ts": []}, "invalid_ts"),
        ({"text": "ok", "ts": {"at": 1}}, "invalid_ts"),
        ({"text": ""}, "text_empty"),
        ({"text": "   "}, "text_empty"),
        ({"text": "\t\r\n \u3000\u2003\x0b\x0c"}, "text_empty"),
    ],
)
def test_json_rejections(doc: dict[str, Any], reason: str) -> None:
    assert reason_of(orjson.dumps(doc)) == reason


def test_text_checked_before_optional_fields() -> None:
    # A record with several problems reports the text problem: the reason names what must change first.
    assert reason_of(orjson.dumps({"text": None, "id": 5, "metadata": [], "ts": True})) == "text_null"


@pytest.mark.parametrize("value", [b"", b" ", b"\n\t\r ", "\u3000\u2028".encode()])
def test_text_mode_whitespace_is_text_empty(value: bytes) -> None:
    assert reason_of(value, TEXT) == "text_empty"


def test_decode_error_is_a_value_error_with_reason() -> None:
    err = DecodeError("not_json", "value is not JSON")
    assert isinstance(err, ValueError)
    assert err.reason == "not_json" and str(err) == "value is not JSON"


def test_rejection_message_says_where_utf8_breaks() -> None:
    with pytest.raises(DecodeError) as info:
        decode(b"abc\xffdef", TEXT)
    assert "byte 3" in str(info.value)


# ----------------------------------------------------------------------------- acceptance


def test_minimal_json_record() -> None:
    assert decode(b'{"text": "good film"}', JSON) == InputRecord(text="good film")


def test_id_metadata_ts_pass_through() -> None:
    metadata = {"user": {"id": 7, "tags": ["a", "b"]}, "score": 1.25, "flag": None, "ok": True}
    record = decode(orjson.dumps({"text": "hi", "id": "e-1", "metadata": metadata, "ts": "2024-01-02T03:04:05Z"}), JSON)
    assert record == InputRecord(text="hi", id="e-1", metadata=metadata, ts="2024-01-02T03:04:05Z")

    doc = encode(record)
    assert doc["id"] == "e-1"
    assert doc["metadata"] == metadata
    assert doc["ts"] == "2024-01-02T03:04:05Z"


@pytest.mark.parametrize("ts", [0, 1_700_000_000_000, -5, 1.5, "yesterday", ""])
def test_ts_string_or_number_kept_unchanged(ts: Any) -> None:
    record = decode(orjson.dumps({"text": "x", "ts": ts}), JSON)
    assert record.ts == ts and type(record.ts) is type(ts)
    assert encode(record)["ts"] == ts


def test_null_optional_fields_are_absent() -> None:
    record = decode(b'{"text": "x", "id": null, "metadata": null, "ts": null}', JSON)
    assert record == InputRecord(text="x")
    doc = encode(record)
    assert "ts" not in doc and "text" not in doc
    assert doc["metadata"] is None


def test_unknown_fields_are_ignored() -> None:
    record = decode(b'{"text": "x", "lang": "en", "extra": [1, 2]}', JSON)
    assert record == InputRecord(text="x")


def test_text_kept_verbatim_not_stripped() -> None:
    assert decode(orjson.dumps({"text": "  padded \n"}), JSON).text == "  padded \n"
    assert decode(b"  padded \n", TEXT).text == "  padded \n"


def test_text_mode_takes_the_whole_value() -> None:
    value = b'{"text": "looks like json", "id": "not-an-id"}'
    record = decode(value, TEXT)
    assert record == InputRecord(text=value.decode())
    assert decode("ünïcödé ✓ 😀".encode(), TEXT).text == "ünïcödé ✓ 😀"


def test_plain_words_are_text_but_not_json() -> None:
    # The same bytes that text mode accepts as-is are not JSON.
    assert decode(b"I loved it", TEXT).text == "I loved it"
    assert reason_of(b"I loved it", JSON) == "not_json"


@pytest.mark.parametrize("fmt", [JSON, TEXT])
def test_nul_bytes_inside_text_are_accepted(fmt: InputFormat) -> None:
    text = "before\x00after\x00"
    value = orjson.dumps({"text": text}) if fmt is JSON else text.encode()
    record = decode(value, fmt)
    assert record.text == text
    assert encode(record, include_text=True)["text"] == text


def test_nul_only_text_is_not_whitespace() -> None:
    assert decode(b"\x00", TEXT).text == "\x00"


def _nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"1" + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("kind", ["list", "object"])
@pytest.mark.parametrize("depth", [10, 100, 250, 300, 1000, 1023, 1024, 1025, 10_000])
def test_deeply_nested_input_is_a_record_or_a_decode_error(depth: int, kind: str) -> None:
    nested = _nested(depth, kind)
    inside_metadata = b'{"text": "x", "metadata": {"m": ' + nested + b"}}"
    as_whole_value = nested
    inside_text_field = b'{"text": ' + nested + b"}"
    for value in (inside_metadata, as_whole_value, inside_text_field):
        try:
            record = decode(value, JSON)
        except DecodeError as err:
            assert err.reason in {"not_json", "not_object", "text_missing", "text_not_string", "invalid_metadata"}
        else:
            assert isinstance(record, InputRecord) and record.text == "x"
            assert value is inside_metadata
    # As plain text it is just characters.
    assert decode(nested, TEXT).text == nested.decode()


def test_ten_thousand_levels_is_not_json() -> None:
    assert reason_of(b'{"text": "x", "metadata": ' + _nested(10_000, "object") + b"}") == "not_json"
    assert reason_of(b'{"text": "x", "metadata": {"m": ' + _nested(10_000, "list") + b"}}") == "not_json"


@pytest.mark.parametrize("depth", [250, 252, 253, 254, 260, 600])  # around the depth orjson can write
def test_every_accepted_record_can_be_encoded(depth: int) -> None:
    value = b'{"text": "x", "metadata": {"m": ' + _nested(depth, "object") + b"}}"
    try:
        record = decode(value, JSON)
    except DecodeError as err:
        assert depth > 250 and err.reason == "invalid_metadata", (depth, err.reason)
        return  # rejecting it is fine
    encode(record)
    encode_input(record)


# ----------------------------------------------------------------------------- encoding


def test_default_id_is_topic_partition_offset() -> None:
    assert SOURCE.default_id == "in-topic:3:41"
    doc = encode(InputRecord(text="x"))
    assert doc["id"] == "in-topic:3:41"
    other = Source(topic="a.b-c", partition=0, offset=0, timestamp_ms=None)
    assert encode(InputRecord(text="x"), other)["id"] == "a.b-c:0:0"


def test_given_id_wins_over_default_even_if_empty() -> None:
    assert encode(InputRecord(text="x", id="mine"))["id"] == "mine"
    assert encode(InputRecord(text="x", id=""))["id"] == ""


@pytest.mark.parametrize("include_text", [False, True])
@pytest.mark.parametrize(
    "record",
    [
        InputRecord(text="plain"),
        InputRecord(text="all\x00fields ✓", id="e1", metadata={"a": [1, {"b": None}]}, ts=1700000000.5),
        InputRecord(text="string ts", id="e2", metadata={}, ts="2024-01-01T00:00:00Z"),
    ],
)
@pytest.mark.parametrize("timestamp_ms", [None, 0, 1_700_000_000_123])
def test_output_validates_against_schema(record: InputRecord, include_text: bool, timestamp_ms: int | None) -> None:
    source = Source("topic", 1, 2, timestamp_ms)
    doc = encode(record, source, include_text=include_text, truncated=True)
    OUTPUT_VALIDATOR.validate(doc)
    assert doc["schema_version"] == "2" and doc["head"] == "single_label"
    assert doc["label"] == "POSITIVE" and doc["score"] == 0.75
    assert doc["scores"] == {"NEGATIVE": 0.25, "POSITIVE": 0.75}
    assert doc["model"] == MODEL_BLOCK
    assert doc["truncated"] is True
    assert doc["processed_at"] == PROCESSED_AT
    assert doc["source"] == {"topic": "topic", "partition": 1, "offset": 2, "timestamp": iso_utc(timestamp_ms)}
    assert ("text" in doc) is include_text
    if include_text:
        assert doc["text"] == record.text
    # FormatChecker only checks date-time when an RFC 3339 library is installed: check it here too.
    for stamp in (doc["processed_at"], doc["source"]["timestamp"]):
        if stamp is not None:
            assert datetime.fromisoformat(stamp).utcoffset().total_seconds() == 0


def test_version_1_events_validate_against_both_schemas() -> None:
    """OUTPUT_SCHEMA_VERSION=1 (single-label models) writes the version-1 event; v2 readers read it too."""
    doc = encode(InputRecord(text="x", id="a"), version="1")
    assert doc["schema_version"] == "1" and "head" not in doc
    OUTPUT_VALIDATOR_V1.validate(doc)
    OUTPUT_VALIDATOR.validate(doc)
    assert not OUTPUT_VALIDATOR_V1.is_valid(encode(InputRecord(text="x")))  # v2 events are not v1


@pytest.mark.parametrize(
    ("head", "fields"),
    [
        ("multi_label", {"label": "joy", "score": 0.9, "scores": {"joy": 0.9, "anger": 0.6, "fear": 0.1}, "labels": ["joy", "anger"]}),
        ("multi_label", {"label": "joy", "score": 0.3, "scores": {"joy": 0.3}, "labels": []}),
        ("regression", {"value": -1.25}),
    ],
)
def test_other_heads_fit_version_2(head: str, fields: dict) -> None:
    doc = orjson.loads(encode_output(InputRecord(text="x"), SOURCE, truncated=False, model=MODEL_BLOCK,
                                     processed_at=PROCESSED_AT, head=head, **fields))
    OUTPUT_VALIDATOR.validate(doc)
    assert doc["head"] == head and {k: doc[k] for k in fields} == fields
    if head == "regression":
        assert not {"label", "score", "scores", "labels"} & set(doc)
        assert not OUTPUT_VALIDATOR.is_valid({**doc, "label": "x"})
    else:
        assert not OUTPUT_VALIDATOR.is_valid({k: v for k, v in doc.items() if k != "labels"})


def test_schema_rejects_what_encode_must_not_produce() -> None:
    """The validator is not vacuous: a doc missing a field or with an extra one fails."""
    doc = encode(InputRecord(text="x"))
    for broken in ({k: v for k, v in doc.items() if k != "truncated"}, {**doc, "extra": 1}, {**doc, "score": 1.5}):
        assert not OUTPUT_VALIDATOR.is_valid(broken)


def test_iso_utc() -> None:
    assert iso_utc(None) is None
    assert iso_utc(0) == "1970-01-01T00:00:00.000+00:00"
    assert iso_utc(1_700_000_000_123) == "2023-11-14T22:13:20.123+00:00"


def test_encode_input_is_the_inverse_of_decode() -> None:
    records = [
        InputRecord(text="just text"),
        InputRecord(text="all", id="i", metadata={"k": [1, 2.5, None, {"x": "y"}]}, ts=12),
        InputRecord(text=" ws kept ", ts="2024"),
    ]
    for record in records:
        raw = encode_input(record)
        assert decode(raw, JSON) == record
        jsonschema.validate(orjson.loads(raw), INPUT_SCHEMA)
    assert orjson.loads(encode_input(InputRecord(text="t"))) == {"text": "t"}


# ----------------------------------------------------------------------------- properties

_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    _leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=25,
)
# Objects shaped like inputs, so that many examples get past the first checks.
input_like = st.fixed_dictionaries(
    {},
    optional={
        "text": st.text(max_size=30) | json_values,
        "id": st.text(max_size=10) | json_values,
        "metadata": st.dictionaries(st.text(max_size=8), json_values, max_size=3) | json_values,
        "ts": st.text(max_size=10) | st.integers(min_value=-(2**63), max_value=2**63 - 1) | json_values,
    },
)
json_bytes = st.one_of(json_values, input_like).map(orjson.dumps)
whitespace_heavy = st.text(alphabet=" \t\n\r\x0b\x0c\x1c\u3000\u00a0\u2028\x00ab", max_size=12).map(str.encode)


def _check_decode_contract(value: bytes | None) -> None:
    for fmt in (JSON, TEXT):
        try:
            record = decode(value, fmt)
        except DecodeError as err:
            assert isinstance(err.reason, str) and err.reason
            continue
        assert isinstance(record, InputRecord)
        assert isinstance(record.text, str)
        assert any(not ch.isspace() for ch in record.text)
        assert record.id is None or isinstance(record.id, str)
        assert record.metadata is None or isinstance(record.metadata, dict)
        assert record.ts is None or (isinstance(record.ts, (str, int, float)) and not isinstance(record.ts, bool))
        if fmt is TEXT:
            assert value is not None and record == InputRecord(text=value.decode("utf-8"))
        # Whatever is accepted can be written out, fits the output schema and reads back the same.
        OUTPUT_VALIDATOR.validate(encode(record, include_text=True))
        assert decode(encode_input(record), JSON) == record


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.none(), st.binary(max_size=64), json_bytes, whitespace_heavy))
def test_decode_returns_a_record_or_raises_decode_error(value: bytes | None) -> None:
    _check_decode_contract(value)
