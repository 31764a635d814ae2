"""Call figures per hosted server for the health snapshot: calls and errors since the
daemon started, p50/p99 over the server's recent calls.

Each server keeps the latencies of its last WINDOW_CALLS calls, and a snapshot reads
only those of the last WINDOW_S seconds, so memory and the cost of a snapshot stay flat
at any call rate and a server gone quiet does not show the latency of an hour ago.
Recording a call is a dict look-up, two adds and an append.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from broker.observe.percentiles import percentile

__all__ = ["NO_CALLS", "WINDOW_CALLS", "WINDOW_S", "ServerLatencies"]

WINDOW_CALLS = 1024
WINDOW_S = 300.0  # five minutes, as the status page's recent series

# A server with no call yet (or none in the window: no latency to show).
NO_CALLS: dict[str, Any] = {"calls": 0, "errors": 0, "p50_ms": None, "p99_ms": None}


class _Server:
    __slots__ = ("calls", "errors", "window")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        # (t, latency_ms), oldest first.
        self.window: deque[tuple[float, float]] = deque(maxlen=WINDOW_CALLS)


class ServerLatencies:
    """Figures per server name, fed by one `add` per finished forwarded call."""

    __slots__ = ("_servers",)

    def __init__(self) -> None:
        self._servers: dict[str, _Server] = {}

    def add(self, server: str, now: float, latency_ms: float, ok: bool) -> None:
        """A call to `server` finished at wall-clock time `now`."""
        figures = self._servers.get(server)
        if figures is None:
            figures = self._servers[server] = _Server()
        figures.calls += 1
        if not ok:
            figures.errors += 1
        figures.window.append((now, latency_ms))

    def snapshot(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Per server name: calls, errors (since start), p50_ms, p99_ms (recent calls;
        None when it had none in the last WINDOW_S seconds)."""
        now = time.time() if now is None else now
        since = now - WINDOW_S
        shown: dict[str, dict[str, Any]] = {}
        for name, figures in self._servers.items():
            ordered = sorted(ms for t, ms in figures.window if t >= since)
            shown[name] = {
                "calls": figures.calls,
                "errors": figures.errors,
                "p50_ms": round(percentile(ordered, 50), 3) if ordered else None,
                "p99_ms": round(percentile(ordered, 99), 3) if ordered else None,
            }
        return shown
