"""The part every JSON-over-WebSocket test client shares: one reader task that parses
each TEXT frame and hands it to the client, a `closed` event, and a quiet close."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp

from tests.support.jsonrpc import JsonObj

__all__ = ["WsPeer"]


class WsPeer:
    """A WebSocket whose TEXT frames a reader task parses and hands to `handle_frame`.

    Subclasses call `start_reading()` once their opening exchange is done (at once, or
    after a hello they read themselves) and override `handle_frame` / `handle_close`.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.closed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._reader: asyncio.Task[None] | None = None

    @property
    def close_code(self) -> int | None:
        """The close code once the connection closed (None before)."""
        return self.ws.close_code

    def start_reading(self) -> None:
        """Start the reader task: from now on every frame goes to `handle_frame`."""
        self._reader = self._loop.create_task(self._read())

    def handle_frame(self, frame: Any) -> None:
        """One parsed TEXT frame from the daemon."""
        raise NotImplementedError

    def handle_close(self) -> None:
        """The connection closed (or the reader stopped): nothing more will arrive."""

    async def send_json(self, frame: JsonObj) -> None:
        """Send one frame as JSON text."""
        await self.ws.send_str(json.dumps(frame))

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    self.handle_frame(json.loads(msg.data))
        finally:
            self.closed.set()
            self.handle_close()

    async def aclose(self) -> None:
        """Close the connection (quietly: it may be gone already) and stop the reader."""
        with contextlib.suppress(Exception):
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
