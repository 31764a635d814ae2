"""Named exit codes: the contract between a process and whoever started it.

The supervisor reads a worker's code to decide between restarting it and stopping
the pool; shells and service managers read the daemon's and the shim's.
"""

from __future__ import annotations

import enum

__all__ = ["ExitCode"]


class ExitCode(enum.IntEnum):
    OK = 0
    # A failure with no more precise code (`broker status`: the daemon is down).
    FAILED = 1
    # Bad command line or configuration: running again will not help.
    USAGE = 2
    # The daemon could not listen on its address.
    BIND_FAILED = 3
    # The worker pool could not start or stopped for good.
    POOL_FAILED = 4
    # A worker could not load the tool server (`--server`, `--server-cmd`): every
    # restart would fail the same way, so the supervisor stops the pool at once.
    WORKER_LOAD_FAILED = 5
    # Ctrl+C, as shells report it.
    INTERRUPTED = 130
