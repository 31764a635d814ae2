"""Unit tests for broker.calls.routing: which model a call runs and which provider cap it takes."""

from __future__ import annotations

import pytest

from broker.calls.routing import Route, resolve_route
from exai.errors import ErrorCode, InvalidArguments
from exai.models import MODELS, ModelRegistry

REGISTRY = ModelRegistry()
MODEL_TOOLS = frozenset({"chat"})
DEFAULT = "glm-4.5-flash"


def route(tool: str, model: str | None, default_model: str = DEFAULT) -> Route:
    """Route one call with the built-in registry and `chat` as the only model tool."""
    return resolve_route(
        tool, model, model_tools=MODEL_TOOLS, default_model=default_model, registry=REGISTRY
    )


def refused(tool: str, model: str | None) -> InvalidArguments:
    """The InvalidArguments a call is refused with."""
    with pytest.raises(InvalidArguments) as info:
        route(tool, model)
    assert info.value.code is ErrorCode.INVALID_ARGUMENTS
    return info.value


@pytest.mark.parametrize(
    "model",
    [
        "kimi-k2-0905-preview",
        "kimi-k2-turbo-preview",
        "kimi-latest",
        "kimi-thinking-preview",
        "moonshot-v1-8k",
        "moonshot-v1-32k",
        "moonshot-v1-128k",
    ],
)
def test_kimi_models_route_to_kimi(model: str) -> None:
    """Kimi and Moonshot models take the kimi cap and run as named."""
    assert route("chat", model) == Route("kimi", model)


@pytest.mark.parametrize("model", ["glm-4.5", "glm-4.5-air", "glm-4.5-flash"])
def test_glm_models_route_to_glm(model: str) -> None:
    """GLM models take the glm cap and run as named."""
    assert route("chat", model) == Route("glm", model)


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("kimi", Route("kimi", "kimi-k2-0905-preview")),
        ("kimi-k2", Route("kimi", "kimi-k2-0905-preview")),
        ("kimi-turbo", Route("kimi", "kimi-k2-turbo-preview")),
        ("kimi-thinking", Route("kimi", "kimi-thinking-preview")),
        ("glm", Route("glm", "glm-4.5")),
        ("glm-air", Route("glm", "glm-4.5-air")),
        ("glm-flash", Route("glm", "glm-4.5-flash")),
        ("flash", Route("glm", "glm-4.5-flash")),
    ],
)
def test_aliases_resolve_to_the_canonical_model(alias: str, expected: Route) -> None:
    """An alias is handed to the worker as the canonical model name."""
    assert route("chat", alias) == expected


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("KIMI-LATEST", Route("kimi", "kimi-latest")),
        ("GLM-4.5-Air", Route("glm", "glm-4.5-air")),
        ("Moonshot-V1-8K", Route("kimi", "moonshot-v1-8k")),
        ("Kimi", Route("kimi", "kimi-k2-0905-preview")),
    ],
)
def test_model_names_are_case_insensitive(model: str, expected: Route) -> None:
    """Model names and aliases match regardless of case."""
    assert route("chat", model) == expected


@pytest.mark.parametrize("model", [None, "", "auto", "AUTO", "Auto"])
def test_auto_or_absent_model_uses_the_default(model: str | None) -> None:
    """No model (or `auto`) runs the configured default, glm-4.5-flash out of the box."""
    assert route("chat", model) == Route("glm", "glm-4.5-flash")


def test_configured_default_model_is_used_and_tagged() -> None:
    """With DEFAULT_MODEL=kimi-latest an auto call runs kimi-latest on the kimi cap."""
    assert route("chat", "auto", default_model="kimi-latest") == Route("kimi", "kimi-latest")


def test_default_model_alias_is_canonicalised() -> None:
    """A default given as an alias still reaches the worker as the real model name."""
    assert route("chat", None, default_model="kimi") == Route("kimi", "kimi-k2-0905-preview")


@pytest.mark.parametrize(
    ("tool", "provider"),
    [
        ("kimi_chat", "kimi"),
        ("kimi_upload_files", "kimi"),
        ("glm_chat", "glm"),
        ("glm_web_search", "glm"),
    ],
)
def test_provider_prefixed_tools_are_tagged_by_name(tool: str, provider: str) -> None:
    """kimi_*/glm_* tools take their provider's cap even though they are not model tools."""
    result = route(tool, None)
    assert result.provider == provider
    assert result.model is not None
    info = REGISTRY.get(result.model)
    assert info is not None
    assert info.provider == provider


def test_prefixed_tool_gets_its_providers_default_model() -> None:
    """A kimi_* tool with no model runs a kimi model even when the global default is GLM."""
    assert route("kimi_chat", None, default_model="glm-4.5-flash") == Route(
        "kimi", "kimi-k2-0905-preview"
    )
    assert route("glm_chat", "auto", default_model="glm-4.5-flash") == Route("glm", "glm-4.5-flash")
    assert route("kimi_chat", None, default_model="kimi-latest") == Route("kimi", "kimi-latest")


def test_prefixed_tool_accepts_a_model_of_its_provider() -> None:
    """A kimi_* tool may choose any kimi model."""
    assert route("kimi_chat", "moonshot-v1-32k") == Route("kimi", "moonshot-v1-32k")
    assert route("glm_chat", "GLM-AIR") == Route("glm", "glm-4.5-air")


@pytest.mark.parametrize(("tool", "model"), [("kimi_chat", "glm-4.5"), ("glm_chat", "kimi")])
def test_prefixed_tool_refuses_another_providers_model(tool: str, model: str) -> None:
    """Asking a kimi_* tool for a GLM model (or vice versa) is INVALID_ARGUMENTS."""
    exc = refused(tool, model)
    assert tool in exc.message
    assert exc.data.get("path") == "model"


@pytest.mark.parametrize("tool", ["chat", "kimi_chat"])
def test_unknown_model_lists_known_models(tool: str) -> None:
    """An unknown model is refused with every known model named, so the user can fix it."""
    exc = refused(tool, "gpt-4o")
    assert "gpt-4o" in exc.message
    for info in MODELS:
        assert info.name in exc.message
    assert exc.jsonrpc_code == -32602


@pytest.mark.parametrize("tool", ["version", "echo", "listmodels", "sleep"])
@pytest.mark.parametrize("model", [None, "auto", "glm-4.5", "kimi-latest", "not-a-model"])
def test_non_model_tools_are_never_tagged(tool: str, model: str | None) -> None:
    """Tools that call no provider count only against session/global caps, whatever `model`
    says (the regression where `version` counted against the GLM cap)."""
    assert route(tool, model) == Route(None, None)


def test_unprefixed_lookalike_is_not_tagged() -> None:
    """Only a `<provider>_` prefix tags a tool; `kimitool` or `glmchat` are ordinary tools."""
    assert route("kimitool", "kimi") == Route(None, None)
    assert route("glmchat", None) == Route(None, None)


def test_registry_lists_providers_and_looks_up_case_insensitively() -> None:
    """The registry knows both providers and returns None for unknown names."""
    assert set(REGISTRY.providers) == {"kimi", "glm"}
    info = REGISTRY.get("MOONSHOT-V1-128K")
    assert info is not None
    assert (info.name, info.provider, info.context_window) == ("moonshot-v1-128k", "kimi", 131_072)
    assert REGISTRY.get("nope") is None
