"""MCP JSON-RPC straight over the daemon's WebSocket (subprotocol "mcp"), no shim:
what a direct client sees, frame by frame."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from tests.conftest import DaemonProcess, scaled

__all__ = ["McpWsClient", "mcp_ws_clients"]

STEP_S = 30.0  # deadline of one reply; scaled by EXAI_TEST_TIMEOUT_SCALE


class McpWsClient:
    """MCP straight over the daemon's WebSocket (subprotocol "mcp"), no shim."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.pending: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.notifications: list[dict[str, Any]] = []
        self.closed = asyncio.Event()
        self._ids = itertools.count(1)
        self._loop = asyncio.get_running_loop()
        self._reader = self._loop.create_task(self._read())

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                future = self.pending.get(frame.get("id")) if "method" not in frame else None
                if future is not None and not future.done():
                    future.set_result(frame)
                else:
                    self.notifications.append(frame)
        finally:
            self.closed.set()
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the connection closed first"))
                    future.exception()  # retrieved: a waiter may or may not exist

    async def send_request(
        self, method: str, params: dict[str, Any], request_id: Any = None
    ) -> tuple[Any, asyncio.Future[dict[str, Any]]]:
        """Send a request; return its id and the future its response will complete."""
        rid = request_id if request_id is not None else next(self._ids)
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self.pending[rid] = future
        frame = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}
        await self.ws.send_str(json.dumps(frame))
        return rid, future

    async def request(
        self, method: str, params: dict[str, Any], timeout_s: float = STEP_S
    ) -> dict[str, Any]:
        _, future = await self.send_request(method, params)
        return await asyncio.wait_for(future, scaled(timeout_s))

    async def start_call(
        self, name: str, arguments: dict[str, Any], request_id: Any = None
    ) -> tuple[Any, asyncio.Future[dict[str, Any]]]:
        return await self.send_request(
            "tools/call", {"name": name, "arguments": arguments}, request_id
        )

    async def call(
        self, name: str, arguments: dict[str, Any], timeout_s: float = STEP_S
    ) -> dict[str, Any]:
        _, future = await self.start_call(name, arguments)
        return await asyncio.wait_for(future, scaled(timeout_s))

    async def cancel(self, request_id: Any) -> None:
        await self.ws.send_str(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": request_id, "reason": "test"},
                }
            )
        )

    async def initialize(self) -> dict[str, Any]:
        response = await self.request(
            "initialize",
            {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "e2e-test", "version": "1"},
            },
        )
        assert "result" in response, response
        await self.ws.send_str(
            json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
        )
        return response

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


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
