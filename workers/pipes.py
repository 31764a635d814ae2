"""The worker's end of its IPC pipes: stdin in, a private copy of stdout out.

On POSIX the pipes are driven by the event loop. On Windows a child's inherited
pipe handles are not overlapped, so the loop cannot drive them; two threads do the
blocking reads and writes instead. Writes are batched: every frame queued during one
loop iteration leaves in a single write.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable
from typing import BinaryIO

from exai.coalesce import WriteCoalescer

__all__ = ["IpcPipes", "take_ipc_stdout"]


def take_ipc_stdout() -> BinaryIO:
    """Keep the real stdout for IPC and point fd 1 and `sys.stdout` at stderr.

    A stray `print` (or a C library writing to fd 1) in a tool then lands in the log
    instead of corrupting a frame.
    """
    ipc_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(ipc_fd, "wb", buffering=0)


class IpcPipes:
    """Reads stdin in chunks into `on_data`, calls `on_eof` at EOF, writes batched."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        stdin: BinaryIO,
        stdout: BinaryIO,
        on_data: Callable[[bytes], None],
        on_eof: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._stdin = stdin
        self._stdout = stdout
        self._on_data = on_data
        self._on_eof = on_eof
        self._writes = WriteCoalescer(loop, self._write)
        self._transport: asyncio.WriteTransport | None = None
        self._write_queue: list[bytes] = []
        self._write_cv = threading.Condition()

    async def start(self) -> None:
        if sys.platform == "win32":
            threading.Thread(target=self._read_thread, name="ipc-reader", daemon=True).start()
            threading.Thread(target=self._write_thread, name="ipc-writer", daemon=True).start()
            return
        on_data, on_eof = self._on_data, self._on_eof

        class Reader(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                on_data(data)

            def eof_received(self) -> bool | None:
                on_eof()
                return None

            def connection_lost(self, exc: Exception | None) -> None:
                on_eof()

        await self._loop.connect_read_pipe(Reader, self._stdin)
        transport, _ = await self._loop.connect_write_pipe(asyncio.Protocol, self._stdout)
        self._transport = transport

    def buffer(self) -> bytearray:
        """The pending output; append frames to it, then call `schedule_flush`."""
        return self._writes.buffer

    def schedule_flush(self) -> None:
        self._writes.schedule()

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            if not self._transport.is_closing():
                self._transport.write(data)
            return
        with self._write_cv:
            self._write_queue.append(data)
            self._write_cv.notify()

    def _read_thread(self) -> None:
        read = getattr(self._stdin, "read1", self._stdin.read)
        while True:
            try:
                chunk = read(65536)
            except OSError:
                chunk = b""
            if not chunk:
                self._loop.call_soon_threadsafe(self._on_eof)
                return
            self._loop.call_soon_threadsafe(self._on_data, chunk)

    def _write_thread(self) -> None:
        while True:
            with self._write_cv:
                while not self._write_queue:
                    self._write_cv.wait()
                chunks, self._write_queue = self._write_queue, []
            try:
                self._stdout.write(b"".join(chunks))
                self._stdout.flush()
            except OSError:
                return
