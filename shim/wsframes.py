"""Sans-I/O RFC 6455 framing for a client: encoding masked frames, parsing the
server's frames and close payloads.

Standard library only and no sockets or asyncio, so it imports fast and can be
unit-tested byte for byte. The opening handshake is in wshandshake.py.
"""

__all__ = [
    "CLOSE_NO_STATUS",
    "OVERSIZED",
    "FrameParser",
    "Message",
    "Opcode",
    "ProtocolError",
    "encode_close",
    "encode_frame",
    "mask_payload",
    "parse_close",
]

import os
import struct
from enum import IntEnum
from typing import NamedTuple

_MAX_CONTROL_PAYLOAD = 125
_MASK_CHUNK = 256 * 1024
CLOSE_NO_STATUS = 1005
# The `Message.opcode` of a message over the limit that was skipped (no real opcode is
# wider than 4 bits). Its payload is the message's first bytes: enough to read its id.
OVERSIZED = 0x100
OVERSIZED_HEAD_BYTES = 1024


class Opcode(IntEnum):
    """WebSocket frame opcodes (RFC 6455 section 5.2)."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


_CONTROL_OPCODES = frozenset({Opcode.CLOSE, Opcode.PING, Opcode.PONG})
_KNOWN_OPCODES = frozenset(Opcode)


class ProtocolError(Exception):
    """The peer violated RFC 6455; ``code`` is the close code to send back."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{message} (close code {code})")


class Message(NamedTuple):
    """One complete (reassembled) message or control frame."""

    opcode: int
    payload: bytes
    # For OVERSIZED: the size of the whole message, whose payload holds only its start.
    size: int = 0


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
        # Bytes of an oversized message still to drop as they arrive.
        self._skip_bytes = 0

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
        while self._skip_bytes or end - pos >= 2:
            if self._skip_bytes:
                dropped = min(self._skip_bytes, end - pos)
                pos += dropped
                self._skip_bytes -= dropped
                if self._skip_bytes:
                    break
                continue
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
            oversized = (
                opcode not in _CONTROL_OPCODES and self._frag_size + length > self.max_message_bytes
            )
            if oversized and (not fin or opcode == Opcode.CONTINUATION):
                # Part of a fragmented message: parts already taken cannot be skipped.
                raise ProtocolError(1009, f"message exceeds {self.max_message_bytes} bytes")
            mask_key = None
            if b1 & 0x80:
                # Servers must not mask, but unmasking costs nothing and some do.
                if end - hdr < 4:
                    break
                mask_key = bytes(buf[hdr : hdr + 4])
                hdr += 4
            if oversized:
                # Dropped as it arrives, never buffered, and the connection lives on: one
                # message too large must not cost the others theirs.
                head_length = min(length, OVERSIZED_HEAD_BYTES)
                if end - hdr < head_length:
                    break
                head = bytes(buf[hdr : hdr + head_length])
                if mask_key is not None:
                    head = mask_payload(head, mask_key)
                out.append(Message(OVERSIZED, head, length))
                pos = hdr
                self._skip_bytes = length
                continue
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
