"""The pacer (LATENCY_TARGET_MS) against a simulated worker: a fake clock, a fetch loop that takes at most
the batch limit per fetch, the real Batcher, and one model that scores batches in order with a service
time of a fixed cost plus a cost per event; at most ``PENDING`` batches in the pipeline, the fetch loop
waits for room as the real one does. Pure logic: no sleeps, no wall clock."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import pytest
from aiokafka import TopicPartition

from worker.pipeline.batcher import Batcher, Cut
from worker.pipeline.pacing import MIN_WAIT_S, SHRINK_AFTER, WAIT_SHARE, Limits, Pacer, Pacing, p99

SMALL = 16  # a batch size that carries little per batch

TP = TopicPartition("in", 0)
PENDING = 5  # batches in the pipeline at most (submitted, scoring or publishing)
FETCH_S = 0.0005  # a fetch that finds records waiting takes this long
SATURATED = 1e6  # events/s: always more than the model takes


class Rec(NamedTuple):
    topic: str
    partition: int
    offset: int


def service(per_event_ms: float = 0.2) -> Callable[[int, float], float]:
    """A batch's time in the model: 5 ms + per_event_ms per event."""
    return lambda events, now: (5 + per_event_ms * events) / 1000


class Rates:
    """Deterministic arrivals, piecewise-constant rate: [(from time, events/s), ...]."""

    def __init__(self, segments: Sequence[tuple[float, float]]) -> None:
        self.segments = list(segments)

    def _spans(self) -> list[tuple[float, float, float]]:
        ends = [start for start, _ in self.segments[1:]] + [math.inf]
        return [(start, end, rate) for (start, rate), end in zip(self.segments, ends)]

    def count(self, t: float) -> int:
        """Events arrived by ``t``."""
        total = 0.0
        for start, end, rate in self._spans():
            if t > start:
                total += rate * (min(t, end) - start)
        return math.floor(total + 1e-9)

    def time_of(self, k: int) -> float:
        """When the ``k``-th event arrives."""
        total = 0.0
        for start, end, rate in self._spans():
            span = rate * (end - start)
            if total + span >= k:
                return start + (k - total) / rate
            total += span
        return math.inf


@dataclass
class Run:
    stored: list[tuple[float, float, int, int]] = field(default_factory=list)  # (fetched, stored, events, limit)
    limits: list[tuple[float, Limits]] = field(default_factory=list)

    def window(self, start: float, end: float) -> list[tuple[float, float, int, int]]:
        return [b for b in self.stored if start <= b[1] < end]

    def p99(self, start: float, end: float = math.inf) -> float:
        """Of each batch's oldest record: no event of it waited longer."""
        return p99([stored - fetched for fetched, stored, _, _ in self.window(start, end)])

    def throughput(self, start: float, end: float) -> float:
        return sum(events for _, _, events, _ in self.window(start, end)) / (end - start)

    def mean_size(self, start: float, end: float) -> float:
        batches = self.window(start, end)
        return sum(events for _, _, events, _ in batches) / len(batches)

    def batches_until(self, t: float) -> int:
        return sum(1 for _, stored, _, _ in self.stored if stored < t)


def simulate(
    rates: Rates,
    until: float,
    *,
    max_size: int = 512,
    max_wait_s: float = 0.05,
    target_s: Optional[float] = None,
    service_s: Callable[[int, float], float] = service(),
) -> Run:
    """The fetch loop, the batcher and the pipeline on a fake clock; with ``target_s``, paced."""
    run = Run()
    batcher = Batcher(max_size, max_wait_s)
    pacing = None
    if target_s is not None:
        pacing = Pacing(Pacer(target_s, max_size, max_wait_s), batcher, lambda limits, _: run.limits.append((t, limits)))
    t = 0.0
    fetched = 0
    busy_until = 0.0
    in_flight: deque[tuple[float, Cut]] = deque()

    def stored_by(now: float) -> None:
        while in_flight and in_flight[0][0] <= now:
            done, cut = in_flight.popleft()
            run.stored.append((cut.fetched_at, done, len(cut.records), batcher.max_size))
            if pacing is not None:
                pacing.stored(cut, done)

    def submit(cut: Cut) -> None:
        nonlocal t, busy_until
        while len(in_flight) >= PENDING:  # Pipeline.submit waits for room
            t = max(t, in_flight[0][0])
            stored_by(t)
        start = max(t, busy_until)
        busy_until = start + service_s(len(cut.records), start)
        in_flight.append((busy_until, cut))

    while t < until:
        stored_by(t)
        take = min(rates.count(t) - fetched, batcher.max_size)  # the fetch follows the batch limit
        if take:
            batcher.add({TP: [Rec("in", 0, o) for o in range(fetched, fetched + take)]}, t)
            fetched += take
        for cut in batcher.ready(t):
            submit(cut)
        if rates.count(t) > fetched:
            t += FETCH_S
            continue
        wake = min(rates.time_of(fetched + 1), t + batcher.time_left(t, 1.0))
        if in_flight:
            wake = min(wake, in_flight[0][0])  # the publisher stores it, and the pacer hears of it, then
        t = max(wake, t + 1e-6)
    return run


