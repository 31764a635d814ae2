"""Helpers for the reliability e2e tests (test_reliability_*.py).

- `TcpProxy`: a loopback TCP proxy between a shim and the daemon that can cut its
  connections, refuse new ones, or stall the daemon -> shim direction while the
  daemon stays up.
- `COUNTING_ARGS`, `read_counts`: a daemon hosting tests.fixtures.counting_tools, and
  its counting file.
- Re-exported for the reliability tests: the JSON-lines shim driver (defined in
  tests.support.shim_driver) and the JSON-RPC answer readers (tests.support.jsonrpc);
  health and /proc conditions are in tests.support.health and tests.support.processes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from tests.conftest import STEP_S
from tests.fixtures.counting_tools import read_counts
from tests.support.jsonrpc import JsonObj, rpc_error, rpc_text
from tests.support.shim_driver import ShimDriver, shim_drivers

__all__ = [
    "COUNTING_ARGS",
    "STEP_S",
    "TYPED_CODES",
    "JsonObj",
    "ShimDriver",
    "TcpProxy",
    "read_counts",
    "rpc_error",
    "rpc_text",
    "shim_drivers",
    "tcp_proxy",
    "tcp_proxy_started",
]

COUNTING_ARGS = ["--server", "tests.fixtures.counting_tools"]
# The typed errors a client may get when the daemon or a worker goes away under it.
TYPED_CODES = frozenset({"WORKER_LOST", "SHUTTING_DOWN", "UNAVAILABLE", "OVER_CAPACITY"})


# --- a loopback TCP proxy ------------------------------------------------------------


class _Link:
    """One proxied connection: client side and daemon side, and its stall switches."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        # Daemon -> client, and client -> daemon.
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.sending = asyncio.Event()
        self.sending.set()
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        """Abort both sides and stop pumping."""
        for writer in (self.client, self.upstream):
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class TcpProxy:
    """127.0.0.1:<port> -> 127.0.0.1:<target>; can cut, refuse and stall connections."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.refusing = False
        self.links: list[_Link] = []
        self.accepted = 0
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> TcpProxy:
        """Start listening on a free loopback port."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    @property
    def live_links(self) -> list[_Link]:
        """The proxied connections that are still open."""
        return [link for link in self.links if not link.client.transport.is_closing()]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        link = _Link(writer, up_writer)
        self.links.append(link)
        loop = asyncio.get_running_loop()
        link.tasks = [
            loop.create_task(self._pump(reader, up_writer, link, link.sending)),
            loop.create_task(self._pump(up_reader, writer, link, link.flowing)),
        ]

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        link: _Link,
        gate: asyncio.Event | None,
    ) -> None:
        try:
            while data := await src.read(65536):
                if gate is not None:
                    await gate.wait()
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # One side ended: end the whole link, like a real connection would.
            for writer in (link.client, link.upstream):
                writer.transport.abort()

    def cut(self) -> int:
        """Abort every live connection in both directions; how many were cut."""
        live = self.live_links
        for link in live:
            link.abort()
        return len(live)

    def stall(self) -> int:
        """Stop forwarding daemon -> client on every live connection (new ones flow)."""
        live = self.live_links
        for link in live:
            link.flowing.clear()
        return len(live)

    def hold_upstream(self) -> int:
        """Keep what clients send on every live connection from the daemon until
        `release_upstream` (new connections flow)."""
        live = self.live_links
        for link in live:
            link.sending.clear()
        return len(live)

    async def release_upstream(self) -> None:
        """Deliver what `hold_upstream` kept, in order, and flow on; returns once it is
        written to the daemon's sockets."""
        for link in self.links:
            link.sending.set()
        await asyncio.sleep(0)  # the pumps write what they held
        for link in self.links:
            if not link.upstream.transport.is_closing():
                await link.upstream.drain()

    async def aclose(self) -> None:
        """Cut every connection and stop listening."""
        for link in self.links:
            link.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def tcp_proxy_started(target_port: int) -> TcpProxy:
    """A running proxy; the caller must `aclose()` it."""
    return await TcpProxy(target_port).start()


@contextlib.asynccontextmanager
async def tcp_proxy(target_port: int) -> AsyncIterator[TcpProxy]:
    """A running proxy to 127.0.0.1:`target_port`, closed on exit."""
    proxy = await tcp_proxy_started(target_port)
    try:
        yield proxy
    finally:
        await proxy.aclose()
