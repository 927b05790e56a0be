"""common.stats (percentile, smoothed) and common.cost (compressions, job cost)."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.cost import JOB_OVERHEAD_COST, compressions, job_cost
from common.stats import percentile, smoothed

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


def test_percentile_of_known_values():
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 25) == pytest.approx(1.75)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


@pytest.mark.parametrize("q", [-0.1, 100.5, math.nan])
def test_percentile_refuses_q_outside_0_to_100(q):
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        percentile([1.0, 2.0], q)


@given(st.lists(finite, min_size=2, max_size=200), st.integers(min_value=1, max_value=99))
def test_percentile_matches_statistics_inclusive_quantiles(values, q):
    ordered = sorted(values)
    expected = statistics.quantiles(ordered, n=100, method="inclusive")[q - 1]
    assert percentile(ordered, q) == pytest.approx(expected, rel=1e-9, abs=1e-6)


@given(st.lists(finite, min_size=1, max_size=50), st.floats(0, 100), st.floats(0, 100))
def test_percentile_is_monotone_and_within_the_range(values, q1, q2):
    ordered = sorted(values)
    low, high = sorted((q1, q2))
    assert ordered[0] <= percentile(ordered, low) <= percentile(ordered, high) + 1e-9
    assert percentile(ordered, high) <= ordered[-1]


def test_smoothed_moves_towards_the_sample():
    assert smoothed(None, 5.0, 0.3) == 5.0  # no history: the sample itself
    assert smoothed(10.0, 20.0, 0.3) == pytest.approx(13.0)
    assert smoothed(10.0, 20.0, 1.0) == 20.0
    assert smoothed(10.0, 20.0, 0.0) == 10.0


@given(finite, finite, st.floats(0, 1))
def test_smoothed_stays_between_history_and_sample(previous, sample, weight):
    value = smoothed(previous, sample, weight)
    assert min(previous, sample) - 1e-6 <= value <= max(previous, sample) + 1e-6


@pytest.mark.parametrize(
    ("iterations", "body", "expected"),
    [(1, 0, 1), (1, 1, 2), (1, 128, 2), (1, 129, 3), (1000, 1 << 20, 1000 + 8192)],
)
def test_compressions_count_iterations_and_body_blocks(iterations, body, expected):
    assert compressions(iterations, body) == expected


@given(st.integers(1, 10**9), st.integers(0, 1 << 24))
def test_job_cost_is_compressions_plus_the_overhead_and_monotone(iterations, body):
    cost = job_cost(iterations, body)
    assert cost == compressions(iterations, body) + JOB_OVERHEAD_COST
    assert job_cost(iterations + 1, body) > cost
    assert job_cost(iterations, body + 128) > cost
