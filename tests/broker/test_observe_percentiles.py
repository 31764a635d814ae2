"""One percentile for the report, the status page and the benchmarks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from benchmarks.stats import percentile as bench_percentile
from broker.admin.report import percentile as report_percentile
from broker.observe.percentiles import percentile
from broker.observe.recent import BUCKET_S, RecentStats


def test_p99_of_100_calls_is_the_99th_and_the_median_of_ten_the_fifth() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values[:10], 50) == 5.0


def test_a_product_just_above_a_whole_rank_is_that_rank() -> None:
    """7 % of 100 is 7.000000000000001 in floating point: still the 7th value."""
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 7) == 7.0
    assert bench_percentile(values, 7) == 7.0


@given(st.lists(st.floats(0, 1e6), max_size=200), st.sampled_from([0, 1, 50, 90, 99, 100]))
def test_the_report_and_the_benchmarks_agree(values: list[float], pct: float) -> None:
    """Same numbers everywhere; only "no values" differs: 0 in the report, None (no
    latency to show) in the benchmark results."""
    values.sort()
    assert report_percentile(values, pct) == percentile(values, pct)
    expected = percentile(values, pct) if values else None
    assert bench_percentile(values, pct) == expected


def test_the_status_page_series_uses_the_same_percentile() -> None:
    """100 calls of 1..100 ms in one bucket: the page shows p50 50 ms and p99 99 ms
    (not the slowest call), as `broker report` would."""
    stats = RecentStats()
    start = 1000 * BUCKET_S
    for n in range(1, 101):
        stats.add(start + 0.01 * n, float(n), ok=True)
    (point,) = stats.series(start + 2.0)
    assert (point["p50_ms"], point["p99_ms"]) == (50.0, 99.0)
