"""Server-sent events, read: the `text/event-stream` decoder a remote instance feeds. Pure.

Chunks go in as they arrive; whole events come out. Only the `data` of `message`
events matters to MCP (with `id` and `retry` kept for resuming a broken stream); an
event whose data grows past the limit keeps only its head, so a hostile server cannot
make the daemon buffer without bound.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["DEFAULT_RETRY_S", "MAX_RETRY_S", "SseEvent", "SseParser"]

_EOL = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"
DEFAULT_RETRY_S = 0.5
MAX_RETRY_S = 30.0
# What is kept of an event over the limit: enough to find the id of what it answers.
_LONG_LINE_HEAD = 4096


class SseEvent(NamedTuple):
    """One event's `data` (lines joined with LF); only its head when it was too long."""

    data: bytes
    whole: bool


class SseParser:
    """A `text/event-stream` decoder (the WHATWG rules), bytes in, events out.

    Sans I/O. Remembers the last event id and the `retry:` the stream asked for, which
    is what reconnecting needs. Nothing over `max_data_bytes` is kept: such an event
    comes out with only its head, enough to find the request it answers."""

    def __init__(self, max_data_bytes: int) -> None:
        self.last_id: str | None = None
        self.retry_ms: int | None = None
        # Events dispatched, empty ones too: tells a reconnection that brought something.
        self.dispatched = 0
        self._max = max_data_bytes
        self._id: str | None = None
        self.restart()

    def restart(self) -> None:
        """Before reading a new connection: what the old one left half done is dropped;
        the last event id and `retry:` stay."""
        self._line = bytearray()
        self._data = bytearray()
        self._has_data = False
        self._type = b""
        self._id = self.last_id
        self._head: bytes | None = None  # set while the event is over the limit
        self._cut = False  # the rest of an over-long line is being dropped
        self._skip_lf = False
        self._start: bytearray | None = bytearray()

    @property
    def retry_s(self) -> float:
        if self.retry_ms is None:
            return DEFAULT_RETRY_S
        return min(self.retry_ms / 1000, MAX_RETRY_S)

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events `chunk` completes."""
        if self._start is not None:
            # A byte order mark may open the stream, split over chunks like anything else.
            self._start += chunk
            if len(self._start) < len(_BOM) and _BOM.startswith(self._start):
                return []
            chunk, self._start = bytes(self._start).removeprefix(_BOM), None
        events: list[SseEvent] = []
        pos = 0
        if self._skip_lf and chunk:
            self._skip_lf = False
            pos = 1 if chunk.startswith(b"\n") else 0
        while (end := _EOL.search(chunk, pos)) is not None:
            self._append(chunk[pos : end.start()])
            # A CR at the end of a chunk may be the first half of a CRLF.
            self._skip_lf = end.group() == b"\r" and end.end() == len(chunk)
            pos = end.end()
            line, self._line = bytes(self._line), bytearray()
            if self._cut:
                self._cut = False
            else:
                event = self._take(line)
                if event is not None:
                    events.append(event)
        self._append(chunk[pos:])
        return events

    def _append(self, part: bytes) -> None:
        if self._cut or not part:
            return
        self._line += part
        if len(self._line) > self._max:
            self._overflow(bytes(self._line[:_LONG_LINE_HEAD]).removeprefix(b"data:").lstrip())
            self._line = bytearray()
            self._cut = True

    def _overflow(self, head: bytes) -> None:
        if self._head is None:
            self._head = bytes(self._data[:_LONG_LINE_HEAD]) if self._has_data else head
            self._data = bytearray()

    def _take(self, line: bytes) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(b":"):
            return None
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            if self._head is None:
                if self._has_data:
                    self._data += b"\n"
                self._data += value
                self._has_data = True
                if len(self._data) > self._max:
                    self._overflow(b"")
        elif name == b"event":
            self._type = value
        elif name == b"id":
            if b"\0" not in value:
                self._id = value.decode(errors="replace")
        elif name == b"retry" and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> SseEvent | None:
        self.last_id = self._id
        head, data, has_data, kind = self._head, bytes(self._data), self._has_data, self._type
        self._head, self._data, self._has_data, self._type = None, bytearray(), False, b""
        if not has_data and head is None:
            return None
        self.dispatched += 1
        if kind not in (b"", b"message"):
            return None
        return SseEvent(head, False) if head is not None else SseEvent(data, True)
