"""The worker's main loop, driven through its message handler with a fake pipe pair."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

from exai.errors import ErrorCode
from exai.framing import FrameDecoder, FrameEncoder
from exai.ipc import (
    Call,
    Cancel,
    ProcessInput,
    ProcessOpen,
    ProcessStarted,
    Recycle,
    Result,
    SessionEnded,
    WorkerMessage,
)
from tests.conftest import async_wait_for, scaled
from workers.__main__ import Worker
from workers.host import ModuleToolServer
from workers.toolserver import ToolContext


class FakePipes:
    """Collects what the worker writes, decoded."""

    def __init__(self) -> None:
        self._out = bytearray()
        self._decoder: FrameDecoder[WorkerMessage] = FrameDecoder(WorkerMessage)
        self.messages: list[Any] = []

    def buffer(self) -> bytearray:
        return self._out

    def schedule_flush(self) -> None:
        self.messages.extend(self._decoder.feed(bytes(self._out)))
        self._out.clear()

    def results(self) -> list[Result]:
        return [m for m in self.messages if isinstance(m, Result)]


class SlowServer:
    """One tool that waits until cancelled, and one that returns what it is given."""

    name = "slow"
    model_tools: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.tools: list[dict[str, Any]] = []
        self.started: list[int] = []
        self.value: Any = None

    async def start(self) -> None:
        return None

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> Any:
        self.started.append(ctx.call_id)
        if name == "value":
            return self.value
        await asyncio.Event().wait()

    async def session_ended(self, session_id: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


def make_worker(server: Any) -> tuple[Worker, FakePipes]:
    worker = Worker(server, asyncio.get_running_loop())
    pipes = FakePipes()
    worker.pipes = pipes  # type: ignore[assignment]
    return worker, pipes


def frames(*messages: Any) -> bytes:
    encoder = FrameEncoder()
    return b"".join(encoder.encode(m) for m in messages)


async def test_cancel_in_the_same_read_as_its_call_still_answers() -> None:
    """A call cancelled before its task ever ran gets one CANCELLED result and is forgotten."""
    worker, pipes = make_worker(SlowServer())
    worker.handle_data(frames(Call(1, "wait", b"{}", "s1"), Cancel(1), SessionEnded("s1")))
    await async_wait_for(lambda: pipes.results(), 10.0, "the cancelled call's result")
    await async_wait_for(lambda: not worker.tasks, 10.0, "the call table to empty")
    [result] = pipes.results()
    assert (result.call_id, result.error_code) == (1, ErrorCode.CANCELLED)


async def test_cancel_of_a_running_call_answers_once() -> None:
    """A call cancelled while it runs gets exactly one CANCELLED result."""
    server = SlowServer()
    worker, pipes = make_worker(server)
    worker.handle_data(frames(Call(2, "wait", b"{}", "s1")))
    await async_wait_for(lambda: server.started, 10.0, "the call to start")
    worker.handle_data(frames(Cancel(2)))
    await async_wait_for(lambda: not worker.tasks, 10.0, "the call table to empty")
    await asyncio.sleep(0)
    assert [(r.call_id, r.error_code) for r in pipes.results()] == [(2, ErrorCode.CANCELLED)]


async def test_a_result_that_cannot_be_serialised_is_an_exec_error() -> None:
    """Int keys, huge integers and sets cannot be JSON: the call fails at once, not hangs."""
    server = SlowServer()
    worker, pipes = make_worker(server)
    unserialisable = [
        {"content": [], "structuredContent": {1: "a"}},
        {"content": [{"type": "text", "text": "x", "n": 2**70}]},
        {"content": [], "structuredContent": {"s": {1, 2}}},
    ]
    for call_id, value in enumerate(unserialisable, start=10):
        server.value = value
        worker.handle_data(frames(Call(call_id, "value", b"{}", "s1")))
        await async_wait_for(
            lambda n=call_id - 9: len(pipes.results()) == n, 10.0, f"the result of call {call_id}"
        )
    assert [(r.call_id, r.error_code) for r in pipes.results()] == [
        (10, ErrorCode.EXEC_ERROR),
        (11, ErrorCode.EXEC_ERROR),
        (12, ErrorCode.EXEC_ERROR),
    ]
    assert not worker.tasks
    server.value = "fine"
    worker.handle_data(frames(Call(13, "value", b"{}", "s1")))
    await async_wait_for(lambda: len(pipes.results()) == 4, 10.0, "a later call's result")
    assert pipes.results()[-1].error_code is None


async def test_threads_stranded_by_cancelled_sync_calls_do_not_starve_later_calls() -> None:
    """Cancelled sync calls fill every tool thread: later calls still run, and the worker
    asks to be recycled, once."""
    release = threading.Event()
    started: list[int] = []

    def handler(name: str, arguments: dict[str, Any], ctx: ToolContext) -> str:
        if name == "hang":
            started.append(ctx.call_id)
            release.wait(scaled(60))
        return "done"

    server = ModuleToolServer("sync", [], handler)
    worker, pipes = make_worker(server)
    # The size of asyncio's default thread pool: what the tools used to share.
    pool_size = min(32, (os.cpu_count() or 1) + 4)
    try:
        hung = range(100, 100 + pool_size)
        worker.handle_data(frames(*(Call(i, "hang", b"{}", "s1") for i in hung)))
        await async_wait_for(
            lambda: len(started) == pool_size, 10.0, "every tool thread to be busy"
        )
        worker.handle_data(frames(*(Cancel(i) for i in hung)))
        await async_wait_for(lambda: not worker.tasks, 10.0, "the hung calls to be cancelled")
        worker.handle_data(frames(Call(1, "quick", b"{}", "s1")))
        await async_wait_for(
            lambda: any(r.call_id == 1 for r in pipes.results()), 10.0, "a later call's result"
        )
        [later] = [r for r in pipes.results() if r.call_id == 1]
        assert later.error_code is None and later.result is not None
        assert [m for m in pipes.messages if isinstance(m, Recycle)] != []
        worker.handle_data(frames(Call(200, "hang", b"{}", "s1"), Cancel(200)))
        await async_wait_for(lambda: not worker.tasks, 10.0, "one more cancelled call")
        assert len([m for m in pipes.messages if isinstance(m, Recycle)]) == 1
    finally:
        release.set()
        await server.aclose()


async def test_a_pool_that_runs_no_server_processes_says_so() -> None:
    """A local worker asked to run a server process answers that it cannot, at once,
    so the daemon's start of that server fails with the reason instead of waiting."""
    worker, pipes = make_worker(SlowServer())
    worker.handle_data(frames(ProcessOpen(7, "srv", ["srv"]), ProcessInput(7, b"{}\n")))
    assert pipes.messages == [
        ProcessStarted(7, error="this worker pool does not run server processes")
    ]
