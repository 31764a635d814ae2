"""Helpers for the scheduling e2e tests (test_scheduling_*.py).

- `start_tagged_daemon`, `sched_env`: a daemon hosting tests.fixtures.tagged_tools, with
  every cap large unless a test narrows one.
- `Files`, `hold`, `hold_rpc`: marker, journal and release files, and calls that hold
  capacity until the test lets them go.
- `RawWsClient`: a WebSocket client written by hand on an asyncio socket with a tiny
  receive buffer, for a peer that stops reading (`flood_until_dropped`).
- The op-dialect client (defined in tests.support.op_client) and the JSON-RPC answer
  readers (tests.support.jsonrpc) the scheduling tests use, re-exported.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import STEP_S, DaemonFactory, DaemonProcess, async_wait_for, scaled
from tests.support.health import Health
from tests.support.jsonrpc import JsonObj, rpc_error, rpc_text
from tests.support.mcp_ws import McpWsClient
from tests.support.op_client import OpCall, OpClient, op_clients, op_error, op_text

__all__ = [
    "HOLD_S",
    "SERVER_ARGS",
    "STEP_S",
    "Files",
    "OpCall",
    "OpClient",
    "RawWsClient",
    "flood_until_dropped",
    "hold",
    "hold_rpc",
    "idle",
    "journal_events",
    "marker_state",
    "marker_until",
    "metrics_until",
    "op_clients",
    "op_error",
    "op_text",
    "provider_inflight",
    "rpc_error",
    "rpc_text",
    "sched_env",
    "start_tagged_daemon",
    "ws_frame",
]

SERVER_ARGS = ["--server", "tests.fixtures.tagged_tools"]
HOLD_S = 300.0  # how long a holder call would wait if nobody released it


def start_tagged_daemon(
    factory: DaemonFactory, env: dict[str, str], workers: int = 2
) -> DaemonProcess:
    """A daemon whose workers host the provider-tagged test tools."""
    return factory(workers=workers, env=env, args=list(SERVER_ARGS))


# --- conditions ----------------------------------------------------------------------


def provider_inflight(health: Health, provider: str) -> int:
    """Calls in flight on `provider`, by the health snapshot."""
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
    """What a marker file says (started, finished, cancelled), or None before it exists."""
    try:
        return path.read_text()
    except OSError:
        return None


async def marker_until(path: Path, state: str, timeout_s: float = STEP_S) -> None:
    """Wait until the marker file says `state`."""
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


# --- calls that hold capacity ------------------------------------------------------


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


async def hold_rpc(
    client: McpWsClient,
    tool: str,
    files: Files,
    name: str,
    release: Path,
    request_id: Any = None,
    **extra: Any,
) -> asyncio.Future[JsonObj]:
    """Start an MCP call that runs until `release` exists; once a worker runs it, the
    future of its response."""
    marker = files.path(name)
    arguments = {"seconds": HOLD_S, "release": str(release), "marker": str(marker), **extra}
    _, future = await client.start_call(tool, arguments, request_id)
    await marker_until(marker, "started")
    return future


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
        """Connect to 127.0.0.1:`port` with a `rcvbuf`-byte receive buffer and upgrade."""
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
        """Send one frame as JSON text (fails if the kernel buffers stay full too long)."""
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
        """Drop the connection at once, without a close frame."""
        transport = self.writer.transport
        transport.abort()


async def flood_until_dropped(
    slow: RawWsClient,
    daemon: DaemonProcess,
    frame: Callable[[int], JsonObj],
    *,
    check_every: int,
    most: int = 1200,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """Send `frame(1)`, `frame(2)`, … without reading until the daemon drops the slow
    reader (looking every `check_every` frames), the connection breaks, `most` frames
    went out or `stop()` holds; then wait for the daemon to log the drop. How many
    frames were sent (the one that found the connection cut included)."""
    sent = 0
    while sent < most and not stop():
        sent += 1
        try:
            await slow.send_json(frame(sent))
        except (ConnectionError, OSError):
            break  # the daemon cut the connection
        if sent % check_every == 0 and "not reading" in daemon.stderr():
            break
    await async_wait_for(
        lambda: "not reading" in daemon.stderr(), STEP_S, "the daemon to drop the slow reader"
    )
    return sent


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
