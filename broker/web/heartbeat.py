"""Keep-alive for one client WebSocket: ping a quiet peer, drop one that stays silent.

After EXAI_WS_PING_INTERVAL with nothing received the daemon sends a ping; when
nothing at all arrives within EXAI_WS_PING_TIMEOUT after it, the peer is given up
(`on_timeout`). Any frame is a sign of life, a pong or not, so a busy client is
never pinged.

aiohttp's own heartbeat cannot do this: it waits half the ping interval for the
pong and has no public setting for that wait. The adapter therefore turns it off,
receives pings and pongs itself (autoping=False), and tells this class of every
frame with `heard`, which is cheap enough for the hot path: one clock read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["Heartbeat"]

log = logging.getLogger(__name__)


class Heartbeat:
    """Runs on one loop timer from construction until `stop`."""

    __slots__ = (
        "_heard_at",
        "_interval_s",
        "_loop",
        "_on_timeout",
        "_ping",
        "_ping_task",
        "_pinged_at",
        "_timeout_s",
        "_timer",
        "expired",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        interval_s: float,
        timeout_s: float,
        ping: Callable[[], Coroutine[Any, Any, None]],
        on_timeout: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._ping = ping
        self._on_timeout = on_timeout
        self._ping_task: asyncio.Task[None] | None = None
        # Set while a ping is out and nothing has been heard since it was sent.
        self._pinged_at: float | None = None
        self._heard_at = loop.time()
        self._timer: asyncio.TimerHandle | None = loop.call_at(
            self._heard_at + interval_s, self._tick
        )
        # True once the peer was given up for silence.
        self.expired = False

    def heard(self) -> None:
        """Call for every frame received: the peer is alive."""
        self._heard_at = self._loop.time()
        if self._pinged_at is not None:
            # The answer came: the next ping is due one interval from now, not when the
            # pong's deadline would have been.
            self._pinged_at = None
            self._arm(self._heard_at + self._interval_s)

    def stop(self) -> None:
        """No more pings or deadlines (the connection is closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ping_task is not None:
            self._ping_task.cancel()
            self._ping_task = None

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = self._loop.time()
        if self._pinged_at is not None:
            # Nothing since the ping, for the whole timeout.
            self._pinged_at = None
            self.expired = True
            self._on_timeout()
            return
        due = self._heard_at + self._interval_s
        if now < due:
            # Frames came since the timer was set: the quiet interval starts later.
            self._timer = self._loop.call_at(due, self._tick)
            return
        self._pinged_at = now
        self._send_ping()
        self._timer = self._loop.call_at(now + self._timeout_s, self._tick)

    def _send_ping(self) -> None:
        if self._ping_task is not None and not self._ping_task.done():
            return  # the last one is still waiting for room in the socket
        self._ping_task = self._loop.create_task(self._ping())
        self._ping_task.add_done_callback(_ping_done)


def _ping_done(task: asyncio.Task[None]) -> None:
    # A ping that cannot be written means the socket is going; the reader sees that.
    if not task.cancelled() and task.exception() is not None:
        log.debug("ping not sent: %s", task.exception())
