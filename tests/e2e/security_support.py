"""Helpers for the security, bad-input and fuzz tests: raw WebSocket clients, log
scanning, a raw stdio shim, and a headless Chromium driven over the DevTools protocol.

Every wait has a deadline and every process started here is stopped (process group
kill as the last resort) even when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import pytest

from tests.conftest import ROOT, DaemonProcess, base_env, scaled

__all__ = [
    "CHROMIUM",
    "RECV_TIMEOUT_S",
    "Chromium",
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
    "require_chromium",
]

RECV_TIMEOUT_S = 10.0
CHROMIUM = Path("/usr/bin/chromium")


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


# --- headless Chromium over the DevTools protocol -------------------------------------


def require_chromium() -> str:
    """The Chromium binary, or skip the test when it is not installed."""
    if not CHROMIUM.exists() or not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"headless Chromium is not installed at {CHROMIUM}")
    return str(CHROMIUM)


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


@contextlib.contextmanager
def _stderr_file(profile: Path) -> Iterator[BinaryIO]:
    """A fresh profile folder and the file Chromium's stderr goes to, next to it."""
    profile.mkdir(parents=True, exist_ok=True)
    with open(profile.parent / f"{profile.name}.stderr", "wb") as err:
        yield err


class Chromium:
    """One headless Chromium process and a DevTools protocol connection to it."""

    def __init__(self, proc: asyncio.subprocess.Process, profile: Path) -> None:
        self.proc = proc
        self.profile = profile
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, profile: Path) -> AsyncIterator[Chromium]:
        """Start Chromium with a fresh profile; always stopped on the way out."""
        binary = require_chromium()
        with _stderr_file(profile) as err:
            proc = await asyncio.create_subprocess_exec(
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "about:blank",
                env=base_env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        browser = cls(proc, profile)
        try:
            await browser._attach()
            yield browser
        finally:
            await browser._shutdown()

    async def _attach(self) -> None:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + scaled(30.0)
        lines: list[str] = []
        while len(lines) < 2:
            if self.proc.returncode is not None:
                raise AssertionError(f"chromium exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise AssertionError("chromium did not open its DevTools port in time")
            with contextlib.suppress(OSError):
                lines = port_file.read_text().split()
            if len(lines) < 2:
                await asyncio.sleep(0.05)
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(
            f"ws://127.0.0.1:{int(lines[0])}{lines[1]}", max_msg_size=0
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(msg.data)
            future = self._waiting.pop(message.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(message)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("DevTools connection closed"))

    async def cdp(
        self, method: str, params: dict[str, Any] | None = None, session_id: str | None = None
    ) -> dict[str, Any]:
        """Send one DevTools command and return its result."""
        assert self._ws is not None
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[self._next_id] = future
        await self._ws.send_str(json.dumps(message))
        reply = await asyncio.wait_for(future, scaled(RECV_TIMEOUT_S))
        if "error" in reply:
            raise AssertionError(f"DevTools {method} failed: {reply['error']}")
        return dict(reply.get("result", {}))

    async def run_page(self, url: str, result_expr: str, timeout_s: float = 20.0) -> Any:
        """Open `url` in a new tab and poll `result_expr` until it is a non-empty value."""
        target = await self.cdp("Target.createTarget", {"url": url})
        attached = await self.cdp(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        session = attached["sessionId"]
        deadline = time.monotonic() + scaled(timeout_s)
        try:
            while True:
                evaluated = await self.cdp(
                    "Runtime.evaluate",
                    {"expression": result_expr, "returnByValue": True},
                    session_id=session,
                )
                value = evaluated.get("result", {}).get("value")
                if value:
                    return value
                if time.monotonic() > deadline:
                    raise AssertionError(f"the page {url} did not finish in time")
                await asyncio.sleep(0.05)
        finally:
            with contextlib.suppress(Exception):
                await self.cdp("Target.closeTarget", {"targetId": target["targetId"]})

    async def _shutdown(self) -> None:
        with contextlib.suppress(Exception):
            if self._ws is not None and not self._ws.closed:
                await asyncio.wait_for(self.cdp("Browser.close"), scaled(5.0))
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._http is not None:
            await self._http.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), scaled(10.0))
        # Chromium forks helpers (zygote, renderers) into its process group: take them all.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.returncode is None:
            await asyncio.wait_for(self.proc.wait(), 10.0)
        shutil.rmtree(self.profile, ignore_errors=True)
