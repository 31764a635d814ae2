"""The daemon's health snapshot: one dict for the health file, GET /health, the op
dialect's health query and the gauges of GET /metrics.

Everything in it is read at the moment it is taken; nothing here is kept up to date
on the call path.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from broker.calls.manager import CallManager
from broker.calls.scheduler import Scheduler
from broker.calls.session import SessionRegistry
from broker.fleet.fleet import Fleet
from broker.hosting.hub import Hosting
from broker.observe.by_server import NO_CALLS, ServerLatencies
from broker.observe.calllog import MetricsWriter
from broker.observe.health import HealthFile
from broker.observe.recent import RecentStats
from broker.pool.supervisor import Supervisor
from broker.router.router import FrameRouter
from exai import __version__
from exai.settings import Settings

__all__ = ["Observed", "take_snapshot"]


class Observed(Protocol):
    """The parts of a daemon a snapshot reads."""

    @property
    def settings(self) -> Settings: ...
    @property
    def port(self) -> int: ...
    @property
    def started_at(self) -> float: ...
    @property
    def ready(self) -> bool: ...
    @property
    def draining(self) -> bool: ...
    @property
    def scheduler(self) -> Scheduler: ...
    @property
    def supervisor(self) -> Supervisor: ...
    @property
    def calls(self) -> CallManager: ...
    @property
    def sessions(self) -> SessionRegistry: ...
    @property
    def router(self) -> FrameRouter: ...
    @property
    def metrics(self) -> MetricsWriter: ...
    @property
    def recent(self) -> RecentStats: ...
    @property
    def by_server(self) -> ServerLatencies: ...
    @property
    def health(self) -> HealthFile: ...
    @property
    def hosting(self) -> Hosting | Fleet | None: ...
    @property
    def servers_path(self) -> Path | None: ...


def take_snapshot(daemon: Observed) -> dict[str, Any]:
    """The daemon's state now, as JSON-ready values."""
    settings = daemon.settings
    scheduler = daemon.scheduler
    sessions = daemon.sessions
    calls = daemon.calls
    now = time.time()
    return {
        "t": now,
        "pid": os.getpid(),
        "version": __version__,
        "python": sys.version.split()[0],
        "host": settings.host,
        "port": daemon.port,
        "ready": daemon.ready,
        "draining": daemon.draining,
        "uptime_s": round(now - daemon.started_at, 1),
        "sessions": sessions.attached_count,
        "sessions_detached": len(sessions.sessions) - sessions.attached_count,
        "inflight": {
            "global": scheduler.inflight_global,
            "providers": dict(scheduler.inflight_by_provider),
        },
        "queued": scheduler.queued_total,
        "capacity": {
            "session": settings.session_max_inflight,
            "global": settings.global_max_inflight,
            "providers": dict(settings.provider_caps),
        },
        "pool": settings.pool,
        "workers": [
            {
                "slot": w.slot,
                "pid": w.pid,
                "state": w.state,
                "inflight": len(w.calls),
                "restarts": w.restarts,
                "served": w.served,
            }
            for w in daemon.supervisor.workers
        ],
        "servers": _servers(daemon.hosting, daemon.by_server.snapshot(now)),
        "servers_file": str(daemon.servers_path) if daemon.servers_path is not None else None,
        "tools": len(calls.catalog.tools),
        "calls_total": calls.calls_total,
        "errors_by_code": dict(calls.errors_by_code),
        "bad_frames": daemon.router.stats.bad_frames,
        # Answers a detached session's full outbox could not hold.
        "frames_dropped": sessions.frames_dropped,
        "metrics_dropped": daemon.metrics.dropped,
        "metrics_written": daemon.metrics.written,
        # Failed writes of the health file: a live GET /health says when it went stale.
        "health_file_failures": daemon.health.failures,
        "recent": daemon.recent.series(now),
    }


def _servers(
    hosting: Hosting | Fleet | None, figures: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """One entry per hosted server, with its call figures (calls, errors, p50/p99)."""
    if hosting is None:
        return []
    shown = hosting.snapshot() if isinstance(hosting, Fleet) else [hosting.snapshot()]
    for entry in shown:
        entry.update(figures.get(entry["name"], NO_CALLS))
    return shown
