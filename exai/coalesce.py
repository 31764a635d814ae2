"""Writes coalesced per loop iteration: every frame queued in one turn leaves in one write.

A burst of answers (or requests) then costs one system call and one wake-up of the
reader instead of one per frame. The owner says how bytes are written; this only
buffers and schedules.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["WriteCoalescer"]


class WriteCoalescer:
    """Append to `buffer` (or call `add`), then `schedule()`; `write` gets the batch."""

    __slots__ = ("_loop", "_scheduled", "_write", "buffer")

    def __init__(self, loop: asyncio.AbstractEventLoop, write: Callable[[bytes], None]) -> None:
        self._loop = loop
        self._write = write
        self._scheduled = False
        self.buffer = bytearray()

    def add(self, data: bytes) -> None:
        self.buffer += data
        self.schedule()

    def schedule(self) -> None:
        """Write the buffer at the end of this loop iteration (once, however often called)."""
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what is buffered now."""
        self._scheduled = False
        if self.buffer:
            data = bytes(self.buffer)
            self.buffer.clear()
            self._write(data)

    def discard(self) -> None:
        """Drop what is buffered (the other end is gone)."""
        self.buffer.clear()
