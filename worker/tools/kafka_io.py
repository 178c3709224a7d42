"""Shared by the command-line tools: clients, start positions, reading a topic to an end, showing bytes."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Optional

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from worker.kafka.positions import (  # noqa: F401 - the tools' start positions are the worker's
    BEGINNING,
    END,
    OFFSET_HELP,
    StartAt,
    format_time,
    parse_start,
    seek,
)
from worker.kafka.security import aiokafka_options
from worker.kafka.topics import ensure_topics
from worker.settings import Settings


class ToolError(Exception):
    """The command can't do what was asked (a partition the topic lacks...): exit 2 with this message."""


async def partition_count(settings: Settings, topic: str, *, create: bool = False) -> int:
    """The topic's partitions; KafkaSetupError when the brokers can't be reached or it is missing."""
    info = await ensure_topics(
        settings.kafka_bootstrap_servers,
        [topic],
        create=create,
        partitions=settings.topic_partitions,
        replication_factor=settings.topic_replication_factor,
        timeout_s=settings.kafka_timeout_s,
        options=aiokafka_options(settings),
    )
    return info.partitions[topic]


def check_partitions(topic: str, wanted: Sequence[int], count: int) -> list[int]:
    """``wanted`` (all when empty), refused when the topic lacks one."""
    bad = sorted({p for p in wanted if not 0 <= p < count})
    if bad:
        raise ToolError(
            f"topic {topic} has partitions 0..{count - 1}; no partition {', '.join(map(str, bad))}"
        )
    return sorted(set(wanted)) if wanted else list(range(count))


def consumer(settings: Settings) -> AIOKafkaConsumer:
    """A group-less consumer (partitions are assigned, nothing is committed) that sees committed records only."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        client_id="sentiment-worker-cli",
        **aiokafka_options(settings),
    )


def producer(settings: Settings) -> AIOKafkaProducer:
    """Idempotent, acks=all: a retried send is not written twice and an acknowledged one is replicated."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        request_timeout_ms=int(settings.kafka_request_timeout_s * 1000),
        client_id="sentiment-worker-cli",
        **aiokafka_options(settings),
    )


async def read(
    client: AIOKafkaConsumer,
    tps: Sequence[TopicPartition],
    *,
    until_end: bool,
    idle_timeout_s: Optional[float],
) -> AsyncIterator[Any]:
    """The records from the current positions on, partition by partition within each fetch.

    until_end: stop at the end each partition had when this started (records appended
    later are not read, so what is written back meanwhile can't keep it going).
    idle_timeout_s: stop when nothing arrived for this long.
    """
    ends = await client.end_offsets(list(tps)) if until_end else {}
    last = time.monotonic()
    while True:
        if until_end and await _reached(client, ends):
            return
        wait_s = 0.5 if until_end else 1.0
        if idle_timeout_s is not None:
            left = idle_timeout_s - (time.monotonic() - last)
            if left <= 0:
                return
            wait_s = min(wait_s, left)
        batch = await client.getmany(*tps, timeout_ms=max(1, int(wait_s * 1000)))
        if batch:
            last = time.monotonic()
        for tp in sorted(batch, key=lambda t: t.partition):
            for record in batch[tp]:
                if until_end and record.offset >= ends[tp]:
                    break
                yield record


async def _reached(client: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await client.position(tp) < end:
            return False
    return True


# ----------------------------------------------------------------------------- showing


def text_or_none(data: Optional[bytes]) -> Optional[str]:
    """The bytes as UTF-8 text, None when they aren't (or are None)."""
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def bytes_field(name: str, data: Optional[bytes]) -> dict[str, Any]:
    """``{name: text}`` for UTF-8 (or None), ``{name + "_base64": ...}`` for other bytes."""
    text = text_or_none(data)
    if data is None or text is not None:
        return {name: text}
    return {f"{name}_base64": base64.b64encode(data).decode()}


def shown(data: Optional[bytes]) -> str:
    """Bytes for a person: UTF-8 text, other bytes escaped (``\\xe9``), ``null`` for None."""
    if data is None:
        return "null"
    return data.decode("utf-8", "backslashreplace")


async def gather_deliveries(futures: list[asyncio.Future]) -> list[Any]:
    """Wait for every send to be acknowledged (the first failure raises, after all have settled)."""
    results = await asyncio.gather(*futures, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results
