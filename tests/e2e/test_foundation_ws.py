"""Direct WebSocket clients: the EX-AI op dialect and MCP JSON-RPC straight over the socket.

A raw aiohttp client on 127.0.0.1 talks to a real daemon; frames are checked as the
wire carries them, including the exact JSON type of every id sent back.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.conftest import DaemonProcess
from tests.support.jsonrpc import initialize_params, rpc_request
from tests.support.raw_ws import connect, op_hello, recv_json


async def send(ws: aiohttp.ClientWebSocketResponse, frame: dict[str, Any]) -> None:
    """Send one frame as JSON text."""
    await ws.send_str(json.dumps(frame))


async def request(ws: aiohttp.ClientWebSocketResponse, frame: dict[str, Any]) -> dict[str, Any]:
    """Send one frame and return the next one received."""
    await send(ws, frame)
    return await recv_json(ws)


# --- op dialect ----------------------------------------------------------------------


async def test_op_hello_opens_a_new_session(
    daemon: DaemonProcess, http: aiohttp.ClientSession
) -> None:
    """hello is acknowledged with the client's own session id, not resumed, naming the server."""
    ws, ack = await op_hello(http, daemon, session_id="op-session-1")
    async with ws:
        assert ack["op"] == "hello_ack"
        assert ack["ok"] is True
        assert ack["session_id"] == "op-session-1"
        assert ack["resumed"] is False
        assert ack["server"]["name"] == "exai-broker"


async def test_op_list_tools_and_health(daemon: DaemonProcess, http: aiohttp.ClientSession) -> None:
    """list_tools answers with the catalog; health answers with the live snapshot."""
    ws, _ = await op_hello(http, daemon, session_id="op-session-2")
    async with ws:
        listing = await request(ws, {"op": "list_tools"})
        assert listing["op"] == "list_tools_res"
        names = {tool["name"] for tool in listing["tools"]}
        assert {"version", "listmodels", "echo", "sleep"} <= names
        health = await request(ws, {"op": "health"})
        assert health["op"] == "health_res"
        snapshot = health["health"]
        assert snapshot["ready"] is True
        assert snapshot["sessions"] == 1
        assert len(snapshot["workers"]) == 2


async def test_op_call_tool_is_acked_then_answered(
    daemon: DaemonProcess, http: aiohttp.ClientSession
) -> None:
    """call_tool gets call_tool_ack, then call_tool_res with outputs and text, same request_id."""
    text = "op dialect · héllo"
    ws, _ = await op_hello(http, daemon, session_id="op-session-3")
    async with ws:
        for request_id in ("req-1 ✓", 7, 0):
            call = {"op": "call_tool", "request_id": request_id, "name": "echo",
                    "arguments": {"text": text}}  # fmt: skip
            ack = await request(ws, call)
            assert ack == {"op": "call_tool_ack", "request_id": request_id}
            assert type(ack["request_id"]) is type(request_id)
            res = await recv_json(ws)
            assert res["op"] == "call_tool_res"
            assert res["request_id"] == request_id
            assert type(res["request_id"]) is type(request_id)
            assert res["outputs"] == [{"type": "text", "text": text}]
            assert res["text"] == text
            assert "error" not in res


async def test_op_tool_error_and_unknown_tool(
    daemon: DaemonProcess, http: aiohttp.ClientSession
) -> None:
    """A raising tool answers EXEC_ERROR with its message; an unknown tool TOOL_NOT_FOUND."""
    ws, _ = await op_hello(http, daemon, session_id="op-session-4")
    async with ws:
        assert (
            await request(
                ws,
                {
                    "op": "call_tool",
                    "request_id": "f",
                    "name": "fail",
                    "arguments": {"message": "kaput"},
                },
            )
        )["op"] == "call_tool_ack"
        failed = await recv_json(ws)
        missing = await request(
            ws, {"op": "call_tool", "request_id": "m", "name": "nope", "arguments": {}}
        )
    assert failed["op"] == "call_tool_res" and failed["request_id"] == "f"
    assert failed["error"]["code"] == "EXEC_ERROR"
    assert "kaput" in failed["error"]["message"]
    assert missing["op"] == "call_tool_res" and missing["request_id"] == "m"
    assert missing["error"]["code"] == "TOOL_NOT_FOUND"


async def test_op_unknown_op_is_an_error_frame_and_the_session_lives_on(
    daemon: DaemonProcess, http: aiohttp.ClientSession
) -> None:
    """An unknown op gets an error frame; the same connection then serves calls normally."""
    ws, _ = await op_hello(http, daemon, session_id="op-session-5")
    async with ws:
        error = await request(ws, {"op": "frobnicate"})
        assert error["op"] == "error"
        assert error["error"]["code"] == "INVALID_FRAME"
        assert "frobnicate" in error["error"]["message"]
        garbage = await request(ws, {"no": "op"})
        assert garbage["op"] == "error"
        await ws.send_str("this is not json")
        assert (await recv_json(ws))["op"] == "error"
        ack = await request(
            ws, {"op": "call_tool", "request_id": 1, "name": "echo", "arguments": {"text": "alive"}}
        )
        assert ack["op"] == "call_tool_ack"
        res = await recv_json(ws)
        assert res["text"] == "alive"
        assert not ws.closed
    async with http.get(f"http://127.0.0.1:{daemon.port}/health") as response:
        assert (await response.json())["bad_frames"] == 3


