"""Scheduling caps end to end: provider, session and global in-flight limits.

A real daemon hosts tests.fixtures.tagged_tools; calls that hold capacity wait on a
release file the test creates, so overlap is decided by the test, not by timing.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from mcp import MCPError

from exai.models import MODELS
from tests.conftest import DaemonFactory, mcp_client, scaled
from tests.e2e.sched_support import (
    HOLD_S,
    Files,
    hold,
    hold_rpc,
    idle,
    marker_state,
    metrics_until,
    op_clients,
    op_error,
    op_text,
    provider_inflight,
    rpc_error,
    rpc_text,
    sched_env,
    start_tagged_daemon,
)
from tests.support.health import health_until
from tests.support.mcp_ws import mcp_ws_clients

pytestmark = pytest.mark.timeout(180)

OVER_CAPACITY_RPC = -32050
INVALID_PARAMS_RPC = -32602


def assert_over_capacity(error: dict[str, Any], scope: str, provider: str | None) -> None:
    assert error["code"] == "OVER_CAPACITY", error
    assert error["scope"] == scope, error
    assert error["provider"] == provider, error
    assert isinstance(error["retry_after_ms"], int) and error["retry_after_ms"] > 0, error


async def test_provider_cap_refuses_the_extra_kimi_call_at_once_and_spares_the_rest(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """With EXAI_WS_KIMI_MAX_INFLIGHT=2, two kimi calls run and a third is refused at once
    with OVER_CAPACITY (scope provider, provider kimi, retry_after_ms > 0) while the two are
    still running; untagged calls and glm calls keep working; once the two finish, kimi
    has exactly two slots again (no leak, no double release)."""
    daemon = start_tagged_daemon(daemon_factory, sched_env(kimi=2))
    files = Files(tmp_path)
    async with op_clients(daemon, "a", "b") as (a, b):
        release = files.release("r1")
        holders = [await hold(a, "kimi_wait", files, f"k{i}", release) for i in range(2)]
        await health_until(daemon, lambda h: provider_inflight(h, "kimi") == 2, "2 kimi calls")

        third_marker = files.path("k-third")
        third = await b.call("kimi_wait", {"seconds": HOLD_S, "marker": str(third_marker)})
        assert_over_capacity(op_error(third), "provider", "kimi")
        # Refused while both holders still run: it did not wait for a slot, nor run.
        assert not any(h.result.done() for h in holders)
        assert marker_state(third_marker) is None

        # The same refusal reaches an MCP client through the shim as a typed JSON-RPC error.
        async with mcp_client(daemon.shim_env()) as session:
            with pytest.raises(MCPError) as info:
                await session.call_tool("kimi_wait", {"seconds": HOLD_S})
            assert info.value.error.code == OVER_CAPACITY_RPC
            data = info.value.error.data
            assert isinstance(data, dict)
            assert data["code"] == "OVER_CAPACITY" and data["scope"] == "provider"
            assert data["provider"] == "kimi" and data["retry_after_ms"] > 0

        # Untagged and other-provider calls are not held back by the full kimi cap.
        version = json.loads(op_text(await b.call("version", {})))
        assert version["caps"]["kimi"] == 2
        assert op_text(await b.call("echo", {"text": "untagged"})) == "untagged"
        assert op_text(await b.call("glm_wait", {"seconds": 0})) == "glm_wait done"
        assert op_text(await a.call("plain_wait", {"seconds": 0})) == "plain_wait done"
        assert not any(h.result.done() for h in holders)

        Files.let_go(release)
        for holder in holders:
            assert op_text(await holder.wait()) == "kimi_wait done"
        await health_until(daemon, idle, "every counter back to zero")

        # Exactly two kimi slots again: two more run, a third is refused again.
        release2 = files.release("r2")
        again = [await hold(b, "kimi_wait", files, f"k2-{i}", release2) for i in range(2)]
        assert_over_capacity(
            op_error(await a.call("kimi_wait", {"seconds": 0})), "provider", "kimi"
        )
        Files.let_go(release2)
        for holder in again:
            op_text(await holder.wait())
        assert op_text(await a.call("kimi_wait", {"seconds": 0})) == "kimi_wait done"
        health = await health_until(daemon, idle, "every counter back to zero")
        assert health["inflight"]["providers"]["kimi"] == 0


async def test_untagged_calls_ignore_a_full_glm_cap_and_model_tools_follow_their_model(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """With EXAI_WS_GLM_MAX_INFLIGHT=1 and glm busy, 16 concurrent `version` calls from four
    sessions all succeed (version has no provider tag); a model tool with no model runs the
    default glm-4.5-flash and counts against glm; with model kimi-latest it runs kimi-latest
    and counts against kimi; an unknown model is INVALID_ARGUMENTS listing the known models."""
    daemon = start_tagged_daemon(daemon_factory, sched_env(session=8, global_cap=24, glm=1, kimi=6))
    files = Files(tmp_path)
    async with op_clients(daemon, "s1", "s2", "s3", "s4") as clients:
        first = clients[0]
        release = files.release("glm")
        glm_holder = await hold(first, "glm_wait", files, "glm", release)
        await health_until(daemon, lambda h: provider_inflight(h, "glm") == 1, "glm full")

        starts = [await c.start("version", {}) for c in clients for _ in range(4)]
        frames = await asyncio.gather(*(call.wait() for call in starts))
        for frame in frames:
            assert json.loads(op_text(frame))["name"] == "exai-broker"
        assert not glm_holder.result.done()

        # think with no model is a glm call (the default model): glm is full, so it is refused.
        assert_over_capacity(op_error(await first.call("think", {})), "provider", "glm")
        Files.let_go(release)
        op_text(await glm_holder.wait())

        default = await clients[1].call("think", {})
        assert op_text(default) == "glm-4.5-flash"
        assert default["structuredContent"]["model"] == "glm-4.5-flash"

        kimi_release = files.release("kimi")
        kimi_call = await hold(
            clients[2], "think", files, "think-kimi", kimi_release, model="kimi-latest"
        )
        health = await health_until(
            daemon, lambda h: provider_inflight(h, "kimi") == 1, "think(kimi-latest) on kimi"
        )
        assert provider_inflight(health, "glm") == 0
        Files.let_go(kimi_release)
        assert op_text(await kimi_call.wait()) == "kimi-latest"
        # Aliases resolve (case-insensitively) to the model the worker is told to run.
        assert op_text(await clients[2].call("think", {"model": "KIMI-TURBO"})) == (
            "kimi-k2-turbo-preview"
        )
        # A provider-named tool refuses a model of another provider.
        mismatch = op_error(await clients[2].call("kimi_wait", {"seconds": 0, "model": "glm-4.6"}))
        assert mismatch["code"] == "INVALID_ARGUMENTS", mismatch

        unknown = op_error(await clients[3].call("think", {"model": "nope"}))
        assert unknown["code"] == "INVALID_ARGUMENTS", unknown
        assert "nope" in unknown["message"]
        for model in ("glm-4.5-flash", "kimi-latest", "glm-4.6"):
            assert model in unknown["message"], unknown
        await health_until(daemon, idle, "every counter back to zero")

    async with mcp_ws_clients(daemon, 1) as (mcp,):
        error = rpc_error(await mcp.call("think", {"model": "nope"}))
        assert error["code"] == INVALID_PARAMS_RPC
        assert error["data"]["code"] == "INVALID_ARGUMENTS"
        assert all(m.name in error["message"] for m in MODELS)
        assert rpc_text(await mcp.call("think", {"model": "auto"})) == "glm-4.5-flash"


async def test_session_cap_refuses_only_the_busy_session(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """With EXAI_WS_SESSION_MAX_INFLIGHT=2, an MCP session with two calls running gets
    OVER_CAPACITY (-32050, scope session) for a third, while a second session still runs two
    of its own; when the first session's calls end it can call again."""
    daemon = start_tagged_daemon(daemon_factory, sched_env(session=2))
    files = Files(tmp_path)
    release_a, release_b = files.release("a"), files.release("b")
    async with mcp_ws_clients(daemon, 2) as (a, b):
        held_a = [await hold_rpc(a, "plain_wait", files, f"a{i}", release_a) for i in range(2)]

        error = rpc_error(await a.call("plain_wait", {"seconds": 0}))
        assert error["code"] == OVER_CAPACITY_RPC, error
        assert error["data"]["code"] == "OVER_CAPACITY"
        assert error["data"]["scope"] == "session"
        assert error["data"]["provider"] is None
        assert error["data"]["retry_after_ms"] > 0

        # The other session is unaffected: it runs two calls of its own at the same time.
        held_b = [await hold_rpc(b, "plain_wait", files, f"b{i}", release_b) for i in range(2)]
        await health_until(daemon, lambda h: h["inflight"]["global"] == 4, "4 calls in flight")
        assert not any(f.done() for f in held_a)

        Files.let_go(release_a)
        for future in held_a:
            assert rpc_text(await asyncio.wait_for(future, scaled(30))) == "plain_wait done"
        assert rpc_text(await a.call("echo", {"text": "again"})) == "again"
        Files.let_go(release_b)
        for future in held_b:
            rpc_text(await asyncio.wait_for(future, scaled(30)))
        await health_until(daemon, idle, "every counter back to zero")


