"""Autostart (shim.autostart) that cannot write the daemon's log: the failure is said
once, and the shim's connection loop lives on and names it."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from exai.settings import ShimSettings
from shim.autostart import Autostarter
from shim.connection import ConnectionLoop
from tests.conftest import async_wait_for, free_port
from tests.shim.test_connection import Peer

pytestmark = pytest.mark.timeout(30)


def unwritable_log_dir(tmp_path: Path) -> Path:
    # Under a regular file: no directory can be made there, even by root.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    return blocker / "logs"


def test_an_unwritable_log_dir_is_reported_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log_dir = unwritable_log_dir(tmp_path)
    starter = Autostarter(str(log_dir))
    with caplog.at_level(logging.ERROR, logger="shim"):
        assert starter.maybe_start() is False
        assert starter.maybe_start() is False
    assert starter.failure is not None and str(log_dir) in starter.failure
    assert starter.started == 0
    # Said once, not at every reconnect attempt.
    assert len([r for r in caplog.records if "could not start" in r.getMessage()]) == 1


async def test_the_connection_loop_keeps_trying_when_autostart_fails(tmp_path: Path) -> None:
    log_dir = unwritable_log_dir(tmp_path)
    settings = ShimSettings(
        port=free_port(), rpc_timeout_s=5.0, autostart=True, log_dir=str(log_dir)
    )
    attempts: list[str] = []
    peer = Peer()
    loop = ConnectionLoop(settings, "s-1", peer)
    original = loop._handle_failed_open

    async def counted(exc: BaseException, attempt: int) -> None:
        await original(exc, attempt)
        attempts.append(loop.last_error)

    loop._handle_failed_open = counted  # type: ignore[method-assign]
    task = asyncio.get_running_loop().create_task(loop.run())
    try:
        await async_wait_for(lambda: len(attempts) >= 3 or task.done(), 20, "three attempts")
        assert not task.done(), task.exception()
        assert "autostart failed" in attempts[-1] and str(log_dir) in attempts[-1]
    finally:
        peer.done.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
