"""Hosted servers' processes run by the worker pool (`--pool ray`), not by the daemon.

The daemon stays each server's MCP client (the relay, the handshake, every routing
rule are those of a process it runs itself); only the process lives elsewhere, in a
Ray actor the pool's bridge worker creates. Its pipes travel as IPC messages through
that worker: stdin as ProcessInput, stdout and stderr as ProcessOutput. A
`BridgedProcess` stands in for the subprocess transport, so a HostedInstance cannot
tell the difference. When the bridge worker dies, its processes are lost with it and
each hosted server restarts its instance, as after any exit.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from broker.pool.worker import WorkerHandle, WorkerState
from exai.ipc import (
    ProcessExited,
    ProcessInput,
    ProcessOpen,
    ProcessOutput,
    ProcessSignal,
    ProcessStarted,
)

__all__ = ["BridgedProcess", "Launcher", "ProcessBridge"]

log = logging.getLogger(__name__)

# A Ray pool takes seconds to come up; a server waits for it rather than failing.
READY_WAIT_S = 120.0
START_WAIT_S = 60.0
_READY_POLL_S = 0.1


class Launcher(Protocol):
    """Starts `argv` for `protocol` somewhere: raises OSError when it cannot."""

    async def __call__(
        self,
        protocol: asyncio.SubprocessProtocol,
        argv: Sequence[str],
        env: Mapping[str, str] | None,
        cwd: str | None,
        name: str,
    ) -> None: ...


class _Stdin(asyncio.WriteTransport):
    """The process's stdin as HostedInstance writes it."""

    def __init__(self, process: BridgedProcess) -> None:
        super().__init__()
        self._process = process
        self._closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closed:
            self._process.send(ProcessInput(self._process.handle, bytes(data)))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._process.send(ProcessInput(self._process.handle, b"", eof=True))

    def is_closing(self) -> bool:
        return self._closed or self._process.returncode_known


class BridgedProcess(asyncio.SubprocessTransport):
    """A server process the pool runs, seen as the subprocess transport it replaces."""

    def __init__(
        self,
        worker: WorkerHandle,
        handle: int,
        protocol: asyncio.SubprocessProtocol,
        on_gone: Callable[[int], None],
    ) -> None:
        super().__init__()
        self.worker = worker
        self.handle = handle
        self.pid: int | None = None
        self.node = ""
        self.protocol = protocol
        self.returncode: int | None = None
        self.returncode_known = False
        self._stdin = _Stdin(self)
        self._on_gone = on_gone

    def send(self, message: Any) -> None:
        if not self.returncode_known and self.worker.state is not WorkerState.DEAD:
            self.worker.send(message)

    def exited(self, returncode: int | None) -> None:
        if self.returncode_known:
            return
        self.returncode = returncode
        self.returncode_known = True
        self._on_gone(self.handle)
        self.protocol.process_exited()

    # --- asyncio.SubprocessTransport ---------------------------------------------

    def get_pid(self) -> int | None:  # type: ignore[override]
        return self.pid

    def get_returncode(self) -> int | None:
        return self.returncode

    def get_pipe_transport(self, fd: int) -> asyncio.WriteTransport | None:
        return self._stdin if fd == 0 else None

    def send_signal(self, signal: int) -> None:
        self.terminate()

    def terminate(self) -> None:
        self.send(ProcessSignal(self.handle, kill=False))

    def kill(self) -> None:
        self.send(ProcessSignal(self.handle, kill=True))

    def close(self) -> None:
        # The process is the pool's to end: ask, and stop caring once it has exited.
        if not self.returncode_known:
            self.kill()

    def is_closing(self) -> bool:
        return self.returncode_known


class ProcessBridge:
    """Runs hosted servers' processes on the pool's bridge worker; routes their pipes."""

    def __init__(self, workers: Callable[[], Sequence[WorkerHandle]]) -> None:
        self._workers = workers
        self._ids = itertools.count(1)
        self._processes: dict[int, BridgedProcess] = {}
        self._starting: dict[int, asyncio.Future[ProcessStarted]] = {}

    async def launch(
        self,
        protocol: asyncio.SubprocessProtocol,
        argv: Sequence[str],
        env: Mapping[str, str] | None,
        cwd: str | None,
        name: str,
    ) -> None:
        """Start `argv` on the pool; `protocol` gets its output and its exit."""
        worker = await self._ready_worker()
        handle = next(self._ids)
        started: asyncio.Future[ProcessStarted] = asyncio.get_running_loop().create_future()
        self._starting[handle] = started
        process = BridgedProcess(worker, handle, protocol, self._forget)
        self._processes[handle] = process
        worker.send(ProcessOpen(handle, name, list(argv), dict(env) if env else None, cwd))
        try:
            reply = await asyncio.wait_for(started, START_WAIT_S)
        except TimeoutError:
            self._forget(handle)
            process.kill()
            raise OSError(f"the pool did not start it within {START_WAIT_S:g} s") from None
        except asyncio.CancelledError:
            self._forget(handle)
            process.kill()
            raise
        finally:
            self._starting.pop(handle, None)
        if reply.error is not None or reply.pid is None:
            self._forget(handle)
            raise OSError(reply.error or "the pool could not start it")
        process.pid = reply.pid
        process.node = reply.node
        log.info("%s runs on the pool as pid %s on %s", name, reply.pid, reply.node or "?")
        protocol.connection_made(process)

    def handle_message(self, worker: WorkerHandle, message: Any) -> bool:
        """Take a worker message about a process; False for any other message."""
        if isinstance(message, ProcessOutput):
            process = self._processes.get(message.handle)
            if process is not None and process.worker is worker:
                process.protocol.pipe_data_received(message.fd, message.data)
            return True
        if isinstance(message, ProcessStarted):
            started = self._starting.get(message.handle)
            if started is not None and not started.done():
                started.set_result(message)
            return True
        if isinstance(message, ProcessExited):
            process = self._processes.get(message.handle)
            if process is not None and process.worker is worker:
                process.exited(message.returncode)
            return True
        return False

    def worker_lost(self, worker: WorkerHandle) -> None:
        """The bridge worker died: every process it ran is gone with its actors."""
        for handle, process in list(self._processes.items()):
            if process.worker is not worker:
                continue
            started = self._starting.get(handle)
            if started is not None and not started.done():
                started.set_result(ProcessStarted(handle, error="the pool's bridge exited"))
            if process.pid is not None:
                process.exited(None)
            else:
                self._forget(handle)

    def _forget(self, handle: int) -> None:
        self._processes.pop(handle, None)

    async def _ready_worker(self) -> WorkerHandle:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_WAIT_S
        while True:
            ready = [w for w in self._workers() if w.state is WorkerState.READY]
            if ready:
                return ready[0]
            if loop.time() > deadline:
                raise OSError(f"the worker pool was not ready within {READY_WAIT_S:g} s")
            await asyncio.sleep(_READY_POLL_S)
