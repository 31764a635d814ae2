"""Recent call statistics for the status page: calls/s and p50/p99 over the last minutes.

Calls land in fixed time buckets; each bucket keeps its count and a bounded sample
of latencies, so memory and the cost of a snapshot stay flat at any call rate.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

from broker.observe.percentiles import percentile

__all__ = ["RecentStats"]

BUCKET_S = 5.0
BUCKETS = 60  # five minutes
SAMPLES_PER_BUCKET = 512


class _Bucket:
    __slots__ = ("calls", "errors", "samples", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.calls = 0
        self.errors = 0
        self.samples: list[float] = []


class RecentStats:
    def __init__(self) -> None:
        self._buckets: deque[_Bucket] = deque(maxlen=BUCKETS)

    def add(self, now: float, latency_ms: float, ok: bool) -> None:
        buckets = self._buckets
        if not buckets or now - buckets[-1].start >= BUCKET_S:
            buckets.append(_Bucket(now - now % BUCKET_S))
        bucket = buckets[-1]
        bucket.calls += 1
        if not ok:
            bucket.errors += 1
        if len(bucket.samples) < SAMPLES_PER_BUCKET:
            bucket.samples.append(latency_ms)
        elif random.random() < SAMPLES_PER_BUCKET / bucket.calls:
            # Reservoir sampling keeps the sample uniform over the whole bucket.
            bucket.samples[random.randrange(SAMPLES_PER_BUCKET)] = latency_ms

    def series(self, now: float) -> list[dict[str, Any]]:
        """One point per bucket in the window: t, calls_per_s, errors, p50_ms, p99_ms."""
        points = []
        for bucket in self._buckets:
            if now - bucket.start > BUCKET_S * BUCKETS:
                continue
            ordered = sorted(bucket.samples)
            # A bucket just begun would turn one call into hundreds per second.
            elapsed = min(BUCKET_S, max(1.0, now - bucket.start))
            points.append(
                {
                    "t": bucket.start,
                    "calls_per_s": round(bucket.calls / elapsed, 2),
                    "errors": bucket.errors,
                    "p50_ms": round(percentile(ordered, 50), 3),
                    "p99_ms": round(percentile(ordered, 99), 3),
                }
            )
        return points
