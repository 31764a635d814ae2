"""Unit tests for broker.hosting.bridged: a server process the pool runs, as the daemon
sees it. The bridge worker is a recording stand-in (the real one needs Ray: see
tests/e2e/test_ray_pool.py); the protocol is the one HostedInstance uses."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from broker.hosting.bridged import ProcessBridge
from broker.hosting.instance import _Pipes
from broker.pool.worker import WorkerHandle, WorkerState
from exai.ipc import (
    ProcessExited,
    ProcessInput,
    ProcessOpen,
    ProcessOutput,
    ProcessSignal,
    ProcessStarted,
)


class BridgeWorker(WorkerHandle):
    """A ready worker slot that keeps what it is sent."""

    def __init__(self, slot: int = 0) -> None:
        super().__init__(slot, state=WorkerState.READY)
        self.sent: list[Any] = []
        self.got = asyncio.Event()

    def send(self, message: Any) -> None:
        self.sent.append(message)
        self.got.set()

    async def first(self) -> Any:
        await asyncio.wait_for(self.got.wait(), 10)
        return self.sent[0]


async def _launched(
    bridge: ProcessBridge, worker: BridgeWorker, reply: ProcessStarted | None = None
) -> tuple[_Pipes, list[bytes]]:
    lines: list[bytes] = []
    pipes = _Pipes(lines.append, 1 << 20)
    launch = asyncio.ensure_future(
        bridge.launch(pipes, ["srv", "--flag"], {"K": "v"}, "/tmp", "srv")
    )
    opened = await worker.first()
    assert opened == ProcessOpen(opened.handle, "srv", ["srv", "--flag"], {"K": "v"}, "/tmp")
    bridge.handle_message(worker, reply or ProcessStarted(opened.handle, 4242, "node-a"))
    await launch
    return pipes, lines


async def test_a_launched_process_carries_its_pipes_through_the_worker() -> None:
    """Started, the process has the pool's pid; stdin goes out as ProcessInput in
    order, stdout comes back as lines, and its exit code ends it."""
    worker = BridgeWorker()
    bridge = ProcessBridge(lambda: [worker])
    pipes, lines = await _launched(bridge, worker)
    transport = pipes.transport
    assert transport is not None and transport.get_pid() == 4242
    handle = worker.sent[0].handle
    stdin = transport.get_pipe_transport(0)
    assert isinstance(stdin, asyncio.WriteTransport)
    stdin.write(b'{"a":1}\n')
    stdin.close()
    assert worker.sent[1:] == [
        ProcessInput(handle, b'{"a":1}\n'),
        ProcessInput(handle, b"", eof=True),
    ]
    bridge.handle_message(worker, ProcessOutput(handle, 1, b'{"b":'))
    bridge.handle_message(worker, ProcessOutput(handle, 1, b"2}\n"))
    bridge.handle_message(worker, ProcessOutput(handle, 2, b"a warning\n"))
    assert lines == [b'{"b":2}'] and list(pipes.stderr_tail) == ["a warning"]
    transport.terminate()
    assert worker.sent[-1] == ProcessSignal(handle, kill=False)
    bridge.handle_message(worker, ProcessExited(handle, 3))
    assert pipes.exited.done() and pipes.exited.result() == 3
    transport.kill()
    assert worker.sent[-1] == ProcessSignal(handle, kill=False), "nothing is sent once it exited"


async def test_a_process_that_cannot_start_raises_with_the_pools_reason() -> None:
    worker = BridgeWorker()
    bridge = ProcessBridge(lambda: [worker])
    with pytest.raises(OSError, match="cannot start 'srv'"):
        await _launched(bridge, worker, ProcessStarted(1, error="cannot start 'srv': no such file"))


async def test_a_lost_bridge_worker_ends_its_processes_and_ignores_others() -> None:
    """Output or an exit from another worker is not this process's; the death of its
    own worker is its exit (no code)."""
    worker, other = BridgeWorker(0), BridgeWorker(1)
    bridge = ProcessBridge(lambda: [worker, other])
    pipes, lines = await _launched(bridge, worker)
    handle = worker.sent[0].handle
    bridge.handle_message(other, ProcessOutput(handle, 1, b"{}\n"))
    bridge.handle_message(other, ProcessExited(handle, 0))
    assert not lines and not pipes.exited.done()
    bridge.worker_lost(other)
    assert not pipes.exited.done()
    bridge.worker_lost(worker)
    assert pipes.exited.done() and pipes.exited.result() is None


async def test_a_launch_waits_for_the_pool_to_be_ready() -> None:
    """A Ray pool takes seconds to start: a server launched before waits for it."""
    worker = BridgeWorker()
    worker.state = WorkerState.STARTING
    bridge = ProcessBridge(lambda: [worker])
    pipes = _Pipes(lambda line: None, 1 << 20)
    launch = asyncio.ensure_future(bridge.launch(pipes, ["srv"], None, None, "srv"))
    await asyncio.sleep(0.3)
    assert not worker.sent and not launch.done()
    worker.state = WorkerState.READY
    bridge.handle_message(worker, ProcessStarted((await worker.first()).handle, 7, "n"))
    await launch
    assert pipes.transport is not None and pipes.transport.get_pid() == 7
