"""Queue mode end to end (EXAI_WS_QUEUE_TIMEOUT > 0): waiting, expiry, fairness, isolation.

Every queued call is observed through the daemon's health snapshot (calls queued, in
flight per provider) and the tools' journal file, which records the order in which the
workers really started and finished calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import DaemonFactory, async_wait_for
from tests.e2e.sched_support import (
    HOLD_S,
    STEP_S,
    Files,
    hold,
    idle,
    journal_events,
    marker_state,
    metrics_until,
    op_clients,
    op_error,
    op_text,
    provider_inflight,
    sched_env,
    start_tagged_daemon,
)
from tests.support.health import health_until
from tests.support.mcp_ws import mcp_ws_clients

pytestmark = pytest.mark.timeout(180)


def queued(count: int) -> Callable[[dict[str, object]], bool]:
    return lambda h: h.get("queued") == count


async def test_calls_beyond_the_cap_wait_their_turn_and_then_succeed(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """With EXAI_WS_QUEUE_TIMEOUT=30 and a kimi cap of 1, kimi calls beyond the cap are
    acknowledged, wait without running, then run one at a time and all succeed; a queued
    call the client cancels is answered CANCELLED and never runs."""
    daemon = start_tagged_daemon(daemon_factory, sched_env(kimi=1, EXAI_WS_QUEUE_TIMEOUT="30"))
    files = Files(tmp_path)
    journal = files.path("journal")
    release = files.release()
    async with op_clients(daemon, "a", "b") as (a, b):
        first = await a.start(
            "kimi_wait",
            {"seconds": HOLD_S, "release": str(release), "journal": str(journal), "label": "0"},
        )
        await async_wait_for(
            lambda: ("started", "0") in journal_events(journal),
            STEP_S,
            "the first kimi call to start",
        )
        waiting = [
            await client.start(
                "kimi_wait", {"seconds": 0.05, "journal": str(journal), "label": str(i)}
            )
            for i, client in ((1, a), (2, b), (3, a))
        ]
        for call in waiting:
            await call.wait_ack()
        health = await health_until(daemon, queued(3), "3 kimi calls queued")
        assert provider_inflight(health, "kimi") == 1
        assert [label for _, label in journal_events(journal)] == ["0"]

        # Cancelling a queued call answers it and frees its place; it never reaches a worker.
        cancelled = waiting.pop()
        await a.cancel(cancelled.request_id)
        assert op_error(await cancelled.wait())["code"] == "CANCELLED"
        await health_until(daemon, queued(2), "the cancelled call to leave the queue")

        Files.let_go(release)
        for call in (first, *waiting):
            assert op_text(await call.wait()).startswith("kimi_wait done")
        await health_until(daemon, idle, "every counter back to zero")

    events = journal_events(journal)
    assert sorted(label for event, label in events if event == "finished") == ["0", "1", "2"]
    assert "3" not in {label for _, label in events}
    # The cap held while queued calls were granted: runs never overlapped.
    running = 0
    for event, label in events:
        running += 1 if event == "started" else -1
        assert 0 <= running <= 1, f"{label}: {events}"


async def test_a_queued_call_gets_over_capacity_when_the_queue_timeout_passes(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """With EXAI_WS_QUEUE_TIMEOUT=0.5 and a kimi call holding the only kimi slot, another kimi
    call is acknowledged, waits, and then gets OVER_CAPACITY (scope provider, provider kimi)
    saying it waited, while the holder is still running; it never ran, and its metrics line
    shows at least the 0.5 s it spent queued."""
    daemon = start_tagged_daemon(daemon_factory, sched_env(kimi=1, EXAI_WS_QUEUE_TIMEOUT="0.5"))
    files = Files(tmp_path)
    release = files.release()
    async with op_clients(daemon, "holder", "late") as (holder_client, late):
        holder = await hold(holder_client, "kimi_wait", files, "holder", release)
        marker = files.path("late")
        call = await late.start("kimi_wait", {"seconds": 0, "marker": str(marker)})
        await call.wait_ack()
        error = op_error(await call.wait())
        assert error["code"] == "OVER_CAPACITY", error
        assert error["scope"] == "provider" and error["provider"] == "kimi", error
        assert error["retry_after_ms"] > 0, error
        assert "waited" in error["message"], error
        assert not holder.result.done()
        assert marker_state(marker) is None

        Files.let_go(release)
        assert op_text(await holder.wait()) == "kimi_wait done"
        await health_until(daemon, idle, "every counter back to zero")
        (line,) = await metrics_until(
            daemon,
            lambda m: m["session"] == late.session_id and m["outcome"] == "OVER_CAPACITY",
            "the expired call's metrics line",
        )
        assert line["provider"] == "kimi" and line["tool"] == "kimi_wait"
        assert line["queue_ms"] >= 500 * 0.95, line


async def test_queued_calls_are_served_round_robin_across_sessions(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """With a kimi cap of 1 and queueing on, session A submits 6 kimi calls and then session B
    submits 1: B's call is not stuck behind all of A's; it finishes before at least 4 of
    A's calls (the queue takes turns between sessions)."""
    daemon = start_tagged_daemon(daemon_factory, sched_env(kimi=1, EXAI_WS_QUEUE_TIMEOUT="120"))
    files = Files(tmp_path)
    journal = files.path("journal")
    release = files.release()
    async with op_clients(daemon, "a", "b") as (a, b):
        a_calls = []
        for i in range(6):
            arguments = {"seconds": 0.05, "journal": str(journal), "label": f"a{i}"}
            if i == 0:
                arguments.update(seconds=HOLD_S, release=str(release))
            a_calls.append(await a.start("kimi_wait", arguments))
        await health_until(daemon, queued(5), "A's 5 calls queued behind the first")
        b_call = await b.start(
            "kimi_wait", {"seconds": 0.05, "journal": str(journal), "label": "b0"}
        )
        await health_until(daemon, queued(6), "B's call queued too")

        Files.let_go(release)
        results = await asyncio.gather(*(c.wait() for c in (*a_calls, b_call)))
        assert all(op_text(r).startswith("kimi_wait done") for r in results)

    finished = [label for event, label in journal_events(journal) if event == "finished"]
    assert sorted(finished) == sorted([*(f"a{i}" for i in range(6)), "b0"]), finished
    after_b = finished[finished.index("b0") + 1 :]
    assert sum(label.startswith("a") for label in after_b) >= 4, finished


