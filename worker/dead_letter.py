"""Records that can't be scored go to the dead-letter topic, unchanged, with the reason in headers.

Headers follow Kafka Connect's convention (KIP-298) as UTF-8 strings, readable
from any language, plus ``__sentiment.errors.reason``: a short stable code
(``not_json``, ``text_missing``, ``inference_failed``...) to filter and count on.
"""

from __future__ import annotations

from typing import Optional

from worker.codec import Source
from worker.publisher import OutboundRecord

REASON_HEADER = "__sentiment.errors.reason"
MAX_MESSAGE_CHARS = 1000


def dead_letter(
    topic: str,
    source: Source,
    key: Optional[bytes],
    value: Optional[bytes],
    *,
    reason: str,
    exception_class: str,
    message: str,
) -> OutboundRecord:
    """The original key and value bytes, with where they came from and why they were set aside."""
    headers = (
        ("__connect.errors.topic", source.topic),
        ("__connect.errors.partition", str(source.partition)),
        ("__connect.errors.offset", str(source.offset)),
        ("__connect.errors.exception.class.name", exception_class),
        ("__connect.errors.exception.message", message[:MAX_MESSAGE_CHARS]),
        ("__connect.errors.stage", "VALUE_CONVERTER" if reason != "inference_failed" else "TASK_PUT"),
        (REASON_HEADER, reason),
    )
    return OutboundRecord(
        topic=topic, key=key, value=value, headers=tuple((name, text.encode("utf-8")) for name, text in headers)
    )
