"""Provider tagging: which model a call will run, and so which provider cap it takes.

Pure. The resolved model is handed to the worker with the call, so the provider a
call is counted against and the model that actually runs never disagree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from broker.protocol import InvalidArguments

__all__ = ["MODELS", "ModelInfo", "ModelRegistry", "Route", "resolve_route"]

AUTO = "auto"


@dataclasses.dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    provider: str
    context_window: int
    aliases: tuple[str, ...] = ()


MODELS: tuple[ModelInfo, ...] = (
    ModelInfo("kimi-k2-0905-preview", "kimi", 262_144, ("kimi", "kimi-k2")),
    ModelInfo("kimi-k2-turbo-preview", "kimi", 262_144, ("kimi-turbo",)),
    ModelInfo("kimi-k2-0711-preview", "kimi", 131_072),
    ModelInfo("kimi-latest", "kimi", 131_072),
    ModelInfo("kimi-thinking-preview", "kimi", 131_072, ("kimi-thinking",)),
    ModelInfo("moonshot-v1-8k", "kimi", 8_192),
    ModelInfo("moonshot-v1-32k", "kimi", 32_768),
    ModelInfo("moonshot-v1-128k", "kimi", 131_072),
    ModelInfo("glm-4.6", "glm", 204_800),
    ModelInfo("glm-4.5", "glm", 131_072, ("glm",)),
    ModelInfo("glm-4.5-air", "glm", 131_072, ("glm-air",)),
    ModelInfo("glm-4.5-flash", "glm", 131_072, ("glm-flash", "flash")),
)


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """`provider` None means the call counts only against the session and global caps."""

    provider: str | None
    model: str | None


class ModelRegistry:
    """Looks models up by name or alias, case-insensitively."""

    def __init__(self, models: Iterable[ModelInfo] = MODELS) -> None:
        self.models: tuple[ModelInfo, ...] = tuple(models)
        self._by_name: dict[str, ModelInfo] = {}
        for info in self.models:
            for key in (info.name, *info.aliases):
                self._by_name[key.lower()] = info
        self.providers: tuple[str, ...] = tuple(dict.fromkeys(m.provider for m in self.models))

    def get(self, name: str) -> ModelInfo | None:
        return self._by_name.get(name.lower())

    def resolve(self, name: str) -> ModelInfo:
        info = self.get(name)
        if info is None:
            raise InvalidArguments(
                f"unknown model {name!r}; known models: {', '.join(m.name for m in self.models)}",
                path="model",
            )
        return info

    def default_for(self, provider: str, default_model: str) -> ModelInfo | None:
        preferred = self.get(default_model)
        if preferred is not None and preferred.provider == provider:
            return preferred
        return next((m for m in self.models if m.provider == provider), None)


def _provider_prefix(tool: str, providers: Iterable[str]) -> str | None:
    head, sep, _ = tool.partition("_")
    if sep and head.lower() in providers:
        return head.lower()
    return None


def resolve_route(
    tool: str,
    requested_model: str | None,
    *,
    model_tools: frozenset[str] | set[str] | Mapping[str, object],
    default_model: str,
    registry: ModelRegistry,
) -> Route:
    """Decide the provider tag and the model for one call.

    Only tools that call a model provider are tagged: `<provider>_*` tools by their
    name, and the tools the tool server declares as model tools by their effective
    model. Every other tool (version, echo, a hosted server's tools) gets no tag.
    """
    wanted = requested_model if requested_model and requested_model.lower() != AUTO else None
    by_name = _provider_prefix(tool, registry.providers)
    if by_name is not None:
        if wanted is None:
            info = registry.default_for(by_name, default_model)
            return Route(by_name, info.name if info else None)
        info = registry.resolve(wanted)
        if info.provider != by_name:
            raise InvalidArguments(
                f"tool {tool!r} runs on {by_name}, but model {info.name!r} belongs to "
                f"{info.provider}",
                path="model",
            )
        return Route(by_name, info.name)
    if tool in model_tools:
        info = registry.resolve(wanted or default_model)
        return Route(info.provider, info.name)
    return Route(None, None)
