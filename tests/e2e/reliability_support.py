"""Helpers for the reliability e2e tests (test_reliability_*.py).

- `ShimDriver`: a real `python -m shim` driven with raw JSON lines, which keeps every
  line the shim writes, so a test can count answers per request id (none lost, none
  doubled) — something an SDK client would hide.
- `TcpProxy`: a loopback TCP proxy between a shim and the daemon that can cut its
  connections, refuse new ones, or stall the daemon -> shim direction while the
  daemon stays up.
- `read_counts` (the counting file); health and /proc conditions are in tests.support.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, scaled
from tests.fixtures.counting_tools import read_counts
from tests.support.processes import kill_quietly

__all__ = [
    "COUNTING_ARGS",
    "STEP_S",
    "TYPED_CODES",
    "JsonObj",
    "ShimDriver",
    "TcpProxy",
    "error_of",
    "read_counts",
    "shim_drivers",
    "tcp_proxy",
    "tcp_proxy_started",
    "text_of",
]

COUNTING_ARGS = ["--server", "tests.fixtures.counting_tools"]
STEP_S = 30.0  # deadline for one step (an answer, a condition); scaled
# The typed errors a client may get when the daemon or a worker goes away under it.
TYPED_CODES = frozenset({"WORKER_LOST", "SHUTTING_DOWN", "UNAVAILABLE", "OVER_CAPACITY"})
JsonObj = dict[str, Any]


# --- answers -------------------------------------------------------------------------


def text_of(response: JsonObj) -> str:
    """The text of a successful tools/call response (fails on an error)."""
    result = response.get("result")
    assert isinstance(result, dict) and not result.get("isError"), f"expected success: {response}"
    return "".join(str(c.get("text", "")) for c in result.get("content", []))


def error_of(response: JsonObj) -> JsonObj:
    """The JSON-RPC error object of a response (fails on a result)."""
    error = response.get("error")
    assert isinstance(error, dict), f"expected a JSON-RPC error: {response}"
    return error


# --- a JSON-lines shim driver ----------------------------------------------------------


def id_key(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class ShimDriver:
    """A real `python -m shim` on asyncio pipes; every line it writes is kept."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path
        self.responses: list[JsonObj] = []
        self.notifications: list[JsonObj] = []
        self._waiters: dict[str, asyncio.Future[JsonObj]] = {}
        self._ids = itertools.count(1)
        self._loop = asyncio.get_running_loop()
        self._reader = self._loop.create_task(self._read())

    @classmethod
    async def start(cls, env: dict[str, str], stderr_path: Path) -> ShimDriver:
        with open(stderr_path, "wb") as err:  # noqa: ASYNC230 - opened once per shim
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "shim",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=env,
                cwd=str(ROOT),
                limit=16 * 1024 * 1024,
            )
        return cls(proc, stderr_path)

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.strip()
            if not line:
                continue
            message = json.loads(line)
            if "method" in message:
                self.notifications.append(message)
                continue
            self.responses.append(message)
            waiter = self._waiters.get(id_key(message.get("id")))
            if waiter is not None and not waiter.done():
                waiter.set_result(message)

    async def send(self, message: JsonObj) -> None:
        """Write one JSON-RPC message as a line on the shim's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        await self.proc.stdin.drain()

    async def request(self, method: str, params: JsonObj | None = None, rid: Any = None) -> Any:
        """Send a request and return its id at once; `response(id)` awaits the answer."""
        rid = rid if rid is not None else f"r{next(self._ids)}"
        self._waiters[id_key(rid)] = self._loop.create_future()
        message: JsonObj = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        return rid

    async def call(self, name: str, arguments: JsonObj, rid: Any = None) -> Any:
        """Start a tools/call; returns its request id."""
        return await self.request("tools/call", {"name": name, "arguments": arguments}, rid)

    async def response(self, rid: Any, timeout_s: float = STEP_S) -> JsonObj:
        """The (first) answer to request `rid`."""
        waiter = self._waiters[id_key(rid)]
        return await asyncio.wait_for(asyncio.shield(waiter), scaled(timeout_s))

    async def call_and_wait(
        self, name: str, arguments: JsonObj, timeout_s: float = STEP_S
    ) -> JsonObj:
        return await self.response(await self.call(name, arguments), timeout_s)

    def answered(self, rid: Any) -> bool:
        waiter = self._waiters.get(id_key(rid))
        return waiter is not None and waiter.done()

    def count(self, rid: Any) -> int:
        """How many answers the client received for request id `rid`."""
        key = id_key(rid)
        return sum(1 for r in self.responses if id_key(r.get("id")) == key)

    async def initialize(self, list_tools: bool = True) -> JsonObj:
        """initialize + notifications/initialized (+ tools/list, so the shim learns hints)."""
        rid = await self.request(
            "initialize",
            {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "reliability-driver", "version": "1"},
            },
            rid="init",
        )
        response = await self.response(rid)
        assert "result" in response, response
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        if list_tools:
            listed = await self.response(await self.request("tools/list", {}))
            assert "result" in listed, listed
        return response

    async def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        with contextlib.suppress(ConnectionError):
            await self.proc.stdin.wait_closed()

    async def wait_exit(self, timeout_s: float = STEP_S) -> int:
        return await asyncio.wait_for(self.proc.wait(), scaled(timeout_s))

    async def aclose(self) -> None:
        """Close stdin and let the shim go; kill it if it does not within a few seconds."""
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.close_stdin()
            try:
                await asyncio.wait_for(self.proc.wait(), scaled(5.0))
            except TimeoutError:
                kill_quietly(self.proc.pid)
                await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


@contextlib.asynccontextmanager
async def shim_drivers(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """`start(env)` opens a ShimDriver; every one is closed (or killed) on exit."""
    drivers: list[ShimDriver] = []
    counter = itertools.count(1)

    async def start(env: dict[str, str]) -> ShimDriver:
        driver = await ShimDriver.start(env, tmp_path / f"shim-{next(counter)}.stderr")
        drivers.append(driver)
        return driver

    try:
        yield start
    finally:
        await asyncio.gather(*(d.aclose() for d in drivers), return_exceptions=True)


# --- a loopback TCP proxy ------------------------------------------------------------


class _Link:
    """One proxied connection: client side and daemon side, and its stall switch."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
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
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    @property
    def live_links(self) -> list[_Link]:
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
            loop.create_task(self._pump(reader, up_writer, link, None)),
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

    async def aclose(self) -> None:
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
    proxy = await tcp_proxy_started(target_port)
    try:
        yield proxy
    finally:
        await proxy.aclose()
