"""Prometheus metrics, in base units (seconds, events, tokens), served on the web port at /metrics.

Names are part of the operator contract: dashboards and alert rules in
``deploy/`` use them. Change a name only with those.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

# Every counter and histogram would carry a *_created series too: noise for dashboards,
# twice the series for Prometheus to store.
disable_created_metrics()

PREFIX = "sentiment_worker"

_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
_STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

EVENTS_CONSUMED = Counter(f"{PREFIX}_events_consumed", "Input records handed to the pipeline.")
EVENTS_SCORED = Counter(f"{PREFIX}_events_scored", "Scored events stored on the output topic.")
EVENTS_DEAD_LETTERED = Counter(
    f"{PREFIX}_events_dead_lettered", "Input records set aside instead of scored, by reason.", ["reason"]
)
BATCHES = Counter(f"{PREFIX}_batches", "Batches published and acknowledged.")
BATCH_SIZE = Histogram(f"{PREFIX}_batch_size_events", "Events per consumed batch.", buckets=_SIZE_BUCKETS)
BATCH_TOKENS = Histogram(
    f"{PREFIX}_batch_tokens", "Padded tokens computed per batch (what the model paid for).", buckets=_TOKEN_BUCKETS
)
TOKENS = Counter(f"{PREFIX}_tokens", "Tokens run through the model; kind=real or padded.", ["kind"])
PADDING_EFFICIENCY = Gauge(
    f"{PREFIX}_padding_efficiency_ratio", "Real over padded tokens of the last batch.", multiprocess_mode="livemostrecent"
)
BATCH_LIMIT = Gauge(
    f"{PREFIX}_batch_limit_events",
    "Current batch size limit (BATCH_MAX_SIZE, or what LATENCY_TARGET_MS chose).",
    multiprocess_mode="livemostrecent",
)
BATCH_WAIT = Gauge(
    f"{PREFIX}_batch_wait_seconds",
    "Current longest wait for a batch to fill (BATCH_MAX_WAIT_MS, or what LATENCY_TARGET_MS chose).",
    multiprocess_mode="livemostrecent",
)
TOKENIZE_SECONDS = Histogram(f"{PREFIX}_tokenize_seconds", "Tokenisation time per batch.", buckets=_STAGE_BUCKETS)
INFERENCE_SECONDS = Histogram(f"{PREFIX}_inference_seconds", "Model time per batch.", buckets=_STAGE_BUCKETS)
PUBLISH_SECONDS = Histogram(
    f"{PREFIX}_publish_seconds", "Time from sending a batch's outputs to the broker's last ack.", buckets=_STAGE_BUCKETS
)
END_TO_END_SECONDS = Histogram(
    f"{PREFIX}_end_to_end_latency_seconds",
    "Output stored minus the input record's Kafka timestamp.",
    buckets=_LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(f"{PREFIX}_in_flight_events", "Events consumed but not yet stored.", multiprocess_mode="livesum")
# Lag carries the consumer group (GROUP_ID): alerts and the autoscaler tell deployments
# that share a Prometheus (and a job name) apart by it.
CONSUMER_LAG = Gauge(
    f"{PREFIX}_consumer_lag_events",
    "Records behind the partition's end (last stable offset minus the next offset not stored yet).",
    ["group", "topic", "partition"],
    multiprocess_mode="livemax",
)
CONSUMER_LAG_SECONDS = Gauge(
    f"{PREFIX}_consumer_lag_seconds",
    "Age of the oldest input record whose output is not stored yet (0 when none waits).",
    ["group", "topic", "partition"],
    multiprocess_mode="livemax",
)
REBALANCES = Counter(f"{PREFIX}_rebalances", "Partition assignments this replica received.")
TRUNCATED = Counter(f"{PREFIX}_truncated_texts", "Texts longer than MAX_LENGTH tokens (scored on their beginning).")
INPUT_TOKENS = Histogram(
    f"{PREFIX}_input_tokens",
    "Tokens per scored text (special tokens included; a truncated text counts MAX_LENGTH).",
    buckets=(8, 16, 32, 64, 128, 256, 512, 1024, 2048),
)
ASSIGNED_PARTITIONS = Gauge(
    f"{PREFIX}_assigned_partitions", "Input partitions this replica owns (0: idle).", multiprocess_mode="livesum"
)
TRANSACTIONS = Counter(
    f"{PREFIX}_transactions", "Kafka transactions in exactly-once mode; outcome=committed, aborted or fenced.", ["outcome"]
)
PUBLISH_ERRORS = Counter(f"{PREFIX}_publish_errors", "Failed publish attempts (retried with backoff).", ["topic"])
FAILURES = Counter(f"{PREFIX}_pipeline_failures", "Fatal pipeline errors (the worker exits).")
MODEL_BUSY_SECONDS = Counter(
    f"{PREFIX}_model_busy_seconds",
    "Time the model (the device) spent on calls, synchronised once per batch; its rate is the device's busy fraction.",
)
PLANNER_COST = Gauge(
    f"{PREFIX}_planner_cost",
    "The planner's cost model, fitted from the calls made: term=call_seconds, token_seconds, "
    "token_position_seconds, call_overhead_tokens or attention_scale.",
    ["term"],
    multiprocess_mode="livemostrecent",
)
MODEL_LOAD_SECONDS = Gauge(
    f"{PREFIX}_model_load_seconds", "How long loading and warming up the model took at start.", multiprocess_mode="livemax"
)
GPU_MEMORY_BYTES = Gauge(
    f"{PREFIX}_gpu_memory_bytes",
    "GPU memory held by this process's torch allocator; kind=allocated or reserved.",
    ["device", "kind"],
    multiprocess_mode="livesum",
)
BUILD_INFO = Gauge(
    f"{PREFIX}_build_info",
    "The worker's version and its main libraries' (value 1).",
    ["version", "python", "torch", "transformers", "faust", "aiokafka"],
    multiprocess_mode="livemax",
)
MODEL_INFO = Gauge(
    f"{PREFIX}_model_info",
    "The loaded model (value 1).",
    ["name", "revision", "device", "precision"],
    multiprocess_mode="livemax",
)


def observe_many(histogram: Histogram, amounts: Sequence[float]) -> None:
    """``histogram.observe`` for every amount, at the cost of one update per bucket, not per amount.

    Two per-event histograms (latency, tokens) took a tenth of the event
    loop's time at 10k events/s with one locked update each. This reads
    prometheus_client 0.26's ``Histogram`` internals (``_upper_bounds``,
    ``_buckets``, ``_sum``), the same ones ``observe`` uses; tests compare
    the two. Not for a histogram with labels (call it on ``.labels(...)``).
    """
    if not len(amounts):
        return
    values = np.asarray(amounts, dtype=np.float64)
    # observe(): the first bound with amount <= bound; searchsorted(side="left") is that index.
    counts = np.bincount(np.searchsorted(histogram._upper_bounds, values, side="left"), minlength=1)
    for index in np.flatnonzero(counts):
        histogram._buckets[index].inc(int(counts[index]))
    histogram._sum.inc(float(values.sum()))


def set_build_info() -> None:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return ""

    BUILD_INFO.labels(
        v("sentiment-worker"), platform.python_version(), v("torch"), v("transformers"), v("faust-streaming"), v("aiokafka")
    ).set(1)


def render() -> tuple[bytes, str]:
    """The exposition text and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST
