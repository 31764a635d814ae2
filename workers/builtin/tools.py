"""BuiltinTools: version, listmodels and chat, plus the diagnostic tools when enabled."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exai.models import ModelRegistry
from exai.settings import Settings
from workers.builtin import diagnostics, info
from workers.builtin.chat import TOOL as CHAT_TOOL
from workers.builtin.chat import ChatTool
from workers.providers.config import provider_configs
from workers.toolserver import ToolContext

__all__ = ["BuiltinTools"]


class BuiltinTools:
    """version, listmodels and chat; echo, sleep, cpu and fail with EXAI_DIAGNOSTIC_TOOLS=1."""

    name = "exai-builtin"
    # chat's provider follows its model, so the broker tags it by the resolved model.
    model_tools: frozenset[str] = frozenset({"chat"})

    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        configs = provider_configs(environ)
        self._chat = ChatTool(configs, ModelRegistry())
        self.tools: list[dict[str, Any]] = [*info.TOOLS, CHAT_TOOL]
        self._handlers = dict(info.handlers(settings, configs))
        self._handlers["chat"] = self._chat
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
        await self._chat.aclose()
