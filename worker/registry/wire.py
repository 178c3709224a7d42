"""The Schema Registry wire format and subject naming strategies (as Confluent's serializers do them).

A framed value is: magic byte 0, the schema id as a 4-byte big-endian
unsigned integer, then the payload (Avro binary, or JSON text).
"""

from __future__ import annotations

import struct
from typing import Any, Optional

import orjson

from worker.settings import SubjectNameStrategy

MAGIC = 0
HEADER = struct.Struct(">bI")
HEADER_SIZE = HEADER.size  # 5


def header(schema_id: int) -> bytes:
    return HEADER.pack(MAGIC, schema_id)


def frame(schema_id: int, payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, schema_id) + payload


def schema_id_of(value: Optional[bytes]) -> Optional[int]:
    """The schema id of a framed value; None when the value isn't framed."""
    if value is None or len(value) < HEADER_SIZE or value[0] != MAGIC:
        return None
    return HEADER.unpack_from(value)[1]


def record_name(schema_type: str, schema_text: str) -> str:
    """The name RecordNameStrategy uses: an Avro record's full name, a JSON Schema's title."""
    doc: Any = orjson.loads(schema_text)
    if schema_type == "AVRO":
        if not isinstance(doc, dict) or doc.get("type") != "record" or not doc.get("name"):
            raise ValueError("the Avro schema is not a named record")
        name = str(doc["name"])
        namespace = doc.get("namespace")
        return name if "." in name or not namespace else f"{namespace}.{name}"
    if schema_type == "JSON":
        if not isinstance(doc, dict) or not isinstance(doc.get("title"), str):
            raise ValueError("the JSON Schema has no title")
        return doc["title"]
    raise ValueError(f"no record name for {schema_type} schemas")


def subject_name(strategy: SubjectNameStrategy, topic: str, name: Optional[str] = None, *, is_key: bool = False) -> str:
    """The subject a value (or key) schema goes under: TopicNameStrategy, RecordNameStrategy, TopicRecordNameStrategy."""
    if strategy is SubjectNameStrategy.topic:
        return f"{topic}-{'key' if is_key else 'value'}"
    if not name:
        raise ValueError(f"the {strategy.value} strategy needs a record name")
    if strategy is SubjectNameStrategy.record:
        return name
    return f"{topic}-{name}"
