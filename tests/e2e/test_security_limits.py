"""Limits and bad input on a live daemon and through a live shim.

Every bad frame must get a typed error frame (JSON-RPC -32700 / -32600 / -32601 /
-32602 with `data.code`, or an op `error` with `error.code`) and must leave the
session able to answer the next call. Oversize frames close only their own
connection (1009); silent connections are closed (4002); the connection cap
refuses the extra upgrade (503).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.conftest import (
    DaemonFactory,
    DaemonProcess,
    async_wait_for,
    mcp_client,
    scaled,
    start_daemon,
)
from tests.e2e.security_support import (
    connect,
    daemon_logs,
    echo_mcp,
    echo_op,
    mcp_session,
    op_hello,
    recv_close,
    recv_json,
)
from tests.support.shim_driver import ShimDriver, running_shim

MAX_BYTES = 262_144
DEPTH = 50_000


@pytest.fixture(scope="module")
def limits_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon with a small frame limit shared by the bad-frame tests of this module."""
    daemon = start_daemon(
        tmp_path_factory.mktemp("limits"),
        workers=2,
        env={"EXAI_WS_MAX_BYTES": str(MAX_BYTES), "EXAI_WS_CALL_TIMEOUT": "20"},
    )
    try:
        yield daemon
    finally:
        daemon.stop(timeout_s=10.0)


async def open_session(
    http: aiohttp.ClientSession, daemon: DaemonProcess, dialect: str
) -> aiohttp.ClientWebSocketResponse:
    """An MCP-style session after initialize, or an op session after hello."""
    if dialect == "mcp":
        return await mcp_session(http, daemon)
    ws, ack = await op_hello(http, daemon, session_id=f"limits-{time.monotonic_ns()}")
    assert ack["ok"] is True, ack
    return ws


async def echo(ws: aiohttp.ClientWebSocketResponse, dialect: str, text: str) -> None:
    """The session still answers a correct call correctly."""
    if dialect == "mcp":
        await echo_mcp(ws, text)
    else:
        await echo_op(ws, text)


# --- bad frames ------------------------------------------------------------------------


@dataclass(frozen=True)
class BadFrame:
    """A frame and the typed error the daemon must answer with.

    `style` says how: "rpc" a JSON-RPC error (numeric `rpc` code, `data.code`, id `rid`),
    "op" an op error frame (`error.code`, `request_id` `rid`), "dialect" as the session
    speaks (the frame could not be decoded far enough to tell).
    """

    payload: bytes
    code: str
    style: str
    rpc: int | None = None
    rid: Any = None
    path: str | None = None
    opcode: str = "text"  # text | binary | raw-text (text opcode, bytes sent unchecked)


def rpc(
    payload: bytes, code: str, rpc_code: int, rid: Any = None, path: str | None = None
) -> BadFrame:
    """A frame answered with a JSON-RPC error whatever the session's dialect."""
    return BadFrame(payload, code, "rpc", rpc_code, rid, path)


def op(payload: bytes, code: str, rid: Any = None, path: str | None = None) -> BadFrame:
    """A frame answered with an op-dialect error whatever the session's dialect."""
    return BadFrame(payload, code, "op", None, rid, path)


def undecodable(payload: bytes, rpc_code: int, opcode: str = "text") -> BadFrame:
    """A frame whose envelope cannot be read: INVALID_FRAME in the session's dialect."""
    return BadFrame(payload, "INVALID_FRAME", "dialect", rpc_code, opcode=opcode)


def call(arguments: Any, rid: Any, name: str = "echo") -> bytes:
    """A JSON-RPC tools/call frame."""
    params = {"name": name, "arguments": arguments}
    frame = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}
    return json.dumps(frame).encode()


def op_call(arguments: Any, rid: Any, name: str = "echo") -> bytes:
    """An op call_tool frame."""
    frame = {"op": "call_tool", "request_id": rid, "name": name, "arguments": arguments}
    return json.dumps(frame).encode()


