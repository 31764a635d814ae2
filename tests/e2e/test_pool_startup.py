"""The worker pool's start-up, end to end: a tool server that cannot load stops the
daemon at once with POOL_FAILED and the reason, instead of restarting its workers."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from exai.exits import ExitCode
from tests.conftest import DaemonProcess, wait_for

MODULE = "no_such_module_xyz"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_server_that_cannot_load_stops_the_daemon_without_a_restart(
    daemon_factory: Callable[..., DaemonProcess], workers: int
) -> None:
    """`--server no_such_module_xyz`: each worker exits WORKER_LOAD_FAILED before Ready,
    and the daemon gives up on the first one, naming the module and the failure."""
    daemon = daemon_factory(workers=workers, args=["--server", MODULE], wait_ready=False)
    wait_for(lambda: daemon.proc.poll() is not None, 30, "the daemon to give up")
    stderr = daemon.stderr()
    assert daemon.proc.returncode == ExitCode.POOL_FAILED, stderr
    # The worker's own words, relayed, then the daemon's one-line reason.
    assert f"cannot load tool server '{MODULE}'" in stderr, stderr
    assert f"ModuleNotFoundError: No module named '{MODULE}'" in stderr, stderr
    assert "worker pool failed to start: worker " in stderr, stderr
    assert "could not load the tool server" in stderr, stderr
    assert re.search(r"worker \d pid=\d+ exited with code 5\b", stderr), stderr
    # Stopped at the first load failure: no slot was started twice, none backed off.
    starts = [len(re.findall(rf"worker {slot} started pid=\d+", stderr)) for slot in range(workers)]
    assert sum(starts) >= 1 and max(starts) == 1, stderr
    if workers == 1:
        assert starts == [1]
