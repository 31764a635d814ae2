"""Client frames: decode the envelope of what arrives, encode what leaves. Pure.

Only the envelope is decoded; tool arguments, ids and results stay raw JSON
(`msgspec.Raw`) so the broker never re-encodes a payload, and ids go back to the
client byte for byte as they came.
"""

from __future__ import annotations

from typing import Any

import msgspec

from exai.errors import BrokerError, InvalidArguments, InvalidFrame

__all__ = [
    "CallToolParams",
    "Envelope",
    "FrameCodec",
]

# msgspec cannot put Raw in a union, so an empty Raw stands for "field absent".
ABSENT = msgspec.Raw(b"")
_MAX_DEPTH = 64


def present(raw: msgspec.Raw) -> bool:
    """True when a Raw field was in the frame (JSON null counts as present)."""
    return len(raw) > 0


class Envelope(msgspec.Struct):
    """Every field either dialect may use at the top level of a frame."""

    jsonrpc: str | None = None
    id: msgspec.Raw = ABSENT
    method: str | None = None
    params: msgspec.Raw = ABSENT
    result: msgspec.Raw = ABSENT
    error: msgspec.Raw = ABSENT
    op: str | None = None
    request_id: msgspec.Raw = ABSENT
    name: str | None = None
    arguments: msgspec.Raw = ABSENT
    token: str | None = None
    session_id: str | None = None
    acks: bool = False
    old: str | None = None
    new: str | None = None


class Meta(msgspec.Struct):
    progressToken: msgspec.Raw = ABSENT
    protocol_version: str | None = msgspec.field(
        default=None, name="io.modelcontextprotocol/protocolVersion"
    )


class CallToolParams(msgspec.Struct):
    name: str
    arguments: msgspec.Raw = ABSENT
    meta: Meta | None = msgspec.field(default=None, name="_meta")


class CancelParams(msgspec.Struct):
    requestId: msgspec.Raw
    reason: str | None = None


class GenericParams(msgspec.Struct):
    meta: Meta | None = msgspec.field(default=None, name="_meta")
    protocolVersion: str | None = None


class _Response(msgspec.Struct, omit_defaults=True):
    jsonrpc: str
    id: msgspec.Raw
    result: msgspec.Raw


class _ErrorResponse(msgspec.Struct):
    jsonrpc: str
    id: msgspec.Raw
    error: dict[str, Any]


class _Notification(msgspec.Struct):
    jsonrpc: str
    method: str
    params: dict[str, Any]


class _Progress(msgspec.Struct, omit_defaults=True):
    progressToken: msgspec.Raw
    progress: float
    total: float | None = None
    message: str | None = None


class _ProgressNotification(msgspec.Struct):
    jsonrpc: str
    method: str
    params: _Progress


def _depth_ok(data: bytes) -> bool:
    """Cheap guard against pathological nesting before a full decode."""
    depth = 0
    deepest = 0
    in_string = False
    escaped = False
    # Counting brackets outside strings: linear, and only run on frames that nest at all.
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > _MAX_DEPTH:
                    return False
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return True


class FrameCodec:
    """One per connection: reused msgspec decoders and encoders."""

    __slots__ = (
        "_call_decoder",
        "_cancel_decoder",
        "_decoder",
        "_encoder",
        "_generic_decoder",
    )

    def __init__(self) -> None:
        self._decoder = msgspec.json.Decoder(Envelope)
        self._call_decoder = msgspec.json.Decoder(CallToolParams)
        self._cancel_decoder = msgspec.json.Decoder(CancelParams)
        self._generic_decoder = msgspec.json.Decoder(GenericParams)
        self._encoder = msgspec.json.Encoder()

    # --- decoding --------------------------------------------------------------------

    def decode(self, data: bytes) -> Envelope:
        """Decode one frame's envelope or raise InvalidFrame saying what is wrong."""
        if not data.isascii():
            # Raw fields (ids, params) are not checked by msgspec, and they are echoed
            # back in text frames: the whole frame must be valid UTF-8.
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidFrame(
                    f"not valid UTF-8 at byte {exc.start}", parse_error=True
                ) from None
        try:
            return self._decoder.decode(data)
        except RecursionError:
            raise InvalidFrame(f"JSON nested deeper than {_MAX_DEPTH} levels") from None
        except msgspec.ValidationError as exc:
            stripped = data.lstrip()
            if stripped[:1] == b"[":
                raise InvalidFrame(
                    "batches are not supported; send one JSON object per frame"
                ) from None
            if stripped[:1] != b"{":
                raise InvalidFrame("a frame must be a JSON object") from None
            raise InvalidFrame(f"invalid frame: {exc}") from None
        except msgspec.DecodeError as exc:
            if not _depth_ok(data):
                raise InvalidFrame(f"JSON nested deeper than {_MAX_DEPTH} levels") from None
            raise InvalidFrame(f"not valid JSON: {exc}", parse_error=True) from None

    def call_params(self, params: msgspec.Raw) -> CallToolParams:
        if not params:
            raise InvalidArguments("tools/call needs params with a tool name")
        try:
            return self._call_decoder.decode(params)
        except msgspec.DecodeError as exc:
            raise InvalidArguments(f"invalid tools/call params: {exc}") from None
        except RecursionError:
            raise InvalidArguments("tools/call params are nested too deeply") from None

    def cancel_params(self, params: msgspec.Raw) -> CancelParams | None:
        if not params:
            return None
        try:
            return self._cancel_decoder.decode(params)
        except (msgspec.DecodeError, RecursionError):
            return None

    def generic_params(self, params: msgspec.Raw) -> GenericParams:
        if not params:
            return GenericParams()
        try:
            return self._generic_decoder.decode(params)
        except (msgspec.DecodeError, RecursionError):
            return GenericParams()

    # --- encoding --------------------------------------------------------------------

    def encode(self, obj: Any) -> bytes:
        return self._encoder.encode(obj)

    def result(self, request_id: msgspec.Raw, result: bytes | msgspec.Raw) -> bytes:
        raw = result if isinstance(result, msgspec.Raw) else msgspec.Raw(result)
        return self._encoder.encode(_Response("2.0", request_id, raw))

    def error(self, request_id: msgspec.Raw | None, exc: BrokerError) -> bytes:
        error: dict[str, Any] = {
            "code": exc.jsonrpc_code,
            "message": exc.message,
            "data": exc.to_data(),
        }
        rid = request_id if request_id is not None else msgspec.Raw(b"null")
        return self._encoder.encode(_ErrorResponse("2.0", rid, error))

    def progress(
        self, token: msgspec.Raw, progress: float, total: float | None, message: str | None
    ) -> bytes:
        params = _Progress(token, progress, total, message)
        return self._encoder.encode(_ProgressNotification("2.0", "notifications/progress", params))

    def op_error(self, op: str, request_id: msgspec.Raw | None, exc: BrokerError) -> bytes:
        error = {"message": exc.message, **exc.to_data()}
        frame: dict[str, Any] = {"op": op, "error": error}
        if request_id is not None:
            frame["request_id"] = request_id
        return self._encoder.encode(frame)
