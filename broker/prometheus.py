"""`GET /metrics`: Prometheus text format through prometheus-client.

Counters and histograms are updated once per finished call; everything that is a
level (in flight, sessions, workers) is read from the daemon at scrape time, so it
costs nothing on the call path.
"""

from __future__ import annotations

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
        yield CounterMetricFamily(
            "exai_metrics_lines_dropped",
            "Metrics JSONL lines dropped",
            value=snap["metrics_dropped"],
        )
        yield CounterMetricFamily(
            "exai_bad_frames", "Client frames refused as invalid", value=snap["bad_frames"]
        )


class PrometheusMetrics:
    """One registry per daemon (no global state), fed by finished-call records."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._calls = Counter(
            "exai_calls",
            "Finished tool calls",
            ["tool", "provider", "outcome"],
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

    def observe(
        self, tool: str, provider: str | None, outcome: str, latency_ms: float, queue_ms: float
    ) -> None:
        provider_label = provider or "none"
        self._calls.labels(tool, provider_label, outcome).inc()
        self._latency.labels(tool).observe(latency_ms / 1000.0)
        self._queue.labels(provider_label).observe(queue_ms / 1000.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
