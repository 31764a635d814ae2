"""How a real `python -m shim` ends: stopped by its client's signals it closes its
session, so that the daemon cancels its calls at once; with no daemon to talk to it
says so within a moment instead of waiting out its RPC timeout."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import (
    DaemonFactory,
    DaemonProcess,
    async_wait_for,
    base_env,
    free_port,
    scaled,
)
from tests.support.health import Health, health_until
from tests.support.jsonrpc import initialize_params, rpc_error
from tests.support.shim_driver import ShimDriver, shim_drivers

UNAVAILABLE = -32054
# A call that would hold its capacity well past every deadline below unless cancelled.
SLEEP_S = 60
# What the exit may take beyond the 1 s clients allow, for the process to be reaped.
EXIT_SLACK_S = 0.5

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _running_one_call(health: Health) -> bool:
    return bool(health["sessions"] == 1 and health["inflight"]["global"] == 1)


def _all_ended(health: Health) -> bool:
    return bool(
        health["sessions"] == 0
        and health["sessions_detached"] == 0
        and health["inflight"]["global"] == 0
    )


def _cancelled_sleeps(daemon: DaemonProcess) -> list[dict[str, object]]:
    return [
        line
        for line in daemon.metrics_lines()
        if line["tool"] == "sleep" and line["outcome"] == "CANCELLED"
    ]


async def _stop_mid_call(
    daemon: DaemonProcess, tmp_path: Path, signals: list[signal.Signals], apart_s: float = 0.0
) -> None:
    """Start a slow call through a shim, send it `signals` `apart_s` apart (none once it
    is gone, as a client would), and check that it exits 0 within a second and that the
    daemon ended its session and its call."""
    async with shim_drivers(tmp_path) as start:
        shim: ShimDriver = await start(daemon.shim_env(EXAI_SHIM_LOG_LEVEL="INFO"))
        await shim.initialize()
        await shim.call("sleep", {"seconds": SLEEP_S})
        await health_until(daemon, _running_one_call, "the call to run")
        started = time.monotonic()
        for index, sig in enumerate(signals):
            if index and apart_s:
                await asyncio.sleep(apart_s)
            if shim.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    shim.proc.send_signal(sig)
        code = await shim.wait_exit(10)
        exited_s = time.monotonic() - started
        assert code == 0, shim.stderr()
        assert exited_s < scaled(1.0) + EXIT_SLACK_S, exited_s
        # Cancelled, not run out: its capacity is back long before the sleep would end.
        await health_until(daemon, _all_ended, "the session and its call to end", timeout_s=5)
        assert time.monotonic() - started < SLEEP_S / 2
        await async_wait_for(lambda: _cancelled_sleeps(daemon), 5, "the call's metrics line")
        log = daemon.stderr()
        assert re.search(r"session \w+ closed", log), log
        assert "kept" not in log, log  # not "disconnected; kept 60 s for a reconnect"
        # One close, whichever signal the shim handled first.
        assert shim.stderr().count("closing the session") == 1, shim.stderr()


@posix_only
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=str)
async def test_a_signal_closes_the_session_and_exits_0(
    daemon_factory: DaemonFactory, tmp_path: Path, sig: signal.Signals
) -> None:
    daemon = daemon_factory(workers=1, env={"EXAI_LOG_LEVEL": "INFO"})
    await _stop_mid_call(daemon, tmp_path, [sig])


@posix_only
@pytest.mark.parametrize("apart_s", [0.1, 0.0], ids=["100ms-apart", "back-to-back"])
async def test_sigint_then_sigterm_still_closes_the_session_and_exits_0(
    daemon_factory: DaemonFactory, tmp_path: Path, apart_s: float
) -> None:
    """What Claude Code sends: SIGINT, then SIGTERM 100 ms later; sent back to back, the
    second one surely arrives while the first one's close runs."""
    daemon = daemon_factory(workers=1, env={"EXAI_LOG_LEVEL": "INFO"})
    await _stop_mid_call(daemon, tmp_path, [signal.SIGINT, signal.SIGTERM], apart_s)


@posix_only
async def test_a_killed_shim_leaves_its_session_for_a_resume(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """SIGKILL gives the shim no say: the daemon keeps the session and its call."""
    daemon = daemon_factory(workers=1, env={"EXAI_LOG_LEVEL": "INFO"})
    async with shim_drivers(tmp_path) as start:
        shim = await start(daemon.shim_env())
        await shim.initialize()
        await shim.call("sleep", {"seconds": SLEEP_S})
        await health_until(daemon, _running_one_call, "the call to run")
        shim.proc.kill()
        await shim.wait_exit(10)
        await health_until(
            daemon,
            lambda h: h["sessions_detached"] == 1 and h["inflight"]["global"] == 1,
            "the session to wait for a resume",
        )


async def test_no_daemon_is_told_at_once_with_its_address_and_how_to_start_it(
    tmp_path: Path,
) -> None:
    """Nothing listens (and no autostart): initialize fails in well under the default
    30 s RPC timeout, and stderr says the same once, however many requests fail."""
    port = free_port()  # bound and released: nothing listens there
    env = base_env(EXAI_WS_HOST="127.0.0.1", EXAI_WS_PORT=str(port))
    async with shim_drivers(tmp_path) as start:
        shim = await start(env)
        for attempt in range(2):
            started = time.monotonic()
            params = initialize_params(client="no-daemon")
            answer = await shim.request_and_wait("initialize", params, rid=f"init-{attempt}")
            assert time.monotonic() - started < scaled(2.0)
            error = rpc_error(answer)
            assert error["code"] == UNAVAILABLE, error
            assert error["data"] == {"code": "UNAVAILABLE"}
            assert f"ws://127.0.0.1:{port}" in error["message"]
            assert "python -m broker" in error["message"]
            await asyncio.sleep(0.5)  # into the backoff between two attempts
        await shim.close_stdin()
        assert await shim.wait_exit(10) == 0
        assert shim.stderr().count(error["message"]) == 1, shim.stderr()


async def test_a_daemon_started_after_a_refusal_gets_the_next_request(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """The fast failure is no verdict: once a daemon listens, the next request reaches it."""
    port = free_port()
    env = base_env(EXAI_WS_HOST="127.0.0.1", EXAI_WS_PORT=str(port))
    async with shim_drivers(tmp_path) as start:
        shim = await start(env)
        params = initialize_params(client="late-daemon")
        refused = await shim.request_and_wait("initialize", params, rid="early")
        assert rpc_error(refused)["code"] == UNAVAILABLE
        daemon_factory(workers=1, port=port)
        await shim.initialize()
        assert "result" in await shim.call_and_wait("echo", {"text": "hi"})
