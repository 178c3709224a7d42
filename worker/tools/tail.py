"""``sentiment-worker tail``: print a topic's records with where they are and what they carry.

Formats: ``pretty`` (for a person: one line of partition, offset, time, key and headers, then
the value, JSON indented), ``json`` (one JSON object per record with all of it, for jq and
scripts) and ``value`` (the value alone, one per line: what ``tail`` printed before it showed
metadata). ``auto``: pretty on a terminal, json otherwise.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional, TextIO

import orjson
from aiokafka import TopicPartition

from worker.settings import Settings
from worker.tools.kafka_io import (
    END,
    StartAt,
    bytes_field,
    check_partitions,
    consumer,
    format_time,
    partition_count,
    read,
    seek,
    shown,
    text_or_none,
)

TIMESTAMP_TYPES = {0: "create", 1: "log_append"}


class TailFormat(str, Enum):
    auto = "auto"  # pretty on a terminal, json otherwise
    pretty = "pretty"
    json = "json"
    value = "value"


@dataclass(frozen=True)
class TailOptions:
    topic: str
    partitions: Sequence[int] = ()  # none: all
    start: StartAt = END
    count: Optional[int] = None  # stop after this many records
    idle_timeout_s: Optional[float] = None  # stop after this long without a record
    until_end: bool = False  # stop at the end the partitions had at the start
    fmt: TailFormat = TailFormat.auto
    compact: bool = False  # one line per record (pretty: the value on the metadata line)


async def tail(settings: Settings, opts: TailOptions, out: TextIO = sys.stdout) -> int:
    """Print records as ``opts`` say; returns how many were printed."""
    count = await partition_count(settings, opts.topic)
    tps = [TopicPartition(opts.topic, p) for p in check_partitions(opts.topic, opts.partitions, count)]
    fmt = opts.fmt
    if fmt is TailFormat.auto:
        fmt = TailFormat.pretty if out.isatty() else TailFormat.json
    client = consumer(settings)
    await client.start()
    seen = 0
    try:
        client.assign(tps)
        await seek(client, tps, opts.start)
        if opts.count == 0:
            return 0
        async for record in read(client, tps, until_end=opts.until_end, idle_timeout_s=opts.idle_timeout_s):
            show(record, fmt, compact=opts.compact, out=out)
            seen += 1
            if opts.count is not None and seen >= opts.count:
                break
        return seen
    finally:
        await client.stop()


def show(record: Any, fmt: TailFormat, *, compact: bool, out: TextIO) -> None:
    if fmt is TailFormat.json:
        out.write(orjson.dumps(as_json(record)).decode() + "\n")
    elif fmt is TailFormat.value:
        if record.value is not None:  # a tombstone has nothing to show
            doc = _parsed(record.value)
            option = orjson.OPT_INDENT_2 if not compact and out.isatty() else 0
            out.write((orjson.dumps(doc, option=option).decode() if doc is not _NOT_JSON else shown(record.value)) + "\n")
    else:
        out.write(pretty(record, compact=compact, colour=out.isatty() and "NO_COLOR" not in os.environ))
    out.flush()


def as_json(record: Any) -> dict[str, Any]:
    """Everything about a record as one JSON object.

    ``value`` is the JSON document when the value is JSON (``value_format`` json), else its
    UTF-8 text (text), else base64 (base64); a tombstone is ``"value": null`` (null). ``key`` and
    header values are UTF-8 text or null; bytes that aren't UTF-8 come as ``key_base64`` /
    ``value_base64`` instead.
    """
    doc: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "timestamp_type": TIMESTAMP_TYPES.get(record.timestamp_type, str(record.timestamp_type)),
        **bytes_field("key", record.key),
        "headers": [{"key": name, **bytes_field("value", value)} for name, value in record.headers or ()],
    }
    value = record.value
    parsed = _parsed(value) if value is not None else _NOT_JSON
    if value is None:
        doc.update(value=None, value_format="null")
    elif parsed is not _NOT_JSON:
        doc.update(value=parsed, value_format="json")
    elif text_or_none(value) is not None:
        doc.update(value=text_or_none(value), value_format="text")
    else:
        doc.update(value=bytes_field("value", value)["value_base64"], value_format="base64")
    return doc


def pretty(record: Any, *, compact: bool, colour: bool) -> str:
    """``topic p2 @17 2024-05-01T12:00:00.123Z key="k1" headers[name=value, ...]``, then the value (JSON indented)."""
    stamp = format_time(record.timestamp) + (" (log append)" if record.timestamp_type == 1 else "")
    headers = ", ".join(f"{name}={shown(value)}" for name, value in record.headers or ())
    key = "null" if record.key is None else orjson.dumps(shown(record.key)).decode()
    meta = f"{record.topic} p{record.partition} @{record.offset} {stamp} key={key}"
    if headers:
        meta += f" headers[{headers}]"
    if record.value is None:
        body = "(null value: a tombstone)"
    elif record.value == b"":
        body = "(empty value)"
    else:
        doc = _parsed(record.value)
        if doc is _NOT_JSON:
            body = shown(record.value)
        elif compact:
            body = orjson.dumps(doc).decode()
        else:
            body = orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()
    if colour:
        meta = f"\x1b[1;36m{meta}\x1b[0m"
    return f"{meta} {body}\n" if compact else f"{meta}\n{body}\n"


_NOT_JSON = object()


def _parsed(value: bytes) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return _NOT_JSON
