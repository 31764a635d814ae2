"""The tools every daemon serves when no `--server` is given."""

from __future__ import annotations

from typing import Any

from broker.settings import Settings
from workers.builtin import diagnostics, info
from workers.host import ToolContext

__all__ = ["BuiltinTools"]


class BuiltinTools:
    """version and listmodels always; echo, sleep, cpu and fail with EXAI_DIAGNOSTIC_TOOLS=1."""

    name = "exai-builtin"
    model_tools: frozenset[str] = frozenset()

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.tools: list[dict[str, Any]] = list(info.TOOLS)
        self._handlers = dict(info.handlers(settings))
        if settings.diagnostic_tools:
            self.tools.extend(diagnostics.TOOLS)
            self._handlers.update(diagnostics.HANDLERS)

    async def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext) -> Any:
        handler = self._handlers.get(name)
        if handler is None:
            raise LookupError(f"unknown tool {name!r}")
        return await handler(arguments, ctx)

    async def start(self) -> None:
        return None

    async def session_ended(self, session_id: str) -> None:
        return None

    async def aclose(self) -> None:
        return None
