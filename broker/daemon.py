"""The daemon: wires settings, workers, scheduler, sessions and the front end together,
and runs them from start-up to a graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from broker.calls.catalog import Catalog
from broker.calls.manager import CallManager, CallRecord
from broker.calls.scheduler import Scheduler
from broker.calls.session import SessionRegistry
from broker.observe.calllog import MetricsWriter
from broker.observe.health import HealthFile
from broker.observe.prometheus import PrometheusMetrics
from broker.observe.recent import RecentStats
from broker.pool.supervisor import PoolFailure, Supervisor, WorkerHandle, worker_environment
from broker.router.codec import FrameCodec
from broker.router.router import FrameRouter
from broker.web.app import create_app
from broker.web.auth import Auth
from broker.web.connection import WsConnection
from exai import __version__
from exai.errors import WorkerLost
from exai.exits import ExitCode
from exai.net import ws_url
from exai.settings import Settings, worker_overrides

__all__ = ["Daemon"]

log = logging.getLogger("broker")

CLOSE_GOING_AWAY = 1001
HEALTH_FILE = "ws_daemon.health.json"
METRICS_FILE = "ws_daemon.metrics.jsonl"


class Daemon:
    """One instance per process. `run` returns the process exit code."""

    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self.environ = dict(environ)
        self.started_at = time.time()
        self.draining = False
        self.ready = False
        self.connections: set[WsConnection] = set()
        self.auth = Auth(settings.token)
        self.log_dir = Path(settings.log_dir)
        self._stop = asyncio.Event()
        self._fatal: str | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._health_task: asyncio.Task[None] | None = None

    # --- assembly --------------------------------------------------------------------

    def _build(self) -> None:
        settings = self.settings
        self.loop = asyncio.get_running_loop()
        self.metrics = MetricsWriter(
            self.log_dir / METRICS_FILE,
            max_bytes=settings.metrics_max_bytes,
            backups=settings.metrics_backups,
            queue_max=settings.metrics_queue_max,
        )
        self.scheduler = Scheduler(
            session_cap=settings.session_max_inflight,
            global_cap=settings.global_max_inflight,
            provider_caps=settings.provider_caps,
            queue_max_depth=settings.queue_max_depth,
        )
        overrides = worker_overrides(settings)
        self.supervisor = Supervisor(
            # A Ray pool is one bridge process that spreads calls over its own actors.
            size=settings.workers if settings.pool == "local" else 1,
            env=worker_environment(self.environ, overrides),
            on_ready=self._worker_ready,
            on_message=lambda w, m: self.calls.handle_worker_message(w, m),
            on_lost=lambda w, ids, why: self.calls.handle_worker_lost(w, ids, why),
            on_fatal=self._pool_failed,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
            max_calls_per_worker=settings.max_calls_per_worker,
        )
        self.codec = FrameCodec()
        self.prometheus = PrometheusMetrics(self.snapshot)
        self.recent = RecentStats()
        self.calls = CallManager(
            settings, self.scheduler, self.supervisor, self.codec, self._record
        )
        self.sessions = SessionRegistry(settings.resume_grace_s, settings.send_buffer_bytes)
        self.router = FrameRouter(
            settings, self.codec, self.calls, self.sessions, self.auth, self.snapshot
        )
        self.health = HealthFile(
            self.log_dir / HEALTH_FILE, self.snapshot, settings.health_interval_s
        )

    def _record(self, record: CallRecord) -> None:
        self.metrics.record(record)
        self.recent.add(record.t, record.latency_ms, record.outcome == "ok")
        # Unknown tool names are the client's words: one label for all of them, or any
        # client could grow the metrics without bound.
        tool = "(unknown)" if record.outcome == "TOOL_NOT_FOUND" else record.tool
        self.prometheus.observe(
            tool, record.provider, record.outcome, record.latency_ms, record.queue_ms
        )

    def _worker_ready(self, worker: WorkerHandle) -> None:
        if worker.ready is not None and not self.calls.catalog.tools:
            self.calls.catalog = Catalog.from_ready(worker.ready)
        self.calls.handle_worker_ready(worker)

    def _pool_failed(self, message: str) -> None:
        self._fatal = message
        self._stop.set()

    # --- running ---------------------------------------------------------------------

    async def run(self) -> int:
        t0 = time.perf_counter()
        self._build()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            sock = bind_socket(self.settings.host, self.settings.port)
        except OSError as exc:
            log.error(
                "cannot listen on %s: %s (is another daemon running?)", self.settings.url, exc
            )
            return ExitCode.BIND_FAILED
        self.port = sock.getsockname()[1]
        log.info("Starting WS daemon on %s", self._public_url())
        self._metrics_task = asyncio.get_running_loop().create_task(self.metrics.run())
        try:
            await self.supervisor.start()
        except PoolFailure as exc:
            log.error("worker pool failed to start: %s", exc)
            await self.supervisor.stop(0.5)
            await self._close_files()
            sock.close()
            return ExitCode.POOL_FAILED
        self.runner = web.AppRunner(create_app(self), handle_signals=False, access_log=None)
        await self.runner.setup()
        site = web.SockSite(self.runner, sock)
        await site.start()
        self.ready = True
        self._health_task = asyncio.get_running_loop().create_task(self.health.run())
        self._spawn(self._reap_sessions())
        self._install_signals()
        elapsed_ms = (time.perf_counter() - t0) * 1000
        log.info(
            "ready in %.0f ms: %d workers, %d tools, listening on %s",
            elapsed_ms,
            self.settings.workers,
            len(self.calls.catalog.tools),
            self._public_url(),
        )
        await self._stop.wait()
        await self.shutdown(site)
        return ExitCode.POOL_FAILED if self._fatal else ExitCode.OK

    def _public_url(self) -> str:
        return ws_url(self.settings.host, self.port)

    def _spawn(self, coro: Any) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro))

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("shutdown requested")
            self._stop.set()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for name in ("SIGINT", "SIGTERM"):
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            try:
                loop.add_signal_handler(sig, self.request_stop)
            except (NotImplementedError, RuntimeError):
                # Windows: no loop signal handlers; Ctrl+C arrives through signal.signal.
                signal.signal(sig, lambda *_: loop.call_soon_threadsafe(self.request_stop))

    async def shutdown(self, site: web.BaseSite) -> None:
        """Stop accepting, let calls finish within the grace, then close everything."""
        self.draining = True
        self.calls.shutting_down = True
        # Keep listening while calls drain: probes get 503 and new calls SHUTTING_DOWN
        # (instead of "connection refused"), and no second daemon can take the port yet.
        if not self._fatal:
            await self.calls.wait_idle(self.settings.shutdown_grace_s)
        await site.stop()
        for call in list(self.calls.calls.values()):
            if not call.done:
                self.calls.fail(
                    call,
                    WorkerLost(
                        f"the daemon shut down (for a restart or stop) while {call.tool!r} was "
                        "running; it may have partly run",
                        cause="daemon_shutdown",
                    ),
                )
        for conn in list(self.connections):
            conn.close(CLOSE_GOING_AWAY, "daemon shutting down")
        senders = [c.sender for c in list(self.connections)]
        if senders:
            await asyncio.wait(senders, timeout=2.0)
        await self.supervisor.stop(grace_s=1.0)
        await self.runner.cleanup()
        await self._close_files()
        log.info("stopped")

    async def _close_files(self) -> None:
        await self.metrics.close()
        try:
            await asyncio.wait_for(self._metrics_task, 10.0)
        except TimeoutError:
            log.error("metrics writer did not finish flushing")
        for task in self._tasks:
            task.cancel()
        if hasattr(self, "health"):
            await self.health.close(self._health_task)

    async def _reap_sessions(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for session in self.sessions.expired(time.monotonic()):
                log.info(
                    "session %s ended (no reconnect within %g s)",
                    session.id[:8],
                    self.settings.resume_grace_s,
                )
                self.calls.end_session(session)
                self.sessions.forget(session)

    def connection_closed(self, conn: WsConnection, ended: bool) -> None:
        self.connections.discard(conn)
        session = conn.session
        if session is None or session.owner is not conn:
            return
        resumable = conn.dialect == "op" and self.settings.resume_grace_s > 0
        if resumable and not ended and not self.draining:
            session.detach(time.monotonic())
            log.info(
                "session %s disconnected; kept %g s for a reconnect",
                session.id[:8],
                self.settings.resume_grace_s,
            )
        else:
            self.calls.end_session(session)
            self.sessions.forget(session)
            log.info("session %s closed", session.id[:8])

    # --- health ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        settings = self.settings
        scheduler = self.scheduler
        return {
            "t": time.time(),
            "pid": os.getpid(),
            "version": __version__,
            "python": sys.version.split()[0],
            "host": settings.host,
            "port": getattr(self, "port", settings.port),
            "ready": self.ready,
            "draining": self.draining,
            "uptime_s": round(time.time() - self.started_at, 1),
            "sessions": self.sessions.attached_count,
            "sessions_detached": len(self.sessions.sessions) - self.sessions.attached_count,
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
                for w in self.supervisor.workers
            ],
            "tools": len(self.calls.catalog.tools),
            "calls_total": self.calls.calls_total,
            "errors_by_code": dict(self.calls.errors_by_code),
            "bad_frames": self.router.stats.bad_frames,
            "metrics_dropped": self.metrics.dropped,
            "metrics_written": self.metrics.written,
            "recent": self.recent.series(time.time()),
        }


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind and listen before the workers start: the port is the single-daemon lock."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        if sys.platform == "win32":
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_EXCLUSIVEADDRUSE", 0), 1)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
