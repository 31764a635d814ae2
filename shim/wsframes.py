"""Sans-I/O RFC 6455 WebSocket client primitives: handshake and framing.

Standard library only and no sockets or asyncio, so it imports fast and can be
unit-tested byte for byte.
"""

__all__ = [
    "CLOSE_NO_STATUS",
    "FrameParser",
    "HandshakeError",
    "HandshakeResponse",
    "Message",
    "Opcode",
    "ProtocolError",
    "accept_for",
    "encode_close",
    "encode_frame",
    "handshake_request",
    "make_key",
    "mask_payload",
    "parse_close",
    "parse_handshake_response",
]

import base64
import hashlib
import os
import struct
from collections.abc import Mapping, Sequence
from enum import IntEnum
from typing import NamedTuple

from exai.net import host_for_url

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_CONTROL_PAYLOAD = 125
_MASK_CHUNK = 256 * 1024
CLOSE_NO_STATUS = 1005

# Headers the handshake owns; letting callers set them would break the upgrade
# (or, for Origin, make the broker treat the shim like a browser page).
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "upgrade",
        "connection",
        "origin",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
        "sec-websocket-accept",
    }
)


class Opcode(IntEnum):
    """WebSocket frame opcodes (RFC 6455 section 5.2)."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


_DATA_OPCODES = frozenset({Opcode.TEXT, Opcode.BINARY})
_CONTROL_OPCODES = frozenset({Opcode.CLOSE, Opcode.PING, Opcode.PONG})
_KNOWN_OPCODES = frozenset(Opcode)


class HandshakeError(Exception):
    """The server refused or botched the HTTP upgrade."""

    def __init__(
        self,
        status: int,
        reason: str,
        body_hint: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.body_hint = body_hint
        self.headers: dict[str, str] = dict(headers or {})
        msg = f"WebSocket handshake failed: {status} {reason}"
        if body_hint:
            msg += f" ({body_hint})"
        super().__init__(msg)


class ProtocolError(Exception):
    """The peer violated RFC 6455; ``code`` is the close code to send back."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{message} (close code {code})")


class HandshakeResponse(NamedTuple):
    """A validated ``101 Switching Protocols`` response."""

    status: int
    reason: str
    headers: dict[str, str]
    subprotocol: str | None


class Message(NamedTuple):
    """One complete (reassembled) message or control frame."""

    opcode: int
    payload: bytes


