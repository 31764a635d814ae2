"""Client frames: decode the envelope of what arrives, encode what leaves. Pure.

Every frame is decoded once as an `Envelope`: all a JSON-RPC frame needs, and the
`op` that marks the op dialect. Only a frame with an op is decoded a second time, as
the op's own Struct (see ops.py), so the MCP path pays for one decode alone. Tool
arguments, ids and results stay raw JSON (raw.py).
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from broker.router.ops import OP_NAMES, CallToolErrorRes, ErrorRes, HelloRefused, OpRequest
from exai.errors import BrokerError, ErrorCode, InvalidArguments, InvalidFrame
from exai.jsonrpc import ABSENT, Message

__all__ = [
    "CallToolParams",
    "Dialect",
    "Envelope",
    "FrameCodec",
]

_MAX_DEPTH = 64


class Dialect(enum.StrEnum):
    """What a client speaks: MCP's JSON-RPC, or EX-AI's op frames."""

    MCP = "mcp"
    OP = "op"


class Envelope(Message):
    """The top level of a frame: JSON-RPC's fields, and the op dialect's op and id."""

    op: str | None = None
    # Read here as well as in the op's Struct: an error for an unknown op echoes it.
    request_id: msgspec.Raw = ABSENT


class Meta(msgspec.Struct):
    progressToken: msgspec.Raw = ABSENT
    protocol_version: str | None = msgspec.field(
        default=None, name="io.modelcontextprotocol/protocolVersion"
    )
    # A 2026-07-28 client's log level, sent with each request instead of logging/setLevel.
    log_level: str | None = msgspec.field(default=None, name="io.modelcontextprotocol/logLevel")
    client_capabilities: msgspec.Raw = msgspec.field(
        default=ABSENT, name="io.modelcontextprotocol/clientCapabilities"
    )
    client_info: msgspec.Raw = msgspec.field(
        default=ABSENT, name="io.modelcontextprotocol/clientInfo"
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
    # initialize's: who the client is (kept raw, to tell a session's own instance).
    capabilities: msgspec.Raw = ABSENT
    clientInfo: msgspec.Raw = ABSENT


class ResumeParams(msgspec.Struct):
    """A 2026-07-28 retry of a request that was answered `input_required`."""

    requestState: str | None = None
    inputResponses: dict[str, msgspec.Raw] | None = None


class LevelParams(msgspec.Struct):
    level: str = ""


class UriParams(msgspec.Struct):
    uri: str | None = None


class _Response(msgspec.Struct, omit_defaults=True):
    jsonrpc: str
    id: msgspec.Raw
    result: msgspec.Raw


class _ErrorResponse(msgspec.Struct):
    jsonrpc: str
    id: msgspec.Raw
    error: dict[str, Any]


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
        "_op_decoder",
    )

    def __init__(self) -> None:
        self._decoder = msgspec.json.Decoder(Envelope)
        self._call_decoder = msgspec.json.Decoder(CallToolParams)
        self._cancel_decoder = msgspec.json.Decoder(CancelParams)
        self._generic_decoder = msgspec.json.Decoder(GenericParams)
        self._op_decoder = msgspec.json.Decoder(OpRequest)
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

    def decode_op(self, env: Envelope, data: bytes) -> OpRequest | None:
        """The op frame `data` (already decoded as `env`), or None for an op nobody knows.

        Raises InvalidFrame like `decode` does for a field of the wrong type.
        """
        if env.op not in OP_NAMES:
            return None
        try:
            return self._op_decoder.decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:
            # `decode` parsed these very bytes, so only a field's type can be wrong here.
            raise InvalidFrame(f"invalid frame: {exc}") from None

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

    def resume_params(self, params: msgspec.Raw) -> ResumeParams:
        try:
            return msgspec.json.decode(params, type=ResumeParams)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise InvalidArguments(f"invalid requestState or inputResponses: {exc}") from None

    def level_params(self, params: msgspec.Raw) -> str:
        """`logging/setLevel`'s level ("" when missing or not a string)."""
        try:
            return msgspec.json.decode(params or b"{}", type=LevelParams).level
        except (msgspec.DecodeError, RecursionError):
            return ""

    def uri_params(self, params: msgspec.Raw) -> str | None:
        """The `uri` of a resources request, or None when it has none to speak of."""
        try:
            return msgspec.json.decode(params or b"{}", type=UriParams).uri
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

    def op_error(self, request_id: msgspec.Raw | None, exc: BrokerError) -> bytes:
        """An op frame refused outside any call (`"op": "error"`)."""
        return self._encoder.encode(ErrorRes(_op_error_body(exc), request_id))

    def op_call_error(self, request_id: msgspec.Raw, exc: BrokerError) -> bytes:
        """An op call that ended without a tool result (`"op": "call_tool_res"`)."""
        return self._encoder.encode(CallToolErrorRes(_op_error_body(exc), request_id))

    def hello_refused(self, error: str, code: ErrorCode) -> bytes:
        """The hello_ack of a connection refused before it has a session."""
        return self._encoder.encode(HelloRefused(False, error, code))


def _op_error_body(exc: BrokerError) -> dict[str, Any]:
    return {"message": exc.message, **exc.to_data()}
