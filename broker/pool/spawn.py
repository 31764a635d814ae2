"""Starting a worker process, behind a small protocol the supervisor is given.

The supervisor asks its `Spawner` for a process and gets a `WorkerProcess`: a pid, a
pipe that takes frames, a way to kill it and to wait for its exit. What the process
says comes back through the `WorkerEvents` it was started with. `SubprocessSpawner`
is the real one (`python -m workers` on asyncio pipes); unit tests pass a fake, so
the supervisor's decisions are tested without starting processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Protocol, cast

from exai.framing import FrameDecoder, FramingError
from exai.ipc import WorkerMessage

__all__ = ["Spawner", "SubprocessSpawner", "WorkerEvents", "WorkerProcess"]

_POSIX = sys.platform != "win32"


class WorkerEvents(Protocol):
    """What a worker process reports, in the order it happens, until it exits."""

    def handle_message(self, message: WorkerMessage) -> None: ...

    def handle_stderr_line(self, line: bytes) -> None: ...

    def handle_corrupt_stream(self, error: FramingError) -> None:
        """Its stdout is not a valid frame sequence: nothing more from it can be trusted."""


class WorkerProcess(Protocol):
    """A started worker process, as the supervisor drives it."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None:
        """None while it runs."""

    def write(self, data: bytes) -> None:
        """Send frames to its stdin; dropped once the pipe is closed."""

    def kill(self) -> None:
        """Kill it now if it still runs."""

    async def wait(self) -> int | None:
        """Wait until it has exited (any number of waiters); its exit code."""

    def close(self) -> None:
        """Release the pipes (idempotent)."""

    def reap(self) -> None:
        """After its exit: close, and end whatever it left running in its process group."""


class Spawner(Protocol):
    """Starts worker processes; `program` names what it starts, for messages."""

    @property
    def program(self) -> str: ...

    async def spawn(self, env: Mapping[str, str], events: WorkerEvents) -> WorkerProcess:
        """Start one worker. Raises OSError when the program cannot be started."""


class _Pipes(asyncio.SubprocessProtocol):
    """Decodes the worker's stdout into messages and splits its stderr into lines."""

    def __init__(self, events: WorkerEvents) -> None:
        self.events = events
        self.decoder: FrameDecoder[WorkerMessage] = FrameDecoder(WorkerMessage)
        self.stderr_tail = bytearray()
        self.exited = asyncio.get_running_loop().create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            try:
                messages = self.decoder.feed(data)
            except FramingError as exc:
                self.events.handle_corrupt_stream(exc)
                return
            for message in messages:
                self.events.handle_message(message)
        else:
            self.stderr_tail.extend(data)
            *lines, rest = self.stderr_tail.split(b"\n")
            self.stderr_tail = bytearray(rest)
            for line in lines:
                self.events.handle_stderr_line(bytes(line))

    def process_exited(self) -> None:
        if self.stderr_tail:
            self.events.handle_stderr_line(bytes(self.stderr_tail))
            self.stderr_tail.clear()
        if not self.exited.done():
            self.exited.set_result(None)


class _Subprocess:
    """A WorkerProcess on an asyncio subprocess transport."""

    def __init__(self, transport: asyncio.SubprocessTransport, pipes: _Pipes) -> None:
        self._transport = transport
        self._pipes = pipes
        self.pid: int = transport.get_pid()
        # uvloop's pipe transports are not asyncio.WriteTransport subclasses; only the
        # write/is_closing interface is used.
        self._stdin: asyncio.WriteTransport | None = cast(
            asyncio.WriteTransport, transport.get_pipe_transport(0)
        )

    @property
    def returncode(self) -> int | None:
        return self._transport.get_returncode()

    def write(self, data: bytes) -> None:
        if self._stdin is not None and not self._stdin.is_closing():
            self._stdin.write(data)

    def kill(self) -> None:
        if self._transport.get_returncode() is None:
            with contextlib.suppress(ProcessLookupError):
                self._transport.kill()

    async def wait(self) -> int | None:
        await self._pipes.exited
        return self._transport.get_returncode()

    def close(self) -> None:
        self._stdin = None
        self._transport.close()

    def reap(self) -> None:
        self.close()
        if _POSIX:
            # Whatever the worker left running goes with it, even after a kill -9 that
            # gave it no chance to stop its own children.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)


class SubprocessSpawner:
    """Starts `command` (by default `python -m workers`) with pipes on fds 0, 1 and 2."""

    def __init__(self, command: Sequence[str]) -> None:
        self.command = list(command)

    @property
    def program(self) -> str:
        return self.command[0]

    async def spawn(self, env: Mapping[str, str], events: WorkerEvents) -> WorkerProcess:
        transport, pipes = await asyncio.get_running_loop().subprocess_exec(
            lambda: _Pipes(events),
            *self.command,
            env=dict(env),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            # Its own process group: what the worker starts (a hosted server, a
            # private Ray cluster) can be cleaned up with it, and a terminal's
            # Ctrl+C reaches only the broker, which stops the workers in order.
            start_new_session=_POSIX,
        )
        return _Subprocess(transport, pipes)
