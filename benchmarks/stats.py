"""Latency percentiles and the per-cell summary row; pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from broker.observe.percentiles import percentile as nearest_rank

__all__ = ["percentile", "summarise"]

PERCENTILES = (50, 90, 99)


def percentile(sorted_values: Sequence[float], pct: float) -> float | None:
    """The daemon's nearest-rank percentile; None for no values (a cell with no good
    call has no latency, which the results must not show as 0 ms)."""
    return nearest_rank(sorted_values, pct) if sorted_values else None


def summarise(
    latencies_ms: Sequence[float], errors: Mapping[str, int], duration_s: float
) -> dict[str, Any]:
    """calls/s counts good calls only; latency percentiles are over good calls only."""
    values = sorted(latencies_ms)
    error_count = sum(errors.values())
    latency: dict[str, float | None] = {f"p{p}": percentile(values, p) for p in PERCENTILES}
    latency["max"] = values[-1] if values else None
    latency["mean"] = sum(values) / len(values) if values else None
    return {
        "calls": len(values) + error_count,
        "ok": len(values),
        "calls_per_s": len(values) / duration_s if duration_s > 0 else 0.0,
        "latency_ms": latency,
        "errors": dict(sorted(errors.items())),
        "error_count": error_count,
    }
