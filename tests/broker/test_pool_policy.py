"""Unit tests for broker.pool.policy: restart or halt after an exit, when a ready worker
is recycled, when it drains. Plain function calls on worker records; no processes."""

from __future__ import annotations

import itertools
import random
import signal

import pytest

from broker.pool.policy import (
    BACKOFF_MAX_S,
    BACKOFF_START_S,
    CANCEL_GRACE_S,
    MAX_EARLY_DEATHS,
    STABLE_AFTER_S,
    Halt,
    Restart,
    describe_exit,
    judge_exit,
    recycle_after,
    recycle_reason,
    should_drain,
)
from broker.pool.worker import WorkerHandle, WorkerState
from exai.exits import ExitCode

# --- after an exit -------------------------------------------------------------------


def crash_after_ready(handle: WorkerHandle, now: float) -> Restart | Halt:
    return judge_exit(handle, -signal.SIGKILL, was_ready=True, planned=False, now=now)


def test_a_first_crash_restarts_at_once_then_backs_off_doubling_to_a_cap() -> None:
    """Crash after crash of a ready worker: 0, 0.1, 0.2, 0.4 ... seconds, never past the cap."""
    handle = WorkerHandle(0, ready_at=100.0)
    delays = []
    for _ in range(10):
        verdict = crash_after_ready(handle, now=101.0)
        assert isinstance(verdict, Restart)
        delays.append(verdict.delay_s)
    assert delays[:4] == [0.0, BACKOFF_START_S, 2 * BACKOFF_START_S, 4 * BACKOFF_START_S]
    assert all(b >= a for a, b in itertools.pairwise(delays))
    assert max(delays) == BACKOFF_MAX_S
    assert handle.early_deaths == 0, "a worker that was ready did not die early"


def test_the_backoff_is_forgotten_after_a_stable_run() -> None:
    """A worker that stayed up longer than STABLE_AFTER_S restarts at once again."""
    handle = WorkerHandle(0, ready_at=0.0)
    for _ in range(5):
        crash_after_ready(handle, now=1.0)
    assert handle.backoff_s > BACKOFF_START_S
    verdict = crash_after_ready(handle, now=STABLE_AFTER_S + 1.0)
    assert verdict == Restart(0.0)
    assert handle.backoff_s == BACKOFF_START_S


def test_a_short_run_keeps_the_backoff() -> None:
    """Up for less than STABLE_AFTER_S: the next restart still waits."""
    handle = WorkerHandle(0, ready_at=0.0, backoff_s=0.8)
    assert crash_after_ready(handle, now=STABLE_AFTER_S - 1.0) == Restart(0.8)


def test_a_planned_exit_restarts_at_once() -> None:
    """A drained worker was asked to go: its successor is started without a backoff."""
    handle = WorkerHandle(0, ready_at=10.0, backoff_s=BACKOFF_MAX_S)
    verdict = judge_exit(handle, 0, was_ready=True, planned=True, now=11.0)
    assert verdict == Restart(0.0)


def test_deaths_before_ready_halt_the_pool_on_the_nth() -> None:
    """MAX_EARLY_DEATHS exits before Ready in a row: restart, restart, then halt, naming
    the slot, the count, the exit and the worker's last stderr line."""
    handle = WorkerHandle(2, last_stderr="ImportError: no module named zlib")
    verdicts = [
        judge_exit(handle, 1, was_ready=False, planned=False, now=0.0)
        for _ in range(MAX_EARLY_DEATHS)
    ]
    assert all(isinstance(v, Restart) for v in verdicts[:-1])
    halt = verdicts[-1]
    assert isinstance(halt, Halt)
    assert halt.reason == (
        f"worker 2 died {MAX_EARLY_DEATHS} times before becoming ready (code 1): "
        "ImportError: no module named zlib"
    )


def test_early_deaths_back_off_between_restarts() -> None:
    """Early deaths are restarted with the same growing backoff until the pool halts."""
    handle = WorkerHandle(0)
    first = judge_exit(handle, 1, was_ready=False, planned=False, now=0.0)
    second = judge_exit(handle, 1, was_ready=False, planned=False, now=0.0)
    assert (first, second) == (Restart(0.0), Restart(BACKOFF_START_S))


def test_the_early_death_count_is_the_callers_to_reset_on_ready() -> None:
    """The count only grows here; the supervisor zeroes it when Ready arrives."""
    handle = WorkerHandle(0)
    judge_exit(handle, 1, was_ready=False, planned=False, now=0.0)
    assert handle.early_deaths == 1
    crash_after_ready(handle, now=1.0)
    assert handle.early_deaths == 1


