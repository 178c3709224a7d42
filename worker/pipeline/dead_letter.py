"""Records that can't be scored go to the dead-letter topic, unchanged, with the reason in headers.

Headers follow Kafka Connect's convention (KIP-298) as UTF-8 strings, readable
from any language, plus ``__sentiment.errors.reason``: a short stable code
(``not_json``, ``text_missing``, ``inference_failed``, ``output_too_large``...)
to filter and count on.

Two departures from "unchanged", both so that the dead letter itself can
always be stored:

- a record without a key is keyed by where it came from (``topic:partition:offset``),
  with ``__sentiment.errors.key.null: true``: Kafka refuses a record with
  neither key nor value, and a compacted dead-letter topic refuses any keyless one;
- a dead letter over the dead-letter topic's ``max.message.bytes`` keeps its key
  and headers, its value is emptied and ``__sentiment.errors.value.omitted.bytes``
  says how large it was (the original stays on the input topic at the offset
  the headers give, until retention removes it).
"""

from __future__ import annotations

from typing import Optional

from worker.kafka.records import Outbound

REASON_HEADER = "__sentiment.errors.reason"
KEY_NULL_HEADER = "__sentiment.errors.key.null"
OMITTED_HEADER = "__sentiment.errors.value.omitted.bytes"
MAX_MESSAGE_CHARS = 1000
# Reasons of the model stage; every other reason is about the record's bytes.
_TASK_REASONS = frozenset({"inference_failed", "tokenize_failed", "output_too_large", "output_rejected", "encode_failed"})


def origin_id(topic: str, partition: int, offset: int) -> str:
    """Where a record came from, as one string: the default id of outputs and key of keyless dead letters."""
    return f"{topic}:{partition}:{offset}"


def dead_letter(
    topic: str,
    *,
    source_topic: str,
    partition: int,
    offset: int,
    key: Optional[bytes],
    value: Optional[bytes],
    reason: str,
    exception_class: str,
    message: str,
    headers: tuple[tuple[str, bytes], ...] = (),
) -> Outbound:
    """The original value bytes, with where they came from and why they were set aside.

    ``headers``: the input record's own headers, kept in front of ours.
    """
    ours = [
        ("__connect.errors.topic", source_topic),
        ("__connect.errors.partition", str(partition)),
        ("__connect.errors.offset", str(offset)),
        ("__connect.errors.exception.class.name", exception_class),
        ("__connect.errors.exception.message", message[:MAX_MESSAGE_CHARS]),
        ("__connect.errors.stage", "TASK_PUT" if reason in _TASK_REASONS else "VALUE_CONVERTER"),
        (REASON_HEADER, reason),
    ]
    if key is None:
        ours.append((KEY_NULL_HEADER, "true"))
        key = origin_id(source_topic, partition, offset).encode()
    return Outbound(
        topic=topic,
        key=key,
        value=value,
        headers=tuple(headers) + tuple((name, text.encode("utf-8")) for name, text in ours),
        kind="dead_letter",
    )


def without_value(letter: Outbound) -> Outbound:
    """The dead letter with its value dropped (too large for the dead-letter topic)."""
    size = len(letter.value) if letter.value is not None else 0
    return Outbound(
        topic=letter.topic,
        key=letter.key,
        value=b"",
        headers=letter.headers + ((OMITTED_HEADER, str(size).encode()),),
        kind="marker",
    )
