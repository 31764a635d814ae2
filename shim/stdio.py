"""The shim's stdio: newline-delimited JSON-RPC lines in, lines out.

On POSIX stdin is read through the event loop when it is a pipe; otherwise (Windows,
a regular file, a tty) a thread does the blocking reads. Output written during one
loop iteration leaves in one write.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import sys
import threading
from collections.abc import Callable
from typing import BinaryIO

from exai.coalesce import WriteCoalescer

__all__ = ["LineReader", "StdoutWriter", "split_lines"]

MAX_LINE_BYTES = 64 * 1024 * 1024


def split_lines(buffer: bytearray, data: bytes) -> list[bytes]:
    """Append `data` and cut off every complete line (without its newline)."""
    buffer.extend(data)
    if b"\n" not in data:
        return []
    *lines, rest = buffer.split(b"\n")
    buffer[:] = rest
    return [bytes(line).rstrip(b"\r") for line in lines]


class LineReader:
    """Calls `on_line` for each line of stdin and `on_eof` once at its end."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        stream: BinaryIO,
        on_line: Callable[[bytes], None],
        on_eof: Callable[[], None],
        on_oversize: Callable[[int], None],
    ) -> None:
        self._loop = loop
        self._stream = stream
        self._on_line = on_line
        self._on_eof = on_eof
        self._on_oversize = on_oversize
        self._buffer = bytearray()
        self._eof = False

    async def start(self) -> None:
        if sys.platform != "win32" and _is_pipe_like(self._stream):
            reader = self

            class Protocol(asyncio.Protocol):
                def data_received(self, data: bytes) -> None:
                    reader.feed(data)

                def eof_received(self) -> bool | None:
                    reader.eof()
                    return None

                def connection_lost(self, exc: Exception | None) -> None:
                    reader.eof()

            await self._loop.connect_read_pipe(Protocol, self._stream)
            return
        threading.Thread(target=self._read_thread, name="stdin", daemon=True).start()

    def feed(self, data: bytes) -> None:
        for line in split_lines(self._buffer, data):
            if line.strip():
                try:
                    self._on_line(line)
                except Exception:  # one bad line must not cost the others their answers
                    logging.getLogger("shim").exception("could not handle a client line")
        if len(self._buffer) > MAX_LINE_BYTES:
            size = len(self._buffer)
            self._buffer.clear()
            self._on_oversize(size)

    def eof(self) -> None:
        if self._eof:
            return
        self._eof = True
        if self._buffer.strip():
            self._on_line(bytes(self._buffer))
        self._buffer.clear()
        self._on_eof()

    def _read_thread(self) -> None:
        read = getattr(self._stream, "read1", self._stream.read)
        while True:
            try:
                chunk = read(65536)
            except (OSError, ValueError):
                chunk = b""
            if not chunk:
                self._loop.call_soon_threadsafe(self.eof)
                return
            self._loop.call_soon_threadsafe(self.feed, chunk)


def _is_pipe_like(stream: BinaryIO) -> bool:
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


class StdoutWriter:
    """Batches lines for the client and writes them on the next loop turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stream: BinaryIO) -> None:
        self._stream = stream
        self._writes = WriteCoalescer(loop, self._write)
        self.broken = False

    def write_line(self, line: bytes) -> None:
        buffer = self._writes.buffer
        buffer += line
        buffer += b"\n"
        self._writes.schedule()

    def flush(self) -> None:
        self._writes.flush()

    def _write(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError):
            # The client closed its end; nothing can be delivered any more.
            self.broken = True
