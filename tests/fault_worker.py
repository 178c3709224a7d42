"""The real worker CLI with faults injected into inference; production code carries no fault hooks.

- FAULT_FLAG_FILE: while this file exists, every inference call raises (a systemic
  fault: the worker must stop without committing).
- FAULT_MAX_PADDED_TOKENS: a call whose padded tokens (rows x longest row) exceed
  this raises, like a GPU running out of memory on a long batch.
The start-up warm-up is left alone.
"""

import os
import sys
from pathlib import Path

from worker.cli import main
from worker.model.engine import SentimentEngine

_flag = Path(os.environ["FAULT_FLAG_FILE"]) if os.environ.get("FAULT_FLAG_FILE") else None
_max_padded = int(os.environ.get("FAULT_MAX_PADDED_TOKENS", "0"))
_infer = SentimentEngine.infer
_warmup = SentimentEngine.warmup
_armed = False


def _failing_infer(self, encoded):  # type: ignore[no-untyped-def]
    if _armed and _flag is not None and _flag.exists():
        raise RuntimeError("injected inference failure")
    lengths = encoded.lengths
    if _armed and _max_padded and len(lengths) * max(lengths, default=0) > _max_padded:
        raise RuntimeError("CUDA out of memory (injected)")
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
