"""What a frame from the daemon is, read with as little parsing as the hot path allows. Pure.

Results reach the client byte for byte, however large: a response's id is read from
the frame's first bytes, and a result is never decoded. Only an error response (small,
and rare) is decoded, so that its typed `error.data.code` can be checked: never its
text, which a tool may have written.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any

from exai.errors import DAEMON_SHUTDOWN_CAUSE, ErrorCode

__all__ = ["DaemonFrame", "FrameKind", "classify", "id_key"]

# The `data.cause` of the WORKER_LOST the daemon answers a call with when it stops
# while the call runs.

# How the daemon starts every response it encodes itself; the id follows.
_RESPONSE_PREFIX = b'{"jsonrpc":"2.0","id":'
# Longer ids are legal, just rare: they take the full parse.
_ID_WINDOW_BYTES = 1024
_RESULT_AFTER_ID = ',"result":'
_ERROR_AFTER_ID = ',"error":'
_id_decoder = json.JSONDecoder()


class FrameKind(enum.Enum):
    """What the shim does with a daemon frame."""

    # Not a response (a notification such as progress, or anything unreadable):
    # passed on to the client as it is.
    NOTIFICATION = "notification"
    # The result or error of the request `key`: delivered to the client.
    ANSWER = "answer"
    # An error saying the daemon shut down before or while running request `key`.
    CUT_BY_RESTART = "cut_by_restart"
    # The daemon's ack of request `key`: it is running, stop waiting for a sign of life.
    ACK = "ack"
    # The daemon refused a frame of ours outside any call; `detail` says why.
    REFUSAL = "refusal"
    # Any other op frame: it is for the shim, and the shim does not need it.
    OTHER_OP = "other_op"


@dataclasses.dataclass(frozen=True, slots=True)
class DaemonFrame:
    """A daemon frame, classified: its kind, the request it concerns, a refusal's text."""

    kind: FrameKind
    key: str | None = None
    detail: str = ""


_NOTIFICATION = DaemonFrame(FrameKind.NOTIFICATION)
_OTHER_OP = DaemonFrame(FrameKind.OTHER_OP)


def id_key(value: Any) -> str:
    """A canonical text for a JSON-RPC id, equal for the same id on both sides."""
    return json.dumps(value, separators=(",", ":"))


def classify(frame: bytes) -> DaemonFrame:
    """What `frame` (one WebSocket message from the daemon) is. Call it for every frame.

    A result in the daemon's compact form costs one small decode of its id; the frames
    that are not in that form are parsed whole.
    """
    if frame.startswith(b'{"op":'):
        return _classify_op(frame)
    head = _compact_response_head(frame)
    if head is not None:
        key, after_id = head
        if after_id.startswith(_RESULT_AFTER_ID):
            return DaemonFrame(FrameKind.ANSWER, key)
        if not after_id.startswith(_ERROR_AFTER_ID):
            head = None  # a request from the daemon, or an odd shape: read it whole
    try:
        message = json.loads(frame)
    except (ValueError, RecursionError):
        return _NOTIFICATION
    if not isinstance(message, dict) or "id" not in message or "method" in message:
        return _NOTIFICATION
    key = head[0] if head is not None else id_key(message["id"])
    kind = FrameKind.CUT_BY_RESTART if _cut_by_restart(message) else FrameKind.ANSWER
    return DaemonFrame(kind, key)


def _compact_response_head(frame: bytes) -> tuple[str, str] | None:
    """The id key of a response in the daemon's compact form, and the text after the id."""
    if not frame.startswith(_RESPONSE_PREFIX):
        return None
    start = len(_RESPONSE_PREFIX)
    text = frame[start : start + _ID_WINDOW_BYTES].decode("utf-8", "replace")
    try:
        value, end = _id_decoder.raw_decode(text)
    except ValueError:
        return None  # an id longer than the window
    # An id cut by the window (a huge number) leaves too little text after it to match.
    return id_key(value), text[end : end + len(_RESULT_AFTER_ID)]


def _cut_by_restart(response: dict[str, Any]) -> bool:
    """True for an error response typed as the daemon's shutdown: SHUTTING_DOWN (the call
    never started) or WORKER_LOST caused by the shutdown (it was running)."""
    error = response.get("error")
    if "result" in response or not isinstance(error, dict):
        return False
    data = error.get("data")
    if not isinstance(data, dict):
        return False
    code = data.get("code")
    if code == ErrorCode.SHUTTING_DOWN:
        return True
    return code == ErrorCode.WORKER_LOST and data.get("cause") == DAEMON_SHUTDOWN_CAUSE


def _classify_op(frame: bytes) -> DaemonFrame:
    try:
        message = json.loads(frame)
    except (ValueError, RecursionError):
        return _OTHER_OP
    if not isinstance(message, dict):
        return _OTHER_OP
    op = message.get("op")
    if op == "ack":
        return DaemonFrame(FrameKind.ACK, id_key(message.get("id")))
    if op == "error":
        return DaemonFrame(FrameKind.REFUSAL, detail=str(message.get("error")))
    return _OTHER_OP
