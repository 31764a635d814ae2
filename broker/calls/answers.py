"""What a call's client is told, in the call's dialect: acks, results, errors, progress;
and the typed error for each way a call can fail.

JSON-RPC answers are spliced from raw bytes (the id and the worker's result are JSON
already, and this is every MCP call's path); op answers are encoded from the Structs
of ops.py, which turn a tool result into outputs and text for the op client.
"""

from __future__ import annotations

from typing import Any

import msgspec

from broker.calls.call import PendingCall
from broker.calls.scheduler import SERVER_LANE, Rejection
from broker.router.codec import Dialect, FrameCodec
from broker.router.modern import stamp_result
from broker.router.ops import Ack, CallToolAck, CallToolRes, ProgressNote, ToolFailure
from exai.errors import (
    BrokerError,
    ErrorCode,
    InvalidArguments,
    OverCapacity,
    ResultTooLarge,
    Timeout,
    ToolNotFound,
    WorkerLost,
)
from exai.ipc import Progress, Result

__all__ = [
    "AnswerFrames",
    "MalformedResult",
    "over_capacity",
    "queue_wait_expired",
    "server_error",
    "timed_out",
    "too_large",
    "worker_error",
    "worker_lost",
]


class _ToolResult(msgspec.Struct):
    content: list[dict[str, Any]] = []
    isError: bool = False
    structuredContent: Any = None


class _ProgressParams(msgspec.Struct):
    progress: float = 0.0
    total: float | None = None
    message: str | None = None


class _ErrorData(msgspec.Struct):
    code: Any = None


class _ServerError(msgspec.Struct):
    message: Any = ""
    data: _ErrorData | None = None


_TOOL_RESULT = msgspec.json.Decoder(_ToolResult)
_PROGRESS = msgspec.json.Decoder(_ProgressParams)
_SERVER_ERROR = msgspec.json.Decoder(_ServerError)
# An alias: looking a member up on an Enum class costs a descriptor call per answer.
_OP = Dialect.OP


class MalformedResult(BrokerError):
    """A tool result the op dialect cannot be built from (say `"isError": null`): the
    tool broke the CallToolResult contract, so its client gets an EXEC_ERROR."""

    code = ErrorCode.EXEC_ERROR


class AnswerFrames:
    """Builds the frames about one call, with the daemon's codec."""

    __slots__ = ("_codec",)

    def __init__(self, codec: FrameCodec) -> None:
        self._codec = codec

    def call_ack(self, call: PendingCall) -> bytes:
        """An op client's `call_tool_ack`: the call is running or queued."""
        return self._codec.encode(CallToolAck(call.request_id))

    def shim_ack(self, call: PendingCall) -> bytes:
        """A shim's `ack` of a JSON-RPC request that is taking a while."""
        return self._codec.encode(Ack(call.request_id))

    def result(self, call: PendingCall, payload: bytes) -> bytes:
        """The answer carrying a worker's CallToolResult (JSON bytes).

        Raises MalformedResult when an op answer cannot be built from `payload`.
        """
        if call.dialect is not _OP:
            if call.modern:
                payload = stamp_result(payload, call.method or "tools/call")
            # What codec.result encodes, spliced: both the id and the result are raw JSON.
            return b'{"jsonrpc":"2.0","id":' + call.request_id + b',"result":' + payload + b"}"
        try:
            result = _TOOL_RESULT.decode(payload)
        except msgspec.DecodeError as exc:
            raise MalformedResult(
                f"{call.tool!r} returned a malformed result: {exc}", tool=call.tool
            ) from None
        outputs = result.content
        text = "\n".join(str(c.get("text", "")) for c in outputs if c.get("type") == "text")
        failure = ToolFailure(ErrorCode.EXEC_ERROR, text) if result.isError else None
        return self._codec.encode(
            CallToolRes(
                call.request_id, outputs, text, result.isError, result.structuredContent, failure
            )
        )

    def raw_result(self, request_id: msgspec.Raw, result: bytes) -> bytes:
        return b'{"jsonrpc":"2.0","id":' + request_id + b',"result":' + result + b"}"

    def raw_error(self, request_id: msgspec.Raw, error: bytes) -> bytes:
        """A JSON-RPC error answer carrying a hosted server's error object as it was."""
        return b'{"jsonrpc":"2.0","id":' + request_id + b',"error":' + error + b"}"

    def forwarded_progress(self, call: PendingCall, params: bytes) -> bytes:
        """A hosted server's progress (its params carry the client's token already)."""
        if call.dialect is _OP:
            note = _PROGRESS.decode(params)
            return self._codec.encode(
                ProgressNote(call.request_id, note.progress, note.total, note.message)
            )
        return b'{"jsonrpc":"2.0","method":"notifications/progress","params":' + params + b"}"

    def error(self, dialect: Dialect, request_id: msgspec.Raw, exc: BrokerError) -> bytes:
        """The answer of a call that ended with `exc` instead of a tool result."""
        if dialect is _OP:
            return self._codec.op_call_error(request_id, exc)
        return self._codec.error(request_id, exc)

    def progress(self, call: PendingCall, progress: Progress) -> bytes:
        """A worker's progress report, to the token the client gave."""
        if call.dialect is _OP:
            return self._codec.encode(
                ProgressNote(call.request_id, progress.progress, progress.total, progress.message)
            )
        assert call.progress_token is not None
        return self._codec.progress(
            call.progress_token, progress.progress, progress.total, progress.message
        )


