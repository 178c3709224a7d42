"""The planner learns what a model call costs from the calls made (worker.model.costs).

The device here is simulated (worker.model.simulated): a forward pass that
sleeps for a known time per call, per token and per token and position, so
the truth the fit must find is known. No timing is asserted beyond that.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from worker.model.batching import plan_sub_batches
from worker.model.costs import PRIORS, CostLearner, Observation, distortion, fit_costs, planned_cost
from worker.model.engine import SentimentEngine
from worker.model.report import CostFit
from worker.model.simulated import SimulatedDevice


def truth(device: SimulatedDevice) -> CostFit:
    return CostFit(device.ms_per_call / 1e3, device.ns_per_token / 1e9, device.ns_per_token_position / 1e9, "truth", 0)


def close(got: float, want: float, tolerance: float = 0.2) -> bool:
    return abs(got - want) <= tolerance * want


def shapes(plan: list) -> list[tuple[int, int]]:
    return [(len(sub.indices), sub.width) for sub in plan]


def lengths_of_a_mixed_stream(n: int = 512, seed: int = 7) -> list[int]:
    rng = random.Random(seed)
    return [min(512, max(3, int(rng.lognormvariate(3.3, 0.8)))) for _ in range(n)]


# -- the fit alone ----------------------------------------------------------------------


def test_exact_observations_give_back_the_terms() -> None:
    true = CostFit(2e-3, 3e-6, 4e-9, "truth", 0)
    observations = [
        Observation.of_calls(calls, sum(true.seconds(r, w) for r, w in calls))
        for calls in ([(1, 8)], [(4, 64)], [(16, 32), (2, 256)], [(8, 128)], [(1, 512), (32, 16)])
    ]
    call_s, token_s, token_position_s = fit_costs(observations)
    assert call_s == pytest.approx(true.call_s, rel=1e-6)
    assert token_s == pytest.approx(true.token_s, rel=1e-6)
    assert token_position_s == pytest.approx(true.token_position_s, rel=1e-6)


def test_noise_never_makes_a_term_negative_and_too_few_shapes_fit_nothing() -> None:
    rng = np.random.default_rng(3)
    true = CostFit(1e-3, 1e-6, 0.0, "truth", 0)  # no attention term at all
    observations = [
        Observation.of_calls([(r, w)], true.seconds(r, w) * rng.uniform(0.9, 1.1))
        for r, w in [(1, 8), (4, 64), (16, 32), (8, 128), (2, 256), (32, 16)] * 3
    ]
    fitted = fit_costs(observations)
    assert fitted is not None and min(fitted) >= 0
    assert close(fitted[0], true.call_s) and close(fitted[1], true.token_s)
    # One shape says nothing about how cost splits between calls and tokens.
    assert fit_costs([Observation.of_calls([(8, 32)], 0.01)] * 10) is None
    assert fit_costs([Observation.of_calls([(8, 32)], 0.01), Observation.of_calls([(1, 8)], 0.001)]) is None


def test_a_fit_never_puts_a_call_at_zero() -> None:
    """Probes timed on a busy CPU (the larger ones waited for a core) once fitted a call at 0: the
    planner then made one call per distinct length. A fit has a call term, or there is no fit."""
    # Times that tokens and attention explain alone (the small calls too fast for any call cost).
    timed = [Observation.of_calls([(r, w)], 1e-6 * r * w + 2e-9 * r * w * w)
             for r, w in [(1, 8), (1, 16), (4, 32), (8, 64), (16, 128), (64, 256)]]
    fitted = fit_costs(timed)
    assert fitted is None or fitted[0] > 0
    learner = CostLearner(PRIORS["cpu"])
    for observation in timed:
        learner.probe(observation)
    assert learner.refit().call_s > 0  # no fit: the prior stays


def test_the_learner_starts_from_the_prior_and_refits_every_few_batches() -> None:
    learner = CostLearner(PRIORS["cpu"], refit_every=4)
    assert learner.current == PRIORS["cpu"] and learner.current.call_overhead_tokens == 32
    true = CostFit(5e-3, 1e-7, 0.0, "truth", 0)  # an accelerator: a call is worth 50,000 tokens
    sizes = [(1, 16), (8, 64), (64, 32), (16, 128)]
    for k in range(3):
        learner.observe(Observation.of_calls([sizes[k]], true.seconds(*sizes[k])))
    assert learner.current == PRIORS["cpu"]  # not yet refitted
    learner.observe(Observation.of_calls([sizes[3]], true.seconds(*sizes[3])))
    assert learner.current.source == "fit" and close(learner.current.call_overhead_tokens, 50_000)


# -- through the engine, against a simulated device --------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> SentimentEngine:
    return SentimentEngine.load(str(tiny_model), max_length=512, max_batch_tokens=16384, max_batch_rows=512)


@pytest.mark.parametrize(
    "device",
    [
        SimulatedDevice(2, ms_per_call=4.0, ns_per_token=2_000.0),  # CPU-like: a call is 2,000 tokens' worth
        SimulatedDevice(2, ms_per_call=5.0, ns_per_token=100.0),  # accelerator-like: 50,000 tokens' worth
        SimulatedDevice(2, ms_per_call=4.0, ns_per_token=1_000.0, ns_per_token_position=10.0),  # attention at width 100
    ],
    ids=["cpu-like", "accelerator-like", "attention-heavy"],
)
def test_on_a_device_it_has_never_seen_the_warm_up_finds_the_costs(engine: SentimentEngine, device: SimulatedDevice) -> None:
    simulated = engine.with_forward(device)
    assert simulated.costs.current.source == "prior"
    simulated.warmup()
    fitted, true = simulated.costs.current, truth(device)
    assert fitted.source == "probe"
    assert close(fitted.call_s, true.call_s), (fitted, true)
    assert close(fitted.token_s, true.token_s), (fitted, true)
    if true.token_position_s:
        assert close(fitted.token_position_s, true.token_position_s), (fitted, true)
    else:
        assert fitted.attention_scale > 5 * 512  # attention no dearer than 20 % of the rest at the widest row

    # The plan made with what was learnt costs, in truth, what the plan made with the truth costs.
    lengths = lengths_of_a_mixed_stream()
    budget = dict(max_tokens=16384, max_rows=512)
    learnt = plan_sub_batches(lengths, call_overhead=fitted.call_overhead_tokens, attention_scale=fitted.attention_scale, **budget)
    best = plan_sub_batches(lengths, call_overhead=true.call_overhead_tokens, attention_scale=true.attention_scale, **budget)
    prior = plan_sub_batches(lengths, call_overhead=PRIORS["cpu"].call_overhead_tokens, **budget)
    assert planned_cost(true, shapes(learnt)) <= 1.02 * planned_cost(true, shapes(best))
    # Every device here is far from the CPU prior (a call worth 32 tokens): planning with it costs more.
    assert planned_cost(true, shapes(prior)) > 1.1 * planned_cost(true, shapes(best))


def test_the_running_fit_follows_a_device_that_slows_down_and_reports_what_it_did(engine: SentimentEngine) -> None:
    device = SimulatedDevice(2, ms_per_call=3.0, ns_per_token=200.0)
    simulated = engine.with_forward(device)
    simulated.warmup()
    assert close(simulated.costs.current.token_s, 200e-9)
    device.ns_per_token, device.ms_per_call = 600.0, 9.0  # three times slower from now on (throttled, a neighbour)
    rng = random.Random(5)
    texts = [" ".join(["word"] * rng.randint(3, 120)) for _ in range(2048)]
    report = None
    for start in range(0, len(texts), 64):
        report = simulated.infer(simulated.encode(texts[start : start + 64])).report
    fitted = simulated.costs.current
    assert fitted.source == "fit"
    assert close(fitted.token_s, 600e-9, 0.3) and close(fitted.call_s, 9e-3, 0.3), fitted  # the probes still pull a little
    assert report is not None and report.costs == fitted
    assert report.forward_s >= device.cost_s(1, 1) * report.model_calls  # the device's time, not the host's


def test_learning_off_keeps_the_prior_and_the_noop_model_plans_as_before(engine: SentimentEngine) -> None:
    fixed = engine.with_forward(SimulatedDevice(2, ms_per_call=0.0, ns_per_token=0.0), learn_costs=False)
    fixed.warmup()
    report = fixed.infer(fixed.encode(["a text"] * 10)).report
    assert fixed.costs.current == PRIORS["cpu"] and report.costs is None


def test_a_refit_that_contradicts_the_probes_is_refused_but_a_uniform_slowdown_is_not() -> None:
    true = CostFit(4e-3, 1e-6, 0.0, "truth", 0)
    learner = CostLearner(PRIORS["cpu"], refit_every=1)
    for rows, width in [(1, 8), (4, 64), (16, 32), (8, 128), (32, 256)]:
        learner.probe(Observation.of_calls([(rows, width)], true.seconds(rows, width)))
    probed = learner.refit()
    assert close(probed.call_s, true.call_s, 0.01)
    # Recent batches whose time does not grow with their calls (on a busy host, waits that have
    # nothing to do with the device): a fit to them says calls are free, and would plan one call
    # per length, where the probes measured 4 ms a call.
    for k in range(40):
        calls = [(1 + k % 7, 16 * (1 + k % 5))] * (1 + k % 4)
        tokens = sum(r * w for r, w in calls)
        learner.observe(Observation.of_calls(calls, 3e-6 * tokens))
    # Refits that far from what the probes measured are refused; the cost model keeps calls dear.
    assert learner.rejected > 0
    assert distortion(learner.current, probed, learner._probes) <= 2.0
    assert learner.current.call_overhead_tokens > probed.call_overhead_tokens / 3
    # The same device, three times slower at every shape (a distortion of 1): followed.
    learner = CostLearner(PRIORS["cpu"], refit_every=1)
    for rows, width in [(1, 8), (4, 64), (16, 32), (8, 128), (32, 256)]:
        learner.probe(Observation.of_calls([(rows, width)], true.seconds(rows, width)))
    slower = CostFit(3 * true.call_s, 3 * true.token_s, 0.0, "truth", 0)
    for k in range(64):
        calls = [(1 + k % 7, 16 * (1 + k % 5)), (8, 32 * (1 + k % 3))]
        learner.observe(Observation.of_calls(calls, sum(slower.seconds(r, w) for r, w in calls)))
    assert close(learner.current.call_s, slower.call_s, 0.25) and close(learner.current.token_s, slower.token_s, 0.25)