def make_key() -> str:
    """Return a fresh ``Sec-WebSocket-Key`` (base64 of 16 random bytes)."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def accept_for(key: str) -> str:
    """Return the ``Sec-WebSocket-Accept`` value a server must send for ``key``."""
    digest = hashlib.sha1((key + _GUID).encode("ascii"), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def _check_token(value: str, what: str) -> None:
    if not value or any(c in value for c in "\r\n\0 \t:"):
        raise ValueError(f"invalid {what}: {value!r}")


def _check_header_value(value: str) -> None:
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"invalid header value: {value!r}")


def handshake_request(
    host: str,
    port: int,
    path: str,
    key: str,
    headers: Mapping[str, str] | None = None,
    subprotocols: Sequence[str] = (),
) -> bytes:
    """Build the HTTP/1.1 upgrade request; never sends an ``Origin`` header."""
    if not path.startswith("/") or any(c in path for c in " \r\n\0\t"):
        raise ValueError(f"invalid request path: {path!r}")
    host = host_for_url(host)
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocols:
        for proto in subprotocols:
            _check_token(proto, "subprotocol")
            if "," in proto:
                raise ValueError(f"invalid subprotocol: {proto!r}")
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
    for name, value in (headers or {}).items():
        _check_token(name, "header name")
        _check_header_value(value)
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by the handshake itself")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    text = head.decode("latin-1")
    if text.endswith("\r\n\r\n"):
        text = text[:-4]
    status_line, _, rest = text.partition("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise HandshakeError(0, "malformed HTTP status line", status_line[:200])
    status = int(parts[1])
    reason = parts[2] if len(parts) == 3 else ""
    headers: dict[str, str] = {}
    for line in rest.split("\r\n") if rest else ():
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HandshakeError(status, reason, f"malformed header line {line[:200]!r}")
        lname = name.lower()
        value = value.strip()
        headers[lname] = f"{headers[lname]}, {value}" if lname in headers else value
    return status, reason, headers


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",") if t.strip()}


def parse_handshake_response(
    head: bytes, key: str, subprotocols: Sequence[str] = ()
) -> HandshakeResponse:
    """Validate the server's response head (through ``\\r\\n\\r\\n``) for ``key``.

    Raises ``HandshakeError`` unless it is a well-formed 101 with the right accept
    value. If ``subprotocols`` is given, a chosen protocol outside it is an error.
    """
    status, reason, headers = _parse_head(head)
    if status != 101:
        raise HandshakeError(status, reason, "", headers)
    if "websocket" not in _tokens(headers.get("upgrade", "")):
        raise HandshakeError(status, reason, "missing 'Upgrade: websocket'", headers)
    if "upgrade" not in _tokens(headers.get("connection", "")):
        raise HandshakeError(status, reason, "missing 'Connection: Upgrade'", headers)
    if headers.get("sec-websocket-accept") != accept_for(key):
        raise HandshakeError(status, reason, "Sec-WebSocket-Accept mismatch", headers)
    if headers.get("sec-websocket-extensions"):
        # We never offer extensions, so any here would change the framing under us.
        raise HandshakeError(status, reason, "server selected an extension", headers)
    chosen = headers.get("sec-websocket-protocol") or None
    if chosen is not None and subprotocols and chosen not in subprotocols:
        raise HandshakeError(status, reason, f"unexpected subprotocol {chosen!r}", headers)
    return HandshakeResponse(status, reason, headers, chosen)


def mask_payload(payload: bytes, mask_key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask_key`` (masking and unmasking)."""
    n = len(payload)
    if n <= _MASK_CHUNK:
        # One big-int XOR runs in C; a per-byte Python loop is ~100x slower.
        full = mask_key * (n // 4) + mask_key[: n % 4]
        x = int.from_bytes(payload, "little") ^ int.from_bytes(full, "little")
        return x.to_bytes(n, "little")
    # Huge ints are cache-unfriendly: cache-sized chunks mask 64 MiB ~3x faster.
    # _MASK_CHUNK is a multiple of 4, so every chunk starts on a mask boundary.
    chunk_mask = int.from_bytes(mask_key * (_MASK_CHUNK // 4), "little")
    view = memoryview(payload)
    parts = []
    whole = n - n % _MASK_CHUNK
    for i in range(0, whole, _MASK_CHUNK):
        x = int.from_bytes(view[i : i + _MASK_CHUNK], "little") ^ chunk_mask
        parts.append(x.to_bytes(_MASK_CHUNK, "little"))
    if whole < n:
        parts.append(mask_payload(bytes(view[whole:]), mask_key))
    return b"".join(parts)


def encode_frame(
    opcode: int, payload: bytes, mask_key: bytes | None = None, fin: bool = True
) -> bytes:
    """Encode one client frame; client frames are always masked."""
    if opcode not in _KNOWN_OPCODES:
        raise ValueError(f"unknown opcode {opcode}")
    n = len(payload)
    if opcode in _CONTROL_OPCODES and (n > _MAX_CONTROL_PAYLOAD or not fin):
        raise ValueError("control frames must be unfragmented and at most 125 bytes")
    if mask_key is None:
        mask_key = os.urandom(4)
    elif len(mask_key) != 4:
        raise ValueError("mask_key must be 4 bytes")
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        header = struct.pack("!BB", b0, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", b0, 0x80 | 127, n)
    return header + mask_key + mask_payload(payload, mask_key)


def _close_payload(code: int, reason: str) -> bytes:
    if code == CLOSE_NO_STATUS:
        return b""
    if not (1000 <= code <= 4999):
        raise ValueError(f"invalid close code {code}")
    raw = reason.encode("utf-8")
    if len(raw) > _MAX_CONTROL_PAYLOAD - 2:
        # Truncate on a character boundary so the peer still sees valid UTF-8.
        raw = raw[: _MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore").encode("utf-8")
    return struct.pack("!H", code) + raw


def encode_close(code: int, reason: str, mask_key: bytes | None = None) -> bytes:
    """Encode a masked CLOSE frame (reason truncated to fit; 1005 sends no body)."""
    return encode_frame(Opcode.CLOSE, _close_payload(code, reason), mask_key)


def _valid_close_code(code: int) -> bool:
    if 3000 <= code <= 4999:
        return True
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)


def parse_close(payload: bytes) -> tuple[int, str]:
    """Decode a CLOSE payload into ``(code, reason)``; empty means ``(1005, "")``."""
    if not payload:
        return CLOSE_NO_STATUS, ""
    if len(payload) == 1:
        raise ProtocolError(1002, "close frame payload of 1 byte")
    (code,) = struct.unpack_from("!H", payload)
    if not _valid_close_code(code):
        raise ProtocolError(1002, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(1007, "close reason is not valid UTF-8") from None
    return code, reason


class FrameParser:
    """Incremental parser for server-to-client frames.

    ``feed`` returns complete messages; fragments are reassembled and control
    frames arriving between fragments are returned immediately. After a
    ``ProtocolError`` the parser stays failed.
    """

    def __init__(self, max_message_bytes: int) -> None:
        if max_message_bytes < 0:
            raise ValueError("max_message_bytes must be >= 0")
        self.max_message_bytes = max_message_bytes
        self._buf = bytearray()
        self._frag_opcode: int | None = None
        self._frag_parts: list[bytes] = []
        self._frag_size = 0
        self._error: ProtocolError | None = None

    def feed(self, data: bytes) -> list[Message]:
        """Add received bytes; return the messages they complete, in order."""
        if self._error is not None:
            raise self._error
        try:
            return self._feed(data)
        except ProtocolError as e:
            self._error = e
            self._buf.clear()
            self._frag_parts.clear()
            raise

    def _feed(self, data: bytes) -> list[Message]:
        buf = self._buf
        buf += data
        out: list[Message] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            fin = bool(b0 & 0x80)
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            self._check_header(b0, opcode, fin, length)
            hdr = pos + 2
            if length == 126:
                if end - hdr < 2:
                    break
                (length,) = struct.unpack_from("!H", buf, hdr)
                hdr += 2
            elif length == 127:
                if end - hdr < 8:
                    break
                (length,) = struct.unpack_from("!Q", buf, hdr)
                if length >> 63:
                    raise ProtocolError(1002, "64-bit payload length has the high bit set")
                hdr += 8
            if opcode not in _CONTROL_OPCODES and self._frag_size + length > self.max_message_bytes:
                raise ProtocolError(1009, f"message exceeds {self.max_message_bytes} bytes")
            mask_key = None
            if b1 & 0x80:
                # Servers must not mask, but unmasking costs nothing and some do.
                if end - hdr < 4:
                    break
                mask_key = bytes(buf[hdr : hdr + 4])
                hdr += 4
            if end - hdr < length:
                break
            # Via memoryview: one copy instead of two (slice, then bytes()).
            payload = bytes(memoryview(buf)[hdr : hdr + length])
            pos = hdr + length
            if mask_key is not None:
                payload = mask_payload(payload, mask_key)
            msg = self._on_frame(opcode, fin, payload)
            if msg is not None:
                out.append(msg)
        if pos:
            del buf[:pos]
        return out

    def _check_header(self, b0: int, opcode: int, fin: bool, length7: int) -> None:
        if b0 & 0x70:
            raise ProtocolError(1002, "RSV bits set without a negotiated extension")
        if opcode not in _KNOWN_OPCODES:
            raise ProtocolError(1002, f"reserved opcode {opcode:#x}")
        if opcode in _CONTROL_OPCODES:
            if not fin:
                raise ProtocolError(1002, "fragmented control frame")
            if length7 > _MAX_CONTROL_PAYLOAD:
                raise ProtocolError(1002, "control frame payload over 125 bytes")
        elif opcode == Opcode.CONTINUATION:
            if self._frag_opcode is None:
                raise ProtocolError(1002, "continuation frame with nothing to continue")
        elif self._frag_opcode is not None:
            raise ProtocolError(1002, "new data frame while a fragmented message is open")

    def _on_frame(self, opcode: int, fin: bool, payload: bytes) -> Message | None:
        if opcode in _CONTROL_OPCODES:
            return Message(opcode, payload)
        if opcode != Opcode.CONTINUATION:
            if fin:
                return Message(opcode, payload)
            self._frag_opcode = opcode
            self._frag_parts = [payload]
            self._frag_size = len(payload)
            return None
        self._frag_parts.append(payload)
        self._frag_size += len(payload)
        if not fin:
            return None
        assert self._frag_opcode is not None
        msg = Message(self._frag_opcode, b"".join(self._frag_parts))
        self._frag_opcode = None
        self._frag_parts = []
        self._frag_size = 0
        return msg