# --- MCP JSON-RPC over the WebSocket -------------------------------------------------


async def mcp_ws(
    http: aiohttp.ClientSession, daemon: DaemonProcess
) -> aiohttp.ClientWebSocketResponse:
    """A WebSocket that offers the `mcp` subprotocol and speaks JSON-RPC from the first frame."""
    ws = await connect(http, daemon, protocols=("mcp",))
    assert ws.protocol == "mcp"
    return ws


INIT_PARAMS = initialize_params("2025-06-18", client="raw-ws-test")


async def test_mcp_over_ws_session(daemon: DaemonProcess, http: aiohttp.ClientSession) -> None:
    """initialize, initialized, ping, tools/list and tools/call work as a plain MCP server."""
    async with await mcp_ws(http, daemon) as ws:
        init = await request(ws, rpc_request(1, "initialize", INIT_PARAMS))
        assert init["id"] == 1 and "error" not in init
        assert init["result"]["protocolVersion"] == "2025-06-18"
        assert init["result"]["serverInfo"]["name"] == "exai-broker"
        assert "tools" in init["result"]["capabilities"]
        # A notification gets no reply: the next frame is the answer to the ping after it.
        await send(ws, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        pong = await request(ws, rpc_request(2, "ping"))
        assert pong == {"jsonrpc": "2.0", "id": 2, "result": {}}
        listing = await request(ws, rpc_request(3, "tools/list"))
        assert {"echo", "version"} <= {tool["name"] for tool in listing["result"]["tools"]}
        text = "mcp over ws ✓ 🚀"
        called = await request(
            ws, rpc_request(4, "tools/call", {"name": "echo", "arguments": {"text": text}})
        )
    assert called["id"] == 4
    assert called["result"]["content"] == [{"type": "text", "text": text}]
    assert called["result"]["isError"] is False


async def test_mcp_over_ws_negotiates_protocol_version(
    daemon: DaemonProcess, http: aiohttp.ClientSession
) -> None:
    """A supported version is echoed back; an unknown one gets the latest handshake version."""
    offers = [("2024-11-05", "2024-11-05"), ("2025-11-25", "2025-11-25"),
              ("1999-01-01", "2025-11-25")]  # fmt: skip
    for offered, expected in offers:
        async with await mcp_ws(http, daemon) as ws:
            params = {**INIT_PARAMS, "protocolVersion": offered}
            init = await request(ws, rpc_request(1, "initialize", params))
        assert init["result"]["protocolVersion"] == expected, offered


async def test_mcp_over_ws_unknown_method(
    daemon: DaemonProcess, http: aiohttp.ClientSession
) -> None:
    """An unknown method is answered -32601 and the session keeps working."""
    async with await mcp_ws(http, daemon) as ws:
        await request(ws, rpc_request(1, "initialize", INIT_PARAMS))
        error = await request(ws, rpc_request("x", "resources/frobnicate"))
        assert error["id"] == "x"
        assert error["error"]["code"] == -32601
        pong = await request(ws, rpc_request(2, "ping"))
        assert pong == {"jsonrpc": "2.0", "id": 2, "result": {}}


async def test_mcp_over_ws_ids_are_echoed_exactly(
    daemon: DaemonProcess, http: aiohttp.ClientSession
) -> None:
    """Ids come back with their JSON type and value: 7 and "7" are different requests."""
    ids: list[str | int] = [7, "7", "id-é ✓", 0, -3, 2**53 + 1, "x" * 200]
    async with await mcp_ws(http, daemon) as ws:
        await request(ws, rpc_request("init", "initialize", INIT_PARAMS))
        for request_id in ids:
            await send(
                ws,
                rpc_request(
                    request_id,
                    "tools/call",
                    {"name": "echo", "arguments": {"text": f"for {request_id!r}"}},
                ),
            )
        answers = [await recv_json(ws) for _ in ids]
        pings = [await request(ws, rpc_request(request_id, "ping")) for request_id in ids]
    by_id = {json.dumps(a["id"]): a for a in answers}
    assert len(by_id) == len(ids)
    for request_id in ids:
        answer = by_id[json.dumps(request_id)]
        assert answer["result"]["content"][0]["text"] == f"for {request_id!r}"
    assert [(p["id"], type(p["id"])) for p in pings] == [(i, type(i)) for i in ids]
