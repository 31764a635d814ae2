"""version and listmodels: what this daemon is and which models it can route to."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from exai import __version__
from exai.models import MODELS
from exai.settings import Settings
from workers.providers.config import ProviderConfig
from workers.toolserver import ToolContext

__all__ = ["TOOLS", "handlers"]

_READ_ONLY = {"readOnlyHint": True, "idempotentHint": True, "openWorldHint": False}
_NO_ARGS = {"type": "object", "properties": {}}

TOOLS: list[dict[str, Any]] = [
    {
        "name": "version",
        "description": "Daemon version, Python, platform, configured providers, caps and workers.",
        "inputSchema": _NO_ARGS,
        "annotations": _READ_ONLY,
    },
    {
        "name": "listmodels",
        "description": "Models per provider: context window, aliases, whether configured.",
        "inputSchema": _NO_ARGS,
        "annotations": _READ_ONLY,
    },
]

Handler = Callable[[dict[str, Any], ToolContext], Awaitable[Any]]


def _json_result(payload: dict[str, Any]) -> dict[str, Any]:
    text = orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode()
    return {
        "content": [{"type": "text", "text": text}],
        "structuredContent": payload,
        "isError": False,
    }


def handlers(settings: Settings, configs: Mapping[str, ProviderConfig]) -> dict[str, Handler]:

    async def version(arguments: dict[str, Any], ctx: ToolContext) -> Any:
        return _json_result(
            {
                "name": "exai-broker",
                "version": __version__,
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "providers_configured": sorted(n for n, c in configs.items() if c.configured),
                "default_model": settings.default_model,
                "caps": {
                    "session": settings.session_max_inflight,
                    "global": settings.global_max_inflight,
                    "providers": dict(settings.provider_caps),
                },
                "workers": settings.workers,
                "worker_pid": os.getpid(),
            }
        )

    async def listmodels(arguments: dict[str, Any], ctx: ToolContext) -> Any:
        providers: dict[str, Any] = {}
        for model in MODELS:
            entry = providers.setdefault(
                model.provider,
                {
                    "configured": model.provider in configs and configs[model.provider].configured,
                    "models": [],
                },
            )
            entry["models"].append(
                {
                    "name": model.name,
                    "context_window": model.context_window,
                    "aliases": list(model.aliases),
                }
            )
        return _json_result({"default_model": settings.default_model, "providers": providers})

    return {"version": version, "listmodels": listmodels}
