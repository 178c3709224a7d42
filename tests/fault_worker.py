"""The real worker with faults injected into inference, through the worker's engine seam.

``python tests/fault_worker.py`` runs what ``sentiment-worker run`` runs (settings from
the environment), with an engine that fails on demand; production code carries no
fault hooks and nothing here patches the worker.

- FAULT_FLAG_FILE: while this file exists, every inference call raises (a systemic
  fault: the worker must stop without committing).
- FAULT_MAX_PADDED_TOKENS: a call whose padded tokens (rows x longest row) exceed
  this raises, like a GPU running out of memory on a long batch.
- FAULT_LOAD_GATE_FILE: while this file exists, loading the model waits (a slow GPU start).
The start-up warm-up is left alone.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from worker.model.engine import Encoded, PreparedCalls, Scores, SentimentEngine
from worker.service import main
from worker.settings import Settings


class FaultyEngine(SentimentEngine):
    """Fails as the environment says, once warmed up."""

    flag: Optional[Path] = Path(os.environ["FAULT_FLAG_FILE"]) if os.environ.get("FAULT_FLAG_FILE") else None
    max_padded = int(os.environ.get("FAULT_MAX_PADDED_TOKENS", "0"))
    armed = False

    @classmethod
    def from_settings(cls, settings: Settings) -> "FaultyEngine":
        gate = os.environ.get("FAULT_LOAD_GATE_FILE")
        while gate and Path(gate).exists():  # the test holds the load here
            time.sleep(0.05)
        engine = super().from_settings(settings)
        assert isinstance(engine, FaultyEngine)
        return engine

    def warmup(self, *args: Any, **kwargs: Any) -> Any:
        result = super().warmup(*args, **kwargs)
        FaultyEngine.armed = True
        return result

    def infer(self, encoded: Encoded, prepared: Optional[PreparedCalls] = None) -> Scores:
        if self.armed and self.flag is not None and self.flag.exists():
            raise RuntimeError("injected inference failure")
        lengths = encoded.lengths
        if self.armed and self.max_padded and len(lengths) * max(lengths, default=0) > self.max_padded:
            raise RuntimeError("CUDA out of memory (injected)")
        return super().infer(encoded, prepared)


if __name__ == "__main__":
    sys.exit(main(Settings(), engine_factory=FaultyEngine.from_settings))
