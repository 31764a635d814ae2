"""The supervisor's decisions, as plain functions of a worker's record and the time.

- After an exit: restart the slot (after a backoff) or halt the pool, because a
  worker that cannot get to Ready would only fail the same way again.
- Each heartbeat round: is a ready worker well, or must it be recycled.
- After each dispatch: has a worker served its share of calls.

No processes and no event loop here, so every rule is tested by calling it.
"""

from __future__ import annotations

import dataclasses
import random
import signal
from collections.abc import Sequence

from broker.pool.worker import WorkerHandle, WorkerState
from exai.exits import ExitCode

__all__ = [
    "BACKOFF_MAX_S",
    "BACKOFF_START_S",
    "CANCEL_GRACE_S",
    "MAX_EARLY_DEATHS",
    "STABLE_AFTER_S",
    "Halt",
    "Restart",
    "describe_exit",
    "judge_exit",
    "recycle_after",
    "recycle_reason",
    "should_drain",
]

# A worker that exits before Ready this many times in a row means the configuration
# is broken (bad --server, missing dependency): restarting would only loop.
MAX_EARLY_DEATHS = 3
BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 5.0
# How long a worker must stay up before its restart backoff is forgotten.
STABLE_AFTER_S = 30.0
# How long a worker may take to stop a cancelled call before it is recycled.
CANCEL_GRACE_S = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class Restart:
    """Start the slot's next process after `delay_s`."""

    delay_s: float


@dataclasses.dataclass(frozen=True, slots=True)
class Halt:
    """Stop the pool for good; `reason` is the one line the operator sees."""

    reason: str


def judge_exit(
    handle: WorkerHandle, returncode: int | None, *, was_ready: bool, planned: bool, now: float
) -> Restart | Halt:
    """What follows the exit of `handle`'s process; keeps its early deaths and backoff.

    `was_ready`: the process had sent Ready. `planned`: the supervisor asked it to go
    (it drained), so no backoff is owed.
    """
    tail = handle.last_stderr or "no output"
    if not was_ready and returncode == ExitCode.WORKER_LOAD_FAILED:
        # The tool server cannot load: every restart would fail the same way.
        return Halt(f"worker {handle.slot} could not load the tool server: {tail}")
    if not was_ready:
        handle.early_deaths += 1
        if handle.early_deaths >= MAX_EARLY_DEATHS:
            return Halt(
                f"worker {handle.slot} died {handle.early_deaths} times before becoming "
                f"ready ({describe_exit(returncode)}): {tail}"
            )
    if planned or (was_ready and now - handle.ready_at > STABLE_AFTER_S):
        handle.backoff_s = 0.0
    delay_s = handle.backoff_s
    handle.backoff_s = min(BACKOFF_MAX_S, max(BACKOFF_START_S, 2 * delay_s))
    return Restart(delay_s)


def recycle_reason(handle: WorkerHandle, now: float, heartbeat_timeout_s: float) -> str | None:
    """Why a ready worker must be recycled at `now`, or None while it is well."""
    silent_s = now - handle.last_heartbeat
    if silent_s > heartbeat_timeout_s:
        return f"no heartbeat for {silent_s:.0f} s"
    overdue = [c for c, t in handle.cancelled.items() if now - t > CANCEL_GRACE_S]
    if overdue:
        return f"ignored cancellation of {len(overdue)} call(s)"
    return None


def recycle_after(max_calls: int, rng: random.Random | None = None) -> int:
    """How many calls a new worker serves before draining (0: never).

    Jittered up to a tenth more, so workers started together are not all recycled
    together.
    """
    if not max_calls:
        return 0
    randint = rng.randint if rng is not None else random.randint
    return max_calls + randint(0, max_calls // 10)


def should_drain(handle: WorkerHandle, workers: Sequence[WorkerHandle]) -> bool:
    """Whether a ready worker has served its share and may start draining now."""
    if not handle.recycle_after or handle.served < handle.recycle_after:
        return False
    # Never drain the last ready worker of a bigger pool: calls would have to wait for
    # its successor. A pool of one has no choice.
    others = any(w is not handle and w.state is WorkerState.READY for w in workers)
    return others or len(workers) == 1


def describe_exit(returncode: int | None) -> str:
    """`code 5`, `signal SIGKILL`: an exit status as a log line says it."""
    if returncode is None:
        return "unknown status"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"code {returncode}"
