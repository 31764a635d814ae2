"""Loads the tool server a worker hosts and gives it one calling convention.

A tool server is anything with a tool list and `handle_call_tool(name, arguments, ctx)`.
`--server module` names a module exposing `TOOLS` and `handle_call_tool`; with no
`--server` the built-in tools are hosted.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from exai.errors import ErrorCode
from exai.settings import Settings

__all__ = [
    "HostedError",
    "ModuleToolServer",
    "Outcome",
    "ToolContext",
    "ToolServer",
    "error_result",
    "load_tool_server",
    "settle",
    "to_call_tool_result",
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
    name: str
    tools: list[dict[str, Any]]
    model_tools: frozenset[str]

    async def start(self) -> None: ...

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> Any: ...

    async def session_ended(self, session_id: str) -> None: ...

    async def aclose(self) -> None: ...


def _tool_to_dict(tool: Any) -> dict[str, Any]:
    if isinstance(tool, Mapping):
        return dict(tool)
    dump = getattr(tool, "model_dump", None)
    if dump is None:
        raise TypeError(f"tool {tool!r} is neither a dict nor an mcp.types.Tool")
    result: dict[str, Any] = dump(by_alias=True, mode="json", exclude_none=True)
    return result


class ModuleToolServer:
    """Hosts a module (or any object) with `TOOLS` and `handle_call_tool`."""

    def __init__(
        self,
        name: str,
        tools: Sequence[Any],
        handler: Callable[[str, dict[str, Any], ToolContext], Any],
        model_tools: frozenset[str] = frozenset(),
    ) -> None:
        self.name = name
        self.tools = [_tool_to_dict(t) for t in tools]
        self.model_tools = model_tools
        self._handler = handler
        self._is_async = inspect.iscoroutinefunction(handler)

    async def start(self) -> None:
        return None

    async def session_ended(self, session_id: str) -> None:
        return None

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> Any:
        if self._is_async:
            return await self._handler(name, arguments, ctx)
        # Synchronous tools run in a thread so they cannot stall the worker's other calls.
        return await asyncio.to_thread(self._handler, name, arguments, ctx)

    async def aclose(self) -> None:
        return None


def load_tool_server(settings: Settings, environ: Mapping[str, str]) -> ToolServer:
    """The tool server the settings name: a command, a module, an SDK object, or built-ins."""
    model_tools = frozenset(settings.model_tools)
    if settings.server_cmd:
        from workers.mcp_host import ClientToolServer, command_target

        # The hosted server gets our environment (its own API keys live there) minus the
        # daemon's token, which it has no business seeing.
        child_env = {k: v for k, v in environ.items() if k != "EXAI_WS_TOKEN"}
        return ClientToolServer(
            settings.server_cmd.split()[0],
            command_target(settings.server_cmd, child_env),
            isolation=settings.isolation,
            idle_timeout_s=settings.session_idle_timeout_s,
            max_instances=settings.session_instances_max,
            model_tools=model_tools,
        )
    if settings.pool != "local":
        from workers.ray_pool import RayToolPool

        return RayToolPool(settings, environ)
    spec = settings.server
    if not spec:
        from workers.builtin import BuiltinTools

        return BuiltinTools(settings, environ)
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    if attr:
        from workers.mcp_host import ClientToolServer, object_target

        return ClientToolServer(
            spec,
            object_target(getattr(module, attr)),
            isolation=settings.isolation,
            idle_timeout_s=settings.session_idle_timeout_s,
            max_instances=settings.session_instances_max,
            model_tools=model_tools,
        )
    tools = getattr(module, "TOOLS", None)
    handler = getattr(module, "handle_call_tool", None)
    if tools is None or handler is None:
        raise ValueError(f"--server {spec}: the module needs TOOLS and handle_call_tool")
    model_tools |= frozenset(getattr(module, "MODEL_TOOLS", ()))
    return ModuleToolServer(module_name, tools, handler, model_tools)


def error_result(message: str) -> dict[str, Any]:
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
        return {"content": [_tool_to_dict(c) for c in value], "isError": False}
    if value is None:
        return {"content": [], "isError": False}
    import json

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
    return to_call_tool_result(value), None
