"""``sentiment-worker dlt replay``: send dead letters back to the input topic once their cause is fixed.

Each selected dead letter is produced to INPUT_TOPIC as it first arrived: its original key
(null again where the worker keyed it by origin, ``__sentiment.errors.key.null: true``), its
value bytes, and its original headers (all but the ``__connect.errors.*`` and
``__sentiment.errors.*`` ones the worker added), plus ``__sentiment.replayed.from:
<dead-letter topic>:<partition>:<offset>``. A dead letter whose value was dropped for size
(``__sentiment.errors.value.omitted.bytes``) can't be replayed from here and is skipped,
named on stderr: its original is on the input topic at the offset its headers give.

Reading stops at the end the dead-letter topic had when the replay started, so records that
are dead-lettered again meanwhile are not replayed in a loop.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, TextIO

from aiokafka import TopicPartition

from worker.pipeline.dead_letter import KEY_NULL_HEADER, OMITTED_HEADER, REASON_HEADER
from worker.settings import Settings
from worker.tools.kafka_io import (
    BEGINNING,
    StartAt,
    check_partitions,
    consumer,
    gather_deliveries,
    partition_count,
    producer,
    read,
    seek,
    shown,
)

REPLAYED_FROM_HEADER = "__sentiment.replayed.from"
_ADDED_PREFIXES = ("__connect.errors.", "__sentiment.errors.")


@dataclass(frozen=True)
class ReplayOptions:
    reasons: Collection[str] = ()  # none: every reason
    partitions: Sequence[int] = ()  # of the dead-letter topic; none: all
    start: StartAt = BEGINNING
    count: Optional[int] = None  # replay at most this many
    dry_run: bool = False


@dataclass
class ReplayResult:
    source: str
    target: str
    dry_run: bool
    read: int = 0
    replayed: int = 0  # produced and acknowledged (dry run: would be)
    other_reason: int = 0
    omitted: list[str] = field(default_factory=list)  # where each skipped value-less dead letter is
    by_reason: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        verb = "would replay" if self.dry_run else "replayed"
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.by_reason.items()))
        line = f"{verb} {self.replayed} record(s) from {self.source} to {self.target}"
        line += f" ({reasons})" if reasons else ""
        line += f"; read {self.read}, skipped {self.other_reason} with another reason"
        if self.omitted:
            line += f", {len(self.omitted)} without their value (dropped for size)"
        return line


@dataclass(frozen=True)
class Replayable:
    where: str  # dead-letter topic:partition:offset
    reason: str
    key: Optional[bytes]
    value: Optional[bytes]
    headers: tuple[tuple[str, bytes], ...]
    origin: str  # input topic:partition:offset the dead letter came from


def header(headers: Sequence[tuple[str, bytes]], name: str) -> Optional[str]:
    """The last value of header ``name`` as text (None when absent)."""
    found = None
    for key, value in headers:
        if key == name:
            found = value.decode("utf-8", "replace") if value is not None else ""
    return found


def original(record: Any) -> Replayable:
    """The record that was dead-lettered, as it first arrived, and where it is and came from."""
    headers = tuple(record.headers or ())
    where = f"{record.topic}:{record.partition}:{record.offset}"
    key = None if header(headers, KEY_NULL_HEADER) == "true" else record.key
    kept = tuple((k, v) for k, v in headers if not k.startswith(_ADDED_PREFIXES) and k != REPLAYED_FROM_HEADER)
    origin = ":".join(
        header(headers, f"__connect.errors.{part}") or "?" for part in ("topic", "partition", "offset")
    )
    return Replayable(
        where=where,
        reason=header(headers, REASON_HEADER) or "",
        key=key,
        value=record.value,
        headers=kept + ((REPLAYED_FROM_HEADER, where.encode()),),
        origin=origin,
    )


async def replay(settings: Settings, opts: ReplayOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> ReplayResult:
    source, target = settings.dead_letter_topic_name, settings.input_topic
    result = ReplayResult(source, target, opts.dry_run)
    count = await partition_count(settings, source)
    await partition_count(settings, target)  # it must exist: a replay does not create topics
    tps = [TopicPartition(source, p) for p in check_partitions(source, opts.partitions, count)]
    client = consumer(settings)
    sender = None if opts.dry_run else producer(settings)
    await client.start()
    try:
        if sender is not None:
            await sender.start()
        client.assign(tps)
        await seek(client, tps, opts.start)
        futures = []
        async for record in read(client, tps, until_end=True, idle_timeout_s=None):
            if opts.count is not None and result.replayed >= opts.count:
                break
            result.read += 1
            letter = original(record)
            if opts.reasons and letter.reason not in opts.reasons:
                result.other_reason += 1
                continue
            omitted = header(record.headers or (), OMITTED_HEADER)
            if omitted is not None:
                result.omitted.append(letter.where)
                err.write(
                    f"skipped {letter.where} ({letter.reason}): its value ({omitted} bytes) was dropped for size; "
                    f"the original is at {letter.origin}\n"
                )
                continue
            if letter.key is None and letter.value is None:
                result.omitted.append(letter.where)
                err.write(f"skipped {letter.where} ({letter.reason}): neither key nor value to send\n")
                continue
            result.replayed += 1
            result.by_reason[letter.reason] += 1
            if sender is None:
                size = len(letter.value) if letter.value is not None else 0
                out.write(
                    f"{letter.where} reason={letter.reason} key={shown(letter.key)} origin={letter.origin} "
                    f"bytes={size}\n"
                )
                continue
            futures.append(await sender.send(target, letter.value, key=letter.key, headers=list(letter.headers)))
        await gather_deliveries(futures)
        return result
    finally:
        if sender is not None:
            await sender.stop()
        await client.stop()
