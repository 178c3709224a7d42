"""plan_sub_batches: every row once, within the padded-token budget, shortest first, cheapest cut."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.model.batching import ATTENTION_SCALE, SubBatch, padding_efficiency, plan_sub_batches


def check_plan(lengths: Sequence[int], plan: list[SubBatch], *, max_tokens: int, max_rows: int) -> None:
    """Every invariant the plan promises, whatever the cost model; shared by examples and properties."""
    flat = [i for sub in plan for i in sub.indices]
    # Every index exactly once.
    assert sorted(flat) == list(range(len(lengths)))
    # Shortest first overall, ties in input order (a stable sort), each group a run of that order.
    assert flat == sorted(range(len(lengths)), key=lambda i: lengths[i])
    for sub in plan:
        assert sub.indices, "no empty sub-batches"
        assert len(sub.indices) <= max_rows
        assert sub.width == max(lengths[i] for i in sub.indices)
        assert [lengths[i] for i in sub.indices] == sorted(lengths[i] for i in sub.indices)
        assert sub.padded_tokens == len(sub.indices) * sub.width
        if len(sub.indices) > 1:
            assert len(sub.indices) * sub.width <= max_tokens
    assert [sub.width for sub in plan] == sorted(sub.width for sub in plan)


def cost(groups: Sequence[Sequence[int]], overhead: float, scale: float = ATTENTION_SCALE) -> float:
    """The documented cost model: per call, overhead + rows x width x (1 + width / scale)."""
    total = 0.0
    for group in groups:
        width = max(group)
        total += overhead + len(group) * width * (1 + width / scale)
    return total


def feasible(group: Sequence[int], max_tokens: int, max_rows: int) -> bool:
    return len(group) == 1 or (len(group) <= max_rows and len(group) * max(group) <= max_tokens)


def cheapest_cut(lengths: Sequence[int], *, max_tokens: int, max_rows: int, overhead: float) -> float:
    """Brute force over every cut of the sorted run into contiguous groups."""
    ordered = sorted(lengths)
    n = len(ordered)
    best = float("inf")
    for mask in range(1 << max(n - 1, 0)):
        cuts = [0] + [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]
        groups = [ordered[a:b] for a, b in zip(cuts, cuts[1:])]
        if all(feasible(g, max_tokens, max_rows) for g in groups):
            best = min(best, cost(groups, overhead))
    return best


def fewest_calls(lengths: Sequence[int], *, max_tokens: int, max_rows: int) -> int:
    """Greedy fill of the sorted run: the least number of calls that respect the limits."""
    calls, rows = 0, 0
    for length in sorted(lengths):
        if rows and (rows >= max_rows or (rows + 1) * length > max_tokens):
            rows = 0
        if rows == 0:
            calls += 1
        rows += 1
    return calls


def groups_of(lengths: Sequence[int], plan: Sequence[SubBatch]) -> list[list[int]]:
    return [[lengths[i] for i in sub.indices] for sub in plan]


# ----------------------------------------------------------------------------- examples


def test_empty_input() -> None:
    assert plan_sub_batches([], max_tokens=10, max_rows=4) == []


def test_single_row() -> None:
    assert plan_sub_batches([7], max_tokens=100, max_rows=4) == [SubBatch((0,), 7)]


def test_row_over_budget_gets_its_own_group() -> None:
    lengths = [4, 100, 4, 60]
    plan = plan_sub_batches(lengths, max_tokens=50, max_rows=10)
    check_plan(lengths, plan, max_tokens=50, max_rows=10)
    assert SubBatch((1,), 100) in plan and SubBatch((3,), 60) in plan
    assert plan[-1] == SubBatch((1,), 100)


def test_all_rows_over_budget() -> None:
    plan = plan_sub_batches([9, 7, 8], max_tokens=5, max_rows=10)
    assert plan == [SubBatch((1,), 7), SubBatch((2,), 8), SubBatch((0,), 9)]


def test_row_limit() -> None:
    plan = plan_sub_batches([1] * 10, max_tokens=10_000, max_rows=3)
    assert len(plan) == 4
    check_plan([1] * 10, plan, max_tokens=10_000, max_rows=3)


def test_token_budget_is_respected_exactly() -> None:
    lengths = [5] * 8
    plan = plan_sub_batches(lengths, max_tokens=20, max_rows=100, call_overhead=1e9)
    assert [len(sub.indices) for sub in plan] == [4, 4]  # 4 x 5 = 20 fits, 5 x 5 doesn't


def test_ties_keep_input_order() -> None:
    plan = plan_sub_batches([2, 1, 2, 1, 2], max_tokens=100, max_rows=100, call_overhead=1e9)
    assert plan == [SubBatch((1, 3, 0, 2, 4), 2)]


def test_zero_length_rows() -> None:
    lengths = [0, 0, 0, 3]
    plan = plan_sub_batches(lengths, max_tokens=3, max_rows=2)
    check_plan(lengths, plan, max_tokens=3, max_rows=2)


def test_no_call_overhead_means_no_padding() -> None:
    lengths = [3, 9, 3, 4, 9, 9, 4, 20]
    plan = plan_sub_batches(lengths, max_tokens=10_000, max_rows=100, call_overhead=0)
    check_plan(lengths, plan, max_tokens=10_000, max_rows=100)
    assert padding_efficiency(lengths, plan) == 1.0
    assert all(len({lengths[i] for i in sub.indices}) == 1 for sub in plan)


def test_huge_call_overhead_means_fewest_calls() -> None:
    lengths = [3, 9, 3, 4, 9, 9, 4, 20, 1, 1, 30]
    plan = plan_sub_batches(lengths, max_tokens=60, max_rows=4, call_overhead=1e12)
    check_plan(lengths, plan, max_tokens=60, max_rows=4)
    assert len(plan) == fewest_calls(lengths, max_tokens=60, max_rows=4)


def test_short_rows_are_not_padded_to_a_long_one_when_a_call_is_cheap() -> None:
    # One call of 9 x 500 would pad eight 10-token rows to 500: far costlier than a second call.
    lengths = [10] * 8 + [500]
    plan = plan_sub_batches(lengths, max_tokens=16_384, max_rows=64)
    assert groups_of(lengths, plan) == [[10] * 8, [500]]


def test_near_equal_rows_share_a_call() -> None:
    # Padding 31 -> 32 costs a few tokens, far less than the default per-call overhead.
    lengths = [30, 31, 32, 31, 30]
    plan = plan_sub_batches(lengths, max_tokens=16_384, max_rows=64)
    assert len(plan) == 1 and plan[0].width == 32


@pytest.mark.parametrize(
    ("max_tokens", "max_rows", "overhead"), [(0, 1, 0), (1, 0, 0), (-5, 3, 0), (3, -1, 0), (0, 0, 0), (5, 5, -1)]
)
def test_invalid_arguments(max_tokens: int, max_rows: int, overhead: float) -> None:
    with pytest.raises(ValueError):
        plan_sub_batches([1, 2], max_tokens=max_tokens, max_rows=max_rows, call_overhead=overhead)


def test_invalid_arguments_raise_even_for_empty_input() -> None:
    with pytest.raises(ValueError):
        plan_sub_batches([], max_tokens=0, max_rows=1)


def test_padding_efficiency() -> None:
    lengths = [2, 4, 6]
    assert padding_efficiency(lengths, [SubBatch((0, 1, 2), 6)]) == pytest.approx(12 / 18)
    assert padding_efficiency(lengths, [SubBatch((0,), 2), SubBatch((1,), 4), SubBatch((2,), 6)]) == 1.0
    assert padding_efficiency([], []) == 1.0
    assert padding_efficiency([5, 5], plan_sub_batches([5, 5], max_tokens=100, max_rows=10)) == 1.0


def test_sorting_beats_input_order_padding() -> None:
    lengths = [100, 1, 100, 1, 100, 1, 100, 1]
    plan = plan_sub_batches(lengths, max_tokens=400, max_rows=4)
    assert padding_efficiency(lengths, plan) == 1.0  # the short rows travel together
    unsorted = [SubBatch((0, 1, 2, 3), 100), SubBatch((4, 5, 6, 7), 100)]
    assert padding_efficiency(lengths, unsorted) < 0.6


# ----------------------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None, database=None)
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=600), max_size=80),
    max_tokens=st.integers(min_value=1, max_value=4096),
    max_rows=st.integers(min_value=1, max_value=64),
    overhead=st.one_of(st.just(0.0), st.floats(min_value=0, max_value=1e5)),
)
def test_plan_invariants(lengths: list[int], max_tokens: int, max_rows: int, overhead: float) -> None:
    plan = plan_sub_batches(lengths, max_tokens=max_tokens, max_rows=max_rows, call_overhead=overhead)
    check_plan(lengths, plan, max_tokens=max_tokens, max_rows=max_rows)
    efficiency = padding_efficiency(lengths, plan)
    assert 0.0 <= efficiency <= 1.0
    # Never more calls than one per row, never fewer than the limits allow.
    assert fewest_calls(lengths, max_tokens=max_tokens, max_rows=max_rows) <= len(plan) <= len(lengths)


@settings(max_examples=300, deadline=None, database=None)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=9),
    max_tokens=st.integers(min_value=1, max_value=1500),
    max_rows=st.integers(min_value=1, max_value=9),
    overhead=st.floats(min_value=0, max_value=2000),
)
def test_plan_is_the_cheapest_cut(lengths: list[int], max_tokens: int, max_rows: int, overhead: float) -> None:
    plan = plan_sub_batches(lengths, max_tokens=max_tokens, max_rows=max_rows, call_overhead=overhead)
    check_plan(lengths, plan, max_tokens=max_tokens, max_rows=max_rows)
    best = cheapest_cut(lengths, max_tokens=max_tokens, max_rows=max_rows, overhead=overhead)
    assert cost(groups_of(lengths, plan), overhead) == pytest.approx(best, rel=1e-9, abs=1e-9)
