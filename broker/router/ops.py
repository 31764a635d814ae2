"""The op dialect's frames: requests in as one tagged union, replies out as Structs. Pure.

An op frame names its kind in `"op"`. A request decodes into the Struct of its op, so
a field another op uses is ignored there like any unknown field. Every reply is a
Struct whose tag msgspec writes first: the frame starts with `{"op":`, the prefix by
which the shim tells op frames from JSON-RPC ones. Ids, arguments and the tool list
stay raw JSON and go back byte for byte.
"""

from __future__ import annotations

from typing import Any, get_args

import msgspec

from exai.errors import ErrorCode
from exai.jsonrpc import ABSENT

__all__ = [
    "OP_NAMES",
    "Ack",
    "CallToolAck",
    "CallToolErrorRes",
    "CallToolOp",
    "CallToolRes",
    "CancelOp",
    "ErrorRes",
    "HealthOp",
    "HealthRes",
    "HelloAck",
    "HelloOp",
    "HelloRefused",
    "ListToolsOp",
    "ListToolsRes",
    "OpRequest",
    "ProgressNote",
    "RotateTokenOp",
    "RotateTokenRes",
    "ServerSummary",
    "ToolFailure",
]


class _Op(msgspec.Struct, frozen=True, tag_field="op"):
    pass


# --- requests ------------------------------------------------------------------------
# Required fields stay optional here: a frame missing one is refused by the router with
# a message naming what the op needs, not with msgspec's "missing field".


class HelloOp(_Op, frozen=True, tag="hello"):
    token: str | None = None
    session_id: str | None = None
    acks: bool = False
    # A resuming shim's requests still unanswered (their ids); None: it does not say.
    awaited: list[Any] | None = None


class CallToolOp(_Op, frozen=True, tag="call_tool"):
    request_id: msgspec.Raw = ABSENT
    name: str | None = None
    arguments: msgspec.Raw = ABSENT


class ListToolsOp(_Op, frozen=True, tag="list_tools"):
    pass


class CancelOp(_Op, frozen=True, tag="cancel"):
    request_id: msgspec.Raw = ABSENT


class HealthOp(_Op, frozen=True, tag="health"):
    pass


class RotateTokenOp(_Op, frozen=True, tag="rotate_token"):
    old: str | None = None
    new: str | None = None


OpRequest = HelloOp | CallToolOp | ListToolsOp | CancelOp | HealthOp | RotateTokenOp
OP_NAMES = frozenset(cls.__struct_config__.tag for cls in get_args(OpRequest))


# --- replies -------------------------------------------------------------------------


class ServerSummary(msgspec.Struct, frozen=True):
    name: str
    version: str
    tools: int


class HelloAck(_Op, frozen=True, tag="hello_ack"):
    ok: bool
    session_id: str
    resumed: bool
    server: ServerSummary


class HelloRefused(_Op, frozen=True, tag="hello_ack"):
    """`error` is for people; `code` (an ErrorCode value) is for programs to match."""

    ok: bool
    error: str
    code: ErrorCode


class CallToolAck(_Op, frozen=True, tag="call_tool_ack"):
    request_id: msgspec.Raw


class ToolFailure(msgspec.Struct, frozen=True):
    code: ErrorCode
    message: str


class CallToolRes(_Op, frozen=True, tag="call_tool_res", omit_defaults=True):
    request_id: msgspec.Raw
    outputs: list[dict[str, Any]]
    text: str
    isError: bool
    structuredContent: Any = None
    error: ToolFailure | None = None


class CallToolErrorRes(_Op, frozen=True, tag="call_tool_res"):
    """A call that ended without a tool result: `error` has message, code and data."""

    error: dict[str, Any]
    request_id: msgspec.Raw


class ProgressNote(_Op, frozen=True, tag="progress"):
    request_id: msgspec.Raw
    progress: float
    total: float | None
    message: str | None


class ListToolsRes(_Op, frozen=True, tag="list_tools_res"):
    tools: msgspec.Raw


class HealthRes(_Op, frozen=True, tag="health_res"):
    health: dict[str, Any]


class RotateTokenRes(_Op, frozen=True, tag="rotate_token_res"):
    ok: bool


class ErrorRes(_Op, frozen=True, tag="error", omit_defaults=True):
    """A frame refused outside any call; `request_id` when the frame carried one."""

    error: dict[str, Any]
    request_id: msgspec.Raw | None = None


class Ack(_Op, frozen=True, tag="ack"):
    """Tells a shim its JSON-RPC request `id` arrived and runs (stops its RPC timer)."""

    id: msgspec.Raw
