"""The frames the load clients send and how to read the answers; pure, no I/O.

Three ways into the daemon: the op dialect (`hello`, `call_tool`), MCP JSON-RPC over
WebSocket (subprotocol `mcp`), and MCP JSON-RPC lines through a shim. An outcome is
None for a good echo, otherwise the error code to count.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import orjson

__all__ = [
    "BAD_RESULT",
    "MCP_INITIALIZED",
    "SCENARIOS",
    "Scenario",
    "echo_arguments",
    "echo_text",
    "mcp_call",
    "mcp_initialize",
    "mcp_outcome",
    "op_call",
    "op_hello",
    "op_outcome",
    "scenario",
]

BAD_RESULT = "BAD_RESULT"  # the call succeeded but did not echo our text back
MCP_PROTOCOL_VERSION = "2025-06-18"
MCP_INITIALIZED = '{"jsonrpc":"2.0","method":"notifications/initialized"}'


def echo_text(payload_bytes: int) -> str:
    """Printable ASCII of exactly `payload_bytes` bytes, varied so nothing compresses it away."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(alphabet[i % len(alphabet)] for i in range(payload_bytes))


def echo_arguments(text: str) -> str:
    """The `arguments` object of an echo call, as JSON text, encoded once per client."""
    return orjson.dumps({"text": text}).decode()


@dataclasses.dataclass(frozen=True, slots=True)
class Scenario:
    """What every call of a cell asks for, and the text a good answer carries."""

    name: str
    tool: str
    arguments_json: str
    expected_text: str
    nominal_ms: float = 0.0  # time the tool itself is meant to take (sleep, cpu)
    payload_bytes: int = 0  # echo text size; 0 for the other tools

    @property
    def is_echo(self) -> bool:
        return self.tool == "echo"


SCENARIOS = ("echo100", "echo64k", "sleep50", "cpu")
_ECHO_NAME = re.compile(r"echo(\d+)(k?)")
_SLEEP_NAME = re.compile(r"sleep(\d+)")


def scenario(name: str) -> Scenario:
    """`echo<N>` / `echo<N>k` (N bytes / KiB of text), `sleep<N>` (N ms), `cpu` (20 ms)."""
    match = _ECHO_NAME.fullmatch(name)
    if match:
        size = int(match.group(1)) * (1024 if match.group(2) else 1)
        text = echo_text(size)
        return Scenario(name, "echo", echo_arguments(text), text, 0.0, size)
    match = _SLEEP_NAME.fullmatch(name)
    if match:
        seconds = int(match.group(1)) / 1000
        arguments = orjson.dumps({"seconds": seconds, "steps": 1}).decode()
        return Scenario(name, "sleep", arguments, f"slept {seconds:g}", seconds * 1000)
    if name == "cpu":
        return Scenario(name, "cpu", orjson.dumps({"ms": 20}).decode(), "burned 20 ms", 20.0)
    raise ValueError(
        f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}, echo<N>[k] or sleep<N>"
    )


def op_hello(session_id: str) -> str:
    return orjson.dumps({"op": "hello", "session_id": session_id}).decode()


def op_call(request_id: str, arguments_json: str, tool: str = "echo") -> str:
    # Spliced rather than re-encoded per call: the client should cost as little as possible.
    return (
        f'{{"op":"call_tool","request_id":"{request_id}","name":"{tool}",'
        f'"arguments":{arguments_json}}}'
    )


def mcp_call(request_id: int, arguments_json: str, tool: str = "echo") -> str:
    return (
        f'{{"jsonrpc":"2.0","id":{request_id},"method":"tools/call",'
        f'"params":{{"name":"{tool}","arguments":{arguments_json}}}}}'
    )


def mcp_initialize(request_id: int) -> str:
    return orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "initialize",
            "params": {
                "protocolVersion": MCP_PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "exai-broker-benchmark", "version": "0"},
            },
        }
    ).decode()


def _error_code(error: Any, fallback: str) -> str:
    if not isinstance(error, dict):
        return fallback
    code = error.get("code")
    return code if isinstance(code, str) and code else fallback


def op_outcome(frame: dict[str, Any], expected_text: str) -> str | None:
    """Outcome of a `call_tool_res` frame."""
    if "error" in frame:
        return _error_code(frame["error"], "OP_ERROR")
    if frame.get("isError"):
        return "EXEC_ERROR"
    return None if frame.get("text") == expected_text else BAD_RESULT


def mcp_outcome(frame: dict[str, Any], expected_text: str) -> str | None:
    """Outcome of a JSON-RPC response to an echo `tools/call`."""
    error = frame.get("error")
    if error is not None:
        data = error.get("data") if isinstance(error, dict) else None
        fallback = f"JSONRPC_{error.get('code')}" if isinstance(error, dict) else "JSONRPC_ERROR"
        return _error_code(data, fallback)
    result = frame.get("result")
    if not isinstance(result, dict):
        return BAD_RESULT
    if result.get("isError"):
        return "EXEC_ERROR"
    content = result.get("content")
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return None if content[0].get("text") == expected_text else BAD_RESULT
    return BAD_RESULT
