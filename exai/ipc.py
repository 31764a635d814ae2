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
    "ProcessExited",
    "ProcessInput",
    "ProcessOpen",
    "ProcessOutput",
    "ProcessSignal",
    "ProcessStarted",
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


# A hosted server's process run by the pool (`--pool ray`) instead of the daemon: the
# daemon stays its MCP client, and these carry its pipes. `handle` is the daemon's.


class ProcessOpen(msgspec.Struct, tag="popen", array_like=True, frozen=True):
    """Start `argv` with exactly `env` (None: the worker's own) in `cwd`."""

    handle: int
    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    cwd: str | None = None


class ProcessInput(msgspec.Struct, tag="pin", array_like=True, frozen=True):
    """Bytes for the process's stdin, in order; `eof` closes it after them."""

    handle: int
    data: bytes
    eof: bool = False


class ProcessSignal(msgspec.Struct, tag="psig", array_like=True, frozen=True):
    """Stop the process (and what it started): TERM, or KILL when `kill`."""

    handle: int
    kill: bool = False


class ProcessStarted(msgspec.Struct, tag="pstarted", array_like=True, frozen=True):
    """The process runs as `pid` on `node`, or could not start (`error`)."""

    handle: int
    pid: int | None = None
    node: str = ""
    error: str | None = None


class ProcessOutput(msgspec.Struct, tag="pout", array_like=True, frozen=True):
    """Bytes the process wrote to `fd` (1 stdout, 2 stderr), in order."""

    handle: int
    fd: int
    data: bytes


class ProcessExited(msgspec.Struct, tag="pexit", array_like=True, frozen=True):
    """The process is gone; `returncode` None when it was lost with its host."""

    handle: int
    returncode: int | None = None


BrokerMessage = (
    Call | Cancel | Heartbeat | Shutdown | SessionEnded | ProcessOpen | ProcessInput | ProcessSignal
)
WorkerMessage = (
    Ready | Result | Progress | Heartbeat | Recycle | ProcessStarted | ProcessOutput | ProcessExited
)
