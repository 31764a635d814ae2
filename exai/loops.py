"""One way to run an entry point's main coroutine: uvloop where it exists.

Only the import is guarded: an ImportError raised while the coroutine runs is the
program's own failure and must propagate, never start the program a second time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from exai.exits import ExitCode

__all__ = ["event_loop_runner", "run", "run_program"]

T = TypeVar("T")


def event_loop_runner() -> Callable[[Coroutine[Any, Any, T]], T]:
    """`uvloop.run` where uvloop is installed (not on Windows), else `asyncio.run`."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    runner: Callable[[Coroutine[Any, Any, T]], T] = uvloop.run
    return runner


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on the best loop available."""
    return event_loop_runner()(main)


def run_program(main: Coroutine[Any, Any, int]) -> int:
    """`run` for an entry point: its exit code, or INTERRUPTED after Ctrl+C."""
    try:
        return run(main)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
