"""Messages between the broker and its worker processes (msgspec msgpack, array-like).

Only our own processes speak this, so messages are compact tagged arrays. Payloads
that clients send or receive (tool arguments, tool results, tool lists) stay as raw
JSON bytes: the broker never re-encodes them.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "BrokerMessage",
    "Call",
    "Cancel",
    "Heartbeat",
    "Progress",
    "Ready",
    "Recycle",
    "Result",
    "SessionEnded",
    "Shutdown",
    "WorkerMessage",
]


class Call(msgspec.Struct, tag="call", array_like=True, frozen=True):
    """Run tool `tool` with `arguments` (JSON object bytes). `call_id` is unique per broker."""

    call_id: int
    tool: str
    arguments: bytes
    session_id: str
    model: str | None = None
    want_progress: bool = False


class Cancel(msgspec.Struct, tag="cancel", array_like=True, frozen=True):
    """Stop call `call_id`; the worker answers with a Result whose error is CANCELLED."""

    call_id: int


class Heartbeat(msgspec.Struct, tag="hb", array_like=True, frozen=True):
    """Sent by the broker; the worker echoes it so the supervisor knows it is responsive."""

    seq: int


class Shutdown(msgspec.Struct, tag="shutdown", array_like=True, frozen=True):
    """Finish in-flight calls within `grace_s`, then exit."""

    grace_s: float = 5.0


class SessionEnded(msgspec.Struct, tag="session_end", array_like=True, frozen=True):
    """A client session is gone for good; per-session server instances can be closed."""

    session_id: str


class Ready(msgspec.Struct, tag="ready", array_like=True, frozen=True):
    """First message of a worker: its pid and its tools (JSON list of MCP Tool objects)."""

    pid: int
    tools: bytes
    model_tools: list[str] = []
    server_name: str = ""


class Recycle(msgspec.Struct, tag="recycle", array_like=True, frozen=True):
    """Sent by a worker that can no longer serve well (its tool threads are stranded):
    take it out of rotation and replace it once its calls are done."""

    reason: str


class Result(msgspec.Struct, tag="result", array_like=True, frozen=True):
    """Outcome of a call: `result` is MCP CallToolResult JSON bytes, or an error code+message."""

    call_id: int
    result: bytes | None = None
    error_code: str | None = None
    error_message: str | None = None
    is_error: bool = False
    # For OVER_CAPACITY from a cap the pool enforces itself (a cluster-wide provider cap).
    provider: str | None = None


class Progress(msgspec.Struct, tag="progress", array_like=True, frozen=True):
    call_id: int
    progress: float
    total: float | None = None
    message: str | None = None


BrokerMessage = Call | Cancel | Heartbeat | Shutdown | SessionEnded
WorkerMessage = Ready | Result | Progress | Heartbeat | Recycle
