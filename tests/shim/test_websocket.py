"""Integration tests of the stdlib WebSocket client against real servers on loopback."""

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import WSMsgType, web

from shim.websocket import ConnectionClosed, HandshakeError, MessageTooLarge, WebSocket, connect
from shim.wsframes import FrameParser, Message, Opcode, mask_payload, parse_close
from shim.wshandshake import accept_for

pytestmark = pytest.mark.timeout(30)

MiB = 1024 * 1024
STEP_TIMEOUT_S = 10.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
StartAiohttp = Callable[[Handler], Awaitable[int]]
RawScenario = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
StartRaw = Callable[[RawScenario], Awaitable[int]]


@pytest.fixture
async def aiohttp_server() -> AsyncIterator[StartAiohttp]:
    """Start aiohttp apps serving ``handler`` at /ws on 127.0.0.1:<free port>."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> int:
        app = web.Application()
        app.router.add_get("/ws", handler)
        runner = web.AppRunner(app, shutdown_timeout=2.0)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port: int = runner.addresses[0][1]
        return port

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def raw_server() -> AsyncIterator[StartRaw]:
    """Start plain asyncio servers that run ``scenario`` per connection."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []
    tasks: set[asyncio.Task[object]] = set()

    async def start(scenario: RawScenario) -> int:
        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                await scenario(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()
    for writer in writers:
        writer.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def raw_accept(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, extra: bytes = b""
) -> dict[str, str]:
    """Complete a server-side handshake by hand, writing ``extra`` in the same write."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")[1:]
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)}
    writer.write(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_for(headers['sec-websocket-key'])}\r\n\r\n"
        ).encode()
        + extra
    )
    return headers


async def read_client_message(reader: asyncio.StreamReader) -> Message:
    """Read one client frame (masked) from a raw server connection."""
    parser = FrameParser(MiB)
    while True:
        data = await reader.read(65536)
        assert data, "client closed without sending a frame"
        msgs = parser.feed(data)
        if msgs:
            return msgs[0]


def unmasked(opcode: int, payload: bytes, first_byte: int | None = None) -> bytes:
    b0 = (0x80 | opcode) if first_byte is None else first_byte
    assert len(payload) < 126
    return bytes([b0, len(payload)]) + payload


async def echo_handler(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(max_msg_size=4 * MiB)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def open_ws(
    port: int,
    *,
    headers: dict[str, str] | None = None,
    subprotocols: tuple[str, ...] | list[str] = (),
    max_message_bytes: int = 64 * MiB,
) -> WebSocket:
    return await connect(
        "127.0.0.1",
        port,
        path="/ws",
        headers=headers,
        subprotocols=subprotocols,
        open_timeout_s=STEP_TIMEOUT_S,
        max_message_bytes=max_message_bytes,
    )


async def recv(ws: WebSocket) -> bytes:
    async with asyncio.timeout(STEP_TIMEOUT_S):
        return await ws.recv()


# --- aiohttp server -----------------------------------------------------------


async def test_echo_text_binary_and_1mib(aiohttp_server: StartAiohttp) -> None:
    ws = await open_ws(await aiohttp_server(echo_handler))
    try:
        await ws.send_text("héllo")
        assert (await recv(ws)).decode() == "héllo"
        await ws.send_text(b"raw utf-8 bytes")
        assert await recv(ws) == b"raw utf-8 bytes"
        await ws.send_binary(b"\x00\xff")
        assert await recv(ws) == b"\x00\xff"
        big = ("0123456789abcdef" * (MiB // 16)).encode()
        await ws.send_text(big)
        assert await recv(ws) == big
        await ws.send_binary(b"")
        assert await recv(ws) == b""
    finally:
        await ws.close()
    assert ws.closed
    assert ws.close_code == 1000


async def test_concurrent_senders_do_not_interleave(aiohttp_server: StartAiohttp) -> None:
    ws = await open_ws(await aiohttp_server(echo_handler))
    try:
        messages = [f"{i:03d}".encode() * 30000 for i in range(20)]
        async with asyncio.timeout(STEP_TIMEOUT_S):
            await asyncio.gather(*(ws.send_text(m) for m in messages))
        got = [await recv(ws) for _ in messages]
        assert sorted(got) == sorted(messages)
    finally:
        await ws.close()


async def test_server_ping_is_answered(aiohttp_server: StartAiohttp) -> None:
    pongs: asyncio.Queue[bytes] = asyncio.Queue()

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await ws.ping(b"are-you-there")
        msg = await ws.receive()
        if msg.type == WSMsgType.PONG:
            await pongs.put(msg.data)
            await ws.send_str("got pong")
        await ws.receive()
        return ws

    ws = await open_ws(await aiohttp_server(handler))
    try:
        before = ws.last_recv_monotonic
        assert await recv(ws) == b"got pong"
        assert pongs.get_nowait() == b"are-you-there"
        assert ws.last_recv_monotonic >= before
    finally:
        await ws.close()


async def test_client_ping_pong_is_swallowed(aiohttp_server: StartAiohttp) -> None:
    ws = await open_ws(await aiohttp_server(echo_handler))
    try:
        await ws.ping(b"keepalive")
        await ws.send_text("after")
        assert await recv(ws) == b"after"
        assert ws.last_recv_monotonic <= time.monotonic()
    finally:
        await ws.close()


async def test_server_close_code_surfaces(aiohttp_server: StartAiohttp) -> None:
    server_closed = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        # A long close timeout: the event only fires quickly if the client echoes.
        ws = web.WebSocketResponse(timeout=60.0)
        await ws.prepare(request)
        await ws.close(code=4003, message=b"forbidden")
        server_closed.set()
        return ws

    ws = await open_ws(await aiohttp_server(handler))
    with pytest.raises(ConnectionClosed) as ei:
        await recv(ws)
    assert ei.value.code == 4003
    assert ei.value.reason == "forbidden"
    assert ws.close_code == 4003
    assert ws.close_reason == "forbidden"
    assert ws.closed
    async with asyncio.timeout(STEP_TIMEOUT_S):
        await server_closed.wait()
    with pytest.raises(ConnectionClosed):
        await ws.send_text("late")
    with pytest.raises(ConnectionClosed):
        await recv(ws)
    await ws.close()  # idempotent after a peer close


async def test_client_close_reaches_server(aiohttp_server: StartAiohttp) -> None:
    seen: asyncio.Queue[tuple[int | None, str]] = asyncio.Queue()

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        msg = await ws.receive()
        await seen.put((ws.close_code, msg.extra or ""))
        return ws

    ws = await open_ws(await aiohttp_server(handler))
    await ws.close(4100, "bye")
    assert await asyncio.wait_for(seen.get(), STEP_TIMEOUT_S) == (4100, "bye")
    assert ws.closed
    assert ws.close_code == 1000  # aiohttp answers with 1000 instead of echoing
    await ws.close()
    with pytest.raises(ConnectionClosed):
        await ws.send_binary(b"x")
    with pytest.raises(ConnectionClosed):
        await ws.ping()


async def test_close_while_another_task_is_receiving(aiohttp_server: StartAiohttp) -> None:
    ws = await open_ws(await aiohttp_server(echo_handler))
    reader = asyncio.create_task(ws.recv())
    await asyncio.sleep(0)  # let the reader block on the socket first
    await ws.close(timeout_s=STEP_TIMEOUT_S)
    with pytest.raises(ConnectionClosed) as ei:
        await asyncio.wait_for(reader, STEP_TIMEOUT_S)
    assert ei.value.code == 1000


@pytest.mark.parametrize("status", [401, 403])
async def test_http_refusal_is_handshake_error(aiohttp_server: StartAiohttp, status: int) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text="bad token")

    port = await aiohttp_server(handler)
    with pytest.raises(HandshakeError) as ei:
        await open_ws(port)
    assert ei.value.status == status
    assert ei.value.body_hint == "bad token"


async def test_subprotocol_negotiated(aiohttp_server: StartAiohttp) -> None:
    server_protocols: asyncio.Queue[str | None] = asyncio.Queue()

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("mcp",))
        await ws.prepare(request)
        await server_protocols.put(ws.ws_protocol)
        await ws.receive()
        return ws

    port = await aiohttp_server(handler)
    ws = await open_ws(port, subprotocols=["mcp"])
    try:
        assert ws.subprotocol == "mcp"
        assert await asyncio.wait_for(server_protocols.get(), STEP_TIMEOUT_S) == "mcp"
    finally:
        await ws.close()
    ws = await open_ws(port)
    try:
        assert ws.subprotocol is None
    finally:
        await ws.close()


async def test_headers_reach_server(aiohttp_server: StartAiohttp) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(
            "|".join(
                [
                    request.headers.get("Authorization", ""),
                    request.headers.get("X-Shim-Id", ""),
                    request.headers.get("Origin", "<none>"),
                    request.headers.get("Host", ""),
                ]
            )
        )
        await ws.receive()
        return ws

    port = await aiohttp_server(handler)
    ws = await open_ws(port, headers={"Authorization": "Bearer s3cret", "X-Shim-Id": "7"})
    try:
        assert (await recv(ws)).decode() == f"Bearer s3cret|7|<none>|127.0.0.1:{port}"
    finally:
        await ws.close()


async def test_a_message_too_big_is_skipped_and_the_connection_lives_on(
    aiohttp_server: StartAiohttp,
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_bytes(b"x" * 2048)
        await ws.send_bytes(b"after")
        await ws.receive()
        return ws

    ws = await open_ws(await aiohttp_server(handler), max_message_bytes=1024)
    try:
        with pytest.raises(MessageTooLarge) as ei:
            await recv(ws)
        assert (ei.value.size, ei.value.limit) == (2048, 1024)
        assert ei.value.head == b"x" * 1024
        assert await recv(ws) == b"after"
        assert not ws.closed
    finally:
        await ws.close()


async def test_connect_to_closed_port_raises_oserror() -> None:
    # Bound but not listening: the port stays ours, so the refusal is deterministic.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(OSError):
            await connect("127.0.0.1", port, open_timeout_s=STEP_TIMEOUT_S)


# --- raw asyncio server (exact wire behaviour) --------------------------------


async def test_open_timeout(raw_server: StartRaw) -> None:
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()

    port = await raw_server(silent)
    try:
        with pytest.raises(TimeoutError):
            await connect("127.0.0.1", port, open_timeout_s=0.2)
    finally:
        release.set()


async def test_oversized_handshake_head(raw_server: StartRaw) -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\n" + b"X-Pad: " + b"a" * 70000)
        await writer.drain()
        await reader.read()

    port = await raw_server(flood)
    with pytest.raises(HandshakeError) as ei:
        await connect("127.0.0.1", port, open_timeout_s=STEP_TIMEOUT_S)
    assert ei.value.status == 0


async def test_eof_during_handshake_is_connection_error(raw_server: StartRaw) -> None:
    async def hangup(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Swi")

    port = await raw_server(hangup)
    with pytest.raises(ConnectionError):
        await connect("127.0.0.1", port, open_timeout_s=STEP_TIMEOUT_S)


async def test_bytes_after_head_and_fragments(raw_server: StartRaw) -> None:
    async def scenario(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Frames share the 101 response's write: the client must not lose them.
        frames = (
            unmasked(Opcode.TEXT, b"first")
            + unmasked(Opcode.TEXT, b"frag", first_byte=Opcode.TEXT)
            + unmasked(Opcode.PING, b"mid")
            + unmasked(Opcode.CONTINUATION, b"mented")
        )
        await raw_accept(reader, writer, frames)
        await writer.drain()
        pong = await read_client_message(reader)
        writer.write(unmasked(Opcode.TEXT, pong.payload if pong.opcode == Opcode.PONG else b"?"))
        await reader.read()

    ws = await connect("127.0.0.1", await raw_server(scenario), open_timeout_s=STEP_TIMEOUT_S)
    try:
        assert await recv(ws) == b"first"
        assert await recv(ws) == b"fragmented"
        assert await recv(ws) == b"mid"
    finally:
        await ws.close(timeout_s=0.5)


async def test_close_is_echoed_on_the_wire(raw_server: StartRaw) -> None:
    echoed: asyncio.Queue[Message] = asyncio.Queue()

    async def scenario(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw_accept(reader, writer)
        writer.write(unmasked(Opcode.CLOSE, struct.pack("!H", 4001) + b"go away"))
        await echoed.put(await read_client_message(reader))

    ws = await connect("127.0.0.1", await raw_server(scenario), open_timeout_s=STEP_TIMEOUT_S)
    with pytest.raises(ConnectionClosed) as ei:
        await recv(ws)
    assert (ei.value.code, ei.value.reason) == (4001, "go away")
    msg = await asyncio.wait_for(echoed.get(), STEP_TIMEOUT_S)
    assert msg.opcode == Opcode.CLOSE
    assert parse_close(msg.payload)[0] == 4001


async def test_eof_without_close_is_1006(raw_server: StartRaw) -> None:
    async def scenario(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw_accept(reader, writer)
        writer.write(unmasked(Opcode.TEXT, b"last words"))
        await writer.drain()

    ws = await connect("127.0.0.1", await raw_server(scenario), open_timeout_s=STEP_TIMEOUT_S)
    assert await recv(ws) == b"last words"
    with pytest.raises(ConnectionClosed) as ei:
        await recv(ws)
    assert ei.value.code == 1006
    assert ws.close_code == 1006
    assert ws.closed
    await ws.close()


async def test_protocol_error_fails_connection_with_1002(raw_server: StartRaw) -> None:
    got: asyncio.Queue[Message] = asyncio.Queue()

    async def scenario(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw_accept(reader, writer)
        writer.write(unmasked(Opcode.TEXT, b"x", first_byte=0x80 | 0x40 | Opcode.TEXT))
        await got.put(await read_client_message(reader))

    ws = await connect("127.0.0.1", await raw_server(scenario), open_timeout_s=STEP_TIMEOUT_S)
    with pytest.raises(ConnectionClosed) as ei:
        await recv(ws)
    assert ei.value.code == 1002
    msg = await asyncio.wait_for(got.get(), STEP_TIMEOUT_S)
    assert msg.opcode == Opcode.CLOSE
    assert parse_close(msg.payload)[0] == 1002


async def test_client_frames_are_masked(raw_server: StartRaw) -> None:
    frames: asyncio.Queue[bytes] = asyncio.Queue()

    async def scenario(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw_accept(reader, writer)
        await frames.put(await reader.readexactly(2 + 4 + 5))
        await reader.read()

    ws = await connect("127.0.0.1", await raw_server(scenario), open_timeout_s=STEP_TIMEOUT_S)
    try:
        await ws.send_text("hello")
        frame = await asyncio.wait_for(frames.get(), STEP_TIMEOUT_S)
        assert frame[0] == 0x80 | Opcode.TEXT
        assert frame[1] == 0x80 | 5
        assert mask_payload(frame[6:], frame[2:6]) == b"hello"
    finally:
        await ws.close(timeout_s=0.5)
