"""A shutdown that ends within a bound, whatever the broker or a library does.

An orchestrator kills a worker ``terminationGracePeriodSeconds`` after SIGTERM
(30 s by default on Kubernetes). The worker's own steps are bounded (drain,
commit, closing producers), but some of its libraries' are not: with the
broker unreachable, Faust's consumer thread and the group's LeaveGroup wait
for a coordinator that is not there (measured: 63 s), and a start that fails
half-way can sit in Faust's ``stop_and_shutdown`` for minutes.

So once a shutdown begins, for any reason (a signal, a crash, a start that
failed), :class:`ExitDeadline` starts a timer in a thread of its own (the
event loop may be the thing that hangs). If the process is still there when
it fires, it logs one line (``shutdown.forced``) and ends the process with
the status the shutdown would have had. What was stored but not committed
yet is read again by the partitions' next owner: at-least-once repeats it,
exactly-once does not.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Optional

from worker.ops import logs

log = logs.get_logger(__name__)


class ExitDeadline:
    """Ends the process ``seconds`` after :meth:`arm`, unless it has ended by then."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._timer: Optional[threading.Timer] = None
        self._lock = threading.Lock()
        self._reason = ""
        self._status = 0
        self._armed_at = 0.0

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def arm(self, reason: str, status: int) -> None:
        """A shutdown began (the first call counts; later ones change nothing)."""
        with self._lock:
            if self._timer is not None:
                return
            self._reason, self._status, self._armed_at = reason, status, time.monotonic()
            self._timer = threading.Timer(self.seconds, self._fire)
            self._timer.daemon = True
            self._timer.name = "exit-deadline"
            self._timer.start()
        log.info("shutdown.started", reason=reason, deadline_s=self.seconds)

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _fire(self) -> None:
        log.error(
            "shutdown.forced",
            reason=self._reason,
            seconds=round(time.monotonic() - self._armed_at, 1),
            status=self._status,
            cause="a library call did not return in time (e.g. a broker that can't be reached)",
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(self._status)
