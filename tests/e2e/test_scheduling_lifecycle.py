"""How a running call ends early, end to end: timeouts, cancellation, and progress on the way.

The tools' marker files say what the worker really did with the task ("cancelled"
means the task was cancelled inside the worker, not merely forgotten by the broker).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import pytest
from mcp import MCPError

from tests.conftest import DaemonFactory, async_wait_for, mcp_client, scaled
from tests.e2e.sched_support import (
    HOLD_S,
    STEP_S,
    Files,
    hold_rpc,
    idle,
    marker_state,
    marker_until,
    metrics_until,
    op_clients,
    op_error,
    op_text,
    rpc_text,
    sched_env,
    start_tagged_daemon,
)
from tests.support.health import health_until
from tests.support.mcp_ws import mcp_ws_clients

pytestmark = pytest.mark.timeout(180)

TIMEOUT_RPC = -32051


# --- timeouts ------------------------------------------------------------------------------


async def test_call_timeout_cancels_the_task_in_the_worker_and_frees_capacity_at_once(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """With EXAI_WS_CALL_TIMEOUT=2 and a session cap of 1, a 60 s call is answered TIMEOUT,
    the worker really cancels the task, and the session's next call is admitted right after
    the TIMEOUT arrives; an MCP client through the shim sees TIMEOUT as JSON-RPC -32051."""
    daemon = start_tagged_daemon(
        daemon_factory, sched_env(session=1, kimi=1, EXAI_WS_CALL_TIMEOUT="2")
    )
    files = Files(tmp_path)
    async with op_clients(daemon, "a") as (a,):
        marker = files.path("plain")
        frame = await a.call("plain_wait", {"seconds": 60, "marker": str(marker)})
        error = op_error(frame)
        assert error["code"] == "TIMEOUT", error
        assert "EXAI_WS_CALL_TIMEOUT" in error["message"], error
        # Admitted at once: the session cap of 1 was given back with the TIMEOUT.
        assert op_text(await a.call("echo", {"text": "next"})) == "next"
        await marker_until(marker, "cancelled")

        # Same for a provider slot: kimi's only slot is free right after its TIMEOUT.
        kimi_marker = files.path("kimi")
        error = op_error(await a.call("kimi_wait", {"seconds": 60, "marker": str(kimi_marker)}))
        assert error["code"] == "TIMEOUT", error
        assert op_text(await a.call("kimi_wait", {"seconds": 0})) == "kimi_wait done"
        await marker_until(kimi_marker, "cancelled")
        await health_until(daemon, idle, "every counter back to zero")

    async with mcp_client(daemon.shim_env()) as session:
        sdk_marker = files.path("sdk")
        with pytest.raises(MCPError) as info:
            await session.call_tool("plain_wait", {"seconds": 60, "marker": str(sdk_marker)})
        assert info.value.error.code == TIMEOUT_RPC
        data = info.value.error.data
        assert isinstance(data, dict) and data["code"] == "TIMEOUT"
        result = await session.call_tool("echo", {"text": "after"})
        assert result.content[0].text == "after"
        await marker_until(sdk_marker, "cancelled")

    lines = await metrics_until(
        daemon, lambda m: m["outcome"] == "TIMEOUT", "3 TIMEOUT metrics lines", count=3
    )
    assert {(m["tool"], m["provider"]) for m in lines} == {
        ("plain_wait", None),
        ("kimi_wait", "kimi"),
    }
    health = await health_until(daemon, idle, "every counter back to zero")
    assert health["errors_by_code"].get("TIMEOUT") == 3


# --- cancellation ------------------------------------------------------------------------


async def test_sdk_cancellation_through_the_shim_stops_the_worker_task(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """An MCP SDK client that cancels a running call (its anyio cancel scope is cancelled)
    makes the worker cancel the task; the daemon shows nothing in flight afterwards and the
    same session keeps working."""
    daemon = start_tagged_daemon(daemon_factory, sched_env(session=1))
    files = Files(tmp_path)
    async with mcp_client(daemon.shim_env()) as session:
        for attempt in range(2):
            marker = files.path(f"sdk-{attempt}")
            scope = anyio.CancelScope()
            finished: list[object] = []

            async def run(
                scope: anyio.CancelScope = scope,
                marker: Path = marker,
                finished: list[object] = finished,
            ) -> None:
                with scope:
                    finished.append(
                        await session.call_tool(
                            "plain_wait", {"seconds": HOLD_S, "marker": str(marker)}
                        )
                    )

            task = asyncio.get_running_loop().create_task(run())
            await marker_until(marker, "started")
            scope.cancel()
            await asyncio.wait_for(task, scaled(STEP_S))
            assert finished == [] and scope.cancelled_caught
            await marker_until(marker, "cancelled")
            await health_until(daemon, idle, "nothing in flight after the cancel")
            # Session cap 1: the cancelled call's slot is back, the session carries on.
            result = await session.call_tool("echo", {"text": f"after {attempt}"})
            assert result.content[0].text == f"after {attempt}"


async def test_cancelling_a_request_id_in_one_session_leaves_another_sessions_same_id(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """Two MCP sessions each run a call with request id "X"; session 1 cancels "X": only its
    own call is cancelled in the worker (and gets no response, as MCP wants); session 2's
    call "X" keeps running and returns its result."""
    daemon = start_tagged_daemon(daemon_factory, sched_env())
    files = Files(tmp_path)
    release = files.release()
    async with mcp_ws_clients(daemon, 2) as (one, two):
        markers = [files.path("one"), files.path("two")]
        futures = [
            await hold_rpc(client, "plain_wait", files, name, release, request_id="X")
            for client, name in ((one, "one"), (two, "two"))
        ]

        await one.cancel("X")
        await marker_until(markers[0], "cancelled")
        await health_until(daemon, lambda h: h["inflight"]["global"] == 1, "one call left")
        assert marker_state(markers[1]) == "started"

        Files.let_go(release)
        assert rpc_text(await asyncio.wait_for(futures[1], scaled(STEP_S))) == "plain_wait done"
        assert marker_state(markers[1]) == "finished"
        # A later round trip on session 1: the cancelled request was never answered.
        assert "result" in await one.request("ping", {})
        assert not futures[0].done()
        await health_until(daemon, idle, "every counter back to zero")


async def test_op_cancel_answers_cancelled_and_stops_the_worker_task(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """In the op dialect, `cancel` of a running call is answered with call_tool_res carrying
    error code CANCELLED, the worker cancels the task, and the session keeps working."""
    daemon = start_tagged_daemon(daemon_factory, sched_env(session=1))
    files = Files(tmp_path)
    async with op_clients(daemon, "a") as (a,):
        marker = files.path("op")
        call = await a.start("plain_wait", {"seconds": HOLD_S, "marker": str(marker)})
        await call.wait_ack()
        await marker_until(marker, "started")
        await a.cancel(call.request_id)
        error = op_error(await call.wait())
        assert error["code"] == "CANCELLED", error
        await marker_until(marker, "cancelled")
        assert op_text(await a.call("echo", {"text": "still here"})) == "still here"
        await health_until(daemon, idle, "every counter back to zero")


# --- progress ---------------------------------------------------------------------------


async def test_progress_reaches_sdk_callbacks_and_op_clients_before_the_result(
    daemon_factory: DaemonFactory,
) -> None:
    """`sleep {seconds: 0.5, steps: 5}` reports progress 1..5 of 5: an SDK client's
    progress_callback receives all five, increasing; an op-dialect client receives five
    `progress` frames before its call_tool_res."""
    daemon = start_tagged_daemon(daemon_factory, sched_env())
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    async with mcp_client(daemon.shim_env()) as session:
        result = await session.call_tool(
            "sleep", {"seconds": 0.5, "steps": 5}, progress_callback=on_progress
        )
        assert result.content[0].text == "slept 0.5"
        await async_wait_for(lambda: len(seen) >= 5, STEP_S, "5 progress callbacks")
    assert [p for p, _ in seen] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert {t for _, t in seen} == {5.0}

    async with op_clients(daemon, "progress") as (client,):
        call = await client.start("sleep", {"seconds": 0.5, "steps": 5})
        assert op_text(await call.wait()) == "slept 0.5"
        mine = [f for f in client.frames if f.get("request_id") == call.request_id]
    ops = [f["op"] for f in mine]
    assert ops == ["call_tool_ack", *["progress"] * 5, "call_tool_res"], ops
    assert [f["progress"] for f in mine[1:6]] == [1, 2, 3, 4, 5]
    assert {f["total"] for f in mine[1:6]} == {5}
