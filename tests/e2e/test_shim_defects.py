"""A real `python -m shim` against a real daemon where things go wrong: the daemon dies
and stays down, or a request is over its frame limit. Every call the shim owes is
answered once, the other calls go on, and the shim ends when its client goes."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.conftest import STEP_S, DaemonFactory, async_wait_for, scaled
from tests.support.jsonrpc import rpc_error, rpc_text
from tests.support.shim_driver import shim_drivers

RPC_TIMEOUT_S = 2.0
SMALL_LIMIT_BYTES = 65_536


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
async def test_a_running_call_is_answered_and_the_shim_exits_when_the_daemon_stays_down(
    daemon_factory: DaemonFactory, tmp_path: Path, sig: int
) -> None:
    daemon = daemon_factory(workers=1)
    async with shim_drivers(tmp_path) as start:
        shim = await start(daemon.shim_env(EXAI_SHIM_RPC_TIMEOUT=str(scaled(RPC_TIMEOUT_S))))
        await shim.initialize()
        params = {"name": "sleep", "arguments": {"seconds": 60}, "_meta": {"progressToken": 1}}
        rid = await shim.request("tools/call", params)
        # The daemon acks a call 50 ms in and reports progress from 0.6 s on, in order on
        # one connection: once progress is in, so is the ack that stopped the RPC timer.
        await async_wait_for(lambda: shim.notifications, STEP_S, "the call's first progress")
        daemon.stop(sig)
        await shim.close_stdin()
        error = rpc_error(await shim.response(rid, timeout_s=RPC_TIMEOUT_S + 20))
        assert error["data"]["code"] in ("UNAVAILABLE", "WORKER_LOST"), error
        assert await shim.wait_exit(RPC_TIMEOUT_S + 10) == 0
        assert shim.count(rid) == 1


@pytest.mark.parametrize("shim_limit_bytes", [SMALL_LIMIT_BYTES, 1_048_576], ids=["same", "larger"])
async def test_a_request_over_the_daemons_limit_gets_one_error_and_others_go_on(
    daemon_factory: DaemonFactory, tmp_path: Path, shim_limit_bytes: int
) -> None:
    daemon = daemon_factory(workers=1, env={"EXAI_WS_MAX_BYTES": str(SMALL_LIMIT_BYTES)})
    async with shim_drivers(tmp_path) as start:
        shim = await start(daemon.shim_env(EXAI_WS_MAX_BYTES=str(shim_limit_bytes)))
        await shim.initialize()
        big = await shim.call("echo", {"text": "x" * (SMALL_LIMIT_BYTES + 1000)})
        error = rpc_error(await shim.response(big))
        assert error["data"]["code"] == "INVALID_FRAME", error
        assert "EXAI_WS_MAX_BYTES" in error["message"]
        answer = await shim.call_and_wait("echo", {"text": "small"})
        assert rpc_text(answer) == "small"
        assert shim.count(big) == 1
        # One connection closed over it when the shim's own limit let it through; none
        # when the shim knew the limit. Never a reconnect loop.
        closes = daemon.stderr().count("with 1009")
        assert closes == (0 if shim_limit_bytes == SMALL_LIMIT_BYTES else 1), daemon.stderr()
