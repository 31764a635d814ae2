"""One client WebSocket: an outgoing queue with a byte bound, drained by one task.

A client that stops reading must not grow the daemon's memory or stall anyone
else: past `max_buffer_bytes` of unsent frames the connection is dropped (its
session then waits out the resume grace like any other disconnect).

While the socket takes data as fast as it comes (the usual case), a frame is written
at once from `send` instead of waking the sender task: no task switch per answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from aiohttp import WSMsgType, web

from broker.calls.session import Session
from broker.router.codec import Dialect

__all__ = ["CLOSE_SLOW_READER", "WsConnection"]

log = logging.getLogger("broker.web.connection")

CLOSE_SLOW_READER = 1008
# How long the socket may refuse data while answers pile up before the client is dropped.
SLOW_READER_GRACE_S = 1.0
HARD_LIMIT_FACTOR = 8
# Room left for the WebSocket frame header when judging whether a frame fits the
# transport's buffer without pausing the writer.
_FRAME_HEADER_MAX = 14


class WsConnection:
    """Implements the router's ClientPeer over an aiohttp WebSocketResponse."""

    __slots__ = (
        "__weakref__",
        "_abort",
        "_blocked_since",
        "_buffered",
        "_closing",
        "_direct_max",
        "_idle",
        "_queue",
        "_wake",
        "_write_buffer_size",
        "_ws",
        "authenticated",
        "dialect",
        "max_buffer_bytes",
        "remote",
        "sender",
        "session",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        max_buffer_bytes: int,
        remote: str,
        abort: Callable[[], None],
        transport: asyncio.Transport | None = None,
    ) -> None:
        self._ws = ws
        self._abort = abort
        self._direct_max = -1
        self._write_buffer_size: Callable[[], int] = _unknown_buffer_size
        if transport is not None:
            _, high = transport.get_write_buffer_limits()
            self._direct_max = high - _FRAME_HEADER_MAX
            self._write_buffer_size = transport.get_write_buffer_size
        # True while the sender task waits for work with nothing queued.
        self._idle = False
        self._queue: deque[bytes] = deque()
        self._buffered = 0
        self._blocked_since: float | None = None
        self._wake = asyncio.Event()
        self._closing: tuple[int, str] | None = None
        self.max_buffer_bytes = max_buffer_bytes
        self.session: Session | None = None
        self.authenticated = False
        self.dialect = Dialect.MCP
        self.remote = remote
        self.sender = asyncio.get_running_loop().create_task(self._drain())

    def send(self, data: bytes) -> None:
        if self._closing is not None:
            return
        # Only when nothing is queued: frames must leave in the order they were sent.
        if (
            self._idle
            and not self._queue
            and len(data) <= self._direct_max
            and self._write_buffer_size() == 0
            and self._write_now(data)
        ):
            return
        waiting = self._buffered
        self._queue.append(data)
        self._buffered += len(data)
        if waiting and self._buffered > self.max_buffer_bytes and self._stuck():
            log.warning(
                "dropping connection %s: client is not reading (%d bytes unsent)",
                self.remote,
                self._buffered,
            )
            self._queue.clear()
            self._buffered = 0
            self._closing = (CLOSE_SLOW_READER, "client too slow to read its responses")
            # A peer that does not read cannot receive a close frame either: cut the socket.
            self._abort()
            return
        self._wake.set()

    def _write_now(self, data: bytes) -> bool:
        """Write one frame without the sender task. False: queue it instead.

        With the transport's buffer empty and the frame under its high-water mark the
        write cannot pause the writer, so `send_frame` finishes without suspending.
        """
        if self._ws.closed:
            return False
        coro = self._ws.send_frame(data, WSMsgType.TEXT)
        try:
            coro.send(None)
        except StopIteration:
            return True
        except (ConnectionError, RuntimeError):
            # The peer went away mid-send, as in the sender task: the frame is lost
            # either way, and the reader side notices and cleans up.
            self._queue.clear()
            self._buffered = 0
            self._idle = False
            self.sender.cancel()
            return True
        # It waits for the socket to drain after all. The frame is already with the
        # transport, so only the wait is dropped; later frames queue behind it.
        coro.close()
        return True

    def _stuck(self) -> bool:
        """Is the client really not reading, rather than receiving a burst?

        A burst of answers (several results read from a worker at once) may exceed the
        bound for a moment. The sender only yields to the loop while the socket refuses
        data, so `_blocked_since` set here means the socket is full; the client is slow
        when that has lasted past the grace, or the backlog is far past the bound.
        """
        if self._buffered > HARD_LIMIT_FACTOR * self.max_buffer_bytes:
            return True
        since = self._blocked_since
        return since is not None and time.monotonic() - since > SLOW_READER_GRACE_S

    def close(self, code: int, reason: str) -> None:
        """Close after the frames already queued have been sent."""
        if self._closing is None:
            self._closing = (code, reason)
            self._wake.set()

    @property
    def closing(self) -> bool:
        return self._closing is not None

    async def _drain(self) -> None:
        ws = self._ws
        queue = self._queue
        try:
            while True:
                self._idle = not queue and self._closing is None
                await self._wake.wait()
                self._idle = False
                self._wake.clear()
                while queue:
                    data = queue.popleft()
                    self._buffered -= len(data)
                    self._blocked_since = time.monotonic()
                    await ws.send_frame(data, WSMsgType.TEXT)
                    self._blocked_since = None
                if self._closing is not None:
                    code, reason = self._closing
                    await ws.close(code=code, message=reason.encode())
                    return
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            # The peer went away mid-send; the reader side notices and cleans up.
            queue.clear()
            self._buffered = 0

    async def aclose(self) -> None:
        """Stop the sender task (the socket is already closed or closing)."""
        if not self.sender.done():
            self.sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sender


def _unknown_buffer_size() -> int:
    return -1
