"""A minimal MCP client over a child's stdin/stdout: what an MCP client does with each
stdio server in its configuration (or with the one shim that replaces them all).

Requests are sent one at a time; lines that are not the awaited response
(notifications, the server's own requests) are skipped. The child runs in its own
process group so that it and anything it starts can be stopped together.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from benchmarks.dialects import MCP_INITIALIZED, mcp_initialize

__all__ = ["PeerError", "StdioPeer"]

LINE_LIMIT_BYTES = 16 * 1024 * 1024
REQUEST_TIMEOUT_S = 60.0
CLOSE_GRACE_S = 3.0


class PeerError(RuntimeError):
    """The peer exited, answered with an error, or did not answer in time."""


class StdioPeer:
    """One child process spoken to in JSON-RPC lines."""

    def __init__(
        self, label: str, argv: Sequence[str], cwd: str, env: Mapping[str, str], stderr: Path
    ) -> None:
        self.label = label
        self.argv = tuple(argv)
        self.cwd = cwd
        self.env = dict(env)
        self.stderr = stderr
        self.proc: asyncio.subprocess.Process | None = None
        self.next_id = 0

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise PeerError(f"{self.label}: not started")
        return self.proc.pid

    async def start(self) -> None:
        """Spawn the child; its stderr is appended to the peer's log file."""
        fd = os.open(self.stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=fd,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
                limit=LINE_LIMIT_BYTES,
            )
        finally:
            os.close(fd)

    async def initialize(self, timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
        """The MCP handshake: `initialize`, then `notifications/initialized`."""
        request_id = self._take_id()
        await self._send(mcp_initialize(request_id).encode())
        result = await self._result(request_id, "initialize", timeout_s)
        await self._send(MCP_INITIALIZED.encode())
        return result

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Send one request and return its `result`; raise PeerError for anything else."""
        request_id = self._take_id()
        frame: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            frame["params"] = params
        await self._send(orjson.dumps(frame))
        return await self._result(request_id, method, timeout_s)

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """`tools/call`; a result with `isError` is a PeerError too."""
        result = await self.request("tools/call", {"name": name, "arguments": arguments})
        if result.get("isError"):
            raise PeerError(f"{self.label}: {name} failed: {result.get('content')}")
        return result

    async def close(self) -> None:
        """Close stdin (the child's cue to exit), then kill its process group."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None and proc.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                proc.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), CLOSE_GRACE_S)
        # Whatever the child started (a node server's children) goes with its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()

    def _take_id(self) -> int:
        self.next_id += 1
        return self.next_id

    async def _send(self, line: bytes) -> None:
        proc = self.proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise PeerError(f"{self.label}: not running")
        try:
            proc.stdin.write(line + b"\n")
            await proc.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise PeerError(f"{self.label}: stdin: {exc}") from exc

    async def _result(self, request_id: int, method: str, timeout_s: float) -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout_s):
                frame = await self._response(request_id)
        except TimeoutError:
            raise PeerError(f"{self.label}: no answer to {method} in {timeout_s:g} s") from None
        result = frame.get("result")
        if not isinstance(result, dict):
            raise PeerError(f"{self.label}: {method} answered {frame.get('error')}")
        return result

    async def _response(self, request_id: int) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                raise PeerError(f"{self.label}: exited (code {self.proc.returncode})")
            with contextlib.suppress(orjson.JSONDecodeError):
                frame = orjson.loads(line)
                if (
                    isinstance(frame, dict)
                    and frame.get("id") == request_id
                    and "method" not in frame
                ):
                    return frame
