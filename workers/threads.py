"""The threads synchronous tools run on, and what happens when abandoned calls hold them.

A cancelled or timed-out call cannot stop a thread that is running Python code: the
call is answered CANCELLED and the thread runs on, stranded. Once stranded threads
hold every thread of the pool, each later call would queue forever. The pool is then
replaced by a fresh one, so later calls keep working, and the worker is told (once)
that it should be recycled, since only the end of the process frees those threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["ToolThreads"]

T = TypeVar("T")


class ToolThreads:
    """A bounded, replaceable thread pool for synchronous tools."""

    def __init__(self, max_threads: int | None = None) -> None:
        # The size asyncio.to_thread's default pool has.
        self.max_threads = max_threads or min(32, (os.cpu_count() or 1) + 4)
        self._executor = ThreadPoolExecutor(self.max_threads, thread_name_prefix="tool")
        self._stranded: set[Future[Any]] = set()
        # Called once, on the loop, when stranded threads first fill a pool.
        self.on_exhausted: Callable[[str], None] | None = None
        self._told = False

    @property
    def stranded(self) -> int:
        """How many threads still run calls that were given up on."""
        return len(self._stranded)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on a pool thread (with the caller's context vars)."""
        future = self._executor.submit(contextvars.copy_context().run, fn, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if not future.cancel() and not future.done():
                self._strand(future)
            raise

    def _strand(self, future: Future[Any]) -> None:
        self._stranded.add(future)
        # Runs on the pool thread when the call ends at last; set.discard is atomic.
        future.add_done_callback(self._stranded.discard)
        if len(self._stranded) < self.max_threads:
            return
        # Threads of the old pool finish (or not) on their own; new calls go elsewhere.
        self._executor.shutdown(wait=False)
        self._executor = ThreadPoolExecutor(self.max_threads, thread_name_prefix="tool")
        if not self._told and self.on_exhausted is not None:
            self._told = True
            self.on_exhausted(
                f"{len(self._stranded)} threads are held by calls that were cancelled or timed out"
            )

    def close(self) -> None:
        """Stop taking calls; queued ones are dropped, running ones are not waited for."""
        self._executor.shutdown(wait=False, cancel_futures=True)
