"""The calling convention every hosted tool server follows, and what it passes around.

A tool server is anything with a tool list and `call(name, arguments, ctx)`; the
worker's main loop, the Ray tool hosts and every kind of server (built-in, module,
SDK object, command) meet here and nowhere else, so this module imports none of
them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from exai.errors import ErrorCode

__all__ = [
    "HostedError",
    "Outcome",
    "ProcessHost",
    "ProgressSink",
    "ToolContext",
    "ToolServer",
    "error_result",
    "settle",
    "to_call_tool_result",
    "tool_to_dict",
]

log = logging.getLogger("workers")

ProgressSink = Callable[[float, float | None, str | None], None]


class ToolContext:
    """What a tool may know of and do for the call it is running."""

    __slots__ = ("_progress", "call_id", "model", "session_id")

    def __init__(
        self, call_id: int, session_id: str, model: str | None, progress: ProgressSink | None
    ) -> None:
        self.call_id = call_id
        self.session_id = session_id
        self.model = model
        self._progress = progress

    @property
    def wants_progress(self) -> bool:
        return self._progress is not None

    async def report_progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Tell the client how far the call is; a no-op when the client asked for none."""
        if self._progress is not None:
            self._progress(float(progress), None if total is None else float(total), message)


class HostedError(Exception):
    """A failure the broker should see as a typed error, not a tool result.

    `provider` names the provider whose shared cap refused an OVER_CAPACITY call.
    """

    def __init__(self, code: ErrorCode, message: str, provider: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.provider = provider


class ToolServer(Protocol):
    """What a worker hosts: started once before Ready, closed once at the end."""

    name: str
    tools: list[dict[str, Any]]
    model_tools: frozenset[str]

    async def start(self) -> None: ...

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> Any: ...

    async def session_ended(self, session_id: str) -> None: ...

    async def aclose(self) -> None: ...


class ProcessHost(Protocol):
    """Runs the daemon's server processes (exai.ipc Process* messages), for a pool that
    offers one through a `process_host(send)` method of its ToolServer."""

    def handle(self, message: Any) -> bool: ...

    async def aclose(self) -> None: ...


def tool_to_dict(tool: Any) -> dict[str, Any]:
    """A tool (or content block) as its JSON object: a dict as is, an SDK model dumped."""
    if isinstance(tool, Mapping):
        return dict(tool)
    dump = getattr(tool, "model_dump", None)
    if dump is None:
        raise TypeError(f"tool {tool!r} is neither a dict nor an mcp.types.Tool")
    result: dict[str, Any] = dump(by_alias=True, mode="json", exclude_none=True)
    return result


def error_result(message: str) -> dict[str, Any]:
    """A CallToolResult reporting a tool's own failure."""
    return {"content": [{"type": "text", "text": message}], "isError": True}


def to_call_tool_result(value: Any) -> dict[str, Any]:
    """Normalise whatever a tool returned into an MCP CallToolResult object."""
    if isinstance(value, Mapping) and "content" in value:
        result = dict(value)
        result.setdefault("isError", False)
        result.pop("resultType", None)
        return result
    dump = getattr(value, "model_dump", None)
    if dump is not None and hasattr(value, "content"):
        result = dump(by_alias=True, mode="json", exclude_none=True)
        result.pop("resultType", None)
        result.setdefault("isError", False)
        return dict(result)
    if isinstance(value, str):
        return {"content": [{"type": "text", "text": value}], "isError": False}
    if isinstance(value, list) and all(
        (isinstance(c, Mapping) and "type" in c) or hasattr(c, "model_dump") for c in value
    ):
        return {"content": [tool_to_dict(c) for c in value], "isError": False}
    if value is None:
        return {"content": [], "isError": False}
    return {"content": [{"type": "text", "text": json.dumps(value, default=str)}], "isError": False}


Outcome = tuple[dict[str, Any], None] | tuple[None, HostedError]
"""A call's end: its CallToolResult (a tool's own failure included), or a typed error."""


async def settle(
    server: ToolServer, name: str, arguments: dict[str, Any], ctx: ToolContext
) -> Outcome:
    """Run one call to its outcome. Cancellation is not an outcome: it propagates."""
    try:
        value = await server.call(name, arguments, ctx)
    except LookupError as exc:
        return None, HostedError(ErrorCode.TOOL_NOT_FOUND, str(exc))
    except HostedError as exc:
        return None, exc
    except Exception as exc:  # a tool's failure is its caller's result, not ours
        log.info("tool %s raised %s: %s", name, type(exc).__name__, exc)
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return error_result(message), None
    try:
        return to_call_tool_result(value), None
    except Exception as exc:  # say a mapping whose items raise, or a model that cannot dump
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return None, HostedError(
            ErrorCode.EXEC_ERROR, f"{name!r} returned a result that could not be read: {why}"
        )
