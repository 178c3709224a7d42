"""``sentiment-worker bench``: see :mod:`worker.bench.runs`."""

from worker.bench.runs import bench

__all__ = ["bench"]
