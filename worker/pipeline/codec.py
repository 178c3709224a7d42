"""Bytes in, bytes out: the wire contract with producers and consumers.

Decoding never raises anything but :class:`DecodeError`, whose ``reason`` is a
short machine-readable code, so one bad record can be set aside without
touching its neighbours. The contract lives in ``schemas/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Optional, Union

import orjson

from worker.settings import InputFormat

Timestamp = Union[str, int, float]


class DecodeError(ValueError):
    """A record that can't be scored; ``reason`` is stable, ``str(err)`` is for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class InputRecord:
    text: str
    id: Optional[str] = None
    metadata: Optional[dict[str, Any]] = None
    ts: Optional[Timestamp] = None


@dataclass(frozen=True, slots=True)
class Source:
    """Where an input record sat in Kafka; becomes the output's ``source``."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: Optional[int]

    @property
    def default_id(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


def decode(value: Optional[bytes], fmt: InputFormat) -> InputRecord:
    """Parse one input value according to the configured format."""
    if value is None:
        raise DecodeError("empty_value", "record has no value (tombstone)")
    try:
        as_text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("invalid_utf8", f"value is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    if fmt is InputFormat.text:
        return InputRecord(text=_check_text(as_text))
    return _decode_json(as_text)


def _decode_json(as_text: str) -> InputRecord:
    try:
        doc = orjson.loads(as_text)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("not_json", f"value is not JSON: {exc}") from None
    return from_document(doc)


def from_document(doc: Any) -> InputRecord:
    """The input contract's checks on a decoded document (JSON, or an Avro record as a dict)."""
    if not isinstance(doc, dict):
        raise DecodeError("not_object", f"value is JSON {type(doc).__name__}, not an object")
    if "text" not in doc:
        raise DecodeError("text_missing", 'object has no "text" field')
    text = doc["text"]
    if text is None:
        raise DecodeError("text_null", '"text" is null')
    if not isinstance(text, str):
        raise DecodeError("text_not_string", f'"text" is {type(text).__name__}, not a string')
    record_id = doc.get("id")
    if record_id is not None and not isinstance(record_id, str):
        raise DecodeError("invalid_id", f'"id" is {type(record_id).__name__}, not a string')
    metadata = doc.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise DecodeError("invalid_metadata", f'"metadata" is {type(metadata).__name__}, not an object')
    if metadata:
        try:  # orjson reads 1,024 levels but writes only ~254: refuse what can't be passed through,
            orjson.dumps({"metadata": metadata})  # at the depth the output event holds it
        except orjson.JSONEncodeError:
            raise DecodeError("invalid_metadata", '"metadata" is nested too deeply to pass through') from None
    ts = doc.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (str, int, float))):
        raise DecodeError("invalid_ts", f'"ts" is {type(ts).__name__}, not a string or number')
    return InputRecord(text=_check_text(text), id=record_id, metadata=metadata, ts=ts)


def _check_text(text: str) -> str:
    if not text.strip():
        raise DecodeError("text_empty", "text is empty or whitespace only")
    return text


def iso_utc(epoch_ms: Optional[float]) -> Optional[str]:
    if epoch_ms is None:
        return None
    return _iso_utc(epoch_ms)


@lru_cache(maxsize=4096)
def _iso_utc(epoch_ms: float) -> str:
    """Cached: a producer's batch shares its timestamp, and formatting a datetime per event was a tenth of the output thread."""
    return datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def encode_output(record: InputRecord, source: Source, **fields: Any) -> bytes:
    """One scored event as JSON: ``output_document`` (same arguments) serialised with orjson."""
    return orjson.dumps(output_document(record, source, **fields))


def output_document(
    record: InputRecord,
    source: Source,
    *,
    truncated: bool,
    model: dict[str, Optional[str]],
    processed_at: str,
    label: Optional[str] = None,
    score: Optional[float] = None,
    scores: Optional[dict[str, float]] = None,
    labels: Optional[list[str]] = None,
    value: Optional[float] = None,
    head: str = "single_label",
    version: str = "2",
    include_text: bool = False,
    text: Optional[str] = None,
) -> dict[str, Any]:
    """The scored event as a document, before serialisation (JSON here, Avro in ``worker.registry``).

    Schema schemas/sentiment-output.v2.json (v1 for a single-label model). The head
    decides the result fields: single_label and multi_label carry label, score and
    scores (multi_label also labels), regression carries value. ``text``: what to copy
    with ``include_text`` when it differs from the input's text (a truncated text is
    copied as far as it was scored).
    """
    doc: dict[str, Any] = {
        "schema_version": version,
        "id": record.id if record.id is not None else source.default_id,
    }
    if version != "1":
        doc["head"] = head
    if head == "regression":
        doc["value"] = value
    else:
        doc["label"] = label
        doc["score"] = score
        doc["scores"] = scores
        if head == "multi_label":
            doc["labels"] = labels or []
    doc["model"] = model
    doc["source"] = {
        "topic": source.topic,
        "partition": source.partition,
        "offset": source.offset,
        "timestamp": iso_utc(source.timestamp_ms),
    }
    doc["metadata"] = record.metadata
    doc["processed_at"] = processed_at
    doc["truncated"] = truncated
    if record.ts is not None:
        doc["ts"] = record.ts
    if include_text:
        doc["text"] = record.text if text is None else text
    return doc


def encode_input(record: InputRecord) -> bytes:
    """What ``sentiment-worker produce`` writes; the inverse of :func:`decode`."""
    doc: dict[str, Any] = {"text": record.text}
    if record.id is not None:
        doc["id"] = record.id
    if record.metadata is not None:
        doc["metadata"] = record.metadata
    if record.ts is not None:
        doc["ts"] = record.ts
    return orjson.dumps(doc)
