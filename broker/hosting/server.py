"""One configured stdio server and its instances: shared by everyone, or one a session.

- shared: `instances` instances for the whole daemon (one by default), started with
  it; each request goes to the least busy one. Each is restarted with backoff when it
  dies (its requests in flight are failed by whoever routed them); after
  `MAX_QUICK_FAILURES` deaths in a row without a stable run the server is marked
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

from broker.hosting.bridged import Launcher
from broker.hosting.instance import ClientHello, HandshakeError, HostedInstance, ServerIdentity
from broker.hosting.instances import Instance
from broker.hosting.remote import RemoteInstance
from exai.relay import RelayEvent
from exai.settings import Isolation

__all__ = ["HostedServer", "Isolation", "NoInstance", "ServerState"]

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


EventSink = Callable[[Instance, RelayEvent], None]


class NoInstance(RuntimeError):
    """No instance can serve the request; `capacity` when a cap is what refused it."""

    def __init__(self, message: str, *, capacity: bool = False) -> None:
        super().__init__(message)
        self.capacity = capacity


class HostedServer:
    """Instances of one server command, placed by isolation."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        on_event: EventSink,
        on_exit: Callable[[Instance], None],
        on_start: Callable[[Instance | None], None] | None = None,
        client_of: Callable[[str], ClientHello | None] | None = None,
        instances: int = 1,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        isolation: Isolation = Isolation.SHARED,
        idle_timeout_s: float = 600.0,
        max_instances: int = 16,
        max_line_bytes: int = 33_554_432,
        url: str | None = None,
        headers: Mapping[str, str] | None = None,
        launcher: Launcher | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.launcher = launcher
        # A remote Streamable HTTP server instead of a command: the daemon is its client.
        self.url = url
        self.headers = dict(headers or {})
        self.env = env
        self.cwd = cwd
        self.isolation = isolation
        self.idle_timeout_s = idle_timeout_s
        self.max_instances = max_instances
        self.shared_instances = max(1, instances)
        self.state = ServerState.STARTING
        self.identity: ServerIdentity | None = None
        self.failure: str | None = None
        self.restarts = 0
        self._on_event = on_event
        self._on_exit = on_exit
        self._on_start = on_start
        self._client_of = client_of
        self._max_line_bytes = max_line_bytes
        self._shared: list[Instance | None] = [None] * self.shared_instances
        # Why a session's instance could not be opened, told on its next request.
        self._open_failures: dict[str, str] = {}
        self._sessions: dict[str, Instance] = {}
        self._last_used: dict[str, float] = {}
        self._opening: dict[str, asyncio.Future[Instance]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._quick_failures = 0
        self._backoff_s = BACKOFF_START_S

    # --- start and stop --------------------------------------------------------------

    async def start(self) -> ServerIdentity:
        """Start the first instance (the shared one, or a probe for session isolation)
        and learn the server's identity from it."""
        if self.isolation is Isolation.SHARED:
            opened = await asyncio.gather(
                *(self._open() for _ in range(self.shared_instances)), return_exceptions=True
            )
            failed = [o for o in opened if isinstance(o, BaseException)]
            started = [o for o in opened if isinstance(o, Instance)]
            if failed:
                await asyncio.gather(*(i.stop() for i in started), return_exceptions=True)
                raise failed[0]
            self.identity = started[0].identity
            for slot, instance in enumerate(started):
                self._adopt_shared(slot, instance)
        else:
            probe = await self._open()
            self.identity = probe.identity
            await probe.stop()
            self._spawn(self._reap_idle())
        self.state = ServerState.READY
        assert self.identity is not None
        return self.identity

    async def stop(self) -> None:
        self._stopping = True
        self.state = ServerState.STOPPED
        for task in list(self._tasks):
            task.cancel()
        instances = self.instances()
        self._shared = [None] * self.shared_instances
        self._sessions.clear()
        await asyncio.gather(*(i.stop() for i in instances), return_exceptions=True)

    # --- placement -------------------------------------------------------------------

    def instance_now(self, session_id: str) -> Instance | None:
        """The instance that serves `session_id` if it is running now."""
        if self.isolation is Isolation.SHARED:
            best: Instance | None = None
            for shared in self._shared:
                if (
                    shared is not None
                    and shared.alive
                    and (best is None or shared.load < best.load)
                ):
                    best = shared
            return best
        instance = self._sessions.get(session_id)
        if instance is not None and instance.alive:
            self._last_used[session_id] = time.monotonic()
            return instance
        return None

    def place(self, session_id: str) -> Instance | None:
        """The instance for `session_id` now, or None while one is being (re)started
        for it: `on_start` says when. Raises NoInstance when there will be none."""
        now = self.instance_now(session_id)
        if now is not None:
            return now
        if self.state is ServerState.FAILED:
            raise NoInstance(f"server {self.name!r} failed: {self.failure}")
        if self.state is ServerState.STOPPED:
            raise NoInstance(f"server {self.name!r} is stopped")
        if self.isolation is Isolation.SHARED:
            return None  # restarting: the request waits for it
        failure = self._open_failures.pop(session_id, None)
        if failure is not None:
            raise NoInstance(failure)
        if session_id not in self._opening:
            if len(self._sessions) + len(self._opening) >= self.max_instances:
                raise NoInstance(
                    f"server {self.name!r} already runs {self.max_instances} session "
                    "instances (EXAI_SESSION_INSTANCES_MAX)",
                    capacity=True,
                )
            opening = asyncio.get_running_loop().create_future()
            self._opening[session_id] = opening
            self._spawn(self._open_for(session_id, opening))
        return None

    async def instance_for(self, session_id: str) -> Instance:
        """The instance for `session_id`, started if session isolation needs one.
        Raises NoInstance with a reason the client can read when there is none."""
        now = self.place(session_id)
        if now is not None:
            return now
        opening = self._opening.get(session_id)
        if opening is None:
            raise NoInstance(f"server {self.name!r} is restarting; retry shortly")
        return await asyncio.shield(opening)

    def instances(self) -> list[Instance]:
        found = [i for i in self._shared if i is not None]
        return [*found, *self._sessions.values()]

    def owner_of(self, instance: Instance) -> str | None:
        """The session an instance belongs to (session isolation), else None."""
        for session_id, candidate in self._sessions.items():
            if candidate is instance:
                return session_id
        return None

    def end_session(self, session_id: str) -> None:
        instance = self._sessions.pop(session_id, None)
        self._last_used.pop(session_id, None)
        self._open_failures.pop(session_id, None)
        if instance is not None:
            self._spawn(instance.stop())

    # --- internals -------------------------------------------------------------------

    async def _open(self, session_id: str | None = None) -> Instance:
        client = None
        if session_id is not None and self._client_of is not None:
            client = self._client_of(session_id)
        instance: Instance
        if self.url is not None:
            instance = RemoteInstance(
                self.name,
                self.url,
                headers=self.headers,
                on_event=self._on_event,
                max_line_bytes=self._max_line_bytes,
                client=client,
            )
            await instance.start(START_TIMEOUT_S)
            return instance
        instance = HostedInstance(
            self.name,
            self.argv,
            env=self.env,
            cwd=self.cwd,
            on_event=self._on_event,
            max_line_bytes=self._max_line_bytes,
            client=client,
            launcher=self.launcher,
        )
        await instance.start(START_TIMEOUT_S)
        return instance

    async def _open_for(self, session_id: str, opening: asyncio.Future[Instance]) -> None:
        try:
            instance = await self._open(session_id)
        except HandshakeError as exc:
            self._open_failures[session_id] = str(exc)
            opening.set_exception(NoInstance(str(exc)))
            opening.exception()  # retrieved: the session may have gone meanwhile
            self._started(None)
            return
        finally:
            self._opening.pop(session_id, None)
        if self._stopping:
            await instance.stop()
            return
        self._sessions[session_id] = instance
        self._last_used[session_id] = time.monotonic()
        instance.exited.add_done_callback(lambda _: self._session_exited(session_id, instance))
        opening.set_result(instance)
        self._started(instance)

    def _session_exited(self, session_id: str, instance: Instance) -> None:
        if self._sessions.get(session_id) is instance:
            del self._sessions[session_id]
        self._on_exit(instance)

    def _started(self, instance: Instance | None) -> None:
        """Tell the owner an instance is up (or failed to come up): held requests go."""
        if self._on_start is not None:
            self._on_start(instance)

    def _adopt_shared(self, slot: int, instance: Instance) -> None:
        self._shared[slot] = instance
        started = time.monotonic()
        instance.exited.add_done_callback(lambda _: self._shared_exited(slot, instance, started))
        self._started(instance)

    def _shared_exited(self, slot: int, instance: Instance, started: float) -> None:
        if self._shared[slot] is instance:
            self._shared[slot] = None
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
        if not any(i is not None and i.alive for i in self._shared):
            self.state = ServerState.RESTARTING
        self._spawn(self._restart(slot, self._backoff_s))
        self._backoff_s = min(BACKOFF_MAX_S, self._backoff_s * 2)

    async def _restart(self, slot: int, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        try:
            instance = await self._open()
        except HandshakeError as exc:
            self._quick_failures += 1
            if self._quick_failures >= MAX_QUICK_FAILURES:
                self._mark_failed(str(exc))
                return
            self._spawn(self._restart(slot, self._backoff_s))
            self._backoff_s = min(BACKOFF_MAX_S, self._backoff_s * 2)
            return
        if self._stopping:
            await instance.stop()
            return
        self.restarts += 1
        self.state = ServerState.READY
        self._adopt_shared(slot, instance)
        log.info("server %s restarted pid=%s", self.name, instance.pid)

    def fail(self, why: str) -> None:
        """Mark the server failed (it could not be started): what waits for it fails."""
        self._mark_failed(why)

    def _mark_failed(self, why: str) -> None:
        self.state = ServerState.FAILED
        self.failure = why
        log.error("server %s failed: %s", self.name, why)
        self._started(None)  # what waited for a restart fails now

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
