"""Batch updates of the worker's histograms count exactly what one observe() per value counts."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram

from worker.ops.metrics import observe_many


@pytest.mark.parametrize("seed", range(5))
def test_observe_many_exposes_what_observe_per_value_exposes(seed: int) -> None:
    rng = random.Random(seed)
    bounds = (0.01, 0.1, 1, 10)
    # values on the bounds themselves, between them, below the first and past the last
    amounts = [rng.choice([*bounds, 0.0, 0.05, 3.0, 99.0, rng.uniform(0, 20)]) for _ in range(rng.randint(0, 300))]
    one, many = CollectorRegistry(), CollectorRegistry()
    by_value = Histogram("lat", "doc", buckets=bounds, registry=one)
    batched = Histogram("lat", "doc", buckets=bounds, registry=many)
    for amount in amounts:
        by_value.observe(amount)
    observe_many(batched, amounts[: len(amounts) // 2])
    observe_many(batched, amounts[len(amounts) // 2 :])
    for bound in [*bounds, "+Inf"]:
        labels = {"le": str(float(bound)) if bound != "+Inf" else "+Inf"}
        assert many.get_sample_value("lat_bucket", labels) == one.get_sample_value("lat_bucket", labels), bound
    assert many.get_sample_value("lat_count") == one.get_sample_value("lat_count") == len(amounts)
    assert many.get_sample_value("lat_sum") == pytest.approx(one.get_sample_value("lat_sum"), rel=1e-12)