DEEP_ARRAY = b"[" * DEPTH + b"]" * DEPTH
INVALID, ARGS = "INVALID_FRAME", "INVALID_ARGUMENTS"
BAD_FRAMES: dict[str, BadFrame] = {
    # not JSON at all: -32700
    "not-json": undecodable(b"{this is not json", -32700),
    "truncated": undecodable(b'{"jsonrpc":"2.0","id":1,"method":"pi', -32700),
    "empty": undecodable(b"", -32700),
    "nan-id": undecodable(b'{"jsonrpc":"2.0","id":NaN,"method":"ping"}', -32700),
    "bad-utf8-binary": undecodable(
        b'{"jsonrpc":"2.0","id":"b1","method":"ping","x":"\xff\xfe"}', -32700, "binary"
    ),
    "bad-utf8-text": undecodable(
        b'{"jsonrpc":"2.0","id":"b2","method":"ping","x":"\xc3\x28"}', -32700, "raw-text"
    ),
    # JSON, but not one request object: -32600
    "number": undecodable(b"42", -32600),
    "string": undecodable(b'"hello"', -32600),
    "null": undecodable(b"null", -32600),
    "batch": undecodable(b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', -32600),
    "empty-batch": undecodable(b"[]", -32600),
    "method-not-a-string": undecodable(b'{"jsonrpc":"2.0","id":"m2","method":5}', -32600),
    "jsonrpc-not-a-string": undecodable(b'{"jsonrpc":2.0,"id":"m3","method":"ping"}', -32600),
    "op-not-a-string": undecodable(b'{"op":["call_tool"]}', -32600),
    "deep-array": undecodable(DEEP_ARRAY, -32600),
    "deep-params": undecodable(
        b'{"jsonrpc":"2.0","id":"d1","method":"ping","params":' + DEEP_ARRAY + b"}", -32600
    ),
    "deep-arguments": undecodable(
        b'{"jsonrpc":"2.0","id":"d2","method":"tools/call","params":{"name":"echo",'
        b'"arguments":{"text":' + DEEP_ARRAY + b"}}}",
        -32600,
    ),
    "deep-objects": undecodable(
        b'{"op":"list_tools","x":' + b'{"a":' * 40_000 + b"1" + b"}" * 40_001, -32600
    ),
    "missing-method": rpc(b'{"jsonrpc":"2.0","id":"m1"}', INVALID, -32600, "m1"),
    "object-id": rpc(b'{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}', INVALID, -32600),
    "bool-id": rpc(b'{"jsonrpc":"2.0","id":true,"method":"ping"}', INVALID, -32600),
    "jsonrpc-1.0": rpc(b'{"jsonrpc":"1.0","id":"v1","method":"ping"}', INVALID, -32600, "v1"),
    # well-formed requests the daemon cannot serve
    "unknown-method": rpc(
        b'{"jsonrpc":"2.0","id":"u1","method":"tools/frobnicate"}', "METHOD_NOT_FOUND", -32601, "u1"
    ),
    "lone-surrogate-escape": undecodable(
        b'{"jsonrpc":"2.0","id":"s1","method":"ping","x":"\\ud800"}', -32700
    ),
    "call-params-not-object": rpc(
        b'{"jsonrpc":"2.0","id":"p1","method":"tools/call","params":"echo"}', ARGS, -32602, "p1"
    ),
    "call-name-not-string": rpc(
        b'{"jsonrpc":"2.0","id":"p2","method":"tools/call","params":{"name":5}}', ARGS, -32602, "p2"
    ),
    "call-unknown-tool": rpc(call({}, "p3", "no_such_tool"), "TOOL_NOT_FOUND", -32602, "p3"),
    "call-oversize-wrong-type": rpc(
        call({"text": list(range(30_000))}, "p4"), ARGS, -32602, "p4", "text"
    ),
    "call-arguments-not-object": rpc(call("x" * 100_000, "p5"), ARGS, -32602, "p5", ""),
    "call-schema-text": rpc(call({"text": 5}, "p6"), ARGS, -32602, "p6", "text"),
    "call-schema-seconds": rpc(call({"seconds": -1}, "p7", "sleep"), ARGS, -32602, "p7", "seconds"),
    # op dialect
    "unknown-op": op(b'{"op":"frobnicate"}', INVALID),
    "hello-again": op(b'{"op":"hello","session_id":"other"}', INVALID),
    "neither-dialect": BadFrame(b'{"hello":"world"}', INVALID, "dialect", -32600),
    "op-call-no-name": op(b'{"op":"call_tool","request_id":"o1"}', INVALID, "o1"),
    "op-call-no-request-id": op(b'{"op":"call_tool","name":"echo","arguments":{}}', INVALID),
    "op-call-object-request-id": op(
        b'{"op":"call_tool","request_id":{"a":1},"name":"e"}', INVALID, {"a": 1}
    ),
    "op-cancel-no-request-id": op(b'{"op":"cancel"}', INVALID),
    "op-call-oversize-wrong-type": op(
        op_call({"text": {"k": "v" * 100_000}}, "o1b"), ARGS, "o1b", "text"
    ),
    "op-call-schema-text": op(op_call({"text": 5}, "o2"), ARGS, "o2", "text"),
    "op-call-schema-seconds": op(op_call({"seconds": -1}, "o3", "sleep"), ARGS, "o3", "seconds"),
}

# An MCP client cannot read an op-dialect error: a request-shaped frame that only lacks
# "jsonrpc" should be answered in JSON-RPC, with its id.
MISSING_JSONRPC = rpc(b'{"id":"j1","method":"tools/list"}', INVALID, -32600, "j1")


def frame_params() -> list[Any]:
    """Every bad frame in both dialects, plus the known failure."""
    params = [
        pytest.param(dialect, case, id=f"{dialect}-{name}")
        for name, case in BAD_FRAMES.items()
        for dialect in ("mcp", "op")
    ]
    params.append(pytest.param("mcp", MISSING_JSONRPC, id="mcp-missing-jsonrpc"))
    return params


async def send_raw(ws: aiohttp.ClientWebSocketResponse, case: BadFrame) -> None:
    """Send the payload with the case's opcode (invalid UTF-8 goes out unchecked)."""
    if case.opcode == "binary":
        await ws.send_bytes(case.payload)
    else:
        await ws.send_frame(case.payload, aiohttp.WSMsgType.TEXT)


def check_error(frame: dict[str, Any], case: BadFrame, dialect: str) -> None:
    """The reply is the typed error the case expects in a session of this dialect."""
    style = case.style if case.style != "dialect" else ("rpc" if dialect == "mcp" else "op")
    if style == "rpc":
        assert frame.get("jsonrpc") == "2.0" and "error" in frame, frame
        error = frame["error"]
        assert error["code"] == case.rpc, frame
        assert error["data"]["code"] == case.code, frame
        assert frame["id"] == case.rid, frame
        data = error["data"]
    else:
        assert frame.get("op") in ("error", "call_tool_res"), frame
        error = frame["error"]
        assert error["code"] == case.code, frame
        assert frame.get("request_id") == case.rid, frame
        data = error
    assert isinstance(error["message"], str) and error["message"], frame
    assert "Traceback" not in error["message"], frame
    if case.path is not None:
        assert data["path"] == case.path, frame
        if case.path:
            assert case.path in error["message"], frame


@pytest.mark.parametrize(("dialect", "case"), frame_params())
async def test_bad_frame_gets_a_typed_error_and_the_session_survives(
    limits_daemon: DaemonProcess, http: aiohttp.ClientSession, dialect: str, case: BadFrame
) -> None:
    """One bad frame: one typed error frame; then the same session answers a correct call."""
    assert len(case.payload) < MAX_BYTES
    ws = await open_session(http, limits_daemon, dialect)
    async with ws:
        await echo(ws, dialect, "before")
        await send_raw(ws, case)
        reply = await recv_json(ws)
        if reply.get("op") == "call_tool_ack":
            reply = await recv_json(ws)
        check_error(reply, case, dialect)
        await echo(ws, dialect, f"after {case.code}")
        assert not ws.closed


async def test_a_notification_never_gets_an_answer(
    limits_daemon: DaemonProcess, http: aiohttp.ClientSession
) -> None:
    """JSON-RPC never answers a notification, even a broken one; the session goes on."""
    ws = await mcp_session(http, limits_daemon)
    async with ws:
        for frame in (
            {"jsonrpc": "2.0", "method": "notifications/nope"},
            {"jsonrpc": "1.0", "method": "ping"},
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": 5},
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": []}},
        ):
            await ws.send_str(json.dumps(frame))
        # The very next frame received is the answer to this call: nothing came before it.
        await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": "after", "method": "ping"}))
        assert await recv_json(ws) == {"jsonrpc": "2.0", "id": "after", "result": {}}


async def test_many_bad_frames_in_a_row_keep_the_session(
    limits_daemon: DaemonProcess, http: aiohttp.ClientSession
) -> None:
    """Every bad frame back to back (bounded), then a call: all answered in order."""
    ws = await open_session(http, limits_daemon, "mcp")
    async with ws:
        for case in BAD_FRAMES.values():
            await send_raw(ws, case)
        await echo_mcp(ws, "after the barrage", request_id="barrage-done")


@pytest.mark.parametrize("opcode", ["text", "binary"])
async def test_oversize_frame_closes_only_that_connection(
    limits_daemon: DaemonProcess, http: aiohttp.ClientSession, opcode: str
) -> None:
    """A frame over EXAI_WS_MAX_BYTES closes its connection with 1009 and is logged; other
    sessions keep working."""
    bystander = await open_session(http, limits_daemon, "mcp")
    victim = await open_session(http, limits_daemon, "op")
    async with bystander, victim:
        payload = b'{"op":"list_tools","pad":"' + b"x" * MAX_BYTES + b'"}'
        if opcode == "binary":
            await victim.send_bytes(payload)
        else:
            await victim.send_str(payload.decode())
        frames, code = await recv_close(victim)
        assert code == 1009, (frames, code)
        await echo_mcp(bystander, "unaffected by the oversize frame")
        await async_wait_for(
            lambda: (
                "exceeds limit" in daemon_logs(limits_daemon)
                or "EXAI_WS_MAX_BYTES" in daemon_logs(limits_daemon)
            ),
            10.0,
            "the daemon to log the oversize frame",
        )


async def test_oversize_frame_log_names_the_setting(
    daemon_factory: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    """The log line tells the operator which setting to raise."""
    daemon = daemon_factory(workers=1, env={"EXAI_WS_MAX_BYTES": "65536"})
    ws = await open_session(http, daemon, "op")
    async with ws:
        await ws.send_str("x" * 70_000)
        assert (await recv_close(ws))[1] == 1009
    await async_wait_for(
        lambda: "EXAI_WS_MAX_BYTES" in daemon.stderr(), 5.0, "a log line naming EXAI_WS_MAX_BYTES"
    )


async def test_silent_connection_is_closed_4002(
    daemon_factory: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    """A connection that never sends anything is told so and closed after the hello timeout;
    a connection that did say hello is not."""
    daemon = daemon_factory(workers=1, env={"EXAI_WS_HELLO_TIMEOUT": "1"})
    talker, ack = await op_hello(http, daemon, session_id="talker")
    assert ack["ok"] is True
    async with talker:
        # The server's timer starts after the upgrade, so after this timestamp.
        started = time.monotonic()
        silent = await connect(http, daemon)
        silent_mcp = await connect(http, daemon, protocols=("mcp",))
        for ws in (silent, silent_mcp):
            async with ws:
                frames, code = await recv_close(ws, timeout_s=10.0)
                assert code == 4002, (frames, code)
                assert frames == [
                    {"op": "hello_ack", "ok": False, "error": "no hello in time", "code": "TIMEOUT"}
                ]
        elapsed = time.monotonic() - started
        assert 0.9 < elapsed < scaled(6.0), elapsed
        await echo_op(talker, "the talker is still connected")


async def test_connection_cap_refuses_the_extra_upgrade_with_503(
    daemon_factory: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    """EXAI_WS_MAX_CONNECTIONS=3: the 4th upgrade is 503 and the 3 keep working."""
    daemon = daemon_factory(workers=1, env={"EXAI_WS_MAX_CONNECTIONS": "3"})
    dialects = ("op", "mcp", "op")
    sessions = [await open_session(http, daemon, d) for d in dialects]
    try:
        for _ in range(3):
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                extra = await connect(http, daemon, protocols=("mcp",))
                await extra.close()
            assert info.value.status == 503
        for ws, dialect in zip(sessions, dialects, strict=True):
            await echo(ws, dialect, "under the cap")
        async with http.get(f"http://127.0.0.1:{daemon.port}/health") as resp:
            assert resp.status == 200, "plain HTTP is not counted against the cap"
    finally:
        for ws in sessions:
            await ws.close()
    assert "EXAI_WS_MAX_CONNECTIONS" in daemon_logs(daemon)


async def connect_when_allowed(
    http: aiohttp.ClientSession, daemon: DaemonProcess, timeout_s: float
) -> aiohttp.ClientWebSocketResponse:
    """Retry the upgrade while it is refused with 503, up to the deadline."""
    deadline = time.monotonic() + scaled(timeout_s)
    while True:
        try:
            return await open_session(http, daemon, "op")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 503, exc
            if time.monotonic() > deadline:
                raise AssertionError("a closed connection's slot was never given back") from None
            await asyncio.sleep(0.05)


async def test_connection_cap_counts_only_open_connections(
    daemon_factory: DaemonFactory, http: aiohttp.ClientSession
) -> None:
    """Open and close connections one at a time, many more than the cap: each one fits."""
    daemon = daemon_factory(workers=1, env={"EXAI_WS_MAX_CONNECTIONS": "3"})
    for i in range(8):
        ws = await connect_when_allowed(http, daemon, timeout_s=5.0)
        await echo_op(ws, f"connection {i}")
        await ws.close()


# --- bad input through the shim ---------------------------------------------------------


async def start_raw_shim(shim: ShimDriver) -> None:
    """initialize + initialized, as any client does first."""
    await shim.initialize(list_tools=False, protocol_version="2025-06-18")


async def test_shim_answers_bad_stdin_lines_and_keeps_going(limits_daemon: DaemonProcess) -> None:
    """Garbage, batches, bare values, invalid UTF-8 and a reused id on the shim's stdin each
    get a JSON-RPC error line; the next request is answered normally."""
    env = limits_daemon.shim_env(EXAI_SHIM_RPC_TIMEOUT="10")
    async with running_shim(env) as shim:
        await start_raw_shim(shim)
        for line, code in (
            (b"garbage", -32700),
            (b"{", -32700),
            (b"\xff\xfe\x00", -32700),
            (b"[1,2]", -32600),
            (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', -32600),
            (b"42", -32600),
            (b"null", -32600),
        ):
            await shim.write(line + b"\n")
            reply = await shim.read_line()
            assert reply is not None and "error" in reply, (line, reply)
            if code is not None:
                assert reply["error"]["code"] == code and reply["id"] is None, (line, reply)
        await shim.write(
            b'{"jsonrpc":"2.0","id":"slow","method":"tools/call",'
            b'"params":{"name":"sleep","arguments":{"seconds":0.5}}}\n'
            b'{"jsonrpc":"2.0","id":"slow","method":"ping"}\n'
        )
        dup = await shim.read_line()
        assert dup is not None and dup["id"] == "slow" and dup["error"]["code"] == -32600, dup
        assert "result" in await shim.response("slow")
        await shim.write(b'{"jsonrpc":"2.0","id":"bad-args","method":"tools/call",'
                         b'"params":{"name":"echo","arguments":{"text":5}}}\n')  # fmt: skip
        bad = await shim.response("bad-args")
        assert bad["error"]["code"] == -32602 and bad["error"]["data"]["path"] == "text", bad
        await shim.write(b'{"jsonrpc":"2.0","id":"ok","method":"tools/call",'
                         b'"params":{"name":"echo","arguments":{"text":"fine"}}}\n')  # fmt: skip
        ok = await shim.response("ok")
        assert ok["result"]["content"] == [{"type": "text", "text": "fine"}], ok


async def test_shim_answers_a_deeply_nested_line(limits_daemon: DaemonProcess) -> None:
    """A 50k-deep request gets an error line, and a request in the same write is answered."""
    env = limits_daemon.shim_env(EXAI_SHIM_RPC_TIMEOUT="10")
    async with running_shim(env, stop_grace_s=0.5) as shim:
        await start_raw_shim(shim)
        deep = b'{"jsonrpc":"2.0","id":"deep","method":"ping","params":' + DEEP_ARRAY + b"}"
        await shim.write(deep + b'\n{"jsonrpc":"2.0","id":"next","method":"ping"}\n')
        replies = [await shim.read_line(timeout_s=3.0), await shim.read_line(timeout_s=3.0)]
        by_id = {r["id"]: r for r in replies if r is not None}
        assert "error" in by_id["deep"], replies
        assert by_id["next"] == {"jsonrpc": "2.0", "id": "next", "result": {}}, replies


SHIM_UNANSWERED = {
    "missing-jsonrpc": b'{"id":"q1","method":"tools/list"}',
    "numeric-jsonrpc": b'{"jsonrpc":2.0,"id":"q2","method":"tools/list"}',
    "bool-id": b'{"jsonrpc":"2.0","id":true,"method":"tools/list"}',
    "lone-surrogate": b'{"jsonrpc":"2.0","id":"q4","method":"tools/list","x":"\\udc00"}',
}


@pytest.mark.parametrize("line", list(SHIM_UNANSWERED.values()), ids=list(SHIM_UNANSWERED))
async def test_shim_answers_malformed_requests_promptly(
    limits_daemon: DaemonProcess, line: bytes
) -> None:
    """A request-shaped line the daemon refuses gets an error line at once."""
    env = limits_daemon.shim_env(EXAI_SHIM_RPC_TIMEOUT="10")
    # The shim waits for what it owes before exiting: do not wait for the hang to end.
    async with running_shim(env, stop_grace_s=0.5) as shim:
        await start_raw_shim(shim)
        await shim.write(line + b"\n")
        reply = await shim.read_line(timeout_s=3.0)
        assert reply is not None and "error" in reply, reply
        assert reply["error"]["code"] in (-32700, -32600), reply


async def test_sdk_client_sees_schema_errors_with_the_path(limits_daemon: DaemonProcess) -> None:
    """Through shim + SDK: arguments failing the inputSchema are a -32602 error naming them."""
    from mcp.shared.exceptions import MCPError

    async with asyncio.timeout(scaled(60.0)), mcp_client(limits_daemon.shim_env()) as client:
        for tool, arguments, path in (
            ("echo", {"text": 5}, "text"),
            ("sleep", {"seconds": -1}, "seconds"),
        ):
            with pytest.raises(MCPError) as info:
                await client.call_tool(tool, arguments)
            error = info.value.error
            assert error.code == -32602, error
            assert isinstance(error.data, dict) and error.data["code"] == "INVALID_ARGUMENTS"
            assert error.data["path"] == path and path in error.message, error
        result = await client.call_tool("echo", {"text": "still fine"})
        assert result.content[0].text == "still fine"


async def test_limits_daemon_is_still_healthy_and_counted(
    limits_daemon: DaemonProcess, http: aiohttp.ClientSession
) -> None:
    """The shared daemon stays alive and counts every bad frame it refused."""
    assert limits_daemon.proc.poll() is None
    health_url = f"http://127.0.0.1:{limits_daemon.port}/health"
    async with http.get(health_url) as resp:
        before = (await resp.json())["bad_frames"]
    ws = await open_session(http, limits_daemon, "mcp")
    async with ws:
        for payload in (b"{not json", b"[1]", b'{"jsonrpc":"1.0","id":1,"method":"ping"}'):
            await ws.send_frame(payload, aiohttp.WSMsgType.TEXT)
            assert "error" in await recv_json(ws)
    async with http.get(health_url) as resp:
        health = await resp.json()
    assert health["ready"] is True
    assert health["bad_frames"] >= before + 3
    async with http.get(f"http://127.0.0.1:{limits_daemon.port}/metrics") as resp:
        assert "exai_bad_frames" in await resp.text()
