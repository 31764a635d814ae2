"""Length-prefixed msgpack framing for the worker pipes. Sans-I/O: bytes in, messages out.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack.
"""

from __future__ import annotations

import struct
from typing import Any, Generic, TypeVar

import msgspec

__all__ = ["DEFAULT_MAX_FRAME_BYTES", "FrameDecoder", "FrameEncoder", "FramingError"]

T = TypeVar("T")

DEFAULT_MAX_FRAME_BYTES = 256 * 1024 * 1024
_PREFIX = 4
_PACK_PREFIX_INTO = struct.Struct(">I").pack_into
_UNPACK_PREFIX_FROM = struct.Struct(">I").unpack_from


class FramingError(Exception):
    """The byte stream is not a valid frame sequence; the pipe cannot be trusted any more."""


class FrameEncoder:
    """Encodes messages into length-prefixed frames, reusing one msgspec encoder."""

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()

    def encode(self, message: Any) -> bytes:
        buf = bytearray(_PREFIX)
        self._encoder.encode_into(message, buf, _PREFIX)
        buf[:_PREFIX] = (len(buf) - _PREFIX).to_bytes(_PREFIX, "big")
        return bytes(buf)

    def encode_into(self, message: Any, out: bytearray) -> None:
        """Append one frame to `out` (used to batch several frames into one write)."""
        start = len(out)
        out += b"\0\0\0\0"
        self._encoder.encode_into(message, out, start + _PREFIX)
        _PACK_PREFIX_INTO(out, start, len(out) - start - _PREFIX)


class FrameDecoder(Generic[T]):
    """Accumulates bytes and yields complete, typed messages.

    The size limit is checked from the prefix, before the body is buffered, so a
    corrupt or hostile length cannot make the reader allocate without bound.
    """

    def __init__(self, message_type: Any, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._decoder: msgspec.msgpack.Decoder[T] = msgspec.msgpack.Decoder(message_type)
        self._buf = bytearray()
        self._max = max_frame_bytes

    def feed(self, data: bytes) -> list[T]:
        buf = self._buf
        # Usually whole frames arrive together: decode straight from `data` and keep
        # only an incomplete tail, instead of copying everything through the buffer.
        source: bytes | bytearray = data
        if buf:
            buf += data
            source = buf
        out: list[T] = []
        decode = self._decoder.decode
        pos = 0
        end = len(source)
        with memoryview(source) as view:
            while end - pos >= _PREFIX:
                (size,) = _UNPACK_PREFIX_FROM(view, pos)
                if size > self._max:
                    raise FramingError(f"frame of {size} bytes exceeds the {self._max}-byte limit")
                if end - pos - _PREFIX < size:
                    break
                body = view[pos + _PREFIX : pos + _PREFIX + size]
                try:
                    out.append(decode(body))
                except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                    raise FramingError(f"undecodable frame: {exc}") from exc
                finally:
                    body.release()
                pos += _PREFIX + size
        if source is buf:
            if pos:
                del buf[:pos]
        elif pos < end:
            buf += data[pos:]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)
