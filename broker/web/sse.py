"""Server-sent events: how one event is spelled, and the bounded buffer a stream is
resumed from. Pure: no sockets, no loop.

An event id is `<stream>-<seq>`: the stream's number within its session (0 is the
session's standalone GET stream) and the event's place in it, so a `Last-Event-ID`
names both which stream to resume and from where.
"""

from __future__ import annotations

from collections import deque

__all__ = ["KEEPALIVE", "ReplayBuffer", "event", "event_id", "parse_event_id"]

# A comment line: clients ignore it, but writing it finds a connection that is gone.
KEEPALIVE = b": keepalive\n\n"


def event_id(stream: int, seq: int) -> str:
    return f"{stream}-{seq}"


def parse_event_id(text: str) -> tuple[int, int] | None:
    """(stream, seq) of an event id we wrote; None for anything else."""
    stream, sep, seq = text.strip().partition("-")
    if not sep or not stream.isdigit() or not seq.isdigit():
        return None
    return int(stream), int(seq)


def event(stream: int, seq: int, data: bytes) -> bytes:
    """One `message` event carrying one JSON-RPC message.

    Our JSON never holds a raw newline (msgspec escapes them inside strings, and the
    messages are compact), but a hosted server's bytes pass through as they came, so
    each line still gets its own `data:` field.
    """
    lines = data.split(b"\n") if b"\n" in data else (data,)
    head = f"id: {event_id(stream, seq)}\nevent: message\n".encode()
    return head + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"


class ReplayBuffer:
    """The last events of one stream, bounded by count and bytes, by sequence number.

    Sequence numbers start at 1 and never repeat. The oldest events go first when a
    bound is passed; a reader that falls behind them has lost events (`missed`).
    """

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._events: deque[tuple[int, bytes]] = deque()
        self._bytes = 0
        self.last_seq = 0

    def append(self, data: bytes) -> int:
        """Keep `data` (an encoded event is built from its seq by the caller); its seq."""
        self.last_seq += 1
        self._events.append((self.last_seq, data))
        self._bytes += len(data)
        while len(self._events) > 1 and (
            len(self._events) > self.max_events or self._bytes > self.max_bytes
        ):
            _, old = self._events.popleft()
            self._bytes -= len(old)
        return self.last_seq

    @property
    def first_seq(self) -> int:
        """The oldest seq still held (last_seq + 1 when empty)."""
        return self._events[0][0] if self._events else self.last_seq + 1

    def missed(self, after: int) -> bool:
        """Has a reader that saw everything up to `after` lost events since?"""
        return after + 1 < self.first_seq

    def after(self, seq: int) -> list[tuple[int, bytes]]:
        """The events held with a sequence number above `seq`, oldest first."""
        if seq >= self.last_seq:
            return []
        return [(s, data) for s, data in self._events if s > seq]
