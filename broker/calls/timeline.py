"""Per-call moments with a fixed delay (a call's timeout, a deferred ack) behind one
loop timer.

Every entry gets the same delay, so insertion order is time order: only the earliest
entry ever needs a timer, and a call is armed and disarmed in O(1). That is the whole
trick, and the reason this is not a heap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Timeline"]

T = TypeVar("T")

# An entry this close is due: loop timers have millisecond resolution.
SLACK_S = 0.001


class Timeline(Generic[T]):
    """Calls `fire(item)` `delay_s` after `add(key, item)`, unless `discard(key)` came first."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, delay_s: float, fire: Callable[[T], None]
    ) -> None:
        self._loop = loop
        self._delay_s = delay_s
        self._fire = fire
        self._due: dict[int, tuple[float, T]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._running = False

    def __len__(self) -> int:
        return len(self._due)

    def add(self, key: int, item: T) -> float:
        """Schedule `item` (once: a key already waiting keeps its moment, which also
        keeps the order); returns the loop time it falls due."""
        waiting = self._due.get(key)
        if waiting is not None:
            return waiting[0]
        at = self._loop.time() + self._delay_s
        self._due[key] = (at, item)
        # Outside a run, no timer means nothing earlier is waiting: this is the head.
        if self._timer is None and not self._running:
            self._timer = self._loop.call_at(at, self._run)
        return at

    def discard(self, key: int) -> None:
        self._due.pop(key, None)

    def _run(self) -> None:
        self._timer = None
        due_by = self._loop.time() + SLACK_S
        fired: list[int] = []
        for key, (at, _) in self._due.items():
            if at > due_by:
                break
            fired.append(key)
        # `fire` may add entries (a timed-out call frees capacity for queued ones); they
        # fall due later than any fired here, and the timer is re-armed once at the end.
        self._running = True
        try:
            for key in fired:
                entry = self._due.pop(key, None)
                if entry is not None:
                    self._fire(entry[1])
        finally:
            self._running = False
            if self._due:
                head_at = next(iter(self._due.values()))[0]
                self._timer = self._loop.call_at(head_at, self._run)
