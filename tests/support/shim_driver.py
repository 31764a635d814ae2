"""A real `python -m shim` driven with raw JSON-RPC lines: the one stdio-shim driver.

`ShimDriver` keeps every line the shim writes, so a test can count answers per request
id (none lost, none doubled) — something an SDK client would hide — and it can also
write arbitrary bytes and read the replies line by line, for bad-input tests. Answers
to requests sent with `request()` complete that request's future; every other line
waits, in order, for `read_line()`. The shim runs in a session of its own and is
always stopped: stdin closed, a grace period, then its process group is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, STEP_S, scaled
from tests.support.jsonrpc import INITIALIZED, JsonObj, initialize_params, rpc_request

__all__ = ["RECV_TIMEOUT_S", "ShimDriver", "StartShim", "running_shim", "shim_drivers"]

RECV_TIMEOUT_S = 10.0  # default deadline of one line read in sequence; scaled
LINE_LIMIT_BYTES = 64 * 1024 * 1024  # longest line the driver reads


def _id_key(value: Any) -> str:
    """A request id as a dict key that keeps its JSON type (7 and "7" differ)."""
    return json.dumps(value, separators=(",", ":"))


class ShimDriver:
    """A real `python -m shim` on asyncio pipes; every line it writes is kept."""

    def __init__(
        self, proc: asyncio.subprocess.Process, stderr_path: Path | None, stop_grace_s: float
    ) -> None:
        self.proc = proc
        self.stderr_path = stderr_path
        self.stop_grace_s = stop_grace_s
        self.responses: list[JsonObj] = []
        self.notifications: list[JsonObj] = []
        self._waiters: dict[str, asyncio.Future[JsonObj]] = {}
        self._unclaimed: asyncio.Queue[JsonObj | None] = asyncio.Queue()
        self._bad_line: bytes | None = None
        self._ids = itertools.count(1)
        self._loop = asyncio.get_running_loop()
        self._reader = self._loop.create_task(self._read())

    @classmethod
    async def start(
        cls,
        env: dict[str, str],
        stderr_path: Path | None = None,
        *,
        cwd: Path = ROOT,
        stop_grace_s: float = 5.0,
    ) -> ShimDriver:
        """Start the shim in `cwd` (its stderr to `stderr_path`, or nowhere); `aclose()` it."""
        with contextlib.ExitStack() as stack:
            err: Any = asyncio.subprocess.DEVNULL
            if stderr_path is not None:
                err = stack.enter_context(open(stderr_path, "wb"))  # noqa: ASYNC230 - once per shim
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "shim",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=env,
                cwd=str(cwd),
                limit=LINE_LIMIT_BYTES,
                start_new_session=True,
            )
        return cls(proc, stderr_path, stop_grace_s)

    @property
    def pid(self) -> int:
        """The shim's process id."""
        return int(self.proc.pid)

    def stderr(self) -> str:
        """What the shim wrote to stderr so far ('' when it goes nowhere)."""
        if self.stderr_path is None:
            return ""
        return self.stderr_path.read_text(errors="replace")

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            async for raw in self.proc.stdout:
                line = raw.strip()
                if not line:
                    continue
                try:
                    message = json.loads(line)
                except ValueError:
                    self._bad_line = line
                    return
                if not isinstance(message, dict):
                    self._bad_line = line
                    return
                self._handle_message(message)
        finally:
            self._unclaimed.put_nowait(None)

    def _handle_message(self, message: JsonObj) -> None:
        if "method" in message:
            self.notifications.append(message)
            self._unclaimed.put_nowait(message)
            return
        self.responses.append(message)
        waiter = self._waiters.get(_id_key(message.get("id")))
        if waiter is None:
            self._unclaimed.put_nowait(message)
        elif not waiter.done():
            waiter.set_result(message)

    async def write(self, data: bytes) -> None:
        """Write raw bytes to the shim's stdin (a line needs its own newline)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        await self.proc.stdin.drain()

    async def send(self, message: JsonObj) -> None:
        """Write one JSON-RPC message as a line on the shim's stdin."""
        await self.write(json.dumps(message).encode() + b"\n")

    async def request(self, method: str, params: JsonObj | None = None, rid: Any = None) -> Any:
        """Send a request and return its id at once; `response(id)` awaits the answer."""
        rid = rid if rid is not None else f"r{next(self._ids)}"
        self._waiters[_id_key(rid)] = self._loop.create_future()
        await self.send(rpc_request(rid, method, params))
        return rid

    async def request_and_wait(
        self, method: str, params: JsonObj | None = None, rid: Any = None, timeout_s: float = STEP_S
    ) -> JsonObj:
        """Send a request and wait for its answer."""
        return await self.response(await self.request(method, params, rid), timeout_s)

    async def call(self, name: str, arguments: JsonObj, rid: Any = None) -> Any:
        """Start a tools/call; returns its request id."""
        return await self.request("tools/call", {"name": name, "arguments": arguments}, rid)

    async def call_and_wait(
        self, name: str, arguments: JsonObj, timeout_s: float = STEP_S
    ) -> JsonObj:
        """Run one tools/call to the end; its answer."""
        return await self.response(await self.call(name, arguments), timeout_s)

    async def response(self, rid: Any, timeout_s: float = STEP_S) -> JsonObj:
        """The (first) answer to request `rid`.

        For a request sent with `request()` this waits for its own answer, whatever came
        in between; for one written raw, lines are read in order (others are passed
        over) until its answer, and the shim closing its stdout first fails the test.
        """
        waiter = self._waiters.get(_id_key(rid))
        if waiter is not None:
            return await asyncio.wait_for(asyncio.shield(waiter), scaled(timeout_s))
        deadline = time.monotonic() + scaled(timeout_s)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no response to {rid!r}")
            message = await self._next_unclaimed(remaining)
            if message is None:
                raise AssertionError(f"the shim closed its stdout before answering {rid!r}")
            if message.get("id") == rid and "method" not in message:
                return message

    async def read_line(self, timeout_s: float = RECV_TIMEOUT_S) -> JsonObj | None:
        """The next line no request of ours claimed, or None once the shim closed stdout."""
        return await self._next_unclaimed(scaled(timeout_s))

    async def _next_unclaimed(self, timeout_s: float) -> JsonObj | None:
        message = await asyncio.wait_for(self._unclaimed.get(), timeout_s)
        if message is None:
            self._unclaimed.put_nowait(None)  # end of output stays the end for every reader
            if self._bad_line is not None:
                bad = self._bad_line[:300]
                raise AssertionError(f"the shim wrote a line that is not a JSON object: {bad!r}")
        return message

    def answered(self, rid: Any) -> bool:
        """True once request `rid` (sent with `request()`) has its answer."""
        waiter = self._waiters.get(_id_key(rid))
        return waiter is not None and waiter.done()

    def count(self, rid: Any) -> int:
        """How many answers the client received for request id `rid`."""
        key = _id_key(rid)
        return sum(1 for r in self.responses if _id_key(r.get("id")) == key)

    async def initialize(
        self, list_tools: bool = True, protocol_version: str = "2025-11-25"
    ) -> JsonObj:
        """initialize + notifications/initialized (+ tools/list, so the shim learns hints)."""
        params = initialize_params(protocol_version, client="shim-driver")
        response = await self.request_and_wait("initialize", params, rid="init")
        assert "result" in response, response
        await self.send(INITIALIZED)
        if list_tools:
            listed = await self.request_and_wait("tools/list", {})
            assert "result" in listed, listed
        return response

    async def close_stdin(self) -> None:
        """Close the shim's stdin: its client went away."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        with contextlib.suppress(ConnectionError):
            await self.proc.stdin.wait_closed()

    async def wait_exit(self, timeout_s: float = STEP_S) -> int:
        """The shim's exit code, once it exits (fails after the deadline)."""
        return await asyncio.wait_for(self.proc.wait(), scaled(timeout_s))

    async def aclose(self) -> None:
        """Close stdin and give the shim `stop_grace_s` to exit, then kill its group."""
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.close_stdin()
            try:
                await asyncio.wait_for(self.proc.wait(), scaled(self.stop_grace_s))
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await asyncio.wait_for(self.proc.wait(), 10.0)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


@contextlib.asynccontextmanager
async def running_shim(env: dict[str, str], **options: Any) -> AsyncIterator[ShimDriver]:
    """One ShimDriver (`ShimDriver.start` options), closed (or killed) on exit."""
    driver = await ShimDriver.start(env, **options)
    try:
        yield driver
    finally:
        await driver.aclose()


StartShim = Callable[..., Awaitable[ShimDriver]]


@contextlib.asynccontextmanager
async def shim_drivers(tmp_path: Path) -> AsyncIterator[StartShim]:
    """`start(env, **options)` opens a ShimDriver (stderr kept under `tmp_path`); every one
    is closed (or killed) on exit."""
    drivers: list[ShimDriver] = []
    counter = itertools.count(1)

    async def start(env: dict[str, str], **options: Any) -> ShimDriver:
        driver = await ShimDriver.start(env, tmp_path / f"shim-{next(counter)}.stderr", **options)
        drivers.append(driver)
        return driver

    try:
        yield start
    finally:
        await asyncio.gather(*(d.aclose() for d in drivers), return_exceptions=True)
