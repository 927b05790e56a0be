"""Small statistics used by the autoscaler, the simulation and the load generator."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, interpolating linearly between the
    closest ranks (numpy's default method); nan for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    if not sorted_values:
        return math.nan
    rank = (len(sorted_values) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def smoothed(previous: float | None, sample: float, weight: float) -> float:
    """An exponentially weighted moving average: the sample itself when there is no history."""
    return sample if previous is None else previous + weight * (sample - previous)
