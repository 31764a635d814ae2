"""Fuzzing: thousands of generated and mutated frames against one live daemon, and the
two parsers that take untrusted bytes without a daemon (the worker-pipe FrameDecoder and
the shim's stdin handling).

The live fuzz keeps a few established sessions (MCP style and op style) and now and then
opens a fresh connection whose very first frame is fuzzed. After each batch a sentinel
ping must be answered on the same connection, so a session that stops answering is
caught at once. At the end a well-behaved client must still get correct answers, the
daemon must be alive, and its memory must not have grown without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from exai.framing import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, FrameEncoder, FramingError
from exai.ipc import (
    BrokerMessage,
    Call,
    Cancel,
    Heartbeat,
    Progress,
    Ready,
    Result,
    SessionEnded,
    Shutdown,
    WorkerMessage,
)
from exai.settings import ShimSettings
from shim.bridge import Bridge
from shim.stdio import LineReader
from tests.conftest import DaemonProcess, free_port, scaled, start_daemon
from tests.e2e.security_support import daemon_logs, echo_mcp, echo_op, mcp_session, op_hello
from tests.support.processes import rss_bytes

FUZZ_FRAMES = 4000
FUZZ_BUDGET_S = 45.0
RSS_GROWTH_LIMIT_KB = 100 * 1024
ESTABLISHED = 3
# Codes a server may close a *fresh* connection with when its first frame is fuzzed.
OPENING_CLOSE_CODES = {4000, 4001, 4003, 4004}

# --- strategies --------------------------------------------------------------------------

HUGE_INTS = st.integers(min_value=-(10**400), max_value=10**400)
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    HUGE_INTS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
JSON_VALUES = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
ODD_IDS = st.one_of(
    st.integers(),
    HUGE_INTS,
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.text(min_size=500, max_size=3000),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
# Only fast tools: a fuzzed call must not hold a slot for long (sleep/cpu are left out).
TOOL_NAMES = st.sampled_from(["echo", "version", "listmodels", "fail", "nope", ""]) | st.text(
    max_size=12
)
METHODS = st.sampled_from(
    [
        "initialize",
        "ping",
        "tools/list",
        "tools/call",
        "notifications/cancelled",
        "notifications/initialized",
        "notifications/progress",
        "server/discover",
        "resources/list",
        "",
    ]
) | st.text(max_size=20)
OPS = st.sampled_from(
    ["hello", "list_tools", "call_tool", "cancel", "health", "rotate_token", "progress", ""]
) | st.text(max_size=12)


@st.composite
def template(draw: st.DrawFn) -> dict[str, Any]:
    """A valid frame of either dialect."""
    rid = draw(st.one_of(st.integers(0, 10**6), st.text(max_size=16)))
    arguments = {"text": draw(st.text(max_size=50))}
    choices: list[dict[str, Any]] = [
        {
            "jsonrpc": "2.0",
            "id": rid,
            "method": "initialize",
            "params": {
                "protocolVersion": draw(st.sampled_from(["2024-11-05", "2025-11-25", "1999"])),
                "capabilities": {},
                "clientInfo": {"name": "fuzz", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "id": rid, "method": "ping"},
        {"jsonrpc": "2.0", "id": rid, "method": "tools/list"},
        {
            "jsonrpc": "2.0",
            "id": rid,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": arguments, "_meta": {"progressToken": rid}},
        },
        {
            "jsonrpc": "2.0",
            "id": rid,
            "method": "tools/call",
            "params": {"name": draw(TOOL_NAMES), "arguments": {}},
        },
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": rid}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": rid,
            "method": "server/discover",
            "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}},
        },
        {"jsonrpc": "2.0", "id": rid, "result": {}},
        {"op": "list_tools"},
        {"op": "health"},
        {"op": "call_tool", "request_id": rid, "name": "echo", "arguments": arguments},
        {"op": "call_tool", "request_id": rid, "name": draw(TOOL_NAMES), "arguments": {}},
        {"op": "cancel", "request_id": rid},
        {"op": "hello", "session_id": draw(st.text(max_size=140)), "acks": draw(st.booleans())},
        {"op": "rotate_token", "old": draw(st.text(max_size=8)), "new": draw(st.text(max_size=8))},
    ]
    return dict(draw(st.sampled_from(choices)))


@st.composite
def mutated_object(draw: st.DrawFn) -> dict[str, Any]:
    """A valid frame with fields replaced, removed, added or retyped."""
    frame = draw(template())
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["replace", "delete", "add", "id", "verb", "nested"]))
        keys = sorted(frame)
        if action == "replace" and keys:
            frame[draw(st.sampled_from(keys))] = draw(JSON_VALUES)
        elif action == "delete" and keys:
            frame.pop(draw(st.sampled_from(keys)))
        elif action == "add":
            known = st.sampled_from(
                ["jsonrpc", "id", "method", "params", "op", "request_id", "name", "arguments",
                 "token", "session_id", "acks", "result", "error", "old", "new"]
            )  # fmt: skip
            frame[draw(known | st.text(max_size=8))] = draw(JSON_VALUES)
        elif action == "id":
            frame["id" if "jsonrpc" in frame else "request_id"] = draw(ODD_IDS)
        elif action == "verb":
            if "op" in frame:
                frame["op"] = draw(OPS)
            else:
                frame["method"] = draw(METHODS)
        elif action == "nested":
            inner = frame.get("params", frame.get("arguments"))
            if isinstance(inner, dict):
                inner[draw(st.sampled_from(["name", "arguments", "_meta", "x"]))] = draw(
                    JSON_VALUES
                )
    return frame


@st.composite
def fuzz_frame(draw: st.DrawFn) -> tuple[bytes, bool]:
    """One frame's bytes and whether to send it as a binary frame."""
    kind = draw(st.sampled_from(["object", "object", "object", "bytes", "value", "deep", "raw"]))
    if kind in ("object", "bytes"):
        data = json.dumps(draw(mutated_object()), allow_nan=True).encode()
        if kind == "bytes" and data:
            for _ in range(draw(st.integers(1, 4))):
                how = draw(st.sampled_from(["truncate", "flip", "insert", "double"]))
                at = draw(st.integers(0, len(data)))
                if how == "truncate":
                    data = data[:at]
                elif how == "flip" and at < len(data):
                    data = (
                        data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
                    )
                elif how == "insert":
                    data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
                elif how == "double":
                    data = data + data
    elif kind == "value":
        data = json.dumps(draw(JSON_VALUES), allow_nan=True).encode()
    elif kind == "deep":
        depth = draw(st.integers(10, 20_000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        data = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":' + opener * depth
        data += b"0" + closer * depth + b"}" if draw(st.booleans()) else b""
    else:
        data = draw(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
    return data, draw(st.booleans())


# --- the live fuzz -------------------------------------------------------------------------


def vm_rss_kb(pid: int) -> int:
    """Resident memory of a process in kB, from /proc/<pid>/status."""
    return rss_bytes(pid) // 1024


class LiveFuzzer:
    """Connections to one daemon, driven from a private event loop by sync hypothesis code."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.http: aiohttp.ClientSession | None = None
        self.sessions: list[aiohttp.ClientWebSocketResponse] = []
        self.frames_sent = 0
        self.frames_received = 0
        self.fresh_connections = 0
        self.fresh_close_codes: dict[int | None, int] = {}
        self.failures: list[str] = []
        self._turn = 0

    async def start(self) -> None:
        self.http = aiohttp.ClientSession()
        for i in range(ESTABLISHED):
            self.sessions.append(await self._establish(i))

    async def _establish(self, i: int) -> aiohttp.ClientWebSocketResponse:
        assert self.http is not None
        if i % 2 == 0:
            return await mcp_session(self.http, self.daemon)
        ws, ack = await op_hello(self.http, self.daemon, session_id=f"fuzz-{uuid.uuid4().hex}")
        assert ack["ok"] is True
        return ws

    async def close(self) -> None:
        for ws in self.sessions:
            with contextlib.suppress(Exception):
                await ws.close()
        if self.http is not None:
            await self.http.close()

    async def _send(
        self, ws: aiohttp.ClientWebSocketResponse, data: bytes, binary: bool, fuzzed: bool = True
    ) -> bool:
        """Send one frame; False when the connection is already closed."""
        if ws.closed:
            return False
        try:
            if binary:
                await ws.send_bytes(data)
            else:
                await ws.send_frame(data, aiohttp.WSMsgType.TEXT)
        except (ConnectionError, aiohttp.ClientError):
            return False
        self.frames_sent += fuzzed
        return True

    async def _sync(self, ws: aiohttp.ClientWebSocketResponse) -> int | None:
        """Ping and read until the pong: None if answered, else the close code seen."""
        sentinel = f"sentinel-{uuid.uuid4().hex}"
        ping = json.dumps({"jsonrpc": "2.0", "id": sentinel, "method": "ping"}).encode()
        if not await self._send(ws, ping, False, fuzzed=False):
            return ws.close_code if ws.close_code is not None else -2
        deadline = time.monotonic() + scaled(15.0)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.failures.append("a session stopped answering (no pong in 15 s)")
                return -1
            msg = await ws.receive(timeout=remaining)
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                self.frames_received += 1
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    self.failures.append(f"the daemon sent a non-JSON frame: {msg.data[:200]!r}")
                    continue
                if not isinstance(frame, dict):
                    self.failures.append(f"the daemon sent a non-object frame: {frame!r:.200}")
                elif frame.get("id") == sentinel:
                    if frame.get("result") != {}:
                        self.failures.append(f"bad pong: {frame!r:.300}")
                    return None
                continue
            return ws.close_code if ws.close_code is not None else -2

    async def run_batch(self, frames: list[tuple[bytes, bool]], fresh: bool) -> None:
        assert self.http is not None
        if fresh:
            self.fresh_connections += 1
            ws = await self.http.ws_connect(self.daemon.url, max_msg_size=0)
            try:
                for data, binary in frames:
                    await self._send(ws, data, binary)
                code = await self._sync(ws)
                self.fresh_close_codes[code] = self.fresh_close_codes.get(code, 0) + 1
                if code is not None and code not in OPENING_CLOSE_CODES:
                    self.failures.append(f"fresh connection closed with {code}")
            finally:
                await ws.close()
            return
        self._turn = (self._turn + 1) % len(self.sessions)
        ws = self.sessions[self._turn]
        for data, binary in frames:
            await self._send(ws, data, binary)
        code = await self._sync(ws)
        if code is not None:
            # A bad frame never closes a healthy session.
            self.failures.append(
                f"an established session was closed with {code} after {frames[-3:]!r:.600}"
            )
            self.sessions[self._turn] = await self._establish(self._turn)

    async def well_behaved(self) -> None:
        assert self.http is not None
        ws = await mcp_session(self.http, self.daemon)
        op_ws, ack = await op_hello(self.http, self.daemon, session_id="well-behaved")
        assert ack["ok"] is True
        async with ws, op_ws:
            for i in range(20):
                await echo_mcp(ws, f"correct answer {i} ✓")
                await echo_op(op_ws, f"op answer {i}")
        for i, existing in enumerate(self.sessions):
            # The fuzzed sessions answer correct calls correctly too.
            if i % 2 == 0:
                await echo_mcp(existing, f"fuzzed session {i} still correct")
            else:
                await echo_op(existing, f"fuzzed session {i} still correct")


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A private event loop that sync (hypothesis) test code drives step by step."""
    event_loop = asyncio.new_event_loop()
    try:
        yield event_loop
    finally:
        event_loop.run_until_complete(event_loop.shutdown_asyncgens())
        event_loop.close()


@pytest.mark.slow
def test_fuzz_live_daemon(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    """Thousands of generated and mutated frames over a few connections to one daemon."""
    closed = free_port()
    daemon = start_daemon(
        tmp_path,
        workers=2,
        env={
            "EXAI_WS_CALL_TIMEOUT": "5",
            "EXAI_WS_HELLO_TIMEOUT": "5",
            "KIMI_API_KEY": "",
            "MOONSHOT_API_KEY": "",
            "GLM_API_KEY": "",
            "ZHIPUAI_API_KEY": "",
            "KIMI_API_URL": f"http://127.0.0.1:{closed}/v1",
            "GLM_API_URL": f"http://127.0.0.1:{closed}/v4",
        },
    )
    fuzzer = LiveFuzzer(daemon)
    started = time.monotonic()
    try:
        loop.run_until_complete(fuzzer.start())
        # Warm up (imports, caches, first calls) before taking the memory baseline.
        loop.run_until_complete(fuzzer.well_behaved())
        baseline_kb = vm_rss_kb(daemon.proc.pid)

        @settings(
            max_examples=400,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(
            frames=st.lists(fuzz_frame(), min_size=5, max_size=25),
            fresh=st.integers(0, 9).map(lambda n: n == 0),
        )
        def fuzz(frames: list[tuple[bytes, bool]], fresh: bool) -> None:
            if fuzzer.frames_sent >= FUZZ_FRAMES or time.monotonic() - started > FUZZ_BUDGET_S:
                return
            assert daemon.proc.poll() is None, f"the daemon died:\n{daemon.stderr()[-3000:]}"
            loop.run_until_complete(fuzzer.run_batch(frames, fresh))

        fuzz()
        assert daemon.proc.poll() is None, f"the daemon died:\n{daemon.stderr()[-3000:]}"
        loop.run_until_complete(fuzzer.well_behaved())
        grown_kb = vm_rss_kb(daemon.proc.pid) - baseline_kb
    finally:
        loop.run_until_complete(fuzzer.close())
        daemon.stop(timeout_s=10.0)
    stats = (
        f"{fuzzer.frames_sent} frames sent, {fuzzer.frames_received} received, "
        f"{fuzzer.fresh_connections} fresh connections {fuzzer.fresh_close_codes}, "
        f"RSS +{grown_kb} kB, {time.monotonic() - started:.1f} s"
    )
    print(stats)
    assert fuzzer.frames_sent >= 2000, stats
    assert not fuzzer.failures, f"{stats}\n" + "\n".join(fuzzer.failures[:20])
    assert grown_kb < RSS_GROWTH_LIMIT_KB, stats
    logs = daemon_logs(daemon)
    for marker in ("Traceback", "Exception in callback", "Task exception was never retrieved"):
        assert marker not in logs, logs[logs.find(marker) - 2000 : logs.find(marker) + 2000]


# --- FrameDecoder (worker pipes) -------------------------------------------------------------

U64 = st.integers(0, 2**64 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
FLOATS = st.floats(allow_nan=False)
TEXT = st.text(max_size=40)
OPT_TEXT = st.none() | TEXT
BROKER_MESSAGES = st.one_of(
    st.builds(Call, U64, TEXT, st.binary(max_size=64), TEXT, OPT_TEXT, st.booleans()),
    st.builds(Cancel, U64),
    st.builds(Heartbeat, I64),
    st.builds(Shutdown, FLOATS),
    st.builds(SessionEnded, TEXT),
)
WORKER_MESSAGES = st.one_of(
    st.builds(Ready, I64, st.binary(max_size=64), st.lists(TEXT, max_size=3), TEXT),
    st.builds(Result, U64, st.none() | st.binary(max_size=64), OPT_TEXT, OPT_TEXT, st.booleans()),
    st.builds(Progress, U64, FLOATS, st.none() | FLOATS, OPT_TEXT),
    st.builds(Heartbeat, I64),
)
MESSAGE_TYPES: dict[str, Any] = {"broker": BrokerMessage, "worker": WorkerMessage}


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` split at the given offsets (taken modulo its length)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def feed_all(decoder: FrameDecoder[Any], chunks: list[bytes], max_frame: int) -> list[Any]:
    """Feed every chunk; only FramingError may escape, and the buffer stays bounded."""
    out: list[Any] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
        # What is left is at most one incomplete frame that fits the limit.
        assert decoder.buffered < 4 + max_frame, (decoder.buffered, max_frame)
    return out


@settings(max_examples=600, deadline=None)
@given(
    stream=st.binary(max_size=2048),
    cuts=st.lists(st.integers(0, 4096), max_size=20),
    which=st.sampled_from(sorted(MESSAGE_TYPES)),
    max_frame=st.sampled_from([0, 1, 16, 1024, DEFAULT_MAX_FRAME_BYTES]),
)
def test_fuzz_frame_decoder_arbitrary_bytes(
    stream: bytes, cuts: list[int], which: str, max_frame: int
) -> None:
    """Arbitrary bytes in arbitrary chunks: messages or FramingError, nothing else."""
    decoder: FrameDecoder[Any] = FrameDecoder(MESSAGE_TYPES[which], max_frame)
    with contextlib.suppress(FramingError):
        feed_all(decoder, chunked(stream, cuts), max_frame)


@settings(max_examples=600, deadline=None)
@given(
    which=st.sampled_from(sorted(MESSAGE_TYPES)),
    data=st.data(),
    cuts=st.lists(st.integers(0, 1 << 16), max_size=30),
    mutations=st.lists(
        st.tuples(st.sampled_from(["flip", "drop", "insert", "truncate"]), st.integers(0, 1 << 16)),
        max_size=4,
    ),
)
def test_fuzz_frame_decoder_mutated_stream(
    which: str, data: st.DataObject, cuts: list[int], mutations: list[tuple[str, int]]
) -> None:
    """Valid frames round-trip through any chunking; once mutated, the decoder yields
    messages or raises FramingError, never anything else."""
    strategy = BROKER_MESSAGES if which == "broker" else WORKER_MESSAGES
    messages = data.draw(st.lists(strategy, max_size=12), label="messages")
    encoder = FrameEncoder()
    stream = bytearray()
    for message in messages:
        encoder.encode_into(message, stream)
    if not mutations:
        decoder: FrameDecoder[Any] = FrameDecoder(MESSAGE_TYPES[which])
        decoded = feed_all(decoder, chunked(bytes(stream), cuts), DEFAULT_MAX_FRAME_BYTES)
        assert decoded == messages
        assert decoder.buffered == 0
        return
    for how, at in mutations:
        at %= len(stream) + 1
        if how == "flip" and at < len(stream):
            stream[at] ^= data.draw(st.integers(1, 255), label="xor")
        elif how == "drop" and at < len(stream):
            del stream[at]
        elif how == "insert":
            stream[at:at] = data.draw(st.binary(min_size=1, max_size=6), label="inserted")
        elif how == "truncate":
            del stream[at:]
    max_frame = data.draw(st.sampled_from([64, 4096, DEFAULT_MAX_FRAME_BYTES]), label="max")
    decoder = FrameDecoder(MESSAGE_TYPES[which], max_frame)
    with contextlib.suppress(FramingError):
        for message in feed_all(decoder, chunked(bytes(stream), cuts), max_frame):
            assert isinstance(message, msgspec.Struct)


# --- the shim's stdin ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One loop for the hypothesis-driven shim tests (fixtures must not be per example)."""
    event_loop = asyncio.new_event_loop()
    try:
        yield event_loop
    finally:
        event_loop.close()


class FakeSocket:
    """Stands in for the shim's daemon connection: records what would be sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send_text_nowait(self, data: bytes) -> None:
        self.sent.append(bytes(data))


REQUEST_KEYS = st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error", "x"])
LINES = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    JSON_VALUES.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.dictionaries(REQUEST_KEYS, JSON_VALUES | ODD_IDS | METHODS, max_size=5).map(
        lambda d: json.dumps(d, allow_nan=True).encode()
    ),
    st.builds(
        lambda rid, method, params: json.dumps(
            {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}, allow_nan=True
        ).encode(),
        ODD_IDS,
        METHODS,
        JSON_VALUES,
    ),
    st.builds(
        lambda rid: json.dumps(
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": rid}}
        ).encode(),
        ODD_IDS,
    ),
    # Nesting the parser can take (the 50k-deep case is its own test below).
    st.integers(1, 300).map(lambda n: b"[" * n + b"]" * n),
)


async def feed_bridge(lines: list[bytes]) -> None:
    """Hand each line to a connected Bridge; classify what it did with it."""
    written: list[bytes] = []
    bridge = Bridge(ShimSettings(rpc_timeout_s=30.0), written.append)
    sock = FakeSocket()
    bridge.ws = sock  # type: ignore[assignment]
    bridge._connected.set()
    try:
        for line in lines:
            before_written, before_sent = len(written), len(sock.sent)
            bridge.handle_client_line(line)
            new_written = written[before_written:]
            new_sent = sock.sent[before_sent:]
            if new_sent:
                # Forwarded verbatim, nothing said to the client.
                assert new_sent == [line] and not new_written, (line, new_sent, new_written)
            elif new_written:
                assert len(new_written) == 1, new_written
                reply = json.loads(new_written[0])
                assert reply["jsonrpc"] == "2.0" and "error" in reply, reply
                assert reply["error"]["code"] in (-32700, -32600), reply
            # Anything else: ignored, which is allowed too.
    finally:
        for pending in bridge.pending.values():
            if pending.timer is not None:
                pending.timer.cancel()


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(LINES, min_size=1, max_size=8))
def test_fuzz_shim_client_lines(lines: list[bytes], module_loop: asyncio.AbstractEventLoop) -> None:
    """Arbitrary stdin lines: forwarded, answered with a JSON-RPC error, or ignored."""
    module_loop.run_until_complete(feed_bridge(lines))


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=60).filter(lambda b: b"\n" not in b), max_size=10),
    cuts=st.lists(st.integers(0, 1000), max_size=12),
    crlf=st.booleans(),
)
def test_fuzz_stdin_line_splitting(
    lines: list[bytes], cuts: list[int], crlf: bool, module_loop: asyncio.AbstractEventLoop
) -> None:
    """However stdin is chunked, the reader hands over exactly the non-blank lines."""
    ending = b"\r\n" if crlf else b"\n"
    stream = b"".join(line + ending for line in lines)
    seen: list[bytes] = []
    eofs: list[bool] = []
    reader = LineReader(
        module_loop, io.BytesIO(), seen.append, lambda: eofs.append(True), lambda size: None
    )
    for chunk in chunked(stream, cuts):
        reader.feed(chunk)
    reader.eof()
    expected = [line.rstrip(b"\r") for line in lines]
    assert seen == [line for line in expected if line.strip()]
    assert eofs == [True]


def test_shim_client_line_deeply_nested(loop: asyncio.AbstractEventLoop) -> None:
    """A 50k-deep line is answered with a JSON-RPC error instead of raising."""
    deep = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":' + b"[" * 50_000
    deep += b"]" * 50_000 + b"}"
    loop.run_until_complete(feed_bridge([deep, b"[" * 50_000 + b"]" * 50_000]))
