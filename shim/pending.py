"""The requests a shim still owes its client, each with its RPC timer.

A request stays here until its answer reaches the client: that is what lets the shim
re-send it after a reconnect, and answer it itself when no daemon does. Its timer
runs until the daemon acks it or answers; when it fires, the bridge decides what the
silence means.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, ValuesView

from shim.client_lines import ClientRequest

__all__ = ["NOT_SENT", "Pending", "PendingTable"]

# `Pending.sent_generation` of a request not sent on any connection yet.
NOT_SENT = -1


@dataclasses.dataclass(slots=True, eq=False)
class Pending:
    """A client request the shim still owes an answer for, and how far it got."""

    request: ClientRequest
    # The connection it was last sent on (they are numbered from 1), or NOT_SENT.
    sent_generation: int = NOT_SENT
    acked: bool = False
    retried: bool = False
    timer: asyncio.TimerHandle | None = None

    @property
    def sent(self) -> bool:
        return self.sent_generation != NOT_SENT


class PendingTable:
    """Pending requests by id key; a request's timer lives exactly as long as its entry
    (or until `stop_timer`)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout_s: float,
        on_timeout: Callable[[Pending], None],
    ) -> None:
        self._loop = loop
        self._timeout_s = timeout_s
        self._on_timeout = on_timeout
        self._by_key: dict[str, Pending] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._by_key

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: str) -> Pending | None:
        return self._by_key.get(key)

    def values(self) -> ValuesView[Pending]:
        """The live view: take a list of it before adding or removing while iterating."""
        return self._by_key.values()

    def add(self, pending: Pending) -> None:
        """Record `pending` and start its timer."""
        self._by_key[pending.request.key] = pending
        self.restart_timer(pending)

    def pop(self, key: str) -> Pending | None:
        """Remove the request `key` (its answer is out, or will never be) and stop its timer."""
        pending = self._by_key.pop(key, None)
        if pending is not None:
            self.stop_timer(pending)
        return pending

    def clear(self) -> None:
        """Forget every request; none will be answered."""
        for pending in self._by_key.values():
            self.stop_timer(pending)
        self._by_key.clear()

    def restart_timer(self, pending: Pending) -> None:
        """Give `pending` a full timeout from now."""
        self.stop_timer(pending)
        pending.timer = self._loop.call_later(self._timeout_s, self._fire, pending)

    def stop_timer(self, pending: Pending) -> None:
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None

    def _fire(self, pending: Pending) -> None:
        pending.timer = None
        if self._by_key.get(pending.request.key) is pending:
            self._on_timeout(pending)
