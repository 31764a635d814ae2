"""Ends the worker when the process that started it is gone, whatever the loop is doing.

Stdin EOF is noticed by the event loop, so a tool that blocks the loop, or a stranded
tool thread that a normal exit would join, keeps a worker alive after its broker was
killed. This watch runs on its own daemon thread and leaves with `os._exit`.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from exai.exits import ExitCode

__all__ = ["watch_parent"]

_POLL_S = 1.0


def watch_parent(parent_pid: int | None = None) -> threading.Thread:
    """Start the watch on the broker (`parent_pid`, by default our parent)."""
    pid = os.getppid() if parent_pid is None else parent_pid
    target = _wait_windows if sys.platform == "win32" else _poll_posix
    thread = threading.Thread(target=target, args=(pid,), name="parent-watch", daemon=True)
    thread.start()
    return thread


def _poll_posix(parent_pid: int) -> None:
    # An orphan is re-parented (to init or a subreaper), so its parent pid changes.
    while os.getppid() == parent_pid:
        time.sleep(_POLL_S)
    os._exit(ExitCode.FAILED)


def _wait_windows(parent_pid: int) -> None:
    import ctypes

    synchronize, infinite = 0x00100000, 0xFFFFFFFF
    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(synchronize, False, parent_pid)
    if handle:
        kernel32.WaitForSingleObject(handle, infinite)
    os._exit(ExitCode.FAILED)
