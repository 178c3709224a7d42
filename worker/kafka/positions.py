"""Start positions in a partition: beginning, end, an offset, or a time.

Shared by the worker (START_FROM, where a group with no committed offset
begins) and the command-line tools (``tail --offset``, ``dlt replay``,
``compare --from``), so a time means the same record everywhere: the first
one at or after it, found with offsets-for-times.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from aiokafka import AIOKafkaConsumer, TopicPartition


@dataclass(frozen=True)
class StartAt:
    """Where reading starts in each partition.

    kind: ``beginning``, ``end``, ``offset`` (value: the offset), ``from_end`` (value: how many
    records before the end) or ``time`` (value: epoch milliseconds; the first record at or after it).
    """

    kind: str
    value: int = 0

    def __str__(self) -> str:
        if self.kind == "offset":
            return f"offset {self.value}"
        if self.kind == "from_end":
            return f"{self.value} before the end"
        if self.kind == "time":
            return f"time {format_time(self.value)}"
        return self.kind


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
BEGINNING = StartAt("beginning")
END = StartAt("end")

OFFSET_HELP = (
    "beginning, end, an offset N, -N (N records before the end), or a time: @EPOCH_MS or ISO 8601 "
    "(2024-05-01T12:00:00Z; without a zone: local time)."
)


def parse_start(text: str) -> StartAt:
    """``beginning|end|N|-N|@EPOCH_MS|s@EPOCH_MS|ISO time`` (kcat's -o spellings plus ISO times)."""
    value = text.strip()
    lowered = value.lower()
    if lowered in {"beginning", "earliest", "start", "oldest"}:
        return BEGINNING
    if lowered in {"end", "latest", "newest"}:
        return END
    if re.fullmatch(r"\d+", value):
        return StartAt("offset", int(value))
    if re.fullmatch(r"-\d+", value):
        return StartAt("from_end", -int(value))
    found = re.fullmatch(r"s?@(\d+)", lowered)
    if found:
        return StartAt("time", int(found.group(1)))
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{text!r} is not a start position: use {OFFSET_HELP}") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time, like date(1)
    # Exact, rounded up: the first record at or after that moment (no float rounding).
    return StartAt("time", -((_EPOCH - moment) // timedelta(milliseconds=1)))


async def seek(client: AIOKafkaConsumer, tps: Sequence[TopicPartition], start: StartAt) -> dict[TopicPartition, int]:
    """Position each partition at ``start`` (clamped to what the partition holds); returns the offsets."""
    begins = await client.beginning_offsets(list(tps))
    ends = await client.end_offsets(list(tps))
    if start.kind == "time":
        found = await client.offsets_for_times({tp: start.value for tp in tps})
        offsets = {tp: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in tps}
    elif start.kind == "offset":
        offsets = {tp: start.value for tp in tps}
    elif start.kind == "from_end":
        offsets = {tp: ends[tp] - start.value for tp in tps}
    elif start.kind == "beginning":
        offsets = dict(begins)
    else:
        offsets = dict(ends)
    offsets = {tp: min(max(offsets[tp], begins[tp]), ends[tp]) for tp in tps}
    for tp, offset in offsets.items():
        client.seek(tp, offset)
    return offsets


async def stop_offsets(
    client: AIOKafkaConsumer, partitions: Iterable[TopicPartition], until: StartAt
) -> dict[TopicPartition, int]:
    """Where a bounded run stops in each partition (RUN_UNTIL): its end, or the first record at or after a time.

    The end is what ``end_offsets`` says for this client: for a read_committed
    consumer the last stable offset, so a transaction still open ends the run
    before its records instead of holding it. A time after a partition's last
    record stops that partition at its end.
    """
    tps = list(partitions)
    if not tps:
        return {}
    ends = await client.end_offsets(tps)
    if until.kind != "time":
        return dict(ends)
    found = await client.offsets_for_times({tp: until.value for tp in tps})
    return {tp: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in tps}


async def place_uncommitted(
    client: AIOKafkaConsumer, partitions: Iterable[TopicPartition], start: StartAt
) -> dict[TopicPartition, int]:
    """Seek the partitions the group has no committed offset for to ``start``; returns where they start.

    Committed offsets always win: a group that has committed a partition
    goes on from there whatever ``start`` says. A time after a partition's
    last record starts that partition at its end.
    """
    fresh = [tp for tp in partitions if await client.committed(tp) is None]
    return await seek(client, fresh, start) if fresh else {}


def format_time(epoch_ms: int) -> str:
    """``2024-05-01T12:00:00.123Z`` (UTC)."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
