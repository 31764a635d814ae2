"""The daemon: builds every part from the settings, then runs them from start-up to a
graceful shutdown.

The parts start in the one order `Daemon.parts` declares and stop in reverse
(`Lifecycle`); a part that fails to start stops the ones started before it. The
bound socket comes first of all, outside the parts: the port is the single-daemon
lock, so a daemon that cannot have it starts nothing and writes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from broker.calls.catalog import Catalog
from broker.calls.manager import CallManager, CallRecord, PendingCall
from broker.calls.scheduler import Scheduler, server_lane
from broker.calls.session import SessionRegistry
from broker.fleet.config import ConfigError, ServersConfig, ServerSpec
from broker.fleet.fleet import Fleet
from broker.fleet.listings import LISTINGS_FILE, Listings
from broker.fleet.source import servers_file
from broker.fleet.watch import watch_servers
from broker.hosting.bridged import Launcher, ProcessBridge
from broker.hosting.command import (
    HostedCommand,
    command_argv_of,
    hosted_command,
    server_environment,
)
from broker.hosting.hub import Hosting
from broker.hosting.instance import ClientHello, HandshakeError
from broker.lifecycle import Lifecycle, Part
from broker.observe.by_server import ServerLatencies
from broker.observe.calllog import MetricsWriter
from broker.observe.files import HEALTH_FILE, METRICS_FILE
from broker.observe.health import HealthFile
from broker.observe.prometheus import PrometheusMetrics
from broker.observe.recent import RecentStats
from broker.observe.snapshot import take_snapshot
from broker.pool.supervisor import PoolFailure, Supervisor, WorkerHandle, worker_environment
from broker.router.codec import Dialect, FrameCodec
from broker.router.router import SERVER_INFO, ClientPeer, FrameRouter
from broker.web.app import create_app
from broker.web.auth import Auth
from broker.web.clients import Clients
from broker.web.listener import bind_socket
from exai.errors import DAEMON_SHUTDOWN_CAUSE, BrokerError, WorkerLost
from exai.exits import ExitCode
from exai.memory import trim
from exai.net import ws_url
from exai.settings import Isolation, PoolKind, Settings, worker_overrides

__all__ = ["Daemon", "serve"]

# What a server's cap becomes when an edit of the servers file removes its maxInflight.
UNCAPPED = 1 << 30

log = logging.getLogger("broker")

CLOSE_GOING_AWAY = 1001
# How long closed clients get to receive what was queued for them, and the close.
CLIENT_CLOSE_TIMEOUT_S = 2.0
WORKER_STOP_GRACE_S = 1.0
# Workers of a pool that never became ready have no calls to finish.
FAILED_POOL_STOP_GRACE_S = 0.5
METRICS_FLUSH_TIMEOUT_S = 10.0
REAP_INTERVAL_S = 1.0
# At most this often, when no call is in flight, free heap pages go back to the system.
TRIM_INTERVAL_S = 10.0


def _cut_by_shutdown(call: PendingCall) -> BrokerError:
    return WorkerLost(
        f"the daemon shut down (for a restart or stop) while {call.tool!r} was running; "
        "it may have partly run",
        cause=DAEMON_SHUTDOWN_CAUSE,
    )


class ServerStartFailure(RuntimeError):
    """The hosted server did not start: the daemon does not serve without it."""


async def serve(settings: Settings, environ: Mapping[str, str]) -> int:
    """Run one daemon from start-up to shutdown; returns the process exit code."""
    try:
        servers = servers_file(settings, environ)
    except ConfigError as exc:
        log.error("%s", exc)
        return ExitCode.USAGE
    try:
        sock = bind_socket(settings.host, settings.port)
    except OSError as exc:
        log.error("cannot listen on %s: %s (is another daemon running?)", settings.url, exc)
        return ExitCode.BIND_FAILED
    with sock:
        return await Daemon(settings, environ, sock, servers).run()


class Daemon:
    """One daemon around its bound socket; `run` returns the process exit code."""

    def __init__(
        self,
        settings: Settings,
        environ: Mapping[str, str],
        sock: socket.socket,
        servers: tuple[Path, ServersConfig] | None = None,
    ) -> None:
        """Build every part, whole; nothing starts yet. Call inside the running loop.
        `servers` is the servers file (its path and contents), when there is one."""
        self.settings = settings
        self.port: int = sock.getsockname()[1]
        self.url = ws_url(settings.host, self.port)
        self.started_at = time.time()
        # Set by the last part to start; `draining` from the first moment of shutdown.
        self.ready = False
        self.draining = False
        self._sock = sock
        self._stop = asyncio.Event()
        self._fatal: str | None = None
        self._trimmed_at = 0.0
        log_dir = Path(settings.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.auth = Auth(settings.token)
        self.servers_path = servers[0] if servers is not None else None
        hosted = (
            None if servers is not None else hosted_command(settings.server_cmd, settings.server)
        )
        self._environ = environ
        self.metrics = MetricsWriter(
            log_dir / METRICS_FILE,
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
        self.supervisor = Supervisor(
            # A Ray pool is one bridge process that spreads calls over its own actors. A
            # hosted stdio server is the daemon's own, which owns its pipes: no worker is
            # on a call's path, and the pool has nothing to run.
            size=0 if hosted else settings.workers if settings.pool == "local" else 1,
            env=worker_environment(environ, worker_overrides(settings)),
            on_ready=self._worker_ready,
            on_message=self._worker_message,
            on_lost=self._worker_lost,
            on_fatal=self._pool_failed,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
            max_calls_per_worker=settings.max_calls_per_worker,
        )
        # With a Ray pool, the servers of a servers file run as actors too (the daemon
        # stays their client); without one, the daemon runs them itself.
        self.processes: ProcessBridge | None = None
        if not hosted and settings.pool_kind is PoolKind.RAY:
            self.processes = ProcessBridge(lambda: self.supervisor.workers)
        self.codec = FrameCodec()
        self.recent = RecentStats()
        self.by_server = ServerLatencies()
        self.calls = CallManager(
            settings, self.scheduler, self.supervisor, self.codec, self._record
        )
        self.sessions = SessionRegistry(settings.resume_grace_s, settings.send_buffer_bytes)
        self.hosting: Hosting | Fleet | None = None
        if servers is not None:
            self.hosting = self._fleet(servers[1], log_dir)
            self.calls.forwarder = self.hosting
        elif hosted is not None:
            hosting = self._hosting(settings, hosted, environ)
            self._connect_hosting(hosting)
            self._catalog_from(hosting)
            self.calls.forwarder = self.hosting = hosting
        self.router = FrameRouter(
            settings, self.codec, self.calls, self.sessions, self.auth, self.snapshot, self.hosting
        )
        self.prometheus = PrometheusMetrics(self.snapshot)
        self.health = HealthFile(log_dir / HEALTH_FILE, self.snapshot, settings.health_interval_s)
        self.clients = Clients(settings.max_connections)
        self.runner = web.AppRunner(
            create_app(settings, self.auth, self), handle_signals=False, access_log=None
        )

    def parts(self) -> tuple[Part, ...]:
        """The daemon's parts in start order; they stop in reverse.

        Read from the bottom up, this is the shutdown: stop accepting (new calls get
        SHUTTING_DOWN, probes 503) and let running calls finish within the grace while
        still listening, so no second daemon can take the port yet; stop listening;
        fail the calls still running, so their clients get that answer before the
        close; close every client with 1001; stop the workers; stop the web app; flush
        the metrics; stop ending expired sessions; write the final health snapshot,
        which then counts everything; and only then give the signals back, so a second
        Ctrl+C during the drain changes nothing.
        """
        return (
            Part("signals", self._signals),
            Part("health file", self._health_file),
            Part("sessions", self._sessions),
            Part("metrics writer", self._metrics_writer),
            Part("web app", self._web_app),
            Part("worker pool", self._worker_pool),
            Part("hosted server", self._hosted_server),
            Part("clients", self._clients),
            Part("calls", self._calls),
            Part("listener", self._listener),
            Part("accepting", self._accepting),
        )

    # --- running ---------------------------------------------------------------------

    async def run(self) -> int:
        """Start every part, serve until told to stop, stop every part."""
        t0 = time.perf_counter()
        log.info("Starting WS daemon on %s", self.url)
        try:
            async with Lifecycle(self.parts(), stop=self._stop) as lifecycle:
                if lifecycle.complete:
                    log.info(
                        "ready in %.0f ms: %d workers, %d tools, listening on %s",
                        (time.perf_counter() - t0) * 1000,
                        self.settings.workers,
                        len(self.calls.catalog.tools),
                        self.url,
                    )
                await self._stop.wait()
        except PoolFailure:
            return ExitCode.POOL_FAILED
        except ServerStartFailure:
            return ExitCode.WORKER_LOAD_FAILED
        log.info("stopped")
        return ExitCode.POOL_FAILED if self._fatal else ExitCode.OK

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("shutdown requested")
            self._stop.set()

    # --- the parts, in start order ---------------------------------------------------

    @contextlib.asynccontextmanager
    async def _signals(self) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        undo: list[Callable[[], object]] = []
        for name in ("SIGINT", "SIGTERM"):
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            try:
                loop.add_signal_handler(sig, self.request_stop)
                undo.append(functools.partial(loop.remove_signal_handler, sig))
            except (NotImplementedError, RuntimeError):
                # Windows: no loop signal handlers; Ctrl+C arrives through signal.signal.
                previous = signal.signal(
                    sig, lambda *_: loop.call_soon_threadsafe(self.request_stop)
                )
                undo.append(functools.partial(signal.signal, sig, previous or signal.SIG_DFL))
        try:
            yield
        finally:
            for step in reversed(undo):
                step()

    @contextlib.asynccontextmanager
    async def _health_file(self) -> AsyncIterator[None]:
        writer = asyncio.get_running_loop().create_task(self.health.run())
        try:
            yield
        finally:
            await self.health.close(writer)

    @contextlib.asynccontextmanager
    async def _sessions(self) -> AsyncIterator[None]:
        reaper = asyncio.get_running_loop().create_task(self._reap_sessions())
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper

    @contextlib.asynccontextmanager
    async def _metrics_writer(self) -> AsyncIterator[None]:
        writer = asyncio.get_running_loop().create_task(self.metrics.run())
        try:
            yield
        finally:
            await self.metrics.close()
            try:
                await asyncio.wait_for(writer, METRICS_FLUSH_TIMEOUT_S)
            except TimeoutError:
                log.error("metrics writer did not finish flushing")

    @contextlib.asynccontextmanager
    async def _web_app(self) -> AsyncIterator[None]:
        await self.runner.setup()
        try:
            yield
        finally:
            await self.runner.cleanup()

    @contextlib.asynccontextmanager
    async def _worker_pool(self) -> AsyncIterator[None]:
        if not self.supervisor.workers:
            yield
            return
        try:
            await self.supervisor.start()
        except PoolFailure as exc:
            log.error("worker pool failed to start: %s", exc)
            await self.supervisor.stop(FAILED_POOL_STOP_GRACE_S)
            raise
        try:
            yield
        finally:
            await self.supervisor.stop(grace_s=WORKER_STOP_GRACE_S)

    @contextlib.asynccontextmanager
    async def _hosted_server(self) -> AsyncIterator[None]:
        hosting = self.hosting
        if hosting is None:
            yield
            return
        if isinstance(hosting, Fleet):
            await hosting.start()
            assert self.servers_path is not None
            watcher = asyncio.get_running_loop().create_task(
                watch_servers(self.servers_path, hosting, self._environ)
            )
            try:
                yield
            finally:
                watcher.cancel()
                await hosting.stop()
            return
        try:
            await hosting.start()
        except HandshakeError as exc:
            log.error("hosted server failed to start: %s", exc)
            await hosting.stop()
            raise ServerStartFailure(str(exc)) from None
        try:
            yield
        finally:
            await hosting.stop()

    @contextlib.asynccontextmanager
    async def _clients(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.clients.close_all(
                CLOSE_GOING_AWAY, "daemon shutting down", CLIENT_CLOSE_TIMEOUT_S
            )

    @contextlib.asynccontextmanager
    async def _calls(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            self.calls.close(list(self.sessions.sessions.values()), _cut_by_shutdown)

    @contextlib.asynccontextmanager
    async def _listener(self) -> AsyncIterator[None]:
        site = web.SockSite(self.runner, self._sock)
        await site.start()
        try:
            yield
        finally:
            await site.stop()

    @contextlib.asynccontextmanager
    async def _accepting(self) -> AsyncIterator[None]:
        self.ready = True
        try:
            yield
        finally:
            self.draining = True
            self.calls.shutting_down = True
            # A pool that failed for good has nothing left to drain.
            if not self._fatal:
                await self.calls.wait_idle(self.settings.shutdown_grace_s)

    # --- the hosted server -----------------------------------------------------------

    def _hosting(
        self, settings: Settings, hosted: HostedCommand, environ: Mapping[str, str]
    ) -> Hosting:
        return self._new_hosting(
            hosted.label,
            hosted.argv,
            env=server_environment(environ),
            isolation=settings.isolation,
            # Under `--workers N` the shared server runs N instances, as it did when each
            # worker hosted one: the least busy takes each request.
            instances=settings.workers,
        )

    def _connect_hosting(self, hosting: Hosting) -> None:
        calls = self.calls
        hosting.on_reply = calls.handle_reply
        hosting.on_progress = calls.handle_hosted_progress
        hosting.on_lost = calls.handle_hosted_lost
        hosting.on_ready = calls.retry_held
        hosting.on_input_required = calls.input_required

    def _catalog_from(self, hosting: Hosting) -> None:
        """The one hosted server's tools are the daemon's tools."""
        calls = self.calls
        model_tools = frozenset(self.settings.model_tools)
        hosting.on_tools = lambda tools: setattr(
            calls, "catalog", Catalog.from_tools(tools, hosting.name, model_tools)
        )

    def _fleet(self, config: ServersConfig, log_dir: Path) -> Fleet:
        return Fleet(
            config,
            make_hosting=self._member_hosting,
            builtins=lambda: self.calls.catalog,
            sessions=lambda: list(self.sessions.sessions.values()),
            own_info=SERVER_INFO,
            listings=Listings(log_dir / LISTINGS_FILE),
        )

    def _new_hosting(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str],
        isolation: Isolation,
        instances: int,
        cwd: str | None = None,
        url: str | None = None,
        headers: dict[str, str] | None = None,
        launcher: Launcher | None = None,
    ) -> Hosting:
        """A Hosting with the daemon's own limits and callbacks."""
        settings = self.settings
        return Hosting(
            name,
            argv,
            env=env,
            cwd=cwd,
            url=url,
            headers=headers,
            isolation=isolation,
            instances=instances,
            idle_timeout_s=settings.session_idle_timeout_s,
            max_instances=settings.session_instances_max,
            max_line_bytes=settings.max_frame_bytes,
            session=self.sessions.sessions.get,
            all_sessions=lambda: list(self.sessions.sessions.values()),
            session_of_call=self._session_of_call,
            own_info=SERVER_INFO,
            client_of=self._client_of,
            launcher=launcher,
        )

    def _member_hosting(self, spec: ServerSpec) -> Hosting:
        """The hosting of one server of the servers file, wired to the call manager."""
        lane = server_lane(spec.name)
        if spec.max_inflight is not None:
            self.scheduler.set_cap(lane, spec.max_inflight)
        elif lane in self.scheduler.provider_caps:
            # The edit lifted the cap; calls in flight still give their slot back to it.
            self.scheduler.set_cap(lane, UNCAPPED)
        env = server_environment(self._environ)
        env.update(spec.env)
        hosting = self._new_hosting(
            spec.name,
            command_argv_of(spec) if spec.command else [],
            env=env,
            cwd=spec.cwd,
            url=spec.url,
            headers=dict(spec.headers),
            isolation=spec.isolation,
            instances=spec.instances,
            launcher=self.processes.launch if self.processes and spec.command else None,
        )
        self._connect_hosting(hosting)
        return hosting

    def _client_of(self, session_id: str) -> ClientHello | None:
        session = self.sessions.sessions.get(session_id)
        return session.client if session is not None else None

    def _session_of_call(self, call_id: int) -> str | None:
        call = self.calls.calls.get(call_id)
        return call.session.id if call is not None else None

    # --- callbacks -------------------------------------------------------------------

    def _record(self, record: CallRecord) -> None:
        self.metrics.record(record)
        self.recent.add(record.t, record.latency_ms, record.outcome == "ok")
        if record.server is not None:
            self.by_server.add(record.server, record.t, record.latency_ms, record.outcome == "ok")
        # Unknown tool names are the client's words: one label for all of them, or any
        # client could grow the metrics without bound.
        tool = "(unknown)" if record.outcome == "TOOL_NOT_FOUND" else record.tool
        self.prometheus.observe(
            tool,
            record.provider,
            record.outcome,
            record.latency_ms,
            record.queue_ms,
            record.server,
        )

    def _worker_message(self, worker: WorkerHandle, message: Any) -> None:
        processes = self.processes
        if processes is None or not processes.handle_message(worker, message):
            self.calls.handle_worker_message(worker, message)

    def _worker_lost(self, worker: WorkerHandle, call_ids: set[int], reason: str) -> None:
        self.calls.handle_worker_lost(worker, call_ids, reason)
        if self.processes is not None:
            self.processes.worker_lost(worker)

    def _worker_ready(self, worker: WorkerHandle) -> None:
        if worker.ready is not None and not self.calls.catalog.tools:
            self.calls.catalog = Catalog.from_ready(worker.ready)
        self.calls.handle_worker_ready(worker)

    def _pool_failed(self, message: str) -> None:
        self._fatal = message
        self._stop.set()

    async def _reap_sessions(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            for session in self.sessions.expired(time.monotonic()):
                log.info(
                    "session %s ended (no reconnect within %g s)",
                    session.id[:8],
                    self.settings.resume_grace_s,
                )
                self.calls.end_session(session)
                self.sessions.forget(session)
            self._end_sessions_over_budget()
            now = time.monotonic()
            if not self.calls.inflight() and now - self._trimmed_at > TRIM_INTERVAL_S:
                # Idle: give back what the last burst's buffers left in the heap.
                self._trimmed_at = now
                trim()

    def _end_sessions_over_budget(self) -> None:
        """Detached sessions past EXAI_WS_DETACHED_MAX_BYTES / _SESSIONS end early,
        oldest first: clients that come and go cannot grow the daemon without bound."""
        settings = self.settings
        for session in self.sessions.over_budget(
            settings.detached_max_bytes, settings.detached_max_sessions
        ):
            log.warning(
                "session %s ended before its resume grace: the disconnected sessions hold "
                "more than EXAI_WS_DETACHED_MAX_BYTES (%d) or number more than "
                "EXAI_WS_DETACHED_MAX_SESSIONS (%d)",
                session.id[:8],
                settings.detached_max_bytes,
                settings.detached_max_sessions,
            )
            self.calls.end_session(session)
            self.sessions.forget(session)

    def connection_closed(self, conn: ClientPeer, ended: bool, quiet: bool = False) -> None:
        """A client connection is gone: keep its session for a reconnect, or end it
        (`quiet`: one that lasted a single exchange, logged at debug)."""
        session = conn.session
        if session is None or session.owner is not conn:
            return
        resumable = conn.dialect == Dialect.OP and self.settings.resume_grace_s > 0
        if resumable and not ended and not self.draining:
            session.detach(time.monotonic())
            log.info(
                "session %s disconnected; kept %g s for a reconnect",
                session.id[:8],
                self.settings.resume_grace_s,
            )
            self._end_sessions_over_budget()
        else:
            self.calls.end_session(session)
            self.sessions.forget(session)
            log.log(logging.DEBUG if quiet else logging.INFO, "session %s closed", session.id[:8])

    def round_owner(self, state: str) -> str | None:
        """The session a 2026-07-28 round was given to (sessionless HTTP retries)."""
        return self.calls.round_owner(state)

    def render_metrics(self) -> bytes:
        return self.prometheus.render()

    def snapshot(self) -> dict[str, Any]:
        """The daemon's state for the health file, GET /health and the health op."""
        return take_snapshot(self)
