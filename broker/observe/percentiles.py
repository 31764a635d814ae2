"""One percentile for every latency figure: the report, the status page, the benchmarks.

Nearest rank: the p-th percentile of n sorted values is the ceil(p/100 * n)-th
smallest, so it is always one of the values (never an interpolation between two),
and p99 of 100 calls is the 99th, not the slowest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["percentile"]

# p/100 * n is computed in floating point: 0.07 * 100 is 7.000000000000001, whose
# ceiling would skip a rank. Products this close to a whole number are that number.
_RANK_EPSILON = 1e-9


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """The nearest-rank `pct` percentile (0-100) of already sorted values; 0 for none."""
    count = len(sorted_values)
    if not count:
        return 0.0
    rank = math.ceil(pct / 100.0 * count - _RANK_EPSILON)
    return sorted_values[min(count, max(1, rank)) - 1]
