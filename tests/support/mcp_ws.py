"""MCP JSON-RPC straight over the daemon's WebSocket (subprotocol "mcp"), no shim:
what a direct client sees, frame by frame."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from tests.conftest import STEP_S, DaemonProcess, scaled
from tests.support.jsonrpc import INITIALIZED, JsonObj, initialize_params, rpc_request
from tests.support.ws_peer import WsPeer

__all__ = ["McpWsClient", "mcp_ws_clients"]


class McpWsClient(WsPeer):
    """MCP straight over the daemon's WebSocket (subprotocol "mcp"), no shim.

    A response completes the future of its request; every other frame (notifications,
    requests from the daemon) is kept in `notifications`.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        super().__init__(ws)
        self.pending: dict[Any, asyncio.Future[JsonObj]] = {}
        self.notifications: list[JsonObj] = []
        self._ids = itertools.count(1)
        self.start_reading()

    def handle_frame(self, frame: Any) -> None:
        """A response completes its request's future; anything else is a notification."""
        future = self.pending.get(frame.get("id")) if "method" not in frame else None
        if future is not None and not future.done():
            future.set_result(frame)
        else:
            self.notifications.append(frame)

    def handle_close(self) -> None:
        """Fail every request still waiting: no answer can come any more."""
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the connection closed first"))
                future.exception()  # retrieved: a waiter may or may not exist

    async def send_request(
        self, method: str, params: dict[str, Any], request_id: Any = None
    ) -> tuple[Any, asyncio.Future[dict[str, Any]]]:
        """Send a request; return its id and the future its response will complete."""
        rid = request_id if request_id is not None else next(self._ids)
        future: asyncio.Future[JsonObj] = self._loop.create_future()
        self.pending[rid] = future
        await self.send_json(rpc_request(rid, method, params))
        return rid, future

    async def request(
        self, method: str, params: dict[str, Any], timeout_s: float = STEP_S
    ) -> dict[str, Any]:
        """Send a request and wait for its response."""
        _, future = await self.send_request(method, params)
        return await asyncio.wait_for(future, scaled(timeout_s))

    async def start_call(
        self, name: str, arguments: dict[str, Any], request_id: Any = None
    ) -> tuple[Any, asyncio.Future[dict[str, Any]]]:
        """Send a tools/call; its id and the future of its response."""
        return await self.send_request(
            "tools/call", {"name": name, "arguments": arguments}, request_id
        )

    async def call(
        self, name: str, arguments: dict[str, Any], timeout_s: float = STEP_S
    ) -> dict[str, Any]:
        """Run one tools/call to the end; its response."""
        _, future = await self.start_call(name, arguments)
        return await asyncio.wait_for(future, scaled(timeout_s))

    async def cancel(self, request_id: Any) -> None:
        """Send notifications/cancelled for `request_id`."""
        params = {"requestId": request_id, "reason": "test"}
        frame = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params}
        await self.send_json(frame)

    async def initialize(self) -> dict[str, Any]:
        """initialize (which must succeed) and notifications/initialized."""
        response = await self.request("initialize", initialize_params())
        assert "result" in response, response
        await self.send_json(INITIALIZED)
        return response


@contextlib.asynccontextmanager
async def mcp_ws_clients(
    daemon: DaemonProcess, count: int, autoping: bool = True
) -> AsyncIterator[list[McpWsClient]]:
    """`count` initialized MCP-over-WS sessions, all closed on exit."""
    async with aiohttp.ClientSession() as http:
        clients: list[McpWsClient] = []
        try:
            for _ in range(count):
                ws = await http.ws_connect(
                    daemon.url,
                    protocols=("mcp",),
                    autoping=autoping,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5),
                )
                client = McpWsClient(ws)
                clients.append(client)
                await client.initialize()
            yield clients
        finally:
            for client in clients:
                await client.aclose()
