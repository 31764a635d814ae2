"""The Ray actors behind `--pool ray`: tool hosts, server processes, the provider ledger.

Plain classes: the bridge wraps them with `ray.remote` when it creates them, so this
module imports without Ray and the code that runs inside an actor is ordinary code.
Ray imports this module by name in its worker processes, so every node of a joined
cluster needs exai-broker installed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from exai.settings import load_settings
from workers.host import load_tool_server
from workers.toolserver import ToolContext, ToolServer, settle

__all__ = ["LEDGER_NAME", "NAMESPACE", "ProviderLedger", "ServerProcess", "ToolHost"]

NAMESPACE = "exai"
LEDGER_NAME = "exai-provider-ledger"

# Events a ToolHost.run stream yields, in order: any number of progress events, then
# exactly one result or error.
Event = tuple[Any, ...]
_POSIX = sys.platform != "win32"
# What ServerProcess.output reads at a time: several lines of a busy server per object.
_CHUNK_BYTES = 256 * 1024


class ToolHost:
    """Hosts the configured tool server inside one Ray actor.

    The actor gets the bridge's environment (API keys, EXAI_* settings) so the hosted
    server sees what it would see in a local worker, and a restarted actor comes back
    with a fresh server, like a restarted worker.
    """

    def __init__(self, environ: dict[str, str]) -> None:
        os.environ.update(environ)
        self._environ = environ
        self._server: ToolServer | None = None
        self._starting: asyncio.Lock | None = None

    async def _ready(self) -> ToolServer:
        if self._server is None:
            if self._starting is None:
                self._starting = asyncio.Lock()
            async with self._starting:
                if self._server is None:
                    server = load_tool_server(load_settings(self._environ), self._environ)
                    await server.start()
                    self._server = server
        assert self._server is not None
        return self._server

    async def describe(self) -> dict[str, Any]:
        """Start the hosted server if needed; what it serves and where it runs."""
        server = await self._ready()
        return {
            "pid": os.getpid(),
            "node": socket.gethostname(),
            "name": server.name,
            "tools": server.tools,
            "model_tools": sorted(server.model_tools),
        }

    async def run(
        self,
        tool: str,
        arguments: dict[str, Any],
        session_id: str,
        model: str | None,
        call_id: int,
        want_progress: bool,
    ) -> AsyncIterator[Event]:
        """Run one call, streaming ("progress", p, total, message) events, then
        ("result", CallToolResult) or ("error", code, message, provider).

        Cancelling the stream (ray.cancel) raises CancelledError here, which cancels
        the tool's own coroutine.
        """
        server = await self._ready()
        events: collections.deque[Event] = collections.deque()
        wake = asyncio.Event()

        def sink(progress: float, total: float | None, message: str | None) -> None:
            events.append(("progress", progress, total, message))
            wake.set()

        ctx = ToolContext(call_id, session_id, model, sink if want_progress else None)
        task = asyncio.ensure_future(settle(server, tool, arguments, ctx))
        task.add_done_callback(lambda _: wake.set())
        try:
            while True:
                await wake.wait()
                wake.clear()
                while events:
                    yield events.popleft()
                if task.done():
                    break
            result, error = task.result()
            if error is not None:
                yield ("error", str(error.code), str(error), error.provider)
            else:
                yield ("result", result)
        finally:
            if not task.done():
                task.cancel()

    async def call(
        self, tool: str, arguments: dict[str, Any], session_id: str, model: str | None, call_id: int
    ) -> Event:
        """One call without progress: its result or error event, in one round trip
        (a stream costs an extra object per event)."""
        server = await self._ready()
        result, error = await settle(
            server, tool, arguments, ToolContext(call_id, session_id, model, None)
        )
        if error is not None:
            return ("error", str(error.code), str(error), error.provider)
        return ("result", result)

    async def session_ended(self, session_id: str) -> None:
        if self._server is not None:
            await self._server.session_ended(session_id)

    async def close(self) -> None:
        if self._server is not None:
            await self._server.aclose()


class ServerProcess:
    """One stdio MCP server process of the daemon's servers file, run inside an actor.

    The daemon stays the server's MCP client: this only carries the pipes. `output`
    streams what the server writes, as (1, bytes) for stdout and (2, bytes) for stderr,
    and last (0, returncode). When the actor dies (its bridge went), the server's stdin
    closes, which is how a stdio server is told to exit.
    """

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None

    async def start(
        self, argv: list[str], env: dict[str, str] | None, cwd: str | None
    ) -> tuple[int | None, str, str | None]:
        """(pid, node, None) once it runs; (None, node, why) when it cannot start."""
        node = socket.gethostname()
        try:
            self._process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=cwd,
                # Its own group, so that stopping it stops what it started.
                start_new_session=_POSIX,
            )
        except OSError as exc:
            return None, node, f"cannot start {argv[0]!r}: {exc}"
        return self._process.pid, node, None

    async def output(self) -> AsyncIterator[tuple[int, Any]]:
        process = self._process
        assert process is not None and process.stdout is not None and process.stderr is not None
        chunks: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()

        async def pump(fd: int, stream: asyncio.StreamReader) -> None:
            while data := await stream.read(_CHUNK_BYTES):
                await chunks.put((fd, data))
            await chunks.put((fd, b""))

        pumps = [
            asyncio.ensure_future(pump(1, process.stdout)),
            asyncio.ensure_future(pump(2, process.stderr)),
        ]
        try:
            open_streams = 2
            while open_streams:
                fd, data = await chunks.get()
                if data:
                    yield fd, data
                else:
                    open_streams -= 1
            yield 0, await process.wait()
        finally:
            for task in pumps:
                task.cancel()

    async def write(self, data: bytes, eof: bool) -> None:
        stdin = self._process.stdin if self._process is not None else None
        if stdin is None or stdin.is_closing():
            return
        with contextlib.suppress(ConnectionError, OSError):
            if data:
                stdin.write(data)
                await stdin.drain()
            if eof:
                stdin.close()

    def end(self, kill: bool) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            if _POSIX:
                os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
            elif kill:
                process.kill()
            else:
                process.terminate()


class ProviderLedger:
    """Provider slots shared by every broker on a cluster (a named, detached actor).

    A broker leases a slot for each provider call and returns it when the call ends.
    Holders renew themselves; a holder silent for longer than its TTL (a broker that
    died, or lost the cluster) loses its leases, so capacity is never lost for good.
    Methods are synchronous, so Ray runs them one at a time: no locking needed.
    """

    def __init__(self) -> None:
        self._leases: dict[str, tuple[str, str]] = {}  # lease id -> (holder, provider)
        self._seen: dict[str, tuple[float, float]] = {}  # holder -> (last renewal, ttl)
        self._ids = itertools.count(1)

    def acquire(self, holder: str, provider: str, cap: int, ttl_s: float) -> str | None:
        """A lease id, or None when `provider` already has `cap` calls across the cluster."""
        now = time.monotonic()
        self._seen[holder] = (now, ttl_s)
        self._expire(now)
        used = sum(1 for _, p in self._leases.values() if p == provider)
        if used >= cap:
            return None
        lease = f"{holder}#{next(self._ids)}"
        self._leases[lease] = (holder, provider)
        return lease

    def release(self, lease: str) -> None:
        self._leases.pop(lease, None)

    def renew(self, holder: str, ttl_s: float) -> None:
        self._seen[holder] = (time.monotonic(), ttl_s)

    def drop_holder(self, holder: str) -> None:
        """A broker leaving cleanly hands its slots back at once."""
        self._seen.pop(holder, None)
        for lease, (owner, _) in list(self._leases.items()):
            if owner == holder:
                del self._leases[lease]

    def usage(self) -> dict[str, int]:
        """Leases held per provider, after dropping the expired ones."""
        self._expire(time.monotonic())
        counts: dict[str, int] = {}
        for _, provider in self._leases.values():
            counts[provider] = counts.get(provider, 0) + 1
        return counts

    def _expire(self, now: float) -> None:
        dead = [h for h, (seen, ttl) in self._seen.items() if now - seen > ttl]
        for holder in dead:
            self.drop_holder(holder)
