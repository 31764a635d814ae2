"""Clients and helpers for the scheduling e2e tests (test_scheduling_*.py).

- `OpClient`: the EX-AI op dialect over aiohttp (hello, call_tool, cancel); one reader
  task sorts every frame to the call it belongs to, so a test can run many calls at
  once on one session and look at acks, progress and results per call.
- `RawWsClient`: a WebSocket client written by hand on an asyncio socket with a tiny
  receive buffer, for a peer that stops reading.
- `start_tagged_daemon`: a daemon hosting tests.fixtures.tagged_tools.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import socket
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import DaemonProcess, async_wait_for, scaled
from tests.support.health import Health

SERVER_ARGS = ["--server", "tests.fixtures.tagged_tools"]
STEP_S = 30.0  # deadline of one step (a reply, a condition); scaled by EXAI_TEST_TIMEOUT_SCALE
HOLD_S = 300.0  # how long a holder call would wait if nobody released it


def start_tagged_daemon(
    factory: Callable[..., DaemonProcess], env: dict[str, str], workers: int = 2
) -> DaemonProcess:
    """A daemon whose workers host the provider-tagged test tools."""
    return factory(workers=workers, env=env, args=list(SERVER_ARGS))


# --- conditions ----------------------------------------------------------------------


def provider_inflight(health: Health, provider: str) -> int:
    return int(health["inflight"]["providers"].get(provider, 0))


def idle(health: Health) -> bool:
    """Nothing in flight or queued anywhere, and every worker idle."""
    return (
        health["inflight"]["global"] == 0
        and all(v == 0 for v in health["inflight"]["providers"].values())
        and health.get("queued", 0) == 0
        and all(w["inflight"] == 0 for w in health["workers"])
    )


def marker_state(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


async def marker_until(path: Path, state: str, timeout_s: float = STEP_S) -> None:
    await async_wait_for(
        lambda: marker_state(path) == state,
        timeout_s,
        f"marker {path.name} to say {state!r} (it says {marker_state(path)!r})",
    )


async def metrics_until(
    daemon: DaemonProcess,
    check: Callable[[dict[str, Any]], bool],
    what: str,
    count: int = 1,
    timeout_s: float = STEP_S,
) -> list[dict[str, Any]]:
    """Wait until at least `count` metrics lines satisfy `check`; return those lines."""

    def probe() -> list[dict[str, Any]] | None:
        lines = [line for line in daemon.metrics_lines() if check(line)]
        return lines if len(lines) >= count else None

    result: list[dict[str, Any]] = await async_wait_for(probe, timeout_s, what)
    return result


def journal_events(path: Path) -> list[tuple[str, str]]:
    """The (event, label) lines a journal file holds, in the order they were written."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        event, _, label = line.partition(" ")
        events.append((event, label))
    return events


class Files:
    """Fresh marker/journal/release paths under a test's tmp_path."""

    def __init__(self, root: Path) -> None:
        self.root = root / f"files-{uuid.uuid4().hex[:6]}"
        self.root.mkdir()

    def path(self, name: str) -> Path:
        """A marker or journal file."""
        return self.root / f"{name}.txt"

    def release(self, name: str = "go") -> Path:
        """A release file (not created yet)."""
        return self.root / f"{name}.release"

    @staticmethod
    def let_go(release: Path) -> None:
        """Create a release file: holders waiting on it finish."""
        release.write_text("go")


# --- op dialect ------------------------------------------------------------------------


class OpCall:
    """One op-dialect call as the client sees it."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.request_id = request_id
        self.acked = asyncio.Event()
        self.progress: list[dict[str, Any]] = []
        self.result: asyncio.Future[dict[str, Any]] = loop.create_future()

    async def wait(self, timeout_s: float = STEP_S) -> dict[str, Any]:
        """The call's call_tool_res frame."""
        return await asyncio.wait_for(asyncio.shield(self.result), scaled(timeout_s))

    async def wait_ack(self, timeout_s: float = STEP_S) -> None:
        await asyncio.wait_for(self.acked.wait(), scaled(timeout_s))


class OpClient:
    """An op-dialect session on its own WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session_id: str) -> None:
        self.ws = ws
        self.session_id = session_id
        self.calls: dict[str, OpCall] = {}
        self.frames: list[dict[str, Any]] = []
        self.other: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed = asyncio.Event()
        self._ids = itertools.count(1)
        self._loop = asyncio.get_running_loop()
        self._reader: asyncio.Task[None] | None = None

    async def hello(self) -> dict[str, Any]:
        await self.ws.send_str(json.dumps({"op": "hello", "session_id": self.session_id}))
        msg = await self.ws.receive(timeout=scaled(STEP_S))
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        ack: dict[str, Any] = json.loads(msg.data)
        assert ack.get("op") == "hello_ack" and ack.get("ok") is True, ack
        self._reader = self._loop.create_task(self._read())
        return ack

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                self.frames.append(frame)
                call = self.calls.get(str(frame.get("request_id")))
                op = frame.get("op")
                if call is None:
                    self.other.put_nowait(frame)
                elif op == "call_tool_ack":
                    call.acked.set()
                elif op == "progress":
                    call.progress.append(frame)
                elif op == "call_tool_res" and not call.result.done():
                    call.result.set_result(frame)
                else:
                    self.other.put_nowait(frame)
        finally:
            self.closed.set()

    async def start(
        self, name: str, arguments: dict[str, Any], request_id: str | None = None
    ) -> OpCall:
        """Send call_tool and return at once; the call's frames arrive on the OpCall."""
        rid = request_id or f"{self.session_id}-{next(self._ids)}"
        call = OpCall(rid, self._loop)
        self.calls[rid] = call
        frame = {"op": "call_tool", "request_id": rid, "name": name, "arguments": arguments}
        await self.ws.send_str(json.dumps(frame))
        return call

    async def call(
        self, name: str, arguments: dict[str, Any], timeout_s: float = STEP_S
    ) -> dict[str, Any]:
        """Run one call to the end; its call_tool_res frame."""
        return await (await self.start(name, arguments)).wait(timeout_s)

    async def cancel(self, request_id: str) -> None:
        await self.ws.send_str(json.dumps({"op": "cancel", "request_id": request_id}))

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader


