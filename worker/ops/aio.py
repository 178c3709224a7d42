"""asyncio helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def bounded(awaitable: Awaitable[T], timeout: float) -> T:
    """Await with a deadline that holds even if the awaited code swallows cancellation.

    ``asyncio.wait_for`` waits for a cancelled task to finish; aiokafka's
    producers can sit in internal retry loops while the broker is away, so a
    stuck call is abandoned instead (cancelled, not awaited).
    """
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # no "never retrieved" noise
        raise asyncio.TimeoutError(f"no answer within {timeout:.0f} s")
    return task.result()
