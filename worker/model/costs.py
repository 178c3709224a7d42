"""What a model call costs here, learnt from the calls made: the planner's constants, measured.

The planner (``worker.model.batching``) trades model calls against padding
under a cost model of three terms per call::

    seconds = call_s + padded_tokens x (token_s + width x token_position_s)

``call_s`` is what a call costs whatever its size (reading every weight once
on a CPU, launching some hundred kernels on a GPU), ``token_s`` the linear
layers' cost per token, ``token_position_s`` attention's, which grows with
the width. Their ratios, not their values, decide the plan; they differ by
orders of magnitude between a CPU and a GPU, and with the model and the
precision. Built-in guesses (:data:`PRIORS`) are only where a worker starts:
the engine times a few probe shapes at warm-up, then every batch, and this
module fits the three terms to those timings.

A batch's time is linear in the three terms summed over its calls
(``calls``, ``padded tokens``, ``sum of rows x width^2``), so a batch is one
observation whatever its plan, and the device is synchronised once per batch,
not per call. The fit is a non-negative least squares over relative errors
(a 2 ms probe counts as much as a 2 s batch), over the warm-up probes (kept:
they vary the shapes that real traffic may not; scaled by how much faster or
slower recent batches ran than the probes predict) and the most recent
batches (so it follows a device that slows down or speeds up); a refit that
contradicts the probes' shapes (it would judge a small call and a large one
by different clocks) is refused. Pure logic: numpy only, no clock, no torch.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from worker.model.batching import ATTENTION_SCALE, CPU_CALL_OVERHEAD_TOKENS, GPU_CALL_OVERHEAD_TOKENS
from worker.model.report import CostFit

# The guesses a worker starts from, per device type: the ratios the planner was tuned to by
# hand (worker.model.batching), with a CPU call at ~16 ms (DistilBERT-base fp32, 2 cores)
# and a GPU call at a few ms of launches. Only their ratios matter to a plan.
PRIORS = {
    "cpu": CostFit(16e-3, 16e-3 / CPU_CALL_OVERHEAD_TOKENS, 16e-3 / CPU_CALL_OVERHEAD_TOKENS / ATTENTION_SCALE, "prior", 0),
    "cuda": CostFit(3e-3, 3e-3 / GPU_CALL_OVERHEAD_TOKENS, 3e-3 / GPU_CALL_OVERHEAD_TOKENS / ATTENTION_SCALE, "prior", 0),
}
RECENT_BATCHES = 256
# A relative miss beyond this (and beyond 3x the median miss) marks an observation as disturbed.
OUTLIER_MISS = 0.25
OUTLIER_SHARE = 0.1  # at most this share of the observations is dropped as disturbed
PROBE_REPEATS = 3
# With this many recent batches or fewer, a probe weighs as much as a batch; with more, less in proportion.
PROBE_WEIGHT_BATCHES = 4
# A refit that predicts one probe shape this many times more generously than another is refused.
MAX_PROBE_DISTORTION = 2.0
REFIT_EVERY = 8
# Probe shapes (rows, width), cheapest first, up to the default token budget: on a fast device
# a token costs so little against a call that only large calls show it. The warm-up stops
# before a shape its fit so far says would overrun its time budget.
PROBE_SHAPES = (
    (1, 8), (1, 64), (4, 16), (8, 32), (1, 256), (2, 128), (16, 16), (4, 128), (32, 32), (4, 512),
    (16, 128), (64, 64), (16, 256), (32, 256), (128, 64), (32, 512), (64, 256),
)


@dataclass(frozen=True, slots=True)
class Observation:
    """One timed batch (or probe): the sums of its calls' cost terms, and how long it took."""

    calls: int
    tokens: int
    token_positions: int  # sum over calls of rows x width^2
    seconds: float

    @classmethod
    def of_calls(cls, shapes: Iterable[tuple[int, int]], seconds: float) -> "Observation":
        """From the (rows, width) of each call."""
        shapes = list(shapes)
        return cls(
            len(shapes),
            sum(rows * width for rows, width in shapes),
            sum(rows * width * width for rows, width in shapes),
            seconds,
        )


