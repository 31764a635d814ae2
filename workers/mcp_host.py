"""Hosting any MCP server in a worker through the SDK's own client.

Two kinds of target, one mechanism (`mcp.Client`):
- an SDK server object (`mcp.server.lowlevel.Server` or `MCPServer`) named by
  `--server module:attr`, driven in-process;
- a stdio MCP server command (`--server-cmd "CMD ARGS"`), started by the worker and
  restarted if it dies.

With `Isolation.SESSION` every client session gets its own instance (started on
first use, closed when the session ends or idles), so stateful servers never leak
state between clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import time
from collections.abc import Callable
from typing import Any

from exai.errors import ErrorCode
from exai.settings import Isolation
from workers.toolserver import HostedError, ToolContext

__all__ = ["ClientToolServer", "HostedError", "command_target", "object_target"]

log = logging.getLogger("workers.mcp_host")

Target = Any


def object_target(obj: Any) -> Callable[[], Target]:
    """A target for an SDK server object, or for a factory function that makes one."""
    from mcp.server.lowlevel import Server
    from mcp.server.mcpserver import MCPServer

    if isinstance(obj, Server | MCPServer):
        return lambda: obj
    if callable(obj):
        return lambda: obj()
    raise TypeError(f"{obj!r} is neither an mcp Server/MCPServer nor a factory of one")


def command_target(command: str, env: dict[str, str] | None = None) -> Callable[[], Target]:
    """A target that starts `command` as a stdio MCP server."""
    from mcp.client.stdio import StdioServerParameters

    argv = shlex.split(command)
    if not argv:
        raise ValueError("--server-cmd is empty")
    return lambda: StdioServerParameters(command=argv[0], args=argv[1:], env=env)


class _Instance:
    """One connected `mcp.Client`, owned by a task that entered its context."""

    def __init__(self, target: Target) -> None:
        self._target = target
        self.client: Any = None
        self.last_used = time.monotonic()
        self.busy = 0
        self.broken = False
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        # The SDK client's cancel scopes belong to the task that enters it, so one task
        # enters, waits, and exits; calls are made from other tasks.
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self._ready.wait()
        if self._error is not None:
            raise self._error

    async def _run(self) -> None:
        import mcp

        try:
            async with mcp.Client(self._target, mode="auto") as client:
                self.client = client
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self._error = exc
        finally:
            self.client = None
            self._ready.set()

    @property
    def alive(self) -> bool:
        return (
            not self.broken
            and self.client is not None
            and self._task is not None
            and not self._task.done()
        )

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, 5.0)


class ClientToolServer:
    """A ToolServer that relays tools/list and tools/call to a hosted MCP server."""

    def __init__(
        self,
        name: str,
        target: Callable[[], Target],
        *,
        isolation: Isolation = Isolation.SHARED,
        idle_timeout_s: float = 600.0,
        max_instances: int = 16,
        model_tools: frozenset[str] = frozenset(),
    ) -> None:
        self.name = name
        self.tools: list[dict[str, Any]] = []
        self.model_tools = model_tools
        self._target = target
        self._isolation = Isolation(isolation)
        self._idle_timeout_s = idle_timeout_s
        self._max_instances = max_instances
        self._shared: _Instance | None = None
        self._sessions: dict[str, _Instance] = {}
        self._opening: dict[str, asyncio.Future[_Instance]] = {}
        self._reaper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect once to learn the tool list (and keep it as the shared instance)."""
        probe = _Instance(self._target())
        await probe.open()
        listed = await probe.client.list_tools()
        self.tools = [
            t.model_dump(by_alias=True, mode="json", exclude_none=True) for t in listed.tools
        ]
        if self._isolation is Isolation.SHARED:
            self._shared = probe
        else:
            await probe.close()
            self._reaper = asyncio.get_running_loop().create_task(self._reap_idle())

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> Any:
        instance = await self._instance_for(ctx.session_id)
        instance.last_used = time.monotonic()
        instance.busy += 1

        async def forward(progress: float, total: float | None, message: str | None) -> None:
            await ctx.report_progress(progress, total, message)

        try:
            return await instance.client.call_tool(name, arguments, progress_callback=forward)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if _connection_closed(exc) or not instance.alive:
                # The server process is gone (or its pipe broke): drop this instance so the
                # next call starts a fresh one.
                instance.broken = True
                self._discard(ctx.session_id, instance)
                asyncio.get_running_loop().create_task(instance.close())
                raise HostedError(
                    ErrorCode.WORKER_LOST,
                    f"the hosted MCP server exited while running {name!r}; it will be restarted",
                ) from None
            raise
        finally:
            instance.busy -= 1
            instance.last_used = time.monotonic()

    async def _instance_for(self, session_id: str) -> _Instance:
        if self._isolation is Isolation.SHARED:
            if self._shared is None or not self._shared.alive:
                log.warning("hosted MCP server is not running; starting it again")
                self._shared = _Instance(self._target())
                await self._shared.open()
            return self._shared
        instance = self._sessions.get(session_id)
        if instance is not None and instance.alive:
            return instance
        pending = self._opening.get(session_id)
        if pending is not None:
            return await asyncio.shield(pending)
        if len(self._sessions) >= self._max_instances:
            raise HostedError(
                ErrorCode.OVER_CAPACITY,
                f"{len(self._sessions)} per-session server instances are running in this "
                "worker (EXAI_SESSION_INSTANCES_MAX); try again when a session ends",
            )
        future: asyncio.Future[_Instance] = asyncio.get_running_loop().create_future()
        self._opening[session_id] = future
        try:
            instance = _Instance(self._target())
            await instance.open()
            self._sessions[session_id] = instance
            future.set_result(instance)
            return instance
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            del self._opening[session_id]

    def _discard(self, session_id: str, instance: _Instance) -> None:
        if self._shared is instance:
            self._shared = None
        if self._sessions.get(session_id) is instance:
            del self._sessions[session_id]

    async def session_ended(self, session_id: str) -> None:
        instance = self._sessions.pop(session_id, None)
        if instance is not None:
            await instance.close()

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, max(0.1, self._idle_timeout_s / 4)))
            now = time.monotonic()
            for session_id, instance in list(self._sessions.items()):
                idle = not instance.busy and now - instance.last_used > self._idle_timeout_s
                if idle or not instance.alive:
                    del self._sessions[session_id]
                    await instance.close()

    @property
    def instances(self) -> int:
        return len(self._sessions) + (1 if self._shared is not None else 0)

    async def aclose(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        instances = list(self._sessions.values())
        if self._shared is not None:
            instances.append(self._shared)
        self._sessions.clear()
        self._shared = None
        await asyncio.gather(*(i.close() for i in instances), return_exceptions=True)


def _connection_closed(exc: BaseException) -> bool:
    """True when the SDK reports that the hosted server's connection is gone."""
    import anyio

    if isinstance(exc, anyio.ClosedResourceError | anyio.BrokenResourceError | BrokenPipeError):
        return True
    error = getattr(exc, "error", None)
    return getattr(error, "code", None) == CONNECTION_CLOSED


CONNECTION_CLOSED = -32000
