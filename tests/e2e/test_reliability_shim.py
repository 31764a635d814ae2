"""Reliability: the shim's own life — it finishes what it owes, and never outlives its client."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, DaemonFactory, DaemonProcess, async_wait_for, scaled
from tests.e2e.reliability_support import (
    ShimDriver,
    rpc_text,
    shim_drivers,
)
from tests.support.health import health_until
from tests.support.processes import kill_quietly, process_gone

# The shim is started by an intermediate parent that prints its pid and waits for it;
# the shim inherits the parent's stdin and stdout (pipes the test holds open).
PARENT = (
    "import subprocess, sys\n"
    "child = subprocess.Popen([sys.executable, '-m', 'shim'])\n"
    "sys.stderr.write(f'{child.pid}\\n'); sys.stderr.flush()\n"
    "child.wait()\n"
)


async def test_closing_stdin_mid_call_still_delivers_the_answer_then_exits_0(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """EOF on stdin while a call runs: the shim writes that answer, then exits with 0."""
    async with shim_drivers(tmp_path) as start:
        shim: ShimDriver = await start(daemon.shim_env())
        await shim.initialize()
        rid = await shim.call("sleep", {"seconds": 1})
        await health_until(daemon, lambda h: h["inflight"]["global"] == 1, "the call to run")
        await shim.close_stdin()
        assert rpc_text(await shim.response(rid)) == "slept 1"
        assert await shim.wait_exit(15) == 0
        assert shim.count(rid) == 1


async def test_shim_exits_when_its_parent_is_killed(daemon: DaemonProcess) -> None:
    """kill -9 of the client process: the shim notices (PARENT_POLL 1 s) and exits."""
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PARENT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=daemon.shim_env(),
        cwd=str(ROOT),
    )
    shim_pid = 0
    try:
        assert parent.stdin is not None and parent.stdout is not None
        assert parent.stderr is not None
        shim_pid = int(await asyncio.wait_for(parent.stderr.readline(), scaled(15)))
        # The shim is alive and serving through the inherited pipes.
        parent.stdin.write(
            json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode() + b"\n"
        )
        await parent.stdin.drain()
        answer = json.loads(await asyncio.wait_for(parent.stdout.readline(), scaled(15)))
        assert answer == {"jsonrpc": "2.0", "id": 1, "result": {}}

        t0 = time.monotonic()
        parent.kill()
        await parent.wait()
        # stdin stays open (we hold its write end): only the parent watchdog can end the shim.
        await async_wait_for(lambda: process_gone(shim_pid), 5, "the orphaned shim to exit")
        assert time.monotonic() - t0 < scaled(5)
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
        if shim_pid:
            kill_quietly(shim_pid)
        if parent.stdin is not None:
            parent.stdin.close()


async def test_closing_stdin_with_nothing_pending_exits_promptly(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """An idle shim whose client goes away (stdin EOF) exits 0 within a few seconds."""
    daemon = daemon_factory(workers=1)
    async with shim_drivers(tmp_path) as start:
        shim = await start(daemon.shim_env())
        await shim.initialize()
        t0 = time.monotonic()
        await shim.close_stdin()
        assert await shim.wait_exit(10) == 0
        assert time.monotonic() - t0 < scaled(5)
        # The daemon ends the session at once (close 1000), it does not wait for a resume.
        await health_until(
            daemon, lambda h: h["sessions"] == 0 and h["sessions_detached"] == 0, "no sessions"
        )
