"""Loads the tool server a worker hosts.

A tool server is anything with a tool list and `call(name, arguments, ctx)` (the
convention is in `workers.toolserver`). `--server module` names a module exposing
`TOOLS` and `handle_call_tool`; without it the built-in tools are hosted. (Stdio
commands and SDK server objects are the daemon's to host: see broker/hosting.)
Which pool the worker bridges to (`--pool ray`) is chosen by the worker's main, not
here: the Ray tool hosts load their tool server with this module too.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from exai.settings import Settings
from workers.threads import ToolThreads
from workers.toolserver import (
    HostedError,
    Outcome,
    ToolContext,
    ToolServer,
    error_result,
    settle,
    to_call_tool_result,
    tool_to_dict,
)

# The calling convention is re-exported for the tool modules written against it here.
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
        self.tools = [tool_to_dict(t) for t in tools]
        self.model_tools = model_tools
        self._handler = handler
        self._is_async = inspect.iscoroutinefunction(handler)
        self.threads = ToolThreads()

    async def start(self) -> None:
        return None

    async def session_ended(self, session_id: str) -> None:
        return None

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> Any:
        if self._is_async:
            return await self._handler(name, arguments, ctx)
        # Synchronous tools run in a thread so they cannot stall the worker's other calls.
        return await self.threads.run(self._handler, name, arguments, ctx)

    async def aclose(self) -> None:
        self.threads.close()


def load_tool_server(settings: Settings, environ: Mapping[str, str]) -> ToolServer:
    """The tool server the settings name: a module of tools, or the built-ins.

    Stdio commands (`--server-cmd`) and SDK server objects (`--server module:attr`)
    are hosted by the daemon itself, never by a worker.
    """
    model_tools = frozenset(settings.model_tools)
    spec = settings.server
    if settings.server_cmd or ":" in spec:
        raise ValueError("stdio commands and SDK server objects are hosted by the daemon")
    if not spec:
        from workers.builtin.tools import BuiltinTools

        return BuiltinTools(settings, environ)
    module_name = spec
    module = importlib.import_module(module_name)
    tools = getattr(module, "TOOLS", None)
    handler = getattr(module, "handle_call_tool", None)
    if tools is None or handler is None:
        raise ValueError(f"--server {spec}: the module needs TOOLS and handle_call_tool")
    model_tools |= frozenset(getattr(module, "MODEL_TOOLS", ()))
    return ModuleToolServer(module_name, tools, handler, model_tools)
