"""`GET /metrics`: Prometheus text format through prometheus-client.

A finished call only bumps plain counters here (one bucket index and two adds per
histogram); they are folded into the prometheus-client objects at scrape time, whose
locks and label lookups would otherwise cost more than the rest of the call's
accounting. Everything that is a level (in flight, sessions, workers) is read from
the daemon at scrape time, so it costs nothing on the call path.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "PrometheusMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
)


class _StateCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        snap = self._snapshot()
        inflight = GaugeMetricFamily(
            "exai_inflight_calls", "Calls in flight per cap", labels=["cap"]
        )
        inflight.add_metric(["global"], snap["inflight"]["global"])
        for name, value in snap["inflight"]["providers"].items():
            inflight.add_metric([f"provider:{name}"], value)
        yield inflight
        capacity = GaugeMetricFamily(
            "exai_capacity_calls", "Configured cap per scope", labels=["cap"]
        )
        capacity.add_metric(["global"], snap["capacity"]["global"])
        capacity.add_metric(["session"], snap["capacity"]["session"])
        for name, value in snap["capacity"]["providers"].items():
            capacity.add_metric([f"provider:{name}"], value)
        yield capacity
        yield GaugeMetricFamily(
            "exai_queued_calls", "Calls waiting in queues", value=snap["queued"]
        )
        sessions = GaugeMetricFamily("exai_sessions", "Client sessions", labels=["state"])
        sessions.add_metric(["attached"], snap["sessions"])
        sessions.add_metric(["detached"], snap["sessions_detached"])
        yield sessions
        workers = GaugeMetricFamily("exai_workers", "Worker processes by state", labels=["state"])
        states: dict[str, int] = {}
        restarts = CounterMetricFamily("exai_worker_restarts", "Worker restarts", labels=["slot"])
        for worker in snap["workers"]:
            states[worker["state"]] = states.get(worker["state"], 0) + 1
            restarts.add_metric([str(worker["slot"])], worker["restarts"])
        for state, count in states.items():
            workers.add_metric([state], count)
        yield workers
        yield restarts
        servers = GaugeMetricFamily("exai_servers", "Hosted servers by state", labels=["state"])
        up = GaugeMetricFamily(
            "exai_server_up", "Hosted server ready (1) or not (0)", labels=["server"]
        )
        server_restarts = CounterMetricFamily(
            "exai_server_restarts", "Hosted server restarts", labels=["server"]
        )
        states = {}
        for server in snap["servers"]:
            states[server["state"]] = states.get(server["state"], 0) + 1
            up.add_metric([server["name"]], 1 if server["state"] == "ready" else 0)
            server_restarts.add_metric([server["name"]], server["restarts"])
        for state, count in states.items():
            servers.add_metric([state], count)
        yield servers
        yield up
        yield server_restarts
        yield CounterMetricFamily(
            "exai_metrics_lines_dropped",
            "Metrics JSONL lines dropped",
            value=snap["metrics_dropped"],
        )
        yield CounterMetricFamily(
            "exai_bad_frames", "Client frames refused as invalid", value=snap["bad_frames"]
        )
        yield CounterMetricFamily(
            "exai_frames_dropped",
            "Answers dropped because a detached session's outbox was full",
            value=snap["frames_dropped"],
        )


class _CounterBatch:
    """Increments of one counter child not yet folded into it."""

    __slots__ = ("child", "pending")

    def __init__(self, child: Counter) -> None:
        self.child = child
        self.pending = 0

    def flush(self) -> None:
        if self.pending:
            self.child.inc(self.pending)
            self.pending = 0


class _HistogramBatch:
    """Observations of one histogram child not yet folded into it, per bucket."""

    __slots__ = ("bounds", "child", "counts", "dirty", "total")

    def __init__(self, child: Histogram, bounds: list[float]) -> None:
        self.child = child
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.total = 0.0
        self.dirty = False

    def observe(self, value: float) -> None:
        # The first bucket whose upper bound is >= value: where Histogram.observe puts it.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.dirty = True

    def flush(self) -> None:
        if not self.dirty:
            return
        # Histogram has no bulk observe; its per-bucket values take the counts directly.
        child = self.child
        buckets = child._buckets
        for index, count in enumerate(self.counts):
            if count:
                buckets[index].inc(count)
                self.counts[index] = 0
        child._sum.inc(self.total)
        self.total = 0.0
        self.dirty = False


class PrometheusMetrics:
    """One registry per daemon (no global state), fed by finished-call records."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._calls = Counter(
            "exai_calls",
            "Finished tool calls",
            ["tool", "provider", "outcome", "server"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "exai_call_latency_seconds",
            "Call latency from arrival to answer",
            ["tool"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._queue = Histogram(
            "exai_call_queue_seconds",
            "Time from arrival to admission",
            ["provider"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(snapshot))
        # Children are created on first use, as `labels()` would, so `_created` is the
        # time of the first observation rather than of the first scrape.
        self._call_batches: dict[tuple[str, str | None, str, str | None], _CounterBatch] = {}
        self._latency_batches: dict[str, _HistogramBatch] = {}
        self._queue_batches: dict[str | None, _HistogramBatch] = {}

    def observe(
        self,
        tool: str,
        provider: str | None,
        outcome: str,
        latency_ms: float,
        queue_ms: float,
        server: str | None = None,
    ) -> None:
        """One finished call; `server` is the hosted server's name (None: the daemon's
        own tools, labelled "none")."""
        key = (tool, provider, outcome, server)
        calls = self._call_batches.get(key)
        if calls is None:
            calls = self._call_batches[key] = _CounterBatch(
                self._calls.labels(tool, provider or "none", outcome, server or "none")
            )
        calls.pending += 1
        latency = self._latency_batches.get(tool)
        if latency is None:
            latency = self._latency_batches[tool] = self._histogram_batch(self._latency, tool)
        latency.observe(latency_ms / 1000.0)
        queue = self._queue_batches.get(provider)
        if queue is None:
            queue = self._queue_batches[provider] = self._histogram_batch(
                self._queue, provider or "none"
            )
        queue.observe(queue_ms / 1000.0)

    @staticmethod
    def _histogram_batch(histogram: Histogram, label: str) -> _HistogramBatch:
        child = histogram.labels(label)
        return _HistogramBatch(child, list(child._upper_bounds))

    def flush(self) -> None:
        """Fold the observations made since the last flush into the registry."""
        for calls in self._call_batches.values():
            calls.flush()
        for latency in self._latency_batches.values():
            latency.flush()
        for queue in self._queue_batches.values():
            queue.flush()

    def render(self) -> bytes:
        self.flush()
        return generate_latest(self.registry)
