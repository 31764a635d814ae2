"""Workers never outlive a killed daemon, even while a call hangs them."""

from __future__ import annotations

import asyncio
import contextlib
import os

from tests.conftest import DaemonFactory, mcp_client, scaled, wait_for
from tests.support.health import health_until


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_worker_with_a_blocked_loop_exits_when_the_daemon_is_killed(
    daemon_factory: DaemonFactory,
) -> None:
    """SIGKILL the daemon while a tool blocks its worker's loop: the worker goes too."""
    daemon = daemon_factory(workers=1, args=["--server", "tests.fixtures.blocking_tools"])
    async with mcp_client(daemon.shim_env()) as session:
        pid = int((await session.call_tool("pid", {})).content[0].text)
        blocked = asyncio.ensure_future(session.call_tool("block_loop", {"seconds": 600}))
        try:
            await health_until(
                daemon, lambda h: h["workers"][0]["inflight"] == 1, "the blocking call to run"
            )
            daemon.proc.kill()
            daemon.proc.wait(scaled(10))
            await asyncio.to_thread(wait_for, lambda: not _alive(pid), 15.0, "the worker to exit")
        finally:
            blocked.cancel()
            with contextlib.suppress(BaseException):
                await blocked
            if _alive(pid):
                os.kill(pid, 9)
