"""One worker slot, and the state machine of its process's life.

A slot is in exactly one state, and only `move` changes it:

    STARTING  Its process is being started, or runs and has not sent Ready yet.
    READY     It sent Ready and takes calls (`live`).
    DRAINING  It served its share of calls (--max-calls-per-worker): it takes no new
              ones, and is asked to stop when the ones it holds are done.
    STOPPING  Asked to exit (the pool is stopping, it drained, or it is recycled);
              it takes no calls.
    DEAD      Its process exited and its calls were reported lost. A replacement is
              started after a backoff, unless the pool halted or is stopping.

The legal moves:

    STARTING -> READY     it sent Ready
    STARTING -> STOPPING  the pool began stopping before it was ready
    STARTING -> DEAD      it exited before Ready (the supervisor counts these)
    READY    -> DRAINING  it served its share, and another worker is ready
    READY    -> STOPPING  the pool is stopping, or it is recycled: missed heartbeats,
                          a cancellation ignored past its grace
    READY    -> DEAD      it crashed or was killed
    DRAINING -> STOPPING  its last call ended, or the pool is stopping
    DRAINING -> DEAD      it crashed while draining
    STOPPING -> DEAD      it exited, as asked or killed
    DEAD     -> STARTING  its replacement is being started

Only DEAD leads back to STARTING, so a slot never has two processes; while the pool
runs, every process's end passes through DEAD, where its calls are reported lost.
A slot is created STARTING: its first process is started at once.

The states are strings (a StrEnum) because the health snapshot and the metrics show
them as they are.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import TYPE_CHECKING, Any

from exai.coalesce import WriteCoalescer
from exai.framing import FrameEncoder
from exai.ipc import Ready
from exai.states import IllegalMove, Transitions

if TYPE_CHECKING:
    import asyncio

    from broker.pool.spawn import WorkerProcess

__all__ = ["IllegalMove", "WorkerHandle", "WorkerState", "move"]


class WorkerState(enum.StrEnum):
    """Where a worker slot is in its process's life (see the module docstring)."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"
    DEAD = "dead"


_S = WorkerState
MOVES: Transitions[WorkerState] = Transitions(
    {
        _S.STARTING: (_S.READY, _S.STOPPING, _S.DEAD),
        _S.READY: (_S.DRAINING, _S.STOPPING, _S.DEAD),
        _S.DRAINING: (_S.STOPPING, _S.DEAD),
        _S.STOPPING: (_S.DEAD,),
        _S.DEAD: (_S.STARTING,),
    }
)


@dataclasses.dataclass(slots=True, eq=False)
class WorkerHandle:
    """One worker slot. `calls` are the call ids the worker holds (its load)."""

    slot: int
    pid: int | None = None
    state: WorkerState = WorkerState.STARTING
    restarts: int = 0
    early_deaths: int = 0
    ready_at: float = 0.0
    calls: set[int] = dataclasses.field(default_factory=set)
    # Cancelled call id -> when the Cancel was sent.
    cancelled: dict[int, float] = dataclasses.field(default_factory=dict)
    ready: Ready | None = None
    served: int = 0
    last_stderr: str = ""
    recycle_after: int = 0
    planned_exit: bool = False
    backoff_s: float = 0.0
    last_heartbeat: float = 0.0
    # The current process, or the last one once it has exited.
    process: WorkerProcess | None = None
    _encoder: FrameEncoder = dataclasses.field(default_factory=FrameEncoder)
    _writes: WriteCoalescer | None = None

    @property
    def live(self) -> bool:
        """Whether calls may be sent to it."""
        return self.state is WorkerState.READY

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start a fresh output queue for a new process of this slot."""
        self._writes = WriteCoalescer(loop, self._write)

    def send(self, message: Any) -> None:
        """Queue a message; everything queued in one loop iteration leaves in one write."""
        writes = self._writes
        if writes is not None:
            self._encoder.encode_into(message, writes.buffer)
            writes.schedule()

    def _write(self, data: bytes) -> None:
        if self.process is not None:
            self.process.write(data)

    def kill(self) -> None:
        """Kill its process now, if it still runs."""
        if self.process is not None:
            self.process.kill()


def move(handle: WorkerHandle, to_state: WorkerState) -> WorkerState:
    """Put `handle` in `to_state` and return the state it left.

    Raises IllegalMove, leaving the handle as it was, when the table does not allow it.
    """
    from_state = handle.state
    if to_state not in MOVES.table[from_state]:
        raise MOVES.refuse(f"worker {handle.slot}", from_state, to_state)
    handle.state = to_state
    return from_state
