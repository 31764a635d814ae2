"""The requests a hosted instance makes for itself, whatever its wire: `initialize` and
the broker's own queries (a tool list, a log level).

They go through the instance's relay like a client's, under negative handles no call
ever has, and their replies resolve futures here instead of going to a client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec

from exai.relay import Relay, RelayEvent, Reply

__all__ = ["HANDSHAKE", "OwnRequests", "initialize_params"]

HANDSHAKE = -1
_FIRST_QUERY = -2

# (handle, method, params, progress token): how an instance sends a request.
Send = Callable[[int, str, bytes | None, bytes | None], None]


def initialize_params(protocol_version: str, capabilities: bytes, client_info: bytes) -> bytes:
    """The params of `initialize`, the client's own JSON kept as it is."""
    return (
        b'{"protocolVersion":'
        + msgspec.json.encode(protocol_version)
        + b',"capabilities":'
        + capabilities
        + b',"clientInfo":'
        + client_info
        + b"}"
    )


class OwnRequests:
    """The handshake's future and the queries' futures of one instance."""

    def __init__(self, relay: Relay, loop: asyncio.AbstractEventLoop) -> None:
        self._relay = relay
        self._loop = loop
        self.handshake: asyncio.Future[Reply] | None = None
        self._queries: dict[int, asyncio.Future[Reply]] = {}
        self._next = _FIRST_QUERY

    def begin_handshake(self) -> asyncio.Future[Reply]:
        self.handshake = self._loop.create_future()
        return self.handshake

    async def query(self, send: Send, method: str, params: bytes | None, timeout_s: float) -> Reply:
        """Send a request of our own and wait for its reply; raises TimeoutError, or
        whatever `fail` set."""
        handle = self._next
        self._next -= 1
        reply: asyncio.Future[Reply] = self._loop.create_future()
        self._queries[handle] = reply
        send(handle, method, params, None)
        try:
            return await asyncio.wait_for(asyncio.shield(reply), timeout_s)
        finally:
            if self._queries.pop(handle, None) is not None:
                self._relay.forget(handle)

    def resolve(self, event: RelayEvent) -> bool:
        """True when `event` is the reply to one of ours (and it is handed over)."""
        if not isinstance(event, Reply) or event.handle >= 0:
            return False
        waiter = self.waiter(event.handle)
        if waiter is not None and not waiter.done():
            waiter.set_result(event)
        return True

    def waiter(self, handle: int) -> asyncio.Future[Reply] | None:
        """The future waiting for `handle`'s reply (taken out, for a query)."""
        if handle == HANDSHAKE:
            return self.handshake
        return self._queries.pop(handle, None)

    def fail_queries(self, exc: Exception) -> None:
        queries, self._queries = self._queries, {}
        for waiter in queries.values():
            if not waiter.done():
                waiter.set_exception(exc)
