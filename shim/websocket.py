"""Minimal asyncio WebSocket client over ``asyncio.open_connection`` streams.

Standard library only: the shim must answer its first request within ~150 ms of
spawn, which rules out importing aiohttp or websockets.
"""

__all__ = [
    "ConnectionClosed",
    "HandshakeError",
    "MessageTooLarge",
    "ProtocolError",
    "WebSocket",
    "connect",
]

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import Mapping, Sequence

from shim.wsframes import (
    CLOSE_NO_STATUS,
    OVERSIZED,
    FrameParser,
    Message,
    Opcode,
    ProtocolError,
    encode_close,
    encode_frame,
    parse_close,
)
from shim.wshandshake import HandshakeError, handshake_request, make_key, parse_handshake_response

_HEAD_LIMIT = 64 * 1024
_READ_CHUNK = 256 * 1024
_BODY_HINT_BYTES = 512
_BODY_HINT_TIMEOUT_S = 0.5
_CLOSE_ABNORMAL = 1006
_PEER_EOF_WAIT_S = 1.0


class ConnectionClosed(Exception):
    """The WebSocket is closed; ``code``/``reason`` come from the close frame."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"WebSocket closed: code={code} reason={reason!r}")


class MessageTooLarge(Exception):
    """A message over ``max_message_bytes`` arrived and was skipped; the connection is
    still open. ``head`` holds its first bytes."""

    def __init__(self, size: int, limit: int, head: bytes) -> None:
        self.size = size
        self.limit = limit
        self.head = head
        super().__init__(f"a message of {size} bytes exceeds the limit of {limit} bytes")


async def connect(
    host: str,
    port: int,
    *,
    path: str = "/",
    headers: Mapping[str, str] | None = None,
    subprotocols: Sequence[str] = (),
    open_timeout_s: float = 10.0,
    max_message_bytes: int = 64 * 1024 * 1024,
) -> "WebSocket":
    """Open a TCP connection and perform the client handshake.

    Raises ``HandshakeError`` if the server refuses the upgrade, ``OSError`` if
    the connection fails and ``TimeoutError`` after ``open_timeout_s``.
    """
    key = make_key()
    request = handshake_request(host, port, path, key, headers, subprotocols)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(open_timeout_s):
            reader, writer = await asyncio.open_connection(host, port, limit=_HEAD_LIMIT)
            _set_nodelay(writer)
            writer.write(request)
            await writer.drain()
            head = await _read_head(reader)
            try:
                response = parse_handshake_response(head, key, subprotocols)
            except HandshakeError as e:
                if e.status == 101 or e.status == 0:
                    raise
                raise HandshakeError(
                    e.status, e.reason, await _read_body_hint(reader, e.headers), e.headers
                ) from None
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    ws = WebSocket(reader, writer, FrameParser(max_message_bytes))
    ws.subprotocol = response.subprotocol
    ws.response_headers = response.headers
    return ws


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    # Best effort: a latency tweak is never worth failing the connect over.
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise HandshakeError(0, "response head exceeds 64 KiB") from None
    except asyncio.IncompleteReadError as e:
        raise ConnectionResetError(
            f"connection closed during handshake after {len(e.partial)} bytes"
        ) from None


async def _read_body_hint(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> str:
    """Best-effort first bytes of a refusal body, to make 401/403 errors readable."""
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        return ""
    if length <= 0:
        return ""
    try:
        async with asyncio.timeout(_BODY_HINT_TIMEOUT_S):
            body = await reader.readexactly(min(length, _BODY_HINT_BYTES))
    except (TimeoutError, asyncio.IncompleteReadError, OSError):
        return ""
    return body.decode("utf-8", "replace").strip()


class WebSocket:
    """A connected client WebSocket. Create it with :func:`connect`.

    Incoming PINGs are answered (and ``last_recv_monotonic`` updated) only while
    some task is awaiting :meth:`recv`, so keep one reader task running.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        parser: FrameParser,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._parser = parser
        self._pending: deque[Message] = deque()
        # recv() and close() both read; StreamReader allows one reader at a time.
        self._read_lock = asyncio.Lock()
        self._close_lock = asyncio.Lock()
        self._close_sent_code: int | None = None
        self._close_received = False
        self._transport_closed = False
        self._close_code: int | None = None
        self._close_reason = ""
        self.subprotocol: str | None = None
        self.response_headers: dict[str, str] = {}
        self.last_recv_monotonic = time.monotonic()

    @property
    def close_code(self) -> int | None:
        """Peer's close code; ours if we failed the connection; 1006 if none arrived."""
        return self._close_code

    @property
    def close_reason(self) -> str:
        """Reason text accompanying :attr:`close_code`."""
        return self._close_reason

    @property
    def close_received(self) -> bool:
        """True once the peer's CLOSE arrived: the peer, not we, ended the connection."""
        return self._close_received

    @property
    def closed(self) -> bool:
        """True once a close frame was sent or received, or the transport is gone."""
        return self._close_sent_code is not None or self._close_received or self._transport_closed

    async def send_text(self, data: bytes | str) -> None:
        """Send one unfragmented TEXT frame; ``bytes`` must already be UTF-8."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        await self._send_data(encode_frame(Opcode.TEXT, data))

    def send_text_nowait(self, data: bytes) -> bool:
        """Queue one TEXT frame without waiting for the socket; False if closed.

        The transport buffers what the kernel does not take yet; use
        :meth:`write_buffer_size` to notice a peer that stopped reading.
        """
        if self.closed or self._writer.is_closing():
            return False
        try:
            self._writer.write(encode_frame(Opcode.TEXT, data))
        except OSError:
            return False
        return True

    def write_buffer_size(self) -> int:
        """Bytes queued in the transport and not yet sent."""
        transport = self._writer.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    async def send_binary(self, data: bytes) -> None:
        """Send one unfragmented BINARY frame."""
        await self._send_data(encode_frame(Opcode.BINARY, data))

    async def ping(self, payload: bytes = b"") -> None:
        """Send a PING; the matching PONG only updates :attr:`last_recv_monotonic`."""
        await self._send_data(encode_frame(Opcode.PING, payload))

    async def recv(self) -> bytes:
        """Return the next TEXT or BINARY payload; raise ``ConnectionClosed`` at the end
        and ``MessageTooLarge`` for a message over the limit (call again for the next)."""
        async with self._read_lock:
            while True:
                msg = await self._next_message()
                if msg.opcode == Opcode.TEXT or msg.opcode == Opcode.BINARY:
                    if self.closed:
                        continue  # data after we sent CLOSE is discarded (RFC 6455 1.4)
                    return msg.payload
                if msg.opcode == OVERSIZED:
                    if self.closed:
                        continue
                    raise MessageTooLarge(msg.size, self._parser.max_message_bytes, msg.payload)
                if msg.opcode == Opcode.PING:
                    if not self.closed:
                        # A failed PONG means the link is gone; the next read reports it.
                        with contextlib.suppress(ConnectionClosed):
                            await self._write(encode_frame(Opcode.PONG, msg.payload))
                elif msg.opcode == Opcode.CLOSE:
                    await self._on_close_frame(msg.payload)

    async def close(self, code: int = 1000, reason: str = "", timeout_s: float = 2.0) -> None:
        """Run the closing handshake (bounded by ``timeout_s``) and drop the transport."""
        async with self._close_lock:
            if self._transport_closed:
                return
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    if self._close_sent_code is None:
                        await self._send_close(code, reason)
                    async with self._read_lock:
                        while not self._close_received and not self._transport_closed:
                            msg = await self._next_message()
                            if msg.opcode == Opcode.CLOSE:
                                self._record_peer_close(msg.payload)
            except ProtocolError as e:
                self._close_code, self._close_reason = e.code, e.message
            except (TimeoutError, ConnectionClosed, OSError):
                pass
            finally:
                await self._shutdown(deadline - loop.time())

    async def _next_message(self) -> Message:
        """Return the next parsed frame, reading more bytes as needed."""
        while not self._pending:
            if self._transport_closed:
                raise self._closed_exc()
            try:
                data = await self._reader.read(_READ_CHUNK)
            except OSError:
                data = b""
            if not data:
                if self._close_code is None:
                    self._close_code = _CLOSE_ABNORMAL
                await self._shutdown(0)
                raise self._closed_exc()
            self.last_recv_monotonic = time.monotonic()
            try:
                self._pending.extend(self._parser.feed(data))
            except ProtocolError as e:
                await self._fail(e.code, e.message)
                raise ConnectionClosed(e.code, e.message) from e
        return self._pending.popleft()

    async def _on_close_frame(self, payload: bytes) -> None:
        try:
            self._record_peer_close(payload)
        except ProtocolError as e:
            await self._fail(e.code, e.message)
            raise ConnectionClosed(e.code, e.message) from e
        if self._close_sent_code is None:
            # Echo the peer's code, then let the server close TCP first (RFC 6455 7.1.1).
            try:
                await self._send_close(self._close_code or CLOSE_NO_STATUS, "")
                async with asyncio.timeout(_PEER_EOF_WAIT_S):
                    while await self._reader.read(_READ_CHUNK):
                        pass
            except (TimeoutError, ConnectionClosed, OSError):
                pass
        await self._shutdown(_PEER_EOF_WAIT_S)
        raise self._closed_exc()

    def _record_peer_close(self, payload: bytes) -> None:
        """Note the peer's CLOSE; raises ``ProtocolError`` for a malformed payload."""
        self._close_received = True
        code, reason = parse_close(payload)
        if self._close_code is None:
            self._close_code, self._close_reason = code, reason

    async def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): send CLOSE if possible, then drop."""
        if self._close_code is None:
            self._close_code, self._close_reason = code, reason
        if self._close_sent_code is None:
            self._close_sent_code = code
            self._write_nowait(encode_close(code, reason))
        await self._shutdown(0.5)

    async def _send_data(self, frame: bytes) -> None:
        if self.closed:
            raise self._closed_exc()
        await self._write(frame)

    async def _send_close(self, code: int, reason: str) -> None:
        self._close_sent_code = code
        await self._write(encode_close(code, reason))

    async def _write(self, frame: bytes) -> None:
        # One write() per frame keeps frames from concurrent senders from interleaving.
        if self._transport_closed or self._writer.is_closing():
            raise self._closed_exc()
        try:
            self._writer.write(frame)
            await self._writer.drain()
        except OSError as e:
            if self._close_code is None:
                self._close_code = _CLOSE_ABNORMAL
            raise self._closed_exc() from e

    def _write_nowait(self, frame: bytes) -> None:
        if not self._transport_closed and not self._writer.is_closing():
            with contextlib.suppress(OSError):
                self._writer.write(frame)

    async def _shutdown(self, timeout_s: float) -> None:
        if self._transport_closed:
            return
        self._transport_closed = True
        if self._close_code is None:
            self._close_code = _CLOSE_ABNORMAL
        self._writer.close()
        if timeout_s <= 0:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await self._writer.wait_closed()
        except (TimeoutError, OSError):
            pass

    def _closed_exc(self) -> ConnectionClosed:
        code = self._close_code
        if code is None:
            code = self._close_sent_code if self._close_sent_code is not None else _CLOSE_ABNORMAL
        return ConnectionClosed(code, self._close_reason)
