"""The EX-AI op dialect over aiohttp: the one test client for it.

`OpClient` opens a session with `hello` (optionally with a token), then one reader task
sorts every frame to the call it belongs to, so a test can run many calls at once on
one session and look at each call's ack, progress and result. `op_clients` /
`op_client` open sessions on a daemon and always close them; `op_text` / `op_error`
read a call_tool_res.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from tests.conftest import STEP_S, DaemonProcess, scaled
from tests.support.jsonrpc import JsonObj
from tests.support.ws_peer import WsPeer

__all__ = ["OpCall", "OpClient", "op_client", "op_clients", "op_error", "op_text"]


class OpCall:
    """One op-dialect call as the client sees it."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.request_id = request_id
        self.acked = asyncio.Event()
        self.progress: list[JsonObj] = []
        self.result: asyncio.Future[JsonObj] = loop.create_future()

    async def wait(self, timeout_s: float = STEP_S) -> JsonObj:
        """The call's call_tool_res frame."""
        return await asyncio.wait_for(asyncio.shield(self.result), scaled(timeout_s))

    async def wait_ack(self, timeout_s: float = STEP_S) -> None:
        """Wait for the call's call_tool_ack."""
        await asyncio.wait_for(self.acked.wait(), scaled(timeout_s))


class OpClient(WsPeer):
    """An op-dialect session on its own WebSocket.

    Every frame is kept in `frames`; a frame of a call this client started goes to its
    `OpCall`, any other frame to the `other` queue.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session_id: str) -> None:
        super().__init__(ws)
        self.session_id = session_id
        self.calls: dict[str, OpCall] = {}
        self.frames: list[JsonObj] = []
        self.other: asyncio.Queue[JsonObj] = asyncio.Queue()
        self._ids = itertools.count(1)

    async def hello(self, token: str | None = None) -> JsonObj:
        """Open the session (with `token` when given); the hello_ack, which must be ok."""
        frame: JsonObj = {"op": "hello", "session_id": self.session_id}
        if token:
            frame["token"] = token
        await self.send_json(frame)
        msg = await self.ws.receive(timeout=scaled(STEP_S))
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        ack: JsonObj = json.loads(msg.data)
        assert ack.get("op") == "hello_ack" and ack.get("ok") is True, ack
        self.start_reading()
        return ack

    def handle_frame(self, frame: Any) -> None:
        """Sort one frame to its call (ack, progress, result) or to `other`."""
        self.frames.append(frame)
        call = self.calls.get(str(frame.get("request_id")))
        op = frame.get("op")
        if call is None:
            self.other.put_nowait(frame)
        elif op == "call_tool_ack":
            call.acked.set()
        elif op == "progress":
            call.progress.append(frame)
        elif op == "call_tool_res" and not call.result.done():
            call.result.set_result(frame)
        else:
            self.other.put_nowait(frame)

    async def start(self, name: str, arguments: JsonObj, request_id: str | None = None) -> OpCall:
        """Send call_tool and return at once; the call's frames arrive on the OpCall."""
        rid = request_id or f"{self.session_id}-{next(self._ids)}"
        call = OpCall(rid, self._loop)
        self.calls[rid] = call
        frame = {"op": "call_tool", "request_id": rid, "name": name, "arguments": arguments}
        await self.send_json(frame)
        return call

    async def call(self, name: str, arguments: JsonObj, timeout_s: float = STEP_S) -> JsonObj:
        """Run one call to the end; its call_tool_res frame."""
        return await (await self.start(name, arguments)).wait(timeout_s)

    async def cancel(self, request_id: str) -> None:
        """Ask the daemon to cancel the call `request_id`."""
        await self.send_json({"op": "cancel", "request_id": request_id})


@contextlib.asynccontextmanager
async def op_clients(
    daemon: DaemonProcess, *names: str, autoping: bool = True, token: str | None = None
) -> AsyncIterator[list[OpClient]]:
    """Open one op-dialect session per name (its session id's prefix), all closed on exit.

    `autoping=False` makes a client that never answers the daemon's pings.
    """
    async with aiohttp.ClientSession() as http:
        clients: list[OpClient] = []
        try:
            for name in names:
                ws = await http.ws_connect(
                    daemon.url, autoping=autoping, timeout=aiohttp.ClientWSTimeout(ws_close=5)
                )
                client = OpClient(ws, f"{name}-{uuid.uuid4().hex[:8]}")
                clients.append(client)
                await client.hello(token)
            yield clients
        finally:
            for client in clients:
                await client.aclose()


@contextlib.asynccontextmanager
async def op_client(
    daemon: DaemonProcess, name: str = "op", token: str | None = None
) -> AsyncIterator[OpClient]:
    """One op-dialect session on the daemon; closed (code 1000, ending it) on exit."""
    async with op_clients(daemon, name, token=token) as (client,):
        yield client


def op_error(frame: JsonObj) -> JsonObj:
    """The error object of a failed call_tool_res (fails if the call succeeded)."""
    assert frame.get("op") == "call_tool_res", frame
    error = frame.get("error")
    assert isinstance(error, dict), f"expected an error, got {frame}"
    return error


def op_text(frame: JsonObj) -> str:
    """The text of a successful call_tool_res (fails if the call failed)."""
    assert frame.get("op") == "call_tool_res", frame
    assert "error" not in frame and not frame.get("isError"), f"expected success, got {frame}"
    return str(frame["text"])