def best_fixed(rates: Rates, until: float, target_s: float, sizes: Sequence[int], **kw: float) -> float:
    """The throughput of the best fixed batch size that meets the target."""
    best = 0.0
    for size in sizes:
        run = simulate(rates, until, max_size=size, **kw)
        if run.p99(until / 2, until) <= target_s:
            best = max(best, run.throughput(until / 2, until))
    assert best > 0, "some fixed size meets the target"
    return best


# ----------------------------------------------------------------------------- trickle


def test_at_a_trickle_a_lone_event_waits_a_share_of_the_target_not_the_configured_wait() -> None:
    rates = Rates([(0, 20)])  # 20 events/s, one at a time
    fixed = simulate(rates, 10, max_wait_s=0.2)
    assert fixed.p99(1) > 0.1, "the fixed wait holds each event 200 ms"
    paced = simulate(rates, 10, max_wait_s=0.2, target_s=0.1)
    assert paced.p99(0) <= 0.1
    assert paced.p99(0) <= WAIT_SHARE * 0.1 + 0.006  # the wait, plus one event's scoring
    assert all(limits.wait_s <= WAIT_SHARE * 0.1 for _, limits in paced.limits)


def test_a_target_tighter_than_the_model_brings_the_limits_down_to_their_floor() -> None:
    run = simulate(Rates([(0, SATURATED)]), 3, target_s=0.004)  # a batch takes at least 5 ms
    final = run.limits[-1][1]
    assert final == Limits(1, MIN_WAIT_S)


# ----------------------------------------------------------------------------- saturation


@pytest.mark.parametrize("target_s", [0.1, 0.4])
def test_at_saturation_it_converges_to_large_batches_and_near_the_best_fixed_size(target_s: float) -> None:
    rates = Rates([(0, SATURATED)])
    run = simulate(rates, 20, target_s=target_s)
    assert run.p99(10) <= target_s
    best = best_fixed(rates, 20, target_s, [8, 16, 32, 64, 128, 256, 512])
    assert run.throughput(10, 20) >= 0.95 * best
    assert run.mean_size(10, 20) >= 2 * SMALL
    assert [at for at, _ in run.limits if at > 5] == [], "settled: no oscillation"


def test_with_a_lax_target_it_keeps_the_configured_size() -> None:
    run = simulate(Rates([(0, SATURATED)]), 20, max_size=256, target_s=5.0)
    assert run.limits == [], "it starts at the most allowed and has no reason to leave it"
    assert max(limit for *_, limit in run.stored) == 256
    assert all(1 <= limit <= 256 for *_, limit in run.stored)


# ----------------------------------------------------------------------------- changes


def test_after_the_rate_rises_it_grows_within_a_few_hundred_batches() -> None:
    rates = Rates([(0, 20), (10, SATURATED)])
    run = simulate(rates, 30, target_s=0.1)
    assert run.p99(0, 10) <= 0.1
    settled = run.stored[run.batches_until(10) + 300][1]
    assert settled < 30
    assert run.p99(settled) <= 0.1
    assert run.mean_size(settled, 30) >= 2 * SMALL


def test_after_the_rate_falls_the_latency_stays_within_the_target() -> None:
    rates = Rates([(0, 3000), (10, 20)])  # more than batches of 16 carry, then a trickle
    run = simulate(rates, 20, target_s=0.1)
    assert run.p99(5, 10) <= 0.1
    assert run.throughput(5, 10) >= 2900
    assert run.p99(10) <= 0.1
    assert run.throughput(11, 20) == pytest.approx(20, rel=0.1)


def test_when_texts_get_longer_it_shrinks_the_batches_back_under_the_target() -> None:
    def slower_after_10s(events: int, now: float) -> float:
        return (5 + (0.2 if now < 10 else 1.0) * events) / 1000

    run = simulate(Rates([(0, SATURATED)]), 30, target_s=0.1, service_s=slower_after_10s)
    before = run.mean_size(5, 10)
    settled = run.stored[run.batches_until(10) + 100][1]
    assert settled < 20
    assert run.p99(settled) <= 0.1
    assert run.mean_size(settled, 30) < before / 2
    # and near the best fixed size for the longer texts
    best = best_fixed(Rates([(0, SATURATED)]), 20, 0.1, [4, 8, 12, 16, 24, 32], service_s=service(1.0))
    assert run.throughput(20, 30) >= 0.95 * best


# ----------------------------------------------------------------------------- bounds and no target


def test_without_a_target_the_limits_never_change() -> None:
    rates = Rates([(0, 20), (5, SATURATED)])
    run = simulate(rates, 10, max_size=64, max_wait_s=0.05)
    assert run.limits == []
    assert {limit for *_, limit in run.stored} == {64}


