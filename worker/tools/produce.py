"""``sentiment-worker produce``: texts or lines to the input topic, with keys, headers and a partition if asked.

Like ``kcat -P``: ``--key-separator`` splits each line into ``key<SEP>value`` (-K), ``--null-empty``
sends an empty key or value as null (-Z), ``-H name=value`` adds a header (-H), ``--partition``
picks the partition (-p).
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Optional, TextIO

import orjson

from worker.pipeline.codec import InputRecord, encode_input
from worker.settings import Settings
from worker.tools.kafka_io import ToolError, check_partitions, gather_deliveries, partition_count, producer


class ProduceFormat(str, Enum):
    text = "text"  # each line/argument becomes {"text": ...}
    jsonl = "jsonl"  # each line is a JSON object, sent unchanged (key: its "id")
    raw = "raw"  # each line is sent as-is (for INPUT_FORMAT=text)


@dataclass(frozen=True)
class ProduceOptions:
    fmt: ProduceFormat = ProduceFormat.text
    key: Optional[str] = None  # every record's key (wins over "id" and the separator)
    key_separator: Optional[str] = None  # "key<SEP>value" lines; a line without SEP has no key
    null_empty: bool = False  # an empty key or value is sent as null (an empty value: a tombstone)
    headers: tuple[tuple[str, bytes], ...] = field(default_factory=tuple)
    partition: Optional[int] = None  # None: Kafka's default partitioner (by key; sticky without)


@dataclass(frozen=True)
class Outgoing:
    key: Optional[bytes]
    value: Optional[bytes]
    source: str  # "line 3" / "argument 1", for messages


@dataclass
class ProduceResult:
    topic: str
    partitions: Counter = field(default_factory=Counter)  # partition -> records acknowledged
    skipped: list[str] = field(default_factory=list)  # why each unsendable line was left out

    @property
    def count(self) -> int:
        return sum(self.partitions.values())

    def summary(self) -> str:
        where = ", ".join(f"partition {p}: {n}" for p, n in sorted(self.partitions.items()))
        line = f"produced {self.count} record(s) to {self.topic}" + (f" ({where})" if where else "")
        if self.skipped:
            line += f"; skipped {len(self.skipped)}"
        return line


def parse_header(text: str) -> tuple[str, bytes]:
    """``name=value`` (the value may be empty, and may hold ``=``)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"{text!r} is not name=value")
    return name, value.encode("utf-8")


def lines(texts: list[str], file: Optional[Path], stdin: TextIO = sys.stdin) -> Iterator[tuple[str, str]]:
    """(where, line) for each argument, then each non-blank line of ``file`` or stdin (when no texts)."""
    for number, text in enumerate(texts, 1):
        yield f"argument {number}", text
    if file is None and texts:
        return
    source = contextlib.nullcontext(stdin) if file is None or str(file) == "-" else file.open(encoding="utf-8")
    with source as stream:
        for number, line in enumerate(stream, 1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield f"line {number}", line


def records(items: Iterable[tuple[str, str]], opts: ProduceOptions) -> Iterator[Outgoing]:
    """The key and value bytes of each line, as the options say."""
    for where, line in items:
        key: Optional[bytes] = None
        body = line
        if opts.key_separator:
            head, sep, tail = line.partition(opts.key_separator)
            if sep:
                key, body = head.encode("utf-8"), tail
        value: Optional[bytes]
        if opts.null_empty and body == "":
            value = None
        elif opts.fmt is ProduceFormat.text:
            value = encode_input(InputRecord(text=body))
        elif opts.fmt is ProduceFormat.raw:
            value = body.encode("utf-8")
        else:
            value = body.encode("utf-8")
            if key is None:
                key = _id_of(body)
        if opts.key is not None:
            key = opts.key.encode("utf-8")
        if opts.null_empty and key == b"":
            key = None
        yield Outgoing(key, value, where)


def _id_of(line: str) -> Optional[bytes]:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None  # sent anyway: the worker decides what is bad input
    if isinstance(doc, dict) and isinstance(doc.get("id"), str):
        return doc["id"].encode("utf-8")
    return None


async def produce(settings: Settings, items: Iterable[tuple[str, str]], opts: ProduceOptions) -> ProduceResult:
    """Send every record to INPUT_TOPIC and wait for each acknowledgement."""
    topic = settings.input_topic
    count = await partition_count(settings, topic, create=settings.create_topics)
    if opts.partition is not None:
        check_partitions(topic, [opts.partition], count)
    result = ProduceResult(topic)
    client = producer(settings)
    await client.start()
    try:
        futures = []
        for record in records(items, opts):
            if record.key is None and record.value is None:
                result.skipped.append(f"{record.source}: neither key nor value (a record needs one of them)")
                continue
            futures.append(
                await client.send(
                    topic, record.value, key=record.key, partition=opts.partition, headers=list(opts.headers) or None
                )
            )
        for meta in await gather_deliveries(futures):
            result.partitions[meta.partition] += 1
    finally:
        await client.stop()
    return result


__all__ = ["ProduceFormat", "ProduceOptions", "ProduceResult", "ToolError", "lines", "parse_header", "produce"]
