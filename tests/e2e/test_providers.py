"""The built-in `chat`, `listmodels` and `version` tools against fake providers.

Real daemons, real shims and the real SDK client; the providers are FakeOpenAI
servers in this process (one for Kimi, one for GLM) that the workers reach through
KIMI_API_URL / GLM_API_URL, so every request a worker makes can be inspected and
every answer (including 429, 500 and 401) is scripted by the test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp import MCPError

from exai.models import MODELS
from tests.conftest import STEP_S, DaemonFactory, async_wait_for, mcp_client, scaled
from tests.fakes.openai_server import (
    FakeOpenAI,
    RecordedRequest,
    Reply,
    echo_text,
    running_fake_openai,
)
from tests.support.jsonrpc import sdk_text

pytestmark = pytest.mark.timeout(120)

KIMI_KEY = "sk-kimi-test-5d1f0c9e7a2b4e61"
GLM_KEY = "glm-test-key.8c3a7e19f04b4d2a"
TOKEN = "ws-token-0f6e2b9d41c84a7f"
OVER_CAPACITY_RPC = -32050


@pytest.fixture
async def kimi_api() -> AsyncIterator[FakeOpenAI]:
    """A fake Moonshot API (base path /v1, like the real one)."""
    async with running_fake_openai("/v1") as fake:
        yield fake


@pytest.fixture
async def glm_api() -> AsyncIterator[FakeOpenAI]:
    """A fake Z.ai API (base path /api/paas/v4, like the real one)."""
    async with running_fake_openai("/api/paas/v4") as fake:
        yield fake


def provider_env(
    kimi: FakeOpenAI, glm: FakeOpenAI, *, kimi_key: str = KIMI_KEY, glm_key: str = GLM_KEY
) -> dict[str, str]:
    """Daemon environment pointing both providers at the fakes.

    Every key variable is set (empty means unset) so a key in the developer's own
    environment can never reach a test daemon.
    """
    return {
        "KIMI_API_KEY": kimi_key,
        "MOONSHOT_API_KEY": "",
        "KIMI_API_URL": kimi.url,
        "GLM_API_KEY": glm_key,
        "ZHIPUAI_API_KEY": "",
        "GLM_API_URL": glm.url,
        "EXAI_WS_CALL_TIMEOUT": "60",
    }


def only_request(fake: FakeOpenAI) -> RecordedRequest:
    """The one chat completion request the fake received (fails on none or several)."""
    requests = fake.completions()
    assert len(requests) == 1, [r.body for r in requests]
    return requests[0]


async def test_chat_without_model_goes_to_glm_flash(
    daemon_factory: DaemonFactory, kimi_api: FakeOpenAI, glm_api: FakeOpenAI
) -> None:
    """`chat {prompt}` runs the default model, glm-4.5-flash, on the GLM URL with the GLM
    key; the answer and its model, provider and usage come back to the client."""
    daemon = daemon_factory(workers=1, env=provider_env(kimi_api, glm_api))
    async with mcp_client(daemon.shim_env()) as session:
        result = await session.call_tool(
            "chat", {"prompt": "hello there", "system_prompt": "be brief"}
        )
        bare = await session.call_tool("chat", {"prompt": "no system prompt"})

    assert not result.is_error, sdk_text(result)
    first, second = glm_api.completions()
    assert first.path == "/api/paas/v4/chat/completions"
    assert first.headers.get("Authorization") == f"Bearer {GLM_KEY}"
    assert first.model == "glm-4.5-flash"
    assert first.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"},
    ]
    assert second.messages == [{"role": "user", "content": "no system prompt"}]
    assert kimi_api.requests == []

    assert sdk_text(result) == echo_text("glm-4.5-flash", "hello there")
    assert sdk_text(bare) == echo_text("glm-4.5-flash", "no system prompt")
    structured = result.structured_content
    assert structured is not None
    assert structured["model"] == "glm-4.5-flash"
    assert structured["provider"] == "glm"
    usage = structured["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("kimi-latest", "kimi-latest"),
        ("kimi", "kimi-k2-0905-preview"),
        ("KIMI-Turbo", "kimi-k2-turbo-preview"),
        ("moonshot-v1-8k", "moonshot-v1-8k"),
    ],
)
async def test_chat_kimi_model_or_alias_goes_to_kimi(
    daemon_factory: DaemonFactory,
    kimi_api: FakeOpenAI,
    glm_api: FakeOpenAI,
    requested: str,
    expected: str,
) -> None:
    """A Kimi model (or an alias of one) runs on the Kimi URL with the Kimi key, and the
    alias is resolved to the real model name before the request leaves."""
    daemon = daemon_factory(workers=1, env=provider_env(kimi_api, glm_api))
    async with mcp_client(daemon.shim_env()) as session:
        result = await session.call_tool("chat", {"prompt": "ni hao", "model": requested})

    assert not result.is_error, sdk_text(result)
    request = only_request(kimi_api)
    assert request.path == "/v1/chat/completions"
    assert request.headers.get("Authorization") == f"Bearer {KIMI_KEY}"
    assert request.model == expected
    assert request.messages == [{"role": "user", "content": "ni hao"}]
    assert glm_api.requests == []
    assert sdk_text(result) == echo_text(expected, "ni hao")
    assert result.structured_content is not None
    assert result.structured_content["provider"] == "kimi"
    assert result.structured_content["model"] == expected


async def test_chat_unknown_model_is_invalid_arguments(
    daemon_factory: DaemonFactory, kimi_api: FakeOpenAI, glm_api: FakeOpenAI
) -> None:
    """A model no provider serves is refused by the broker, before any request is made."""
    daemon = daemon_factory(workers=1, env=provider_env(kimi_api, glm_api))
    async with mcp_client(daemon.shim_env()) as session:
        with pytest.raises(MCPError) as caught:
            await session.call_tool("chat", {"prompt": "hi", "model": "gpt-9"})
    assert caught.value.error.code == -32602
    assert isinstance(caught.value.error.data, dict)
    assert caught.value.error.data.get("code") == "INVALID_ARGUMENTS"
    assert "gpt-9" in caught.value.error.message
    assert kimi_api.requests == [] and glm_api.requests == []


async def test_chat_honours_retry_after_on_429(
    daemon_factory: DaemonFactory, kimi_api: FakeOpenAI, glm_api: FakeOpenAI
) -> None:
    """429 with Retry-After: 1 then 200: the call succeeds, the provider saw two requests,
    and the second came no earlier than Retry-After allowed (the worker's own backoff
    would have retried after about 0.5 s)."""
    daemon = daemon_factory(workers=1, env=provider_env(kimi_api, glm_api))
    glm_api.script(Reply.rate_limited(retry_after="1"), Reply.completion("after the wait"))
    async with mcp_client(daemon.shim_env()) as session:
        result = await session.call_tool("chat", {"prompt": "busy?"})

    assert not result.is_error, sdk_text(result)
    assert sdk_text(result) == "after the wait"
    first, second = glm_api.completions()
    assert first.body == second.body
    assert second.t - first.t >= 0.95, f"retried after {second.t - first.t:.2f} s"


async def test_chat_retries_server_errors(
    daemon_factory: DaemonFactory, kimi_api: FakeOpenAI, glm_api: FakeOpenAI
) -> None:
    """500, 500, 200: the worker retries and the client sees only the answer."""
    daemon = daemon_factory(workers=1, env=provider_env(kimi_api, glm_api))
    glm_api.script(Reply.server_error(500), Reply.server_error(500), Reply.completion())
    async with mcp_client(daemon.shim_env()) as session:
        result = await session.call_tool("chat", {"prompt": "flaky"})

    assert not result.is_error, sdk_text(result)
    assert sdk_text(result) == echo_text("glm-4.5-flash", "flaky")
    assert len(glm_api.completions()) == 3


async def test_chat_401_is_a_clean_tool_error(
    daemon_factory: DaemonFactory, kimi_api: FakeOpenAI, glm_api: FakeOpenAI
) -> None:
    """401 is not retried; the client gets isError with the provider's status and words,
    and no traceback."""
    daemon = daemon_factory(workers=1, env=provider_env(kimi_api, glm_api))
    glm_api.script(Reply.unauthorized("Authentication token expired (fake)"))
    async with mcp_client(daemon.shim_env()) as session:
        result = await session.call_tool("chat", {"prompt": "let me in"})

    assert result.is_error
    text = sdk_text(result)
    assert "401" in text, text
    assert "Authentication token expired (fake)" in text, text
    assert "glm" in text.lower(), text
    assert "Traceback" not in text and 'File "' not in text, text
    assert len(glm_api.completions()) == 1


@pytest.mark.parametrize("kimi_key", ["", "your_kimi_api_key_here"], ids=["missing", "placeholder"])
async def test_chat_without_a_kimi_key_names_the_variable(
    daemon_factory: DaemonFactory, kimi_api: FakeOpenAI, glm_api: FakeOpenAI, kimi_key: str
) -> None:
    """No Kimi key (or the .env.example placeholder) → a tool error naming KIMI_API_KEY,
    and nothing is sent to the Kimi URL; GLM still works."""
    daemon = daemon_factory(workers=1, env=provider_env(kimi_api, glm_api, kimi_key=kimi_key))
    async with mcp_client(daemon.shim_env()) as session:
        result = await session.call_tool("chat", {"prompt": "hi", "model": "kimi-latest"})
        glm = await session.call_tool("chat", {"prompt": "hi"})

    assert result.is_error
    assert "KIMI_API_KEY" in sdk_text(result), sdk_text(result)
    assert "Traceback" not in sdk_text(result)
    assert kimi_api.requests == []
    assert not glm.is_error, sdk_text(glm)


async def test_chat_continuation_carries_the_conversation(
    daemon_factory: DaemonFactory, kimi_api: FakeOpenAI, glm_api: FakeOpenAI
) -> None:
    """Two turns with one continuation_id: the second request holds the first turn's user
    and assistant messages (across two workers: the conversation sticks to its worker);
    another continuation_id starts empty."""
    daemon = daemon_factory(workers=2, env=provider_env(kimi_api, glm_api))
    async with mcp_client(daemon.shim_env()) as session:
        first = await session.call_tool(
            "chat", {"prompt": "my name is Ada", "continuation_id": "conv-1"}
        )
        second = await session.call_tool(
            "chat", {"prompt": "what is my name?", "continuation_id": "conv-1"}
        )
        other = await session.call_tool(
            "chat", {"prompt": "fresh start", "continuation_id": "conv-2"}
        )

    for result in (first, second, other):
        assert not result.is_error, sdk_text(result)
    one, two, three = glm_api.completions()
    assert one.messages == [{"role": "user", "content": "my name is Ada"}]
    assert two.messages == [
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": echo_text("glm-4.5-flash", "my name is Ada")},
        {"role": "user", "content": "what is my name?"},
    ]
    assert three.messages == [{"role": "user", "content": "fresh start"}]
    assert second.structured_content is not None
    assert second.structured_content["continuation_id"] == "conv-1"


async def test_glm_cap_refuses_a_second_glm_chat_but_not_kimi(
    daemon_factory: DaemonFactory, kimi_api: FakeOpenAI, glm_api: FakeOpenAI
) -> None:
    """EXAI_WS_GLM_MAX_INFLIGHT=1: while one glm chat is held at the provider, a second
    glm chat is refused with OVER_CAPACITY (scope provider, provider glm) and a kimi chat
    still goes through; after the release the held call completes."""
    env = provider_env(kimi_api, glm_api)
    env.update(EXAI_WS_GLM_MAX_INFLIGHT="1", EXAI_WS_KIMI_MAX_INFLIGHT="1")
    daemon = daemon_factory(workers=2, env=env)
    release = asyncio.Event()
    glm_api.script(Reply.completion("held answer", hold=release))
    async with (
        mcp_client(daemon.shim_env()) as first,
        mcp_client(daemon.shim_env()) as second,
    ):
        held = asyncio.create_task(first.call_tool("chat", {"prompt": "hold me"}))
        try:
            await glm_api.wait_requests(1, scaled(STEP_S))
            with pytest.raises(MCPError) as caught:
                await second.call_tool("chat", {"prompt": "me too", "model": "glm-4.5"})
            kimi = await second.call_tool("chat", {"prompt": "other lane", "model": "kimi"})
        finally:
            release.set()
        done = await asyncio.wait_for(held, scaled(STEP_S))

    error = caught.value.error
    assert error.code == OVER_CAPACITY_RPC, error
    assert isinstance(error.data, dict)
    assert error.data["code"] == "OVER_CAPACITY"
    assert error.data["scope"] == "provider"
    assert error.data["provider"] == "glm"
    assert error.data["retry_after_ms"] > 0
    assert not kimi.is_error, sdk_text(kimi)
    assert sdk_text(done) == "held answer"
    assert len(glm_api.completions()) == 1, "the refused call must never reach the provider"


async def test_listmodels_and_version_with_only_glm_configured(
    daemon_factory: DaemonFactory, kimi_api: FakeOpenAI, glm_api: FakeOpenAI
) -> None:
    """listmodels marks glm configured and kimi not, with every model's context window and
    aliases; version lists the configured providers, the caps and the worker count."""
    env = provider_env(kimi_api, glm_api, kimi_key="")
    env.update(
        EXAI_WS_GLM_MAX_INFLIGHT="3",
        EXAI_WS_KIMI_MAX_INFLIGHT="5",
        EXAI_WS_SESSION_MAX_INFLIGHT="7",
        EXAI_WS_GLOBAL_MAX_INFLIGHT="11",
    )
    daemon = daemon_factory(workers=2, env=env)
    async with mcp_client(daemon.shim_env()) as session:
        models = await session.call_tool("listmodels", {})
        version = await session.call_tool("version", {})

    assert not models.is_error and not version.is_error
    listed = models.structured_content
    assert listed is not None
    assert json.loads(sdk_text(models)) == listed
    providers = listed["providers"]
    assert providers["glm"]["configured"] is True
    assert providers["kimi"]["configured"] is False
    by_name = {m["name"]: m for p in providers.values() for m in p["models"]}
    assert set(by_name) == {m.name for m in MODELS}
    assert by_name["glm-4.5-flash"]["context_window"] == 131_072
    assert "glm-flash" in by_name["glm-4.5-flash"]["aliases"]
    assert by_name["kimi-k2-0905-preview"]["context_window"] == 262_144
    assert "kimi" in by_name["kimi-k2-0905-preview"]["aliases"]
    assert {m["name"] for m in providers["kimi"]["models"]} >= {"kimi-latest", "moonshot-v1-8k"}

    info = version.structured_content
    assert info is not None
    assert json.loads(sdk_text(version)) == info
    assert info["providers_configured"] == ["glm"]
    assert info["workers"] == 2
    assert info["caps"]["session"] == 7
    assert info["caps"]["global"] == 11
    assert info["caps"]["providers"]["glm"] == 3
    assert info["caps"]["providers"]["kimi"] == 5
    assert info["version"]


def _files_under(root: Path) -> list[Path]:
    """Every file below `root`, sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("log_level", ["INFO", "DEBUG"])
