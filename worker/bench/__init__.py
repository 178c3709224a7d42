"""``sentiment-worker bench``: runs (``runs``), their subprocesses (``roles``), the report (``report``),
and what the benchmark shares with the test suite (``harness``)."""

from worker.bench.command import bench

__all__ = ["bench"]