# --- why a call failed ---------------------------------------------------------------


def server_error(error: bytes) -> BrokerError:
    """A hosted server's JSON-RPC error, for metrics and for op clients: EXEC_ERROR, or
    the typed code its data names (a broker's own, say RESULT_TOO_LARGE)."""
    try:
        decoded = _SERVER_ERROR.decode(error)
    except msgspec.DecodeError:
        decoded = _ServerError()
    exc = ServerError(str(decoded.message) or "the hosted server answered with an error")
    code = decoded.data.code if decoded.data is not None else None
    if isinstance(code, str) and code in _TYPED_CODES:
        exc.code = ErrorCode(code)
    return exc


class ServerError(BrokerError):
    """The tool server failed the call (its error, or a result that breaks the contract)."""

    code = ErrorCode.EXEC_ERROR


_TYPED_CODES = frozenset(ErrorCode)


def over_capacity(rejection: Rejection) -> OverCapacity:
    """Refused at once: a cap the call needs is full (and it may not wait)."""
    return _full(rejection.describe(), rejection)


def queue_wait_expired(rejection: Rejection, waited_s: float) -> OverCapacity:
    """Waited the whole queue timeout without a cap freeing up."""
    return _full(f"waited {waited_s:g} s in the queue: " + rejection.describe(), rejection)


def _full(message: str, rejection: Rejection) -> OverCapacity:
    if rejection.scope == "server" and rejection.provider is not None:
        server = rejection.provider.removeprefix(SERVER_LANE)
        return OverCapacity(
            message, scope="server", server=server, retry_after_ms=rejection.retry_after_ms
        )
    return OverCapacity(
        message,
        scope=rejection.scope,
        provider=rejection.provider,
        retry_after_ms=rejection.retry_after_ms,
    )


def timed_out(tool: str, timeout_s: float) -> Timeout:
    return Timeout(
        f"{tool!r} did not finish within {timeout_s:g} s (EXAI_WS_CALL_TIMEOUT); it was cancelled",
        timeout_s=timeout_s,
    )


def worker_lost(reason: str, tool: str, slot: int) -> WorkerLost:
    return WorkerLost(f"{reason} while running {tool!r}; it is being restarted", worker=slot)


def too_large(tool: str, size: int, max_frame_bytes: int) -> ResultTooLarge:
    """`size` is the answer frame's, as it would be sent (an op frame repeats the text)."""
    return ResultTooLarge(
        f"{tool!r} returned a result whose answer is {size} bytes, more than "
        f"EXAI_WS_MAX_BYTES ({max_frame_bytes}) allows in one frame",
        bytes=size,
    )


def worker_error(result: Result, tool: str) -> BrokerError:
    """The typed error for a worker's failed Result."""
    message = result.error_message or "the tool failed"
    kinds: dict[str | None, type[BrokerError]] = {
        ErrorCode.TOOL_NOT_FOUND: ToolNotFound,
        ErrorCode.OVER_CAPACITY: OverCapacity,
        ErrorCode.WORKER_LOST: WorkerLost,
        ErrorCode.INVALID_ARGUMENTS: InvalidArguments,
        ErrorCode.EXEC_ERROR: ServerError,
    }
    kind = kinds.get(result.error_code, BrokerError)
    if kind is OverCapacity:
        scope = "provider" if result.provider else "global"
        return OverCapacity(message, scope=scope, provider=result.provider, retry_after_ms=1000)
    return kind(message, tool=tool)
