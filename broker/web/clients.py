"""The client WebSockets open now: counted against EXAI_WS_MAX_CONNECTIONS, closed
together ("going away") when the daemon stops.

With a token set, a socket that has not authenticated yet (no token on the upgrade, no
hello) only borrows its slot: when every slot is taken, the oldest such socket makes
room for the newcomer. Otherwise sockets that never say hello could fill every slot and
lock token holders out until the hello timeout, again and again.
"""

from __future__ import annotations

import asyncio

from broker.web.connection import WsConnection

__all__ = ["Clients"]


class Clients:
    """Every open client connection; the WebSocket handler adds and discards them."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        # In the order they opened (a dict keeps it): the oldest borrower goes first.
        self._open: dict[WsConnection, None] = {}

    def __len__(self) -> int:
        return len(self._open)

    @property
    def full(self) -> bool:
        return len(self._open) >= self.max_connections

    def add(self, conn: WsConnection) -> None:
        self._open[conn] = None

    def discard(self, conn: WsConnection) -> None:
        self._open.pop(conn, None)

    def make_room(self) -> WsConnection | None:
        """When full, give up the oldest unauthenticated connection's slot and return it
        (the caller closes it); None when every slot is held by an authenticated one."""
        for conn in self._open:
            if not conn.authenticated:
                del self._open[conn]
                return conn
        return None

    async def close_all(self, code: int, reason: str, timeout_s: float) -> None:
        """Close every connection after what is queued for it, waiting up to `timeout_s`
        for the frames (and the close) to leave."""
        conns = list(self._open)
        for conn in conns:
            conn.close(code, reason)
        senders = [conn.sender for conn in conns]
        if senders:
            await asyncio.wait(senders, timeout=timeout_s)
