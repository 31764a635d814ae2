"""Provider tagging: which model a call will run, and so which provider cap it takes.

Pure. The resolved model is handed to the worker with the call, so the provider a
call is counted against and the model that actually runs never disagree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from exai.errors import InvalidArguments
from exai.models import ModelRegistry

__all__ = ["Route", "resolve_route"]

AUTO = "auto"


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    """`provider` None means the call counts only against the session and global caps."""

    provider: str | None
    model: str | None


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
