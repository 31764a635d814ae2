"""One configured stdio server and its instances: shared by everyone, or one a session.

- shared: one instance for the whole daemon, started with it and restarted with
  backoff when it dies (its requests in flight are failed by whoever routed them);
  after `MAX_QUICK_FAILURES` deaths in a row without a stable run it is marked
  failed and stays down, with the tail of its stderr, while everything else serves.
- session: an instance per client session, started on that session's first request,
  stopped when the session ends or has been idle `idle_timeout_s`, at most
  `max_instances` at once (a session past the cap gets an error, not a shared one:
  sharing a stateful server is what session isolation is there to prevent).

What the server said at `initialize` (capabilities, serverInfo, instructions) is
learned once, from the first instance started.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from broker.hosting.instance import HandshakeError, HostedInstance, ServerIdentity
from exai.relay import RelayEvent
from exai.settings import Isolation

__all__ = ["HostedServer", "Isolation", "ServerState"]

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
# A run this long counts as stable: the next death starts the backoff afresh.
STABLE_AFTER_S = 30.0
MAX_QUICK_FAILURES = 5


class ServerState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


EventSink = Callable[[HostedInstance, RelayEvent], None]


class HostedServer:
    """Instances of one server command, placed by isolation."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        on_event: EventSink,
        on_exit: Callable[[HostedInstance], None],
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        isolation: Isolation = Isolation.SHARED,
        idle_timeout_s: float = 600.0,
        max_instances: int = 16,
        max_line_bytes: int = 33_554_432,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.cwd = cwd
        self.isolation = isolation
        self.idle_timeout_s = idle_timeout_s
        self.max_instances = max_instances
        self.state = ServerState.STARTING
        self.identity: ServerIdentity | None = None
        self.failure: str | None = None
        self.restarts = 0
        self._on_event = on_event
        self._on_exit = on_exit
        self._max_line_bytes = max_line_bytes
        self._shared: HostedInstance | None = None
        self._sessions: dict[str, HostedInstance] = {}
        self._last_used: dict[str, float] = {}
        self._opening: dict[str, asyncio.Future[HostedInstance]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._quick_failures = 0
        self._backoff_s = BACKOFF_START_S

    # --- start and stop --------------------------------------------------------------

    async def start(self) -> ServerIdentity:
        """Start the first instance (the shared one, or a probe for session isolation)
        and learn the server's identity from it."""
        instance = await self._open()
        self.identity = instance.identity
        if self.isolation is Isolation.SHARED:
            self._adopt_shared(instance)
        else:
            await instance.stop()
            self._spawn(self._reap_idle())
        self.state = ServerState.READY
        assert self.identity is not None
        return self.identity

    async def stop(self) -> None:
        self._stopping = True
        self.state = ServerState.STOPPED
        for task in list(self._tasks):
            task.cancel()
        instances = [i for i in (self._shared, *self._sessions.values()) if i is not None]
        self._shared = None
        self._sessions.clear()
        await asyncio.gather(*(i.stop() for i in instances), return_exceptions=True)

    # --- placement -------------------------------------------------------------------

    def instance_now(self, session_id: str) -> HostedInstance | None:
        """The instance that serves `session_id` if it is running now."""
        if self.isolation is Isolation.SHARED:
            shared = self._shared
            return shared if shared is not None and shared.alive else None
        instance = self._sessions.get(session_id)
        if instance is not None and instance.alive:
            self._last_used[session_id] = time.monotonic()
            return instance
        return None

    async def instance_for(self, session_id: str) -> HostedInstance:
        """The instance for `session_id`, started if session isolation needs one.
        Raises RuntimeError with a reason the client can read when there is none."""
        now = self.instance_now(session_id)
        if now is not None:
            return now
        if self.state is ServerState.FAILED:
            raise RuntimeError(f"server {self.name!r} failed: {self.failure}")
        if self.isolation is Isolation.SHARED:
            raise RuntimeError(f"server {self.name!r} is restarting; retry shortly")
        opening = self._opening.get(session_id)
        if opening is None:
            if len(self._sessions) + len(self._opening) >= self.max_instances:
                raise RuntimeError(
                    f"server {self.name!r} already runs {self.max_instances} session "
                    "instances (EXAI_SESSION_INSTANCES_MAX)"
                )
            opening = asyncio.get_running_loop().create_future()
            self._opening[session_id] = opening
            self._spawn(self._open_for(session_id, opening))
        return await asyncio.shield(opening)

    def instances(self) -> list[HostedInstance]:
        found = [self._shared] if self._shared is not None else []
        return [*found, *self._sessions.values()]

    def owner_of(self, instance: HostedInstance) -> str | None:
        """The session an instance belongs to (session isolation), else None."""
        for session_id, candidate in self._sessions.items():
            if candidate is instance:
                return session_id
        return None

    def end_session(self, session_id: str) -> None:
        instance = self._sessions.pop(session_id, None)
        self._last_used.pop(session_id, None)
        if instance is not None:
            self._spawn(instance.stop())

    # --- internals -------------------------------------------------------------------

    async def _open(self) -> HostedInstance:
        instance = HostedInstance(
            self.name,
            self.argv,
            env=self.env,
            cwd=self.cwd,
            on_event=self._on_event,
            max_line_bytes=self._max_line_bytes,
        )
        await instance.start(START_TIMEOUT_S)
        return instance

    async def _open_for(self, session_id: str, opening: asyncio.Future[HostedInstance]) -> None:
        try:
            instance = await self._open()
        except HandshakeError as exc:
            opening.set_exception(RuntimeError(str(exc)))
            opening.exception()  # retrieved: the session may have gone meanwhile
            return
        finally:
            self._opening.pop(session_id, None)
        self._sessions[session_id] = instance
        self._last_used[session_id] = time.monotonic()
        instance.exited.add_done_callback(lambda _: self._session_exited(session_id, instance))
        opening.set_result(instance)

    def _session_exited(self, session_id: str, instance: HostedInstance) -> None:
        if self._sessions.get(session_id) is instance:
            del self._sessions[session_id]
        self._on_exit(instance)

    def _adopt_shared(self, instance: HostedInstance) -> None:
        self._shared = instance
        started = time.monotonic()
        instance.exited.add_done_callback(lambda _: self._shared_exited(instance, started))

    def _shared_exited(self, instance: HostedInstance, started: float) -> None:
        if self._shared is instance:
            self._shared = None
        self._on_exit(instance)
        if self._stopping:
            return
        code = instance.exited.result()
        if time.monotonic() - started > STABLE_AFTER_S:
            self._quick_failures = 0
            self._backoff_s = BACKOFF_START_S
        self._quick_failures += 1
        log.warning(
            "server %s pid=%s exited with %s%s",
            self.name,
            instance.pid,
            code,
            instance.stderr_hint(),
        )
        if self._quick_failures >= MAX_QUICK_FAILURES:
            self._mark_failed(f"exited {self._quick_failures} times{instance.stderr_hint()}")
            return
        self.state = ServerState.RESTARTING
        self._spawn(self._restart(self._backoff_s))
        self._backoff_s = min(BACKOFF_MAX_S, self._backoff_s * 2)

    async def _restart(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        try:
            instance = await self._open()
        except HandshakeError as exc:
            self._quick_failures += 1
            if self._quick_failures >= MAX_QUICK_FAILURES:
                self._mark_failed(str(exc))
                return
            self._spawn(self._restart(self._backoff_s))
            self._backoff_s = min(BACKOFF_MAX_S, self._backoff_s * 2)
            return
        self.restarts += 1
        self._adopt_shared(instance)
        self.state = ServerState.READY
        log.info("server %s restarted pid=%s", self.name, instance.pid)

    def _mark_failed(self, why: str) -> None:
        self.state = ServerState.FAILED
        self.failure = why
        log.error("server %s failed: %s", self.name, why)

    async def _reap_idle(self) -> None:
        interval_s = max(0.05, min(self.idle_timeout_s / 4, 30.0))
        while True:
            await asyncio.sleep(interval_s)
            cutoff = time.monotonic() - self.idle_timeout_s
            for session_id, used in list(self._last_used.items()):
                instance = self._sessions.get(session_id)
                busy = instance is not None and any(instance.relay.pending())
                if used < cutoff and not busy:
                    log.info("server %s: session %s idle; instance stopped", self.name, session_id)
                    self.end_session(session_id)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        exc = task.exception()
        if exc is not None:
            log.error("hosted server task failed: %r", exc)
