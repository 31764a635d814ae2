"""WebSocket load clients, one connection each: the op dialect, MCP over WebSocket, and
the raw-echo baseline (a text frame out, the same frame back, no protocol at all)."""

from __future__ import annotations

import contextlib
from typing import Any

import aiohttp
import orjson

from benchmarks.closedloop import ClientGone
from benchmarks.dialects import (
    BAD_RESULT,
    Scenario,
    mcp_call,
    mcp_outcome,
    op_call,
    op_hello,
    op_outcome,
)

__all__ = ["McpWsClient", "OpWsClient", "RawWsClient"]

MAX_FRAME_BYTES = 64 * 1024 * 1024
_DATA_TYPES = (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY)


class _WsClient:
    protocols: tuple[str, ...] = ()

    def __init__(
        self, http: aiohttp.ClientSession, url: str, scenario: Scenario, name: str
    ) -> None:
        self.http = http
        self.url = url
        self.text = scenario.expected_text
        self.tool = scenario.tool
        self.name = name
        self.arguments_json = scenario.arguments_json
        self.sent = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    async def open(self) -> None:
        self._ws = await self.http.ws_connect(
            self.url,
            protocols=self.protocols,
            max_msg_size=MAX_FRAME_BYTES,
            compress=0,
            autoping=True,
        )

    async def receive_raw(self) -> str | bytes:
        ws = self._ws
        if ws is None:
            raise ClientGone("not connected")
        msg = await ws.receive()
        if msg.type not in _DATA_TYPES:
            raise ClientGone(f"websocket {msg.type.name}, close code {ws.close_code}")
        data: str | bytes = msg.data
        return data

    async def receive(self) -> dict[str, Any]:
        data = await self.receive_raw()
        frame = orjson.loads(data)
        if not isinstance(frame, dict):
            raise ClientGone(f"unexpected frame {data[:200]!r}")
        return frame

    async def send(self, frame: str) -> None:
        if self._ws is None or self._ws.closed:
            raise ClientGone("connection closed")
        try:
            await self._ws.send_str(frame)
        except (ConnectionError, RuntimeError) as exc:
            raise ClientGone(str(exc)) from exc

    async def close(self) -> None:
        if self._ws is not None:
            # Code 1000: the session ends now instead of waiting out the resume grace.
            with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
                await self._ws.close()


class OpWsClient(_WsClient):
    """EX-AI op dialect: `hello`, then `call_tool` → `call_tool_ack` → `call_tool_res`."""

    async def open(self) -> None:
        await super().open()
        await self.send(op_hello(self.name))
        ack = await self.receive()
        if ack.get("op") != "hello_ack" or not ack.get("ok"):
            raise ClientGone(f"hello refused: {ack}")

    async def call(self) -> str | None:
        self.sent += 1
        request_id = f"r{self.sent}"
        await self.send(op_call(request_id, self.arguments_json, self.tool))
        while True:
            frame = await self.receive()
            answer_id = frame.get("request_id")
            if frame.get("op") == "call_tool_res" and answer_id == request_id:
                return op_outcome(frame, self.text)
            if answer_id is None and "error" in frame:
                return op_outcome(frame, self.text)
            # call_tool_ack, progress, or a late answer to a call we gave up on.


class McpWsClient(_WsClient):
    """MCP JSON-RPC over WebSocket (subprotocol `mcp`), `tools/call` straight away."""

    protocols = ("mcp",)

    async def call(self) -> str | None:
        self.sent += 1
        request_id = self.sent
        await self.send(mcp_call(request_id, self.arguments_json, self.tool))
        while True:
            frame = await self.receive()
            if frame.get("id") == request_id:
                return mcp_outcome(frame, self.text)
            # notifications, or a late answer to a call we gave up on.


class RawWsClient(_WsClient):
    """Baseline: the echo text as one text frame to a bare aiohttp echo server, and back."""

    async def call(self) -> str | None:
        await self.send(self.text)
        return None if await self.receive_raw() == self.text else BAD_RESULT