async def test_no_secrets_on_disk(
    daemon_factory: DaemonFactory,
    kimi_api: FakeOpenAI,
    glm_api: FakeOpenAI,
    log_level: str,
) -> None:
    """After a run with a daemon token and both provider keys (successful calls, a
    provider 401, a 500 retry), no file the daemon wrote (log, health, metrics, its
    stderr) contains the token or either key, even at DEBUG."""
    env = provider_env(kimi_api, glm_api)
    env.update(EXAI_WS_TOKEN=TOKEN, EXAI_LOG_LEVEL=log_level)
    daemon = daemon_factory(workers=2, env=env)
    kimi_api.script(Reply.unauthorized())
    glm_api.script(Reply.server_error(500))
    async with mcp_client(daemon.shim_env()) as session:
        assert not (await session.call_tool("chat", {"prompt": "one"})).is_error
        assert (await session.call_tool("chat", {"prompt": "two", "model": "kimi"})).is_error
        assert not (await session.call_tool("chat", {"prompt": "three", "model": "kimi"})).is_error
        assert not (await session.call_tool("version", {})).is_error
    # The secrets were really used: otherwise finding none of them would prove nothing.
    assert glm_api.completions()[0].headers["Authorization"] == f"Bearer {GLM_KEY}"
    assert kimi_api.completions()[0].headers["Authorization"] == f"Bearer {KIMI_KEY}"
    await async_wait_for(
        lambda: len(daemon.metrics_lines()) >= 4, STEP_S, "the calls' metrics lines"
    )
    assert daemon.stop() == 0

    files = _files_under(daemon.log_dir)
    names = {p.name for p in files}
    assert {"mcp_server.log", "ws_daemon.health.json", "ws_daemon.metrics.jsonl"} <= names
    assert daemon.stderr_path in files
    leaks = []
    for path in files:
        data = path.read_bytes()
        for label, secret in (("token", TOKEN), ("kimi key", KIMI_KEY), ("glm key", GLM_KEY)):
            if secret.encode() in data:
                leaks.append(f"{label} in {path.name}")
    assert not leaks, leaks
