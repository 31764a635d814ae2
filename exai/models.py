"""The model registry: every model the providers serve, by name or alias. Pure.

Shared by the daemon (to tag a call with its provider) and the workers (to run the
model the call was tagged with), so both always agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from exai.errors import InvalidArguments

__all__ = ["MODELS", "ModelInfo", "ModelRegistry"]


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
