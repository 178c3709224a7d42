"""The stall watchdog: a worker that has stopped making progress exits, so that it is restarted.

A defence in depth, for stalls that raise no error. Either of:

- input is waiting on the broker, nothing is in the pipeline, and nothing has
  been consumed for ``stall_timeout_s`` (a consumer that stopped fetching, or
  a replica that fell out of its group);
- a batch has been in the same stage (scoring, publishing) for
  ``stall_timeout_s`` while no publish is being retried (a call that hangs;
  a publish that keeps failing has its own bound, the retry budget).

The orchestrator restarts the worker; uncommitted input is consumed again, so
nothing is lost.
"""

from __future__ import annotations

import time
from typing import Optional


class StallWatchdog:
    """Decides, tick by tick, whether the worker is stuck; says why when it is."""

    def __init__(self, stall_timeout_s: float) -> None:
        self.stall_timeout_s = stall_timeout_s
        self._last_consumed = -1
        self._last_progress = time.monotonic()

    def stalled(self, *, consumed: int, pending: int, lag: int, now: Optional[float] = None) -> bool:
        """Idle with input waiting: nothing consumed and nothing in flight for the timeout."""
        now = time.monotonic() if now is None else now
        if consumed != self._last_consumed or pending > 0 or lag == 0:
            # Progress, or work still in the pipeline (judged by ``stuck``), or nothing to do.
            self._last_consumed = consumed
            self._last_progress = now
            return False
        return self.stall_timeout_s > 0 and now - self._last_progress >= self.stall_timeout_s

    def stuck(self, *, stage_age_s: Optional[float], retrying: bool) -> bool:
        """A batch stuck in one stage for the timeout, without a retry loop that bounds it."""
        return self.stall_timeout_s > 0 and not retrying and stage_age_s is not None and stage_age_s >= self.stall_timeout_s
