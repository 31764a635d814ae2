"""EXAI_SHIM_AUTOSTART=1: editors that open at the same time with no daemon running.

Three real shims start together on a free port where nothing listens; each one may
start a daemon, the port decides which one survives, and every shim is answered by
that one. The daemon started this way belongs to no test fixture, so the test finds it
(by an environment tag and the health file) and stops it and its workers itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import uuid
from pathlib import Path

import pytest

from tests.conftest import async_wait_for, base_env, free_port
from tests.e2e.ops_support import STEP_S, ShimDriver, broker_daemon_pids
from tests.support.jsonrpc import INITIALIZED, initialize_params
from tests.support.processes import kill_and_reap, process_gone, tagged_pids

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the daemon through /proc"),
]

SHIMS = 3
ANSWER_S = STEP_S + 30.0  # the first answers wait for a daemon to be started


async def stop_everything_tagged(tag: str) -> None:
    """SIGTERM every process carrying `tag`, then SIGKILL what is left after a while."""
    for pid in tagged_pids(tag):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(AssertionError):
        await async_wait_for(lambda: not tagged_pids(tag), 15.0, "tagged processes to exit")
    kill_and_reap(tagged_pids(tag))
    await async_wait_for(lambda: not tagged_pids(tag), 10.0, "killed processes to go")


async def test_three_shims_at_once_autostart_exactly_one_daemon(tmp_path: Path) -> None:
    """Three shims started together with no daemon all get their initialize and echo
    answered; exactly one daemon stays (the health file names it), every other daemon a
    shim started logged that the port was in use and exited; SIGTERM to the survivor
    stops it and its workers."""
    port = free_port()
    log_dir = tmp_path / "logs"
    work = tmp_path / "editor-cwd"
    work.mkdir()
    tag_value = uuid.uuid4().hex
    tag = f"EXAI_TEST_AUTOSTART={tag_value}"
    env = base_env(
        EXAI_SHIM_AUTOSTART="1",
        EXAI_WS_PORT=str(port),
        EXAI_LOG_DIR=str(log_dir),
        EXAI_DIAGNOSTIC_TOOLS="1",
        EXAI_WORKERS="1",
        EXAI_HEALTH_INTERVAL="0.2",
        EXAI_SHUTDOWN_GRACE="2",
        EXAI_TEST_AUTOSTART=tag_value,
    )
    shims: list[ShimDriver] = []
    try:
        shims = list(
            await asyncio.gather(
                *(
                    ShimDriver.start(
                        env, tmp_path / f"shim-{n}.stderr", cwd=work, stop_grace_s=10.0
                    )
                    for n in range(SHIMS)
                )
            )
        )

        async def use(shim: ShimDriver, n: int) -> str:
            params = initialize_params(client=f"editor-{n}")
            init = await shim.request_and_wait("initialize", params, "init", ANSWER_S)
            assert init["result"]["serverInfo"]["name"] == "exai-broker", init
            await shim.send(INITIALIZED)
            echo = {"name": "echo", "arguments": {"text": f"editor {n}"}}
            echoed = await shim.request_and_wait("tools/call", echo, "echo", ANSWER_S)
            assert "result" in echoed, echoed
            return str(echoed["result"]["content"][0]["text"])

        answers = await asyncio.gather(*(use(shim, n) for n, shim in enumerate(shims)))
        assert answers == [f"editor {n}" for n in range(SHIMS)]

        # The losers exit at once; exactly one daemon is left, the one in the health file.
        survivors = await async_wait_for(
            lambda: (pids := broker_daemon_pids(tag)) and len(pids) == 1 and pids,
            STEP_S,
            f"a single daemon to remain (now {broker_daemon_pids(tag)})",
        )
        health_path = log_dir / "ws_daemon.health.json"
        await async_wait_for(
            lambda: health_path.exists() and '"sessions": 3' in health_path.read_text(),
            STEP_S,
            "the daemon to show all three shim sessions",
        )
        health = json.loads(health_path.read_text())
        daemon_pid = int(health["pid"])
        assert survivors == [daemon_pid]
        assert health["port"] == port and health["ready"] is True
        worker_pids = [w["pid"] for w in health["workers"]]
        assert len(worker_pids) == 1

        started = sum("no daemon was running; started one" in s.stderr() for s in shims)
        assert 1 <= started <= SHIMS, [s.stderr() for s in shims]
        autostart_log = (log_dir / "daemon-autostart.log").read_text(errors="replace")
        refused = [
            line
            for line in autostart_log.splitlines()
            if f"cannot listen on ws://127.0.0.1:{port}" in line
            and "Address already in use" in line
        ]
        assert len(refused) == started - 1, autostart_log
        assert autostart_log.count("broker: ready in ") == 1, autostart_log

        for shim in shims:
            await shim.aclose()
        os.kill(daemon_pid, signal.SIGTERM)
        await async_wait_for(
            lambda: process_gone(daemon_pid) and all(process_gone(p) for p in worker_pids),
            STEP_S,
            "the autostarted daemon and its worker to exit",
        )
        assert not tagged_pids(tag)
    finally:
        for shim in shims:
            await shim.aclose()
        await stop_everything_tagged(tag)
