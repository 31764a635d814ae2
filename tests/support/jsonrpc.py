"""JSON-RPC as the tests write and read it: request frames, the initialize handshake,
and the text or error an answer carries (wire dicts, or an SDK client's result)."""

from __future__ import annotations

from typing import Any

__all__ = [
    "INITIALIZED",
    "JsonObj",
    "initialize_params",
    "rpc_error",
    "rpc_request",
    "rpc_text",
    "sdk_text",
    "tool_call",
]

JsonObj = dict[str, Any]

# The notification a client sends once its initialize was answered.
INITIALIZED: JsonObj = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def initialize_params(protocol_version: str = "2025-11-25", client: str = "e2e-test") -> JsonObj:
    """The params of an `initialize` request from a client with no capabilities."""
    return {
        "protocolVersion": protocol_version,
        "capabilities": {},
        "clientInfo": {"name": client, "version": "1"},
    }


def rpc_request(request_id: Any, method: str, params: JsonObj | None = None) -> JsonObj:
    """A JSON-RPC request frame (no `params` key when `params` is None)."""
    frame: JsonObj = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        frame["params"] = params
    return frame


def tool_call(request_id: Any, name: str, arguments: Any) -> JsonObj:
    """A JSON-RPC tools/call request frame."""
    return rpc_request(request_id, "tools/call", {"name": name, "arguments": arguments})


def rpc_text(response: JsonObj) -> str:
    """The text of a successful tools/call response (fails on an error)."""
    result = response.get("result")
    assert isinstance(result, dict) and not result.get("isError"), f"expected success: {response}"
    return "".join(str(c.get("text", "")) for c in result.get("content", []))


def rpc_error(response: JsonObj) -> JsonObj:
    """The error object of a JSON-RPC response (fails if it is a result)."""
    error = response.get("error")
    assert isinstance(error, dict), f"expected a JSON-RPC error: {response}"
    return error


def sdk_text(result: Any) -> str:
    """The text blocks of an SDK client's CallToolResult, joined."""
    return "".join(getattr(c, "text", "") for c in result.content)
