"""A load client that is a real `python -m shim` process driven over its stdin/stdout
(or, as the no-broker baseline, any other stdio MCP server started the same way)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from benchmarks.closedloop import ClientGone
from benchmarks.dialects import (
    MCP_INITIALIZED,
    Scenario,
    mcp_call,
    mcp_initialize,
    mcp_outcome,
)

__all__ = ["ShimClient", "shim_environment"]

LINE_LIMIT_BYTES = 64 * 1024 * 1024
CLOSE_GRACE_S = 3.0
INITIALIZE_ID = 0
SHIM_ARGS = ("-m", "shim")


def shim_environment(port: int) -> dict[str, str]:
    """The shim's environment: our loopback daemon, auth off, whatever a `.env` says."""
    env = dict(os.environ)
    env.update({"EXAI_WS_HOST": "127.0.0.1", "EXAI_WS_PORT": str(port), "EXAI_WS_TOKEN": ""})
    return env


class ShimClient:
    """Spawns one shim; `open` runs the MCP initialize handshake through it."""

    def __init__(
        self,
        env: dict[str, str],
        cwd: str,
        scenario: Scenario,
        args: Sequence[str] = SHIM_ARGS,
    ) -> None:
        self.env = env
        self.cwd = cwd
        self.args = tuple(args)
        self.text = scenario.expected_text
        self.tool = scenario.tool
        self.arguments_json = scenario.arguments_json
        self.sent = INITIALIZE_ID
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def open(self) -> None:
        # stderr is inherited: the generator's log file collects every shim's complaints.
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *self.args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
            limit=LINE_LIMIT_BYTES,
        )
        await self._send(mcp_initialize(INITIALIZE_ID))
        answer = await self._answer(INITIALIZE_ID)
        if "result" not in answer:
            raise ClientGone(f"initialize refused: {answer}")
        await self._send(MCP_INITIALIZED)

    async def call(self) -> str | None:
        self.sent += 1
        request_id = self.sent
        await self._send(mcp_call(request_id, self.arguments_json, self.tool))
        return mcp_outcome(await self._answer(request_id), self.text)

    async def _send(self, line: str) -> None:
        proc = self.proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            raise ClientGone("shim is not running")
        try:
            proc.stdin.write(line.encode() + b"\n")
            await proc.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise ClientGone(f"shim stdin: {exc}") from exc

    async def _answer(self, request_id: int) -> dict[str, Any]:
        """Read lines until the response with `request_id` (answers may come in any order)."""
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                raise ClientGone(f"shim exited (code {self.proc.returncode})")
            frame = orjson.loads(line)
            if isinstance(frame, dict) and frame.get("id") == request_id:
                return frame

    async def close(self) -> None:
        """Close stdin (the shim's cue to say goodbye to the daemon), then insist."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), CLOSE_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
