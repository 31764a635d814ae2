"""The client WebSockets open now: counted against EXAI_WS_MAX_CONNECTIONS, closed
together ("going away") when the daemon stops."""

from __future__ import annotations

import asyncio

from broker.web.connection import WsConnection

__all__ = ["Clients"]


class Clients:
    """Every open client connection; the WebSocket handler adds and discards them."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self._open: set[WsConnection] = set()

    def __len__(self) -> int:
        return len(self._open)

    @property
    def full(self) -> bool:
        return len(self._open) >= self.max_connections

    def add(self, conn: WsConnection) -> None:
        self._open.add(conn)

    def discard(self, conn: WsConnection) -> None:
        self._open.discard(conn)

    async def close_all(self, code: int, reason: str, timeout_s: float) -> None:
        """Close every connection after what is queued for it, waiting up to `timeout_s`
        for the frames (and the close) to leave."""
        conns = list(self._open)
        for conn in conns:
            conn.close(code, reason)
        senders = [conn.sender for conn in conns]
        if senders:
            await asyncio.wait(senders, timeout=timeout_s)