def test_a_load_failure_before_ready_halts_at_once_with_the_stderr_tail() -> None:
    """WORKER_LOAD_FAILED before Ready: no restart at all, the reason quotes the worker."""
    handle = WorkerHandle(1, last_stderr="cannot load tool server 'x': ModuleNotFoundError")
    verdict = judge_exit(
        handle, ExitCode.WORKER_LOAD_FAILED, was_ready=False, planned=False, now=0.0
    )
    assert verdict == Halt(
        "worker 1 could not load the tool server: cannot load tool server 'x': ModuleNotFoundError"
    )


def test_a_load_failure_with_no_output_says_so() -> None:
    handle = WorkerHandle(0)
    verdict = judge_exit(
        handle, ExitCode.WORKER_LOAD_FAILED, was_ready=False, planned=False, now=0.0
    )
    assert isinstance(verdict, Halt) and verdict.reason.endswith(": no output")


def test_the_load_failure_code_after_ready_is_an_ordinary_crash() -> None:
    """Only a worker that never got to Ready is judged by the load-failure code."""
    handle = WorkerHandle(0)
    verdict = judge_exit(handle, ExitCode.WORKER_LOAD_FAILED, was_ready=True, planned=False, now=0)
    assert verdict == Restart(0.0)


@pytest.mark.parametrize(
    ("returncode", "text"),
    [
        (None, "unknown status"),
        (0, "code 0"),
        (5, "code 5"),
        (-signal.SIGKILL, "signal SIGKILL"),
        (-signal.SIGTERM, "signal SIGTERM"),
        (-200, "signal 200"),
    ],
)
def test_exits_are_described_as_codes_or_signals(returncode: int | None, text: str) -> None:
    assert describe_exit(returncode) == text


# --- health --------------------------------------------------------------------------


def test_a_worker_within_its_heartbeat_timeout_is_well() -> None:
    handle = WorkerHandle(0, last_heartbeat=100.0)
    assert recycle_reason(handle, now=129.0, heartbeat_timeout_s=30.0) is None


def test_missed_heartbeats_recycle() -> None:
    """Silent past the timeout: recycled, saying for how long."""
    handle = WorkerHandle(0, last_heartbeat=100.0)
    assert recycle_reason(handle, now=131.0, heartbeat_timeout_s=30.0) == "no heartbeat for 31 s"


def test_a_cancellation_ignored_past_its_grace_recycles() -> None:
    """A call cancelled longer ago than CANCEL_GRACE_S and still held: recycled."""
    handle = WorkerHandle(0, last_heartbeat=100.0)
    handle.cancelled = {7: 80.0, 8: 100.0 - CANCEL_GRACE_S - 1.0, 9: 99.0}
    reason = recycle_reason(handle, now=100.0, heartbeat_timeout_s=30.0)
    assert reason == "ignored cancellation of 2 call(s)"


def test_a_cancellation_within_its_grace_is_waited_for() -> None:
    handle = WorkerHandle(0, last_heartbeat=100.0)
    handle.cancelled = {7: 100.0 - CANCEL_GRACE_S}
    assert recycle_reason(handle, now=100.0, heartbeat_timeout_s=30.0) is None


# --- recycling after N calls ---------------------------------------------------------


def test_no_max_calls_means_never_recycled() -> None:
    assert recycle_after(0) == 0
    handle = WorkerHandle(0, state=WorkerState.READY, served=10_000, recycle_after=0)
    assert not should_drain(handle, [handle, WorkerHandle(1, state=WorkerState.READY)])


def test_recycle_after_is_jittered_up_to_a_tenth_more() -> None:
    """Workers started together are not all recycled together."""
    rng = random.Random(7)
    shares = {recycle_after(100, rng) for _ in range(500)}
    assert min(shares) >= 100 and max(shares) <= 110 and len(shares) > 1
    assert recycle_after(5, rng) == 5, "a tenth of 5 calls rounds to no jitter"


def ready_pool(size: int, served: int = 0, share: int = 5) -> list[WorkerHandle]:
    return [
        WorkerHandle(i, state=WorkerState.READY, served=served, recycle_after=share)
        for i in range(size)
    ]


def test_a_worker_drains_once_it_has_served_its_share() -> None:
    pool = ready_pool(2)
    pool[0].served = 4
    assert not should_drain(pool[0], pool)
    pool[0].served = 5
    assert should_drain(pool[0], pool)


def test_the_last_ready_worker_of_a_pool_does_not_drain() -> None:
    """With every other worker restarting, draining this one would stall every call."""
    pool = ready_pool(3, served=5)
    pool[1].state = WorkerState.STARTING
    pool[2].state = WorkerState.DRAINING
    assert not should_drain(pool[0], pool)


def test_a_pool_of_one_drains_its_only_worker() -> None:
    """No other worker will ever be ready: the only one drains and is replaced."""
    pool = ready_pool(1, served=5)
    assert should_drain(pool[0], pool)