def prior_for(device_type: str) -> CostFit:
    """The starting guess for a device type (``cpu``, ``cuda``; anything else is taken for an accelerator)."""
    return PRIORS.get(device_type, PRIORS["cuda"])


class CostLearner:
    """Keeps the observations of one model on one device at one precision, and their fit."""

    def __init__(self, prior: CostFit, *, recent: int = RECENT_BATCHES, refit_every: int = REFIT_EVERY) -> None:
        self.prior = prior
        self._probes: list[Observation] = []
        self._recent: deque[Observation] = deque(maxlen=recent)
        self._refit_every = refit_every
        self._since_fit = 0
        self._current = prior
        self.rejected = 0  # refits refused for contradicting the probes
        self._shape_fit: Optional[CostFit] = None

    @property
    def current(self) -> CostFit:
        """The cost model the planner uses now."""
        return self._current

    def probe(self, observation: Observation) -> None:
        """A warm-up call: kept for good, it anchors the terms real traffic may not vary."""
        self._probes.append(observation)

    def _shape(self) -> Optional[CostFit]:
        """The fit of the probes alone: the shape of this device's costs, as measured at warm-up."""
        if self._shape_fit is None or self._shape_fit.observations != len(self._probes):
            fitted = fit_costs(self._probes)
            self._shape_fit = None if fitted is None else CostFit(*fitted, "probe", len(self._probes))
        return self._shape_fit

    def observe(self, observation: Observation) -> CostFit:
        """A timed batch of real traffic; refits every few batches. Returns the cost model now in use."""
        if observation.seconds > 0 and observation.calls > 0:
            self._recent.append(observation)
            self._since_fit += 1
            if self._since_fit >= self._refit_every:
                self.refit()
        return self._current

    def refit(self) -> CostFit:
        """Fit the terms to every observation kept; the previous model stays if they can't tell the terms apart."""
        self._since_fit = 0
        shape = self._shape()
        probes = self._probes
        if shape is not None and self._recent:
            # The probes say how cost splits between the terms; recent batches how fast the device
            # is now. Scaled to today's speed, the probes agree with a device that slowed down as a
            # whole, and still tell the terms apart where recent batches are all alike.
            now = sorted(o.seconds / shape.seconds_of(o) for o in self._recent if shape.seconds_of(o) > 0)
            if now:
                speed = now[len(now) // 2]
                probes = [replace(o, seconds=o.seconds * speed) for o in probes]
        observations = [*probes, *self._recent]
        # As batches come in, the probes weigh less: the fit is of the traffic the worker has.
        probe_weight = min(1.0, PROBE_WEIGHT_BATCHES / max(1, len(self._recent)))
        weights = [probe_weight] * len(probes) + [1.0] * len(self._recent)
        fitted = fit_costs(observations, weights)
        if fitted is None:
            return self._current
        candidate = CostFit(fitted[0], fitted[1], fitted[2], "fit" if self._recent else "probe", len(observations))
        if self._recent and distortion(candidate, self._shape(), self._probes) > MAX_PROBE_DISTORTION:
            self.rejected += 1  # it would misjudge shapes that were measured: keep what was believed
            return self._current
        self._current = candidate
        return self._current


def fit_costs(
    observations: Sequence[Observation], weights: "Sequence[float] | None" = None
) -> "tuple[float, float, float] | None":
    """``(call_s, token_s, token_position_s)``, all >= 0, with the least relative squared error.

    Exact non-negative least squares for three unknowns: every subset of the
    terms is solved unconstrained, and the best solution that has no negative
    term wins; the call and per-token terms are always in it. Observations the first fit
    misses by far more than the rest (a call that waited for a busy CPU, a
    garbage collection; at most a tenth of them, so that a change of regime is
    never dropped as noise) are dropped and the fit made again. None when the
    observations can't determine a positive per-token cost (too few, or all
    of one shape).
    """
    given = list(weights) if weights is not None else [1.0] * len(observations)
    usable = [(o, w) for o, w in zip(observations, given, strict=True) if o.seconds > 0 and o.calls > 0 and w > 0]
    features = np.array([[o.calls, o.tokens, o.token_positions] for o, _ in usable], dtype=np.float64).reshape(-1, 3)
    seconds = np.array([o.seconds for o, _ in usable], dtype=np.float64)
    weight = np.array([w for _, w in usable], dtype=np.float64)
    first = _nnls_relative(features, seconds, weight)
    if first is None:
        return None
    misses = np.abs(features @ first / seconds - 1.0)
    keep = misses <= max(OUTLIER_MISS, 3.0 * float(np.median(misses)))
    worst = np.argsort(misses)[::-1][: max(1, int(len(misses) * OUTLIER_SHARE))]
    keep |= ~np.isin(np.arange(len(misses)), worst)  # a few stray observations, never a new regime
    if not keep.all():
        second = _nnls_relative(features[keep], seconds[keep], weight[keep])
        if second is not None:
            first = second
    call_s, token_s, token_position_s = first.tolist()
    if token_s <= 0 or not all(math.isfinite(v) for v in (call_s, token_s, token_position_s)):
        return None  # tokens free: nothing to trade calls against; keep what was believed
    return call_s, token_s, token_position_s


def _nnls_relative(features: np.ndarray, seconds: np.ndarray, weight: np.ndarray) -> "np.ndarray | None":
    if len(seconds) < 3:
        return None
    # Relative error: each row divided by its own time (and weighed); columns scaled to comparable sizes.
    root = np.sqrt(weight)
    rows = features / seconds[:, None] * root[:, None]
    target = root
    scale = np.maximum(rows.max(axis=0), 1e-300)
    rows = rows / scale
    if np.linalg.matrix_rank(rows) < 2:
        return None  # all of one shape: how the time splits between calls and tokens is unknowable
    best: "tuple[float, np.ndarray] | None" = None
    for size in (3, 2, 1):
        for terms in itertools.combinations(range(3), size):
            if 0 not in terms or 1 not in terms:
                # A call has a fixed cost (Python dispatch, kernel launches, reading the weights) and
                # every layer but attention is linear in tokens. A fit without either is noise
                # (probes timed on a busy CPU fitted a call at 0: one call per distinct length).
                continue
            columns = rows[:, terms]
            if np.linalg.matrix_rank(columns) < size:
                continue
            solution, *_ = np.linalg.lstsq(columns, target, rcond=None)
            if np.any(solution < 0):
                continue
            residual = float(np.sum((columns @ solution - target) ** 2))
            if best is None or residual < best[0] - 1e-12:
                full = np.zeros(3)
                full[list(terms)] = solution
                best = (residual, full)
    return None if best is None else best[1] / scale


def distortion(fit: CostFit, shape: Optional[CostFit], probes: Sequence[Observation]) -> float:
    """How unevenly ``fit`` judges the probed shapes against ``shape`` (the probes' own fit): the
    largest over the smallest ratio of their predictions.

    A device that slows down or speeds up as a whole moves every ratio alike
    (distortion 1); a fit that puts a call's cost into the wrong term (recent
    batches that can't tell the terms apart, or whose time has little to do
    with the device) misjudges small and large calls differently.
    """
    if shape is None:
        return 1.0
    ratios = [
        fit.seconds_of(o) / shape.seconds_of(o) for o in probes if shape.seconds_of(o) > 0
    ]
    if not ratios:
        return 1.0
    return max(ratios) / min(ratios) if min(ratios) > 0 else float("inf")


def planned_cost(fit: CostFit, shapes: Iterable[tuple[int, int]]) -> float:
    """What a plan of calls of these (rows, width) costs under ``fit``, in seconds."""
    return sum(fit.seconds(rows, width) for rows, width in shapes)