async def test_a_session_flooding_kimi_does_not_delay_glm_or_untagged_calls(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """With queueing on and a kimi cap of 1, while one session has kimi's slot and ten more
    kimi calls queued, glm calls (from the flooding session and from another) and untagged
    calls are answered at once, before any of the queued kimi calls runs."""
    daemon = start_tagged_daemon(
        daemon_factory, sched_env(kimi=1, glm=1, EXAI_WS_QUEUE_TIMEOUT="120")
    )
    files = Files(tmp_path)
    release = files.release()
    async with op_clients(daemon, "flood", "other") as (flood, other):
        holder = await hold(flood, "kimi_wait", files, "holder", release)
        flooded = [await flood.start("kimi_wait", {"seconds": 0}) for _ in range(10)]
        await health_until(daemon, queued(10), "10 kimi calls queued")

        assert op_text(await flood.call("glm_wait", {"seconds": 0})) == "glm_wait done"
        assert op_text(await other.call("glm_wait", {"seconds": 0})) == "glm_wait done"
        assert op_text(await other.call("think", {"model": "glm-4.6"})) == "glm-4.6"
        assert op_text(await other.call("echo", {"text": "hi"})) == "hi"
        assert op_text(await flood.call("plain_wait", {"seconds": 0})) == "plain_wait done"
        assert not holder.result.done()
        assert not any(call.result.done() for call in flooded)
        health = await health_until(daemon, queued(10), "the kimi queue untouched")
        assert provider_inflight(health, "kimi") == 1

        Files.let_go(release)
        for call in (holder, *flooded):
            assert op_text(await call.wait()) == "kimi_wait done"
        await health_until(daemon, idle, "every counter back to zero")


async def test_a_queued_call_of_a_client_that_leaves_never_runs(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """With queueing on and kimi's only slot taken, an MCP client whose kimi call is waiting
    in the queue disconnects: the call leaves the queue at once and never runs, and the next
    client's kimi call gets the slot when it frees up."""
    daemon = start_tagged_daemon(daemon_factory, sched_env(kimi=1, EXAI_WS_QUEUE_TIMEOUT="120"))
    files = Files(tmp_path)
    release = files.release()
    gone_marker = files.path("gone")
    async with op_clients(daemon, "holder", "next") as (holder_client, next_client):
        holder = await hold(holder_client, "kimi_wait", files, "holder", release)
        async with mcp_ws_clients(daemon, 1) as (leaving,):
            await leaving.start_call("kimi_wait", {"seconds": 0, "marker": str(gone_marker)})
            await health_until(daemon, queued(1), "the leaving client's call queued")
        await health_until(daemon, queued(0), "the queue emptied by the disconnect")
        after = await next_client.start("kimi_wait", {"seconds": 0, "label": "next"})
        await health_until(daemon, queued(1), "the next client's call queued")
        Files.let_go(release)
        assert op_text(await holder.wait()).startswith("kimi_wait done")
        assert op_text(await after.wait()) == "kimi_wait done next"
        await health_until(daemon, idle, "every counter back to zero")
    assert marker_state(gone_marker) is None