@contextlib.asynccontextmanager
async def op_clients(
    daemon: DaemonProcess, *names: str, autoping: bool = True
) -> AsyncIterator[list[OpClient]]:
    """Open one op-dialect session per name (its session id), all closed on exit.

    `autoping=False` makes a client that never answers the daemon's pings.
    """
    async with aiohttp.ClientSession() as http:
        clients: list[OpClient] = []
        try:
            for name in names:
                ws = await http.ws_connect(
                    daemon.url, autoping=autoping, timeout=aiohttp.ClientWSTimeout(ws_close=5)
                )
                client = OpClient(ws, f"{name}-{uuid.uuid4().hex[:8]}")
                clients.append(client)
                await client.hello()
            yield clients
        finally:
            for client in clients:
                await client.aclose()


async def hold(
    client: OpClient, tool: str, files: Files, name: str, release: Path, **extra: Any
) -> OpCall:
    """Start a call that runs until `release` exists; return once a worker runs it."""
    marker = files.path(name)
    call = await client.start(
        tool, {"seconds": HOLD_S, "release": str(release), "marker": str(marker), **extra}
    )
    await async_wait_for(
        lambda: marker_state(marker) == "started" or call.result.done(),
        STEP_S,
        f"{tool} to start in a worker",
    )
    assert not call.result.done(), f"{tool} ended instead of running: {call.result.result()}"
    return call


def op_error(frame: dict[str, Any]) -> dict[str, Any]:
    """The error object of a failed call_tool_res (fails if the call succeeded)."""
    assert frame.get("op") == "call_tool_res", frame
    error = frame.get("error")
    assert isinstance(error, dict), f"expected an error, got {frame}"
    return error


def op_text(frame: dict[str, Any]) -> str:
    """The text of a successful call_tool_res (fails if the call failed)."""
    assert frame.get("op") == "call_tool_res", frame
    assert "error" not in frame and not frame.get("isError"), f"expected success, got {frame}"
    return str(frame["text"])


# --- MCP JSON-RPC over the WebSocket ---------------------------------------------------


def rpc_error(response: dict[str, Any]) -> dict[str, Any]:
    """The error object of a JSON-RPC response (fails if it is a result)."""
    error = response.get("error")
    assert isinstance(error, dict), f"expected a JSON-RPC error, got {response}"
    return error


def rpc_text(response: dict[str, Any]) -> str:
    result = response.get("result")
    assert isinstance(result, dict) and not result.get("isError"), response
    return "".join(c.get("text", "") for c in result["content"])


# --- a hand-made WebSocket client that can stop reading -----------------------------------


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked client frame (FIN set)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return header + mask + _mask(payload, mask)


def _mask(payload: bytes, mask: bytes) -> bytes:
    repeated = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(payload), "big"
    )


class RawWsClient:
    """A WebSocket client on a bare asyncio socket whose receive buffer is tiny.

    After the opening handshake and the hello it only writes: the daemon's frames
    pile up in the kernel (a few KiB, the receive buffer is shrunk before connecting
    so TCP autotuning cannot hide the stall) and then in the daemon's send queue.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(
        cls, port: int, rcvbuf: int = 4096, subprotocol: str | None = None
    ) -> RawWsClient:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        # A small StreamReader limit: the transport pauses reading early, too.
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET / HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\n"
                "Upgrade: websocket\r\n"
                "Connection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n"
                + (f"Sec-WebSocket-Protocol: {subprotocol}\r\n" if subprotocol else "")
                + "\r\n"
            ).encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), scaled(STEP_S))
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def send_json(self, frame: dict[str, Any]) -> None:
        self.writer.write(ws_frame(json.dumps(frame).encode()))
        await asyncio.wait_for(self.writer.drain(), scaled(STEP_S))

    async def read_frame(self) -> bytes:
        """One unfragmented server frame's payload (used only before the client stalls)."""
        _, second = await asyncio.wait_for(self.reader.readexactly(2), scaled(STEP_S))
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return await self.reader.readexactly(size)

    def abort(self) -> None:
        transport = self.writer.transport
        transport.abort()


def sched_env(
    *, session: int = 100, global_cap: int = 100, kimi: int = 100, glm: int = 100, **extra: str
) -> dict[str, str]:
    """Daemon environment with every cap large unless a test narrows one of them."""
    env = {
        "EXAI_WS_SESSION_MAX_INFLIGHT": str(session),
        "EXAI_WS_GLOBAL_MAX_INFLIGHT": str(global_cap),
        "EXAI_WS_KIMI_MAX_INFLIGHT": str(kimi),
        "EXAI_WS_GLM_MAX_INFLIGHT": str(glm),
    }
    env.update(extra)
    return env
