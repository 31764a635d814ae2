"""What a line from the MCP client is, and the JSON-RPC errors the shim answers itself. Pure.

The shim reads a client's line only as far as it must: the id and method of a request
(it owes the client an answer), the tool a `tools/call` names (whether it may be
re-sent), the request a `notifications/cancelled` cancels. A line the daemon would
refuse anyway (not JSON, a batch, a bad id) is answered here, at once.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from shim.daemon_frames import id_key

__all__ = ["ClientRequest", "Forward", "Invalid", "error_response", "read_client_line"]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600


@dataclasses.dataclass(frozen=True, slots=True)
class ClientRequest:
    """A request: the client waits for its answer."""

    key: str
    request_id: Any
    method: str
    # The tool a tools/call names; None for every other method.
    tool: str | None
    # The line as the client wrote it: what goes to the daemon, as many times as it must.
    line: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Forward:
    """Anything else that is valid JSON-RPC (notifications, the client's own answers):
    sent on to the daemon as it is."""

    method: str | None
    # notifications/cancelled: the key of the request it cancels.
    cancelled_key: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Invalid:
    """A line the shim refuses; `reply` is the JSON-RPC error to write to the client."""

    reply: bytes


def read_client_line(line: bytes) -> ClientRequest | Forward | Invalid | None:
    """Classify one line of the client's stdin; None for a line to drop without an answer."""
    try:
        message = json.loads(line)
        if not line.isascii():
            line.decode("utf-8")
        if b"\\ud" in line or b"\\uD" in line:
            # A lone surrogate escape parses but cannot travel on as UTF-8.
            json.dumps(message, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError) as exc:
        return Invalid(error_response(_guess_id(line), PARSE_ERROR, f"parse error: {exc}"))
    if not isinstance(message, dict):
        # A batch or a bare value: the daemon would refuse it too.
        return Invalid(
            error_response(None, INVALID_REQUEST, "expected one JSON-RPC object per line")
        )
    method = message.get("method")
    has_id = "id" in message
    if message.get("jsonrpc") != "2.0":
        if not has_id and method is None:
            return None
        request_id = message.get("id") if _valid_id(message.get("id")) else None
        return Invalid(error_response(request_id, INVALID_REQUEST, 'expected "jsonrpc": "2.0"'))
    if has_id and not _valid_id(message["id"]):
        return Invalid(
            error_response(None, INVALID_REQUEST, "a request id must be a string or an integer")
        )
    params = message.get("params")
    if has_id and isinstance(method, str):
        tool = params.get("name") if method == "tools/call" and isinstance(params, dict) else None
        tool = tool if isinstance(tool, str) else None
        return ClientRequest(id_key(message["id"]), message["id"], method, tool, line)
    cancelled = None
    if method == "notifications/cancelled" and isinstance(params, dict) and "requestId" in params:
        cancelled = id_key(params["requestId"])
    return Forward(method if isinstance(method, str) else None, cancelled)


def error_response(
    request_id: Any, code: int, message: str, data: dict[str, Any] | None = None
) -> bytes:
    """A JSON-RPC error response line (without its newline)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data:
        error["data"] = data
    return json.dumps(
        {"jsonrpc": "2.0", "id": request_id, "error": error}, separators=(",", ":")
    ).encode()


_ID_RE = re.compile(
    rb'^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+)'
)


def _guess_id(line: bytes) -> Any:
    """The request id of a line too broken to parse, when it comes first (or null)."""
    match = _ID_RE.match(line[:512])
    if match is None:
        return None
    try:
        return json.loads(match.group(1))
    except ValueError:
        return None


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
