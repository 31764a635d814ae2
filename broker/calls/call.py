"""One tool call in the broker, and the state machine of its life.

A call is in exactly one state, and only `move` changes it:

    RECEIVED  Validated and numbered; it holds nothing yet. Before the frame that
              brought it is done with, it is admitted, queued or refused.
    QUEUED    Waiting for capacity in the scheduler's queue: it has a Waiter and a
              queue-wait timer, and the client has its ack.
    HELD      Admitted (it holds its lease and its call timeout runs), but no worker
              is ready, so it waits in the manager's backlog for one.
    RUNNING   Sent to a worker, which holds it until it sends a Result or is lost (or,
              forwarded, to a hosted server's instance, until it replies or exits).
    DONE      Finished: answered (or ended silently) and its capacity given back.

The legal moves:

    RECEIVED -> QUEUED    every cap it needs is full, and queueing is on
    RECEIVED -> HELD      admitted at once, no worker ready
    RECEIVED -> RUNNING   admitted at once and sent to a worker
    RECEIVED -> DONE      refused: over capacity with queueing off, or the queue full
    QUEUED   -> HELD      granted by a release, no worker ready
    QUEUED   -> RUNNING   granted by a release and sent to a worker
    QUEUED   -> DONE      its queue wait expired, or cancelled, or its session ended
    HELD     -> RUNNING   a worker (or the session's hosted instance) became ready
    HELD     -> DONE      timeout, cancel, session end, daemon shutdown
    RUNNING  -> DONE      result, tool error, timeout, cancel, worker lost, session end,
                          daemon shutdown

DONE is final, and every way out of a call ends in DONE: whatever leaves QUEUED,
HELD or RUNNING for DONE is the one place that untracks the call and gives its
capacity back, so that happens exactly once. A DONE call may still be listed by its
worker (a cancelled call stays there until the worker confirms) or sit in the
backlog until the next worker is ready; both skip it by its state.
"""

from __future__ import annotations

import asyncio
import enum

import msgspec

from broker.calls.forwarding import Forwarder, ForwardTarget
from broker.calls.rounds import Parked
from broker.calls.scheduler import Lease, Waiter
from broker.calls.session import Session
from broker.pool.supervisor import WorkerHandle
from broker.router.codec import Dialect
from exai.states import IllegalMove, Transitions

__all__ = ["MOVES", "CallState", "IllegalMove", "PendingCall", "move"]


class CallState(enum.IntEnum):
    """Where a call is in its life (see the module docstring).

    An IntEnum rather than an Enum: every call makes two or three moves, and an int's
    hash is computed in C where Enum's is a Python method.
    """

    RECEIVED = 0
    QUEUED = 1
    HELD = 2
    RUNNING = 3
    DONE = 4


_S = CallState
_DONE = CallState.DONE
MOVES: Transitions[CallState] = Transitions(
    {
        _S.RECEIVED: (_S.QUEUED, _S.HELD, _S.RUNNING, _S.DONE),
        _S.QUEUED: (_S.HELD, _S.RUNNING, _S.DONE),
        _S.HELD: (_S.RUNNING, _S.DONE),
        _S.RUNNING: (_S.DONE,),
        _S.DONE: (),
    }
)
_TABLE = MOVES.table


class PendingCall(msgspec.Struct, eq=False):
    """A call from its validation until it is DONE. Which fields mean something depends
    on `state`: `waiter` and `timer` while QUEUED, `lease` from HELD on, `worker` (or
    `target`, for a forwarded request) from RUNNING on."""

    call_id: int
    session: Session
    key: bytes
    request_id: msgspec.Raw
    dialect: Dialect
    tool: str
    arguments: bytes
    provider: str | None
    model: str | None
    progress_token: msgspec.Raw | None
    received_at: float
    continuation_id: str | None = None
    # The request declared the 2026-07-28 envelope: its result gets that revision's shape.
    modern: bool = False
    # A request forwarded to a hosted server: its JSON-RPC method and raw params
    # (`tool` is then the label metrics use). None for a call a worker runs.
    method: str | None = None
    params: bytes | None = None
    # What places a forwarded request (one server of several), and that server's name.
    forwarder: Forwarder | None = None
    server: str | None = None
    state: CallState = CallState.RECEIVED
    lease: Lease | None = None
    waiter: Waiter | None = None
    worker: WorkerHandle | None = None
    # The hosted instance a forwarded request was sent to, from RUNNING on.
    target: ForwardTarget | None = None
    # Set while a 2026-07-28 client was sent `input_required` and has not retried.
    parked: Parked | None = None
    admitted_at: float = 0.0
    # The queue-wait timer, while the call is QUEUED.
    timer: asyncio.TimerHandle | None = None

    @property
    def done(self) -> bool:
        """Finished (answered or ended): nothing more happens to this call."""
        return self.state is _DONE

    def stop_queue_timer(self) -> None:
        """Disarm the queue-wait timer: the call leaves QUEUED."""
        timer = self.timer
        if timer is not None:
            timer.cancel()
            self.timer = None


def move(call: PendingCall, to_state: CallState) -> CallState:
    """Put `call` in `to_state` and return the state it left.

    Raises IllegalMove, leaving the call as it was, when the table does not allow it.
    """
    from_state = call.state
    if to_state not in _TABLE[from_state]:
        raise MOVES.refuse(f"call {call.call_id}", from_state, to_state)
    call.state = to_state
    return from_state