async def test_global_cap_refuses_any_session_once_the_daemon_is_full(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """With EXAI_WS_GLOBAL_MAX_INFLIGHT=2 and two calls running in two sessions, a call from
    a third session (and another from the first) gets OVER_CAPACITY with scope global; when
    one call ends, the third session's call runs."""
    daemon = start_tagged_daemon(daemon_factory, sched_env(global_cap=2, session=10))
    files = Files(tmp_path)
    async with op_clients(daemon, "a", "b", "c") as (a, b, c):
        release_a, release_b = files.release("a"), files.release("b")
        held_a = await hold(a, "plain_wait", files, "a", release_a)
        held_b = await hold(b, "kimi_wait", files, "b", release_b)
        await health_until(daemon, lambda h: h["inflight"]["global"] == 2, "2 calls in flight")

        assert_over_capacity(op_error(await c.call("echo", {"text": "x"})), "global", None)
        assert_over_capacity(op_error(await a.call("glm_wait", {"seconds": 0})), "global", "glm")
        assert not held_a.result.done() and not held_b.result.done()

        Files.let_go(release_a)
        op_text(await held_a.wait())
        assert op_text(await c.call("echo", {"text": "x"})) == "x"
        Files.let_go(release_b)
        op_text(await held_b.wait())
        await health_until(daemon, idle, "every counter back to zero")


async def test_builtin_version_never_counts_against_the_default_models_provider(
    daemon_factory: DaemonFactory,
) -> None:
    """With the built-in tools, EXAI_WS_GLM_MAX_INFLIGHT=1 and the default model on glm,
    16 concurrent `version` calls from four sessions all succeed, and each is recorded in
    the metrics with no provider and no model."""
    daemon = daemon_factory(workers=2, env={"EXAI_WS_GLM_MAX_INFLIGHT": "1"})
    async with op_clients(daemon, "v1", "v2", "v3", "v4") as clients:
        starts = [await c.start("version", {}) for c in clients for _ in range(4)]
        frames = await asyncio.gather(*(call.wait() for call in starts))
    for frame in frames:
        assert json.loads(op_text(frame))["name"] == "exai-broker"
    lines = await metrics_until(
        daemon, lambda m: m["tool"] == "version", "16 version metrics lines", count=16
    )
    assert {(m["provider"], m["model"], m["outcome"]) for m in lines} == {(None, None, "ok")}
