"""`chat`: one prompt to the provider the broker routed the call to.

The broker resolves the model (and so the provider cap the call counts against)
and hands it over as `ctx.model`; this tool never picks another one. A
`continuation_id` keeps a bounded conversation in this worker, and the broker's
sticky routing brings every turn of it back here.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from exai.models import ModelRegistry
from workers.providers.client import ChatClient, ProviderError
from workers.providers.config import ProviderConfig
from workers.toolserver import ToolContext, error_result

__all__ = ["TOOL", "ChatTool"]

MAX_CONVERSATIONS = 256
MAX_TURNS = 20

TOOL: dict[str, Any] = {
    "name": "chat",
    "description": "Ask a Kimi or GLM model. `model` picks it (or `auto` for the default); "
    "`continuation_id` continues an earlier conversation.",
    "inputSchema": {
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "minLength": 1},
            "model": {"type": "string"},
            "system_prompt": {"type": "string"},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "continuation_id": {"type": "string", "maxLength": 128},
        },
        "required": ["prompt"],
    },
    "annotations": {"readOnlyHint": False, "idempotentHint": False, "openWorldHint": True},
}


class ChatTool:
    def __init__(self, configs: dict[str, ProviderConfig], registry: ModelRegistry) -> None:
        self._configs = configs
        self._registry = registry
        self._client = ChatClient()
        self._history: OrderedDict[str, list[dict[str, str]]] = OrderedDict()

    async def __call__(self, arguments: dict[str, Any], ctx: ToolContext) -> Any:
        model = ctx.model
        info = self._registry.get(model) if model else None
        if info is None:
            return error_result(f"no provider serves model {model!r}")
        config = self._configs.get(info.provider)
        if config is None or not config.configured:
            names = " or ".join(config.key_vars) if config else f"{info.provider.upper()}_API_KEY"
            return error_result(
                f"{info.provider} is not configured: set {names} in the daemon's environment "
                "or .env, then restart the daemon"
            )
        continuation = arguments.get("continuation_id")
        history = self._history.get(continuation, []) if continuation else []
        messages: list[dict[str, str]] = []
        if arguments.get("system_prompt"):
            messages.append({"role": "system", "content": str(arguments["system_prompt"])})
        messages.extend(history)
        messages.append({"role": "user", "content": str(arguments["prompt"])})
        try:
            response = await self._client.complete(
                config, info.name, messages, arguments.get("temperature")
            )
        except ProviderError as exc:
            return error_result(str(exc))
        if continuation:
            turns = [*history, messages[-1], {"role": "assistant", "content": response.text}]
            self._history[continuation] = turns[-2 * MAX_TURNS :]
            self._history.move_to_end(continuation)
            while len(self._history) > MAX_CONVERSATIONS:
                self._history.popitem(last=False)
        return {
            "content": [{"type": "text", "text": response.text}],
            "structuredContent": {
                "model": response.model,
                "provider": info.provider,
                "usage": response.usage,
                "finish_reason": response.finish_reason,
                "continuation_id": continuation,
            },
            "isError": False,
        }

    async def aclose(self) -> None:
        await self._client.aclose()
