"""Which worker runs a call: the one its sticky key lives on, else the least loaded.

Per-session server instances live in one worker, so with session isolation a session
sticks to the worker that first served it; so does a conversation (`continuation_id`),
whose history lives in a worker. Everything else goes to the ready worker holding
the fewest calls. Pure: no event loop.
"""

from __future__ import annotations

from collections.abc import Sequence

from broker.pool.supervisor import WorkerHandle
from exai.sticky import StickyMap

__all__ = ["Placement"]


class Placement:
    """Picks workers and remembers where sticky keys went."""

    __slots__ = ("_sticky", "per_session")

    def __init__(self, isolation: str) -> None:
        self.per_session = isolation == "session"
        self._sticky = StickyMap()

    def pick(
        self, workers: Sequence[WorkerHandle], session_id: str, continuation_id: str | None
    ) -> WorkerHandle | None:
        """The worker for a call, or None when no worker is ready."""
        key = f"session:{session_id}" if self.per_session else continuation_id
        if key is not None:
            slot = self._sticky.get(key)
            if slot is not None and workers[slot].live:
                return workers[slot]
        best: WorkerHandle | None = None
        for worker in workers:
            if worker.live and (best is None or len(worker.calls) < len(best.calls)):
                best = worker
        if best is not None and key is not None:
            self._sticky.place(key, best.slot)
        return best

    def forget_session(self, session_id: str) -> None:
        """The session ended: its worker holds nothing of it any more."""
        self._sticky.forget(f"session:{session_id}")

    def forget_worker(self, slot: int) -> None:
        """The worker in `slot` died: what stuck to it is gone with it."""
        self._sticky.forget_slot(slot)
