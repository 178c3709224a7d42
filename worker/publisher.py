"""Publishing scored events, and knowing for certain that the broker stored them.

``AIOKafkaProducer.send`` only queues a record; the future it returns resolves
when the broker has acknowledged it (acks=all, idempotent). :meth:`publish`
awaits every one of those futures, so when it returns, the batch is durable and
its input offsets may be acknowledged. When it raises, nothing may be.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from aiokafka import AIOKafkaProducer


@dataclass(frozen=True, slots=True)
class OutboundRecord:
    topic: str
    key: Optional[bytes]
    value: bytes


class Publisher:
    """An idempotent producer with an all-or-error batch publish."""

    def __init__(self, bootstrap_servers: str, *, client_id: str, linger_ms: int = 5) -> None:
        self._config = dict(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=linger_ms,
            max_request_size=8 * 1024 * 1024,
        )
        self._producer: Optional[AIOKafkaProducer] = None

    async def start(self) -> None:
        """Create and connect the producer (aiokafka needs the running loop for this)."""
        if self._producer is None:
            self._producer = AIOKafkaProducer(**self._config)
            await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def publish(self, records: Sequence[OutboundRecord]) -> None:
        """Return once the broker stored every record; raise if any can't be stored."""
        assert self._producer is not None, "Publisher.start() was not awaited"
        deliveries = [
            await self._producer.send(record.topic, record.value, key=record.key) for record in records
        ]
        if deliveries:
            await asyncio.gather(*deliveries)
