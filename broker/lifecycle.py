"""An owned start-up and shutdown: parts start in one declared order, stop in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from types import TracebackType

__all__ = ["Lifecycle", "Part"]

log = logging.getLogger("broker")


@dataclasses.dataclass(frozen=True, slots=True)
class Part:
    """One piece of the daemon: `run()` is an async context manager that starts the
    piece on entry and stops it on exit."""

    name: str
    run: Callable[[], contextlib.AbstractAsyncContextManager[None]]


class Lifecycle:
    """Starts parts in their declared order and stops the started ones in reverse.

    A part that fails to start undoes its own partial start; the parts started before
    it are stopped, in reverse, before its error propagates. When `stop` is set while
    parts are starting, the rest are not started (`complete` stays False) and those
    started stop as usual.
    """

    def __init__(self, parts: Sequence[Part], stop: asyncio.Event | None = None) -> None:
        self.parts = tuple(parts)
        self.started: list[str] = []
        self._stop = stop
        self._stack = contextlib.AsyncExitStack()

    @property
    def complete(self) -> bool:
        return len(self.started) == len(self.parts)

    async def __aenter__(self) -> Lifecycle:
        async with contextlib.AsyncExitStack() as stack:
            for part in self.parts:
                if self._stop is not None and self._stop.is_set():
                    log.info("stop requested while starting: %s not started", part.name)
                    break
                log.debug("starting %s", part.name)
                await stack.enter_async_context(part.run())
                self.started.append(part.name)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._stack.__aexit__(exc_type, exc, tb)
