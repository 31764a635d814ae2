"""Helpers for the security, bad-input and fuzz tests: raw WebSocket clients, log
scanning, a raw stdio shim (the headless Chromium is in tests.support.browser).

Every wait has a deadline and every process started here is stopped (process group
kill as the last resort) even when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from tests.conftest import ROOT, DaemonProcess, scaled

__all__ = [
    "RECV_TIMEOUT_S",
    "RawShim",
    "connect",
    "daemon_logs",
    "echo_mcp",
    "echo_op",
    "flatten_exceptions",
    "mcp_session",
    "op_hello",
    "recv_close",
    "recv_json",
]

RECV_TIMEOUT_S = 10.0


# --- raw WebSocket clients -----------------------------------------------------------


async def connect(
    http: aiohttp.ClientSession,
    daemon: DaemonProcess,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    protocols: tuple[str, ...] = (),
    path: str = "/",
) -> aiohttp.ClientWebSocketResponse:
    """Open a WebSocket to the daemon (raises WSServerHandshakeError on an HTTP refusal)."""
    return await http.ws_connect(
        f"ws://127.0.0.1:{daemon.port}{path}",
        headers=headers,
        params=params,
        protocols=protocols,
        timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=scaled(5.0)),
        max_msg_size=0,
    )


async def recv_json(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next data frame as a JSON object; fails instead of hanging."""
    msg = await ws.receive(timeout=scaled(RECV_TIMEOUT_S))
    assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
    frame = json.loads(msg.data)
    assert isinstance(frame, dict), frame
    return frame


async def recv_close(
    ws: aiohttp.ClientWebSocketResponse, timeout_s: float = RECV_TIMEOUT_S
) -> tuple[list[dict[str, Any]], int | None]:
    """Read until the server closes: the data frames seen before, and the close code."""
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + scaled(timeout_s)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"the server did not close the connection; got {frames}")
        msg = await ws.receive(timeout=remaining)
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            frames.append(json.loads(msg.data))
            continue
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
        ):
            return frames, ws.close_code
        raise AssertionError(f"unexpected message while waiting for close: {msg}")


async def op_hello(
    http: aiohttp.ClientSession,
    daemon: DaemonProcess,
    *,
    token: str | None = None,
    session_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    """Open an op-dialect session with `hello`; returns the socket and the hello_ack."""
    ws = await connect(http, daemon, headers=headers)
    hello: dict[str, Any] = {"op": "hello"}
    if token is not None:
        hello["token"] = token
    if session_id is not None:
        hello["session_id"] = session_id
    await ws.send_str(json.dumps(hello))
    return ws, await recv_json(ws)


async def mcp_session(
    http: aiohttp.ClientSession,
    daemon: DaemonProcess,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> aiohttp.ClientWebSocketResponse:
    """An MCP-style client (subprotocol mcp) that has completed `initialize`."""
    ws = await connect(http, daemon, headers=headers, params=params, protocols=("mcp",))
    assert ws.protocol == "mcp"
    await ws.send_str(
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": "init",
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "security-test", "version": "0"},
                },
            }
        )
    )
    reply = await recv_json(ws)
    assert reply.get("id") == "init" and "result" in reply, reply
    await ws.send_str(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
    return ws


async def echo_mcp(ws: aiohttp.ClientWebSocketResponse, text: str, request_id: Any = None) -> None:
    """A JSON-RPC echo call answers with the same text (other frames are skipped)."""
    rid = request_id if request_id is not None else f"echo-{time.monotonic_ns()}"
    await ws.send_str(
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": rid,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": text}},
            }
        )
    )
    for _ in range(50):
        frame = await recv_json(ws)
        if frame.get("id") == rid and "method" not in frame:
            assert "error" not in frame, frame
            assert frame["result"]["isError"] is False, frame
            assert frame["result"]["content"] == [{"type": "text", "text": text}], frame
            return
    raise AssertionError(f"no answer to echo call {rid!r}")


async def echo_op(ws: aiohttp.ClientWebSocketResponse, text: str) -> None:
    """An op-dialect call_tool echo is acked, then answered with the same text."""
    rid = f"echo-{time.monotonic_ns()}"
    await ws.send_str(
        json.dumps(
            {"op": "call_tool", "request_id": rid, "name": "echo", "arguments": {"text": text}}
        )
    )
    for _ in range(50):
        frame = await recv_json(ws)
        if frame.get("op") == "call_tool_res" and frame.get("request_id") == rid:
            assert "error" not in frame, frame
            assert frame["text"] == text, frame
            return
    raise AssertionError(f"no answer to op echo call {rid!r}")


def daemon_logs(daemon: DaemonProcess) -> str:
    """The daemon's stderr plus every file in its log folder, as text."""
    parts = [daemon.stderr()]
    for path in sorted(daemon.log_dir.rglob("*")):
        if path.is_file() and path != daemon.stderr_path:
            parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


def flatten_exceptions(exc: BaseException) -> list[BaseException]:
    """An exception and, for exception groups, every leaf inside it."""
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for inner in exc.exceptions:
            out.extend(flatten_exceptions(inner))
        return out
    return [exc]


# --- a raw stdio shim ------------------------------------------------------------------


class RawShim:
    """`python -m shim` driven line by line over its stdin/stdout (no SDK in between)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, env: dict[str, str], stop_grace_s: float = 5.0) -> AsyncIterator[RawShim]:
        """Start the shim; on the way out close its stdin and give it `stop_grace_s` to
        exit before its process group is killed."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shim",
            cwd=str(ROOT),
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            limit=64 * 1024 * 1024,
            start_new_session=True,
        )
        shim = cls(proc)
        try:
            yield shim
        finally:
            await shim.stop(stop_grace_s)

    async def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()

    async def read_line(self, timeout_s: float = RECV_TIMEOUT_S) -> dict[str, Any] | None:
        """The next JSON line from the shim, or None at EOF."""
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), scaled(timeout_s))
        if not line:
            return None
        message = json.loads(line)
        assert isinstance(message, dict), message
        return message

    async def response(self, request_id: Any, timeout_s: float = RECV_TIMEOUT_S) -> dict[str, Any]:
        """Read lines until the response to `request_id` (notifications are skipped)."""
        deadline = time.monotonic() + scaled(timeout_s)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no response to {request_id!r}")
            message = await self.read_line(remaining)
            if message is None:
                raise AssertionError(f"the shim closed its stdout before answering {request_id!r}")
            if message.get("id") == request_id and "method" not in message:
                return message

    async def stop(self, grace_s: float = 5.0) -> None:
        """Close stdin (the shim's cue to finish) and wait; kill it after `grace_s`."""
        proc = self.proc
        if proc.returncode is None:
            with contextlib.suppress(OSError, RuntimeError):
                if proc.stdin is not None:
                    proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), scaled(grace_s))
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.wait_for(proc.wait(), 10.0)
