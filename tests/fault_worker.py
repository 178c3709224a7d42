"""The real worker CLI, with inference made to fail while a flag file exists.

Tests use it to check that a failed batch is never committed; production code
carries no fault hooks. The start-up warm-up is left alone.
"""

import os
import sys
from pathlib import Path

from worker.cli import main
from worker.engine import SentimentEngine

_flag = Path(os.environ["FAULT_FLAG_FILE"])
_infer = SentimentEngine.infer
_warmup = SentimentEngine.warmup
_armed = False


def _failing_infer(self, encoded):  # type: ignore[no-untyped-def]
    if _armed and _flag.exists():
        raise RuntimeError("injected inference failure")
    return _infer(self, encoded)


def _arming_warmup(self):  # type: ignore[no-untyped-def]
    global _armed
    _warmup(self)
    _armed = True


SentimentEngine.infer = _failing_infer  # type: ignore[method-assign]
SentimentEngine.warmup = _arming_warmup  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.argv[0] = "sentiment-worker"
    main()
