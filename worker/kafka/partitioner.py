"""Which output partition a keyed record goes to: Kafka's default (murmur2 of the key), faster.

Outputs are appended per partition in whole batches (one ``send_batch`` per
partition instead of one ``send`` per record), so the worker picks the
partition itself, exactly as the Java client's and aiokafka's default
partitioner would: readers that join on the key see the same partitioning as
from any other producer. aiokafka's murmur2 is pure Python, one byte at a
time; this one reads four bytes per step and remembers recent keys.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF
_CACHE_LIMIT = 65536


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), as an unsigned 32-bit int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    blocks = length // 4
    if blocks:
        for k in struct.unpack_from(f"<{blocks}I", data):
            k = (k * _M) & _MASK
            k ^= k >> 24
            k = (k * _M) & _MASK
            h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        base = blocks * 4
        if tail >= 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h ^= data[base]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


class KeyPartitioner:
    """Partition of a key on a topic with ``count`` partitions; keys seen recently are looked up."""

    def __init__(self) -> None:
        self._cache: dict[Hashable, int] = {}

    def __call__(self, key: bytes, count: int) -> int:
        hashed = self._cache.get(key)
        if hashed is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            hashed = self._cache[key] = murmur2(key) & 0x7FFFFFFF
        return hashed % count