@pytest.mark.parametrize("max_size,max_wait_s,target_s", [(1, 0.001, 0.05), (8, 0.5, 0.02), (1024, 0.01, 2.0)])
def test_limits_stay_within_the_configured_bounds(max_size: int, max_wait_s: float, target_s: float) -> None:
    def long_then_short(events: int, now: float) -> float:
        return (5 + (2.0 if 3 < now < 6 else 0.1) * events) / 1000

    rates = Rates([(0, 50), (2, SATURATED), (8, 0)])
    rates.segments.append((9, 30))
    run = simulate(rates, 12, max_size=max_size, max_wait_s=max_wait_s, target_s=target_s, service_s=long_then_short)
    for _, limits in run.limits:
        assert 1 <= limits.size <= max_size
        assert min(MIN_WAIT_S, max_wait_s) <= limits.wait_s <= min(max_wait_s, max(MIN_WAIT_S, WAIT_SHARE * target_s))
    assert all(events <= max_size for _, _, events, _ in run.stored)


def test_batches_cut_before_a_change_are_not_judged_by_the_new_limits() -> None:
    pacer = Pacer(0.1, 512, 0.05)
    change = pacer.observe(0.0, 0.5, True)  # over twice the target: believed at once
    assert change is not None and change.size < 512
    shrunk = pacer.limits
    for k in range(10):  # the rest of what was in flight: fetched before the change, as slow
        assert pacer.observe(0.01 * k, 0.6 + 0.01 * k, True) is None
    assert pacer.observe(0.55, 0.75, True) is None  # fetched after it, but queued behind those
    assert pacer.limits == shrunk
    for k in range(SHRINK_AFTER - 1):  # fresh, a little over: not believed from fewer batches
        assert pacer.observe(1.0 + k, 1.15 + k, True) is None
    assert pacer.observe(5.0, 5.15, True) is not None
    assert pacer.limits.size < shrunk.size


def test_p99_is_nearest_rank() -> None:
    assert p99([1.0]) == 1.0
    assert p99([float(k) for k in range(100)]) == 98.0
    assert p99([float(k) for k in range(50)]) == 49.0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        Pacer(0, 8, 0.01)
    with pytest.raises(ValueError):
        Batcher(8, 0.01).set_limits(0, 0.01)


def test_a_cut_carries_when_its_oldest_record_was_fetched_and_whether_it_was_full() -> None:
    b = Batcher(4, 0.5)
    b.add({TP: [Rec("in", 0, o) for o in range(3)]}, now=1.0)
    b.add({TP: [Rec("in", 0, o) for o in range(3, 9)]}, now=1.2)
    first, second = b.ready(1.2)
    assert (first.fetched_at, first.full, len(first.records)) == (1.0, True, 4)
    assert (second.fetched_at, second.full) == (1.2, True)
    b.set_limits(8, 0.25)  # the new limits apply to what is held
    assert b.ready(1.4) == [] and b.time_left(1.4, 1.0) == pytest.approx(0.05)
    (last,) = b.ready(1.5)
    assert (last.fetched_at, last.full, [r.offset for r in last.records]) == (1.2, False, [8])
    assert b.time_left(1.5, 1.0) == 1.0


# ----------------------------------------------------------------------------- wiring


def test_the_setting_reaches_the_batcher_and_the_gauges() -> None:
    from worker.service import make_batching
    from worker.settings import Settings

    seen: list[tuple[int, float, Optional[float]]] = []
    fixed, none = make_batching(Settings(batch_max_size=256, batch_max_wait_ms=40), lambda *a: seen.append(a))
    assert none is None and (fixed.max_size, fixed.max_wait_s) == (256, 0.04)
    assert seen == [(256, 0.04, None)]

    seen.clear()
    batcher, pacing = make_batching(
        Settings(batch_max_size=256, batch_max_wait_ms=40, latency_target_ms=100), lambda *a: seen.append(a)
    )
    assert pacing is not None and pacing.pacer.target_s == 0.1
    assert (batcher.max_size, batcher.max_wait_s) == (256, WAIT_SHARE * 0.1)  # the most allowed; a quarter of the target
    assert seen == [(256, WAIT_SHARE * 0.1, None)]
    for k in range(SHRINK_AFTER):  # stored batches far over the target
        pacing.stored(Cut([], {}, fetched_at=float(k), full=True), now=k + 0.3)
    assert batcher.max_size < 256 and batcher.max_wait_s < WAIT_SHARE * 0.1
    size, wait_s, p99_s = seen[-1]
    assert (size, wait_s) == (batcher.max_size, batcher.max_wait_s) and p99_s == pytest.approx(0.3)


def test_the_setting_is_optional_and_at_least_one_ms() -> None:
    from pydantic import ValidationError

    from worker.settings import Settings

    assert Settings().latency_target_ms is None
    assert Settings(latency_target_ms="250").latency_target_ms == 250
    with pytest.raises(ValidationError):
        Settings(latency_target_ms=0)
