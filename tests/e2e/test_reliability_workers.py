"""Reliability: the worker pool — a crashed worker costs only its own calls, a broken
server stops the daemon instead of looping, and recycling never fails a call."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

from mcp.shared.exceptions import MCPError

from tests.conftest import (
    DaemonFactory,
    DaemonProcess,
    async_wait_for,
    mcp_client,
    scaled,
    wait_for,
)
from tests.e2e.reliability_support import (
    COUNTING_ARGS,
    JsonObj,
    rpc_error,
    rpc_text,
    shim_drivers,
)
from tests.support.health import health_until
from tests.support.mcp_ws import mcp_ws_clients

WORKER_LOST = -32052


def _ready(health: JsonObj) -> list[JsonObj]:
    return [w for w in health["workers"] if w["state"] == "ready"]


async def test_killed_worker_fails_only_its_call_and_is_replaced(daemon: DaemonProcess) -> None:
    """kill -9 one of two busy workers: its call is WORKER_LOST, the other's completes."""
    before = await health_until(daemon, lambda h: len(_ready(h)) == 2, "two ready workers")
    async with mcp_client(daemon.shim_env()) as session:
        calls = [
            asyncio.ensure_future(session.call_tool("sleep", {"seconds": 4})) for _ in range(2)
        ]
        try:
            busy = await health_until(
                daemon,
                lambda h: [w["inflight"] for w in h["workers"]] == [1, 1],
                "one sleep call on each worker",
            )
            victim = busy["workers"][0]
            os.kill(victim["pid"], signal.SIGKILL)
            outcomes: list[Any] = await asyncio.wait_for(
                asyncio.gather(*calls, return_exceptions=True), scaled(30)
            )
        finally:
            for call in calls:
                call.cancel()
        lost = [o for o in outcomes if isinstance(o, MCPError)]
        done = [o for o in outcomes if not isinstance(o, BaseException)]
        assert len(lost) == 1 and len(done) == 1, outcomes
        assert lost[0].error.code == WORKER_LOST
        assert isinstance(lost[0].error.data, dict)
        assert lost[0].error.data.get("code") == "WORKER_LOST"
        assert done[0].content[0].text == "slept 4" and not done[0].is_error
        # The session is unharmed and the pool is whole again.
        after_crash = await session.call_tool("echo", {"text": "still here"})
        assert after_crash.content[0].text == "still here"

    healed = await health_until(
        daemon,
        lambda h: len(_ready(h)) == 2 and h["workers"][0]["pid"] != victim["pid"],
        "the pool to be back to two ready workers",
    )
    slot = healed["workers"][victim["slot"]]
    assert slot["restarts"] == 1
    assert slot["pid"] not in [w["pid"] for w in before["workers"]]
    assert healed["workers"][1]["restarts"] == 0
    assert healed["errors_by_code"].get("WORKER_LOST") == 1


def test_server_that_fails_to_import_stops_the_daemon(
    daemon_factory: DaemonFactory,
) -> None:
    """`--server no_such_module_xyz`: the daemon exits non-zero, naming the import error."""
    daemon = daemon_factory(workers=2, args=["--server", "no_such_module_xyz"], wait_ready=False)
    wait_for(lambda: daemon.proc.poll() is not None, 20, "the daemon to give up")
    assert daemon.proc.returncode != 0
    stderr = daemon.stderr()
    assert "No module named 'no_such_module_xyz'" in stderr, stderr
    assert "ModuleNotFoundError" in stderr
    # It gave up after a few early deaths per slot instead of restarting forever.
    starts = stderr.count(" started pid=")
    assert 1 <= starts <= 2 * 3, stderr


async def test_max_calls_per_worker_recycles_without_failing_a_call(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """40 sequential calls with `--max-calls-per-worker 5`: all succeed, the pids turn over."""
    daemon = daemon_factory(workers=2, args=[*COUNTING_ARGS, "--max-calls-per-worker", "5"])
    pids: list[int] = []
    async with shim_drivers(tmp_path) as start:
        shim = await start(daemon.shim_env())
        await shim.initialize()
        for _ in range(40):
            # Each call takes 0.1 s, so a drained worker's successor is up while calls go on.
            pids.append(int(rpc_text(await shim.call_and_wait("pid", {"seconds": 0.1}))))
    assert len(set(pids)) >= 3, f"no recycling seen: {pids}"
    # Recycling is a planned exit: no call saw an error, no worker is marked lost.
    health = await health_until(daemon, lambda h: len(_ready(h)) == 2, "two ready workers")
    assert not health["errors_by_code"], health["errors_by_code"]
    assert sum(w["restarts"] for w in health["workers"]) >= 2
    await async_wait_for(
        lambda: sum(1 for m in daemon.metrics_lines() if m["tool"] == "pid") == 40,
        15,
        "40 metrics lines for the pid calls",
    )
    assert all(m["outcome"] == "ok" for m in daemon.metrics_lines())


async def test_frozen_worker_is_recycled_when_it_misses_heartbeats(
    daemon_factory: DaemonFactory,
) -> None:
    """SIGSTOP a busy worker: it misses heartbeats, is replaced, and its call is WORKER_LOST."""
    daemon = daemon_factory(
        workers=2,
        env={
            "EXAI_WORKER_HEARTBEAT_INTERVAL": "0.2",
            "EXAI_WORKER_HEARTBEAT_TIMEOUT": "1",
            "EXAI_HEALTH_INTERVAL": "0.05",
        },
    )
    async with mcp_ws_clients(daemon, 1) as (client,):
        _, waiter = await client.start_call("sleep", {"seconds": 60})
        busy = await health_until(
            daemon, lambda h: any(w["inflight"] == 1 for w in h["workers"]), "a busy worker"
        )
        victim = next(w for w in busy["workers"] if w["inflight"] == 1)
        os.kill(victim["pid"], signal.SIGSTOP)
        try:
            answer = await asyncio.wait_for(waiter, scaled(20))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim["pid"], signal.SIGCONT)
        error = rpc_error(answer)
        assert error["code"] == WORKER_LOST, answer
        assert error.get("data", {}).get("code") == "WORKER_LOST"
        assert rpc_text(await client.call("echo", {"text": "after"})) == "after"
    healed = await health_until(
        daemon,
        lambda h: len(_ready(h)) == 2 and h["workers"][victim["slot"]]["pid"] != victim["pid"],
        "the frozen worker to be replaced",
    )
    assert healed["workers"][victim["slot"]]["restarts"] == 1
    assert "no heartbeat" in daemon.stderr()
