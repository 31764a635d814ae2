"""The metrics JSONL file: one line per finished call, written off the call path.

Calls only append a record to a bounded in-memory queue; one writer task batches
the queue to disk with aiofiles. A full queue drops (and counts) instead of
blocking a call; a failing disk is logged and retried, never fatal; the file
rotates by size with numbered backups.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os
import msgspec

__all__ = ["MetricsWriter"]

log = logging.getLogger("broker.observe.calllog")

RETRY_MAX_S = 5.0
# Lines wait this long for company before a write: one write (and one thread hop) per
# batch instead of per call when the daemon is lightly loaded.
BATCH_WINDOW_S = 0.05
BATCH_LINES = 512
# Lines kept for a retry while the disk refuses writes; past this they are dropped.
RETRY_BUFFER_MAX = 200_000


class MetricsWriter:
    def __init__(self, path: Path, *, max_bytes: int, backups: int, queue_max: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.queue_max = queue_max
        self.dropped = 0
        self.written = 0
        self._queue: deque[Any] = deque()
        self._pending = bytearray()
        self._pending_lines = 0
        self._wake = asyncio.Event()
        self._encoder = msgspec.json.Encoder()
        self._closing = False
        self._size = -1
        self._file: Any = None

    def record(self, record: Any) -> None:
        """Queue one record (a msgspec-encodable object). Never blocks, never raises."""
        if len(self._queue) >= self.queue_max:
            self.dropped += 1
            return
        self._queue.append(record)
        if not self._wake.is_set():
            self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue) + self._pending_lines

    async def run(self) -> None:
        """The writer task: batch, write, rotate; returns after `close` has flushed."""
        delay_s = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._closing and len(self._queue) < BATCH_LINES:
                await asyncio.sleep(BATCH_WINDOW_S)
            self._take_queue()
            if self._pending:
                try:
                    await self._write_pending()
                    delay_s = 0.1
                except OSError as exc:
                    log.error("cannot write %s (%s); retrying in %.1f s", self.path, exc, delay_s)
                    if self._closing:
                        await self._close_file()
                        return
                    await asyncio.sleep(delay_s)
                    delay_s = min(RETRY_MAX_S, delay_s * 2)
                    self._wake.set()
                    continue
            if self._closing and not self._queue:
                await self._close_file()
                return

    async def close(self, timeout_s: float = 10.0) -> None:
        """Flush every queued line, then stop the writer."""
        self._closing = True
        self._wake.set()

    def _take_queue(self) -> None:
        out = self._pending
        queue = self._queue
        if queue:
            lines = len(queue)
            out += self._encoder.encode_lines(queue)
            queue.clear()
            self._pending_lines += lines
        if len(out) > RETRY_BUFFER_MAX * 200:
            # The disk has been failing for a long time: keep the newest lines only.
            cut = out.index(b"\n", len(out) // 2) + 1
            self.dropped += out[:cut].count(b"\n")
            self._pending_lines -= out[:cut].count(b"\n")
            del out[:cut]

    async def _write_pending(self) -> None:
        """Write the pending lines, rotating whenever the next whole lines would not fit."""
        if self._size < 0:
            self._size = await _file_size(self.path)
        data = bytes(self._pending)
        offset = 0
        while offset < len(data):
            room = self.max_bytes - self._size
            end = len(data)
            if end - offset > room:
                end = data.rfind(b"\n", offset, offset + max(room, 0)) + 1
                if end <= offset:
                    if self._size > 0:
                        await self._close_file()
                        await self._rotate()
                        continue
                    end = data.index(b"\n", offset) + 1  # one line longer than a whole file
            await self._append(data[offset:end])
            lines = data.count(b"\n", offset, end)
            self.written += lines
            self._pending_lines -= lines
            del self._pending[: end - offset]
            offset = end

    async def _append(self, chunk: bytes) -> None:
        try:
            if self._file is None:
                self._file = await aiofiles.open(self.path, "ab")
            await self._file.write(chunk)
            await self._file.flush()
        except OSError:
            await self._close_file()
            raise
        self._size += len(chunk)

    async def _close_file(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                await file.close()
            except OSError as exc:
                log.error("cannot close %s: %s", self.path, exc)

    async def _rotate(self) -> None:
        if self.backups <= 0:
            await aiofiles.os.remove(self.path)
        else:
            for index in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if await aiofiles.os.path.exists(older):
                    await aiofiles.os.replace(
                        older, self.path.with_name(f"{self.path.name}.{index + 1}")
                    )
            await aiofiles.os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._size = 0


async def _file_size(path: Path) -> int:
    try:
        return (await aiofiles.os.stat(path)).st_size
    except FileNotFoundError:
        return 0
