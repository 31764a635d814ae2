"""One client WebSocket: an outgoing queue with a byte bound, drained by one task.

A client that stops reading must not grow the daemon's memory or stall anyone
else: past `max_buffer_bytes` of unsent frames the connection is dropped (its
session then waits out the resume grace like any other disconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

from aiohttp import WSMsgType, web

from broker.session import Session

__all__ = ["CLOSE_SLOW_READER", "WsConnection"]

log = logging.getLogger("broker.connection")

CLOSE_SLOW_READER = 1008


class WsConnection:
    """Implements the router's ClientPeer over an aiohttp WebSocketResponse."""

    __slots__ = (
        "__weakref__",
        "_abort",
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
        # Only frames left unsent from before make a slow reader: one large answer to an
        # idle client is fine whatever its size.
        if waiting and self._buffered > self.max_buffer_bytes:
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
                    await ws.send_frame(data, WSMsgType.TEXT)
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
