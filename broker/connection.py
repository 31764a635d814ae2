"""One client WebSocket: an outgoing queue with a byte bound, drained by one task.

A client that stops reading must not grow the daemon's memory or stall anyone
else: past `max_buffer_bytes` of unsent frames the connection is dropped (its
session then waits out the resume grace like any other disconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from aiohttp import WSMsgType, web

from broker.session import Session

__all__ = ["CLOSE_SLOW_READER", "WsConnection"]

log = logging.getLogger("broker.connection")

CLOSE_SLOW_READER = 1008
# How long the socket may refuse data while answers pile up before the client is dropped.
SLOW_READER_GRACE_S = 1.0
HARD_LIMIT_FACTOR = 8


class WsConnection:
    """Implements the router's ClientPeer over an aiohttp WebSocketResponse."""

    __slots__ = (
        "__weakref__",
        "_abort",
        "_blocked_since",
        "_buffered",
        "_closing",
        "_queue",
        "_wake",
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
    ) -> None:
        self._ws = ws
        self._abort = abort
        self._queue: deque[bytes] = deque()
        self._buffered = 0
        self._blocked_since: float | None = None
        self._wake = asyncio.Event()
        self._closing: tuple[int, str] | None = None
        self.max_buffer_bytes = max_buffer_bytes
        self.session: Session | None = None
        self.authenticated = False
        self.dialect = "mcp"
        self.remote = remote
        self.sender = asyncio.get_running_loop().create_task(self._drain())

    def send(self, data: bytes) -> None:
        if self._closing is not None:
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
                await self._wake.wait()
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
