"""Raw WebSocket exchanges with a daemon, one frame at a time and no reader task: for
tests that check the exact frames (and close codes) the wire carries, including the
refusals of a handshake or a hello. Every read has a deadline."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp

from tests.conftest import DaemonProcess, scaled
from tests.support.jsonrpc import INITIALIZED, JsonObj, initialize_params, rpc_request, tool_call

__all__ = [
    "RECV_TIMEOUT_S",
    "connect",
    "echo_mcp",
    "echo_op",
    "mcp_session",
    "op_hello",
    "recv_close",
    "recv_json",
]

RECV_TIMEOUT_S = 10.0  # default deadline of one frame; scaled by EXAI_TEST_TIMEOUT_SCALE


async def connect(
    http: aiohttp.ClientSession,
    daemon: DaemonProcess,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    protocols: tuple[str, ...] = (),
    path: str = "/",
) -> aiohttp.ClientWebSocketResponse:
    """Open a WebSocket to the daemon (raises WSServerHandshakeError on an HTTP refusal)."""
    return await http.ws_connect(
        f"ws://127.0.0.1:{daemon.port}{path}",
        headers=headers,
        params=params,
        protocols=protocols,
        timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=scaled(5.0)),
        max_msg_size=0,
    )


async def recv_json(ws: aiohttp.ClientWebSocketResponse) -> JsonObj:
    """The next data frame as a JSON object; fails instead of hanging."""
    msg = await ws.receive(timeout=scaled(RECV_TIMEOUT_S))
    assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
    frame = json.loads(msg.data)
    assert isinstance(frame, dict), frame
    return frame


async def recv_close(
    ws: aiohttp.ClientWebSocketResponse, timeout_s: float = RECV_TIMEOUT_S
) -> tuple[list[JsonObj], int | None]:
    """Read until the server closes: the data frames seen before, and the close code."""
    frames: list[JsonObj] = []
    deadline = time.monotonic() + scaled(timeout_s)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"the server did not close the connection; got {frames}")
        msg = await ws.receive(timeout=remaining)
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            frames.append(json.loads(msg.data))
            continue
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
        ):
            return frames, ws.close_code
        raise AssertionError(f"unexpected message while waiting for close: {msg}")


async def op_hello(
    http: aiohttp.ClientSession,
    daemon: DaemonProcess,
    *,
    token: str | None = None,
    session_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[aiohttp.ClientWebSocketResponse, JsonObj]:
    """Open an op-dialect session with `hello`; returns the socket and the hello_ack."""
    ws = await connect(http, daemon, headers=headers)
    hello: JsonObj = {"op": "hello"}
    if token is not None:
        hello["token"] = token
    if session_id is not None:
        hello["session_id"] = session_id
    await ws.send_str(json.dumps(hello))
    return ws, await recv_json(ws)


async def mcp_session(
    http: aiohttp.ClientSession,
    daemon: DaemonProcess,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> aiohttp.ClientWebSocketResponse:
    """An MCP-style client (subprotocol mcp) that has completed `initialize`."""
    ws = await connect(http, daemon, headers=headers, params=params, protocols=("mcp",))
    assert ws.protocol == "mcp"
    init = initialize_params("2025-06-18", client="raw-ws")
    await ws.send_str(json.dumps(rpc_request("init", "initialize", init)))
    reply = await recv_json(ws)
    assert reply.get("id") == "init" and "result" in reply, reply
    await ws.send_str(json.dumps(INITIALIZED))
    return ws


async def echo_mcp(ws: aiohttp.ClientWebSocketResponse, text: str, request_id: Any = None) -> None:
    """A JSON-RPC echo call answers with the same text (other frames are skipped)."""
    rid = request_id if request_id is not None else f"echo-{time.monotonic_ns()}"
    await ws.send_str(json.dumps(tool_call(rid, "echo", {"text": text})))
    for _ in range(50):
        frame = await recv_json(ws)
        if frame.get("id") == rid and "method" not in frame:
            assert "error" not in frame, frame
            assert frame["result"]["isError"] is False, frame
            assert frame["result"]["content"] == [{"type": "text", "text": text}], frame
            return
    raise AssertionError(f"no answer to echo call {rid!r}")


async def echo_op(ws: aiohttp.ClientWebSocketResponse, text: str) -> None:
    """An op-dialect call_tool echo is acked, then answered with the same text."""
    rid = f"echo-{time.monotonic_ns()}"
    frame = {"op": "call_tool", "request_id": rid, "name": "echo", "arguments": {"text": text}}
    await ws.send_str(json.dumps(frame))
    for _ in range(50):
        reply = await recv_json(ws)
        if reply.get("op") == "call_tool_res" and reply.get("request_id") == rid:
            assert "error" not in reply, reply
            assert reply["text"] == text, reply
            return
    raise AssertionError(f"no answer to op echo call {rid!r}")
