"""Unit tests for broker.pool.supervisor with fake worker processes: restarts and their
backoff, halting on workers that cannot get to Ready, recycling on missed heartbeats,
ignored cancellations and --max-calls-per-worker, and an orderly stop.

The supervisor is given a fake Spawner and a fake clock; a fake process records the
frames the supervisor writes to it and exits when a test says so. Nothing is spawned.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from broker.pool.policy import CANCEL_GRACE_S, MAX_EARLY_DEATHS, STABLE_AFTER_S
from broker.pool.spawn import WorkerEvents, WorkerProcess
from broker.pool.supervisor import (
    PoolFailure,
    Supervisor,
    WorkerHandle,
    WorkerState,
    worker_environment,
)
from exai.exits import ExitCode
from exai.framing import FrameDecoder, FramingError
from exai.ipc import BrokerMessage, Cancel, Heartbeat, Ready, Recycle, Result, Shutdown
from tests.conftest import async_wait_for

STEP_S = 5.0


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeProcess:
    """A WorkerProcess that records what it is sent and exits on demand."""

    def __init__(self, pid: int, events: WorkerEvents, obey_shutdown: bool) -> None:
        self.pid = pid
        self.events = events
        self.returncode: int | None = None
        self.received: list[BrokerMessage] = []
        self.killed = False
        self.reaped = False
        self._obey_shutdown = obey_shutdown
        self._decoder: FrameDecoder[BrokerMessage] = FrameDecoder(BrokerMessage)
        self._exited = asyncio.Event()

    # --- the WorkerProcess side ---

    def write(self, data: bytes) -> None:
        if self.returncode is not None:
            return
        messages = self._decoder.feed(data)
        self.received.extend(messages)
        if self._obey_shutdown and any(isinstance(m, Shutdown) for m in messages):
            asyncio.get_running_loop().call_soon(self.exit, 0)

    def kill(self) -> None:
        if self.returncode is None:
            self.killed = True
            self.exit(-9)

    async def wait(self) -> int | None:
        await self._exited.wait()
        return self.returncode

    def close(self) -> None:
        pass

    def reap(self) -> None:
        self.reaped = True

    # --- what a test makes the worker do ---

    def exit(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._exited.set()

    def ready(self) -> None:
        self.events.handle_message(Ready(self.pid, b"[]"))

    def say(self, line: str) -> None:
        self.events.handle_stderr_line(line.encode())

    def sent(self, kind: type[Any]) -> list[Any]:
        return [m for m in self.received if isinstance(m, kind)]


Script = Callable[[FakeProcess], None]


def send_ready(process: FakeProcess) -> None:
    process.ready()


class FakeSpawner:
    """Starts FakeProcesses; each runs `script` once it has been handed over."""

    program = "fake-worker"

    def __init__(self, script: Script = send_ready, obey_shutdown: bool = True) -> None:
        self.script = script
        self.obey_shutdown = obey_shutdown
        self.started: list[FakeProcess] = []
        self.error: OSError | None = None
        self._pids = itertools.count(4000)

    async def spawn(self, env: Mapping[str, str], events: WorkerEvents) -> WorkerProcess:
        if self.error is not None:
            raise self.error
        process = FakeProcess(next(self._pids), events, self.obey_shutdown)
        self.started.append(process)
        asyncio.get_running_loop().call_soon(self.script, process)
        return process


class Pool:
    """A Supervisor on fakes, with what its callbacks were told."""

    def __init__(
        self,
        size: int = 1,
        *,
        script: Script = send_ready,
        max_calls: int = 0,
        heartbeat_timeout_s: float = 30.0,
    ) -> None:
        self.clock = Clock()
        self.spawner = FakeSpawner(script)
        self.ready: list[int] = []
        self.messages: list[tuple[int, Any]] = []
        self.lost: list[tuple[int, set[int], str]] = []
        self.fatal: list[str] = []
        self.supervisor = Supervisor(
            size=size,
            env={},
            on_ready=lambda w: self.ready.append(w.slot),
            on_message=self._message,
            on_lost=lambda w, ids, why: self.lost.append((w.slot, ids, why)),
            on_fatal=self.fatal.append,
            # The heartbeat loop never fires on its own: tests run a round by hand.
            heartbeat_interval_s=3600.0,
            heartbeat_timeout_s=heartbeat_timeout_s,
            max_calls_per_worker=max_calls,
            spawner=self.spawner,
            clock=self.clock,
        )

    def _message(self, worker: WorkerHandle, message: Any) -> None:
        # As the call manager does: a result frees the call's place on its worker.
        self.messages.append((worker.slot, message))
        if isinstance(message, Result):
            worker.calls.discard(message.call_id)

    @property
    def workers(self) -> list[WorkerHandle]:
        return self.supervisor.workers

    def process(self, slot: int) -> FakeProcess:
        process = self.workers[slot].process
        assert isinstance(process, FakeProcess)
        return process

    async def until(self, predicate: Callable[[], object], what: str) -> None:
        await async_wait_for(predicate, STEP_S, what, interval_s=0.005)

    async def replaced(self, slot: int, old: FakeProcess) -> FakeProcess:
        """Wait until slot's process after `old` is ready."""
        await self.until(
            lambda: self.workers[slot].process is not old and self.workers[slot].live,
            f"worker {slot} to be replaced",
        )
        return self.process(slot)


@pytest.fixture
async def pools() -> AsyncIterator[Callable[..., Pool]]:
    """Make Pools with `pools(size, ...)`; each supervisor is stopped afterwards."""
    made: list[Pool] = []

    def make(*args: Any, **kwargs: Any) -> Pool:
        pool = Pool(*args, **kwargs)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        for process in pool.spawner.started:
            process.exit(0)
        await pool.supervisor.stop(0.0)


# --- start ---------------------------------------------------------------------------


async def test_start_returns_once_every_worker_is_ready(pools: Callable[..., Pool]) -> None:
    pool = pools(3)
    await pool.supervisor.start(timeout_s=STEP_S)
    assert [w.state for w in pool.workers] == [WorkerState.READY] * 3
    assert sorted(pool.ready) == [0, 1, 2]
    assert [w.pid for w in pool.workers] == [p.pid for p in pool.spawner.started]
    assert pool.supervisor.live_workers() == pool.workers


async def test_a_worker_that_cannot_be_started_halts_the_pool(pools: Callable[..., Pool]) -> None:
    pool = pools(1)
    pool.spawner.error = FileNotFoundError(2, "No such file or directory")
    with pytest.raises(PoolFailure, match=r"cannot start worker process fake-worker: .*No such"):
        await pool.supervisor.start(timeout_s=STEP_S)
    assert len(pool.fatal) == 1


# --- restarts ------------------------------------------------------------------------


async def test_a_crashed_worker_reports_its_calls_lost_and_is_restarted(
    pools: Callable[..., Pool], caplog: pytest.LogCaptureFixture
) -> None:
    pool = pools(2)
    await pool.supervisor.start(timeout_s=STEP_S)
    victim = pool.process(0)
    pool.workers[0].calls.update({11, 12})
    with caplog.at_level(logging.INFO, "broker.pool.supervisor"):
        victim.exit(-9)
        fresh = await pool.replaced(0, victim)
    assert pool.lost == [(0, {11, 12}, f"worker process {victim.pid} exited (signal SIGKILL)")]
    assert victim.reaped, "what the dead worker left running is cleaned up"
    assert fresh.pid != victim.pid
    assert (pool.workers[0].restarts, pool.workers[1].restarts) == (1, 0)
    assert pool.workers[0].calls == set()
    assert f"worker 0 pid={victim.pid} exited with signal SIGKILL" in caplog.text
    assert f"worker 0 started pid={fresh.pid}" in caplog.text


async def test_restart_backoff_grows_and_is_forgotten_after_a_stable_run(
    pools: Callable[..., Pool],
) -> None:
    """Quick crashes of a ready worker back off; one that ran STABLE_AFTER_S starts afresh."""
    pool = pools(1)
    await pool.supervisor.start(timeout_s=STEP_S)
    handle = pool.workers[0]
    backoffs = []
    for _ in range(3):
        process = pool.process(0)
        process.exit(1)
        await pool.replaced(0, process)
        backoffs.append(handle.backoff_s)
    assert backoffs == [0.1, 0.2, 0.4]
    pool.clock.now += STABLE_AFTER_S + 1
    process = pool.process(0)
    process.exit(1)
    await pool.replaced(0, process)
    assert handle.backoff_s == 0.1
    assert handle.restarts == 4


async def test_workers_that_die_before_ready_halt_the_pool_after_n_tries(
    pools: Callable[..., Pool],
) -> None:
    """A worker that keeps exiting before Ready is started MAX_EARLY_DEATHS times, then
    the pool stops with the exit and the last thing the worker said."""

    def die_early(process: FakeProcess) -> None:
        process.say("Traceback (most recent call last):")
        process.say("RuntimeError: boom")
        process.exit(1)

    pool = pools(1, script=die_early)
    with pytest.raises(PoolFailure) as info:
        await pool.supervisor.start(timeout_s=STEP_S)
    assert str(info.value) == (
        f"worker 0 died {MAX_EARLY_DEATHS} times before becoming ready (code 1): RuntimeError: boom"
    )
    assert pool.fatal == [str(info.value)]
    assert len(pool.spawner.started) == MAX_EARLY_DEATHS
    assert pool.workers[0].state is WorkerState.DEAD


async def test_ready_resets_the_early_death_count(pools: Callable[..., Pool]) -> None:
    """Early deaths count in a row: a worker that got to Ready starts the count again."""
    attempts = itertools.count()

    def flaky(process: FakeProcess) -> None:
        # Dies before Ready on every attempt but the second.
        if next(attempts) == 1:
            process.ready()
        else:
            process.exit(1)

    pool = pools(1, script=flaky)
    await pool.supervisor.start(timeout_s=STEP_S)
    assert pool.workers[0].early_deaths == 0
    pool.process(0).exit(1)
    await pool.until(lambda: pool.fatal, "the pool to halt")
    # One early death, one ready run that crashed, then MAX_EARLY_DEATHS in a row.
    assert len(pool.spawner.started) == 2 + MAX_EARLY_DEATHS


async def test_a_load_failure_before_ready_halts_the_pool_at_once_with_the_stderr_tail(
    pools: Callable[..., Pool],
) -> None:
    """Exit WORKER_LOAD_FAILED before Ready: no restart for any slot, the worker's words."""

    def cannot_load(process: FakeProcess) -> None:
        process.say(
            "cannot load tool server 'no_such_module_xyz': "
            "ModuleNotFoundError: No module named 'no_such_module_xyz'"
        )
        process.exit(ExitCode.WORKER_LOAD_FAILED)

    pool = pools(2, script=cannot_load)
    with pytest.raises(PoolFailure) as info:
        await pool.supervisor.start(timeout_s=STEP_S)
    message = str(info.value)
    assert message.startswith("worker 0 could not load the tool server: cannot load tool server")
    assert "ModuleNotFoundError: No module named 'no_such_module_xyz'" in message
    await pool.until(lambda: all(w.state is WorkerState.DEAD for w in pool.workers), "both dead")
    assert len(pool.spawner.started) == 2, "each slot was started once and never again"
    assert all(w.restarts == 0 for w in pool.workers)
    assert pool.fatal == [message]


# --- recycling -----------------------------------------------------------------------


async def test_a_worker_that_misses_heartbeats_is_recycled(pools: Callable[..., Pool]) -> None:
    pool = pools(2, heartbeat_timeout_s=30.0)
    await pool.supervisor.start(timeout_s=STEP_S)
    frozen, well = pool.process(0), pool.process(1)
    pool.workers[0].calls.add(7)
    pool.clock.now += 31.0
    well.events.handle_message(Heartbeat(1))  # the other worker answered in time
    pool.supervisor.check_health()
    assert frozen.killed
    assert pool.workers[0].state in (WorkerState.STOPPING, WorkerState.DEAD)
    await pool.until(lambda: well.sent(Heartbeat), "the well worker to be pinged")
    assert not well.killed
    await pool.replaced(0, frozen)
    assert pool.lost == [(0, {7}, f"worker process {frozen.pid} exited (signal SIGKILL)")]
    assert pool.workers[0].restarts == 1


async def test_heartbeats_keep_a_worker_well(pools: Callable[..., Pool]) -> None:
    """A worker that echoes each heartbeat is never recycled, however long it runs."""
    pool = pools(1, heartbeat_timeout_s=30.0)
    await pool.supervisor.start(timeout_s=STEP_S)
    process = pool.process(0)
    for seq in range(1, 6):
        pool.clock.now += 20.0
        process.events.handle_message(Heartbeat(seq))
        pool.supervisor.check_health()
    assert not process.killed
    await pool.until(lambda: len(process.sent(Heartbeat)) == 5, "five pings")


async def test_a_cancellation_ignored_past_its_grace_recycles_the_worker(
    pools: Callable[..., Pool],
) -> None:
    pool = pools(1)
    await pool.supervisor.start(timeout_s=STEP_S)
    process = pool.process(0)
    handle = pool.workers[0]
    handle.calls.add(5)
    pool.supervisor.cancel_call(handle, 5)
    pool.supervisor.cancel_call(handle, 5)  # a second cancel of the same call is not resent
    await pool.until(lambda: process.sent(Cancel), "the Cancel to be written")
    assert process.sent(Cancel) == [Cancel(5)]
    pool.clock.now += CANCEL_GRACE_S - 1
    process.events.handle_message(Heartbeat(1))
    pool.supervisor.check_health()
    assert not process.killed, "within its grace the worker may still stop the call"
    pool.clock.now += 2
    process.events.handle_message(Heartbeat(2))
    pool.supervisor.check_health()
    assert process.killed
    await pool.replaced(0, process)
    assert pool.lost[0][1] == {5}


async def test_a_cancel_for_a_call_the_worker_no_longer_holds_is_not_sent(
    pools: Callable[..., Pool],
) -> None:
    pool = pools(1)
    await pool.supervisor.start(timeout_s=STEP_S)
    pool.supervisor.cancel_call(pool.workers[0], 99)
    assert pool.workers[0].cancelled == {}


async def test_max_calls_drains_a_worker_then_replaces_it_without_losing_a_call(
    pools: Callable[..., Pool],
) -> None:
    """Past its share a worker takes no new calls, finishes its own, is asked to go, and a
    successor starts at once; its exit is planned, so nothing is reported lost."""
    pool = pools(2, max_calls=2)
    await pool.supervisor.start(timeout_s=STEP_S)
    old = pool.process(0)
    handle = pool.workers[0]
    for call_id in (1, 2):
        handle.calls.add(call_id)
        pool.supervisor.note_dispatch(handle)
    assert handle.state is WorkerState.DRAINING
    assert not handle.live and pool.supervisor.live_workers() == [pool.workers[1]]
    old.events.handle_message(Result(1, b"{}"))
    assert handle.state is WorkerState.DRAINING, "one call is still running"
    old.events.handle_message(Result(2, b"{}"))
    assert handle.state is WorkerState.STOPPING
    fresh = await pool.replaced(0, old)
    assert old.sent(Shutdown) == [Shutdown(1.0)]
    assert pool.lost == [(0, set(), f"worker process {old.pid} exited (code 0)")]
    assert handle.restarts == 1 and handle.backoff_s == 0.1 and handle.served == 0
    assert fresh.pid != old.pid


async def test_the_last_ready_worker_is_not_drained(pools: Callable[..., Pool]) -> None:
    pool = pools(2, max_calls=1)
    await pool.supervisor.start(timeout_s=STEP_S)
    pool.supervisor.note_dispatch(pool.workers[1])
    assert pool.workers[1].state is WorkerState.DRAINING
    pool.supervisor.note_dispatch(pool.workers[0])
    assert pool.workers[0].state is WorkerState.READY, "its only peer is draining"


# --- a worker that breaks the protocol -----------------------------------------------


async def test_a_corrupt_stream_kills_the_worker(pools: Callable[..., Pool]) -> None:
    pool = pools(1)
    await pool.supervisor.start(timeout_s=STEP_S)
    process = pool.process(0)
    process.events.handle_corrupt_stream(FramingError("undecodable frame"))
    assert process.killed
    await pool.replaced(0, process)


async def test_a_second_ready_kills_the_worker(pools: Callable[..., Pool]) -> None:
    pool = pools(1)
    await pool.supervisor.start(timeout_s=STEP_S)
    process = pool.process(0)
    process.ready()
    assert process.killed
    assert pool.ready == [0], "the second Ready was not announced"
    await pool.replaced(0, process)


# --- stop ----------------------------------------------------------------------------


async def test_stop_asks_every_worker_to_finish_and_restarts_none(
    pools: Callable[..., Pool],
) -> None:
    pool = pools(2)
    await pool.supervisor.start(timeout_s=STEP_S)
    processes = [pool.process(0), pool.process(1)]
    await pool.supervisor.stop(grace_s=3.0)
    assert [p.sent(Shutdown) for p in processes] == [[Shutdown(3.0)], [Shutdown(3.0)]]
    assert [w.state for w in pool.workers] == [WorkerState.DEAD, WorkerState.DEAD]
    assert not any(p.killed for p in processes)
    assert len(pool.spawner.started) == 2
    assert sorted(slot for slot, _, _ in pool.lost) == [0, 1]


async def test_a_worker_ready_after_stop_began_is_not_live(pools: Callable[..., Pool]) -> None:
    """Ready that arrives while the pool stops leaves the worker STOPPING."""
    pool = pools(1, script=lambda process: None)
    pool.spawner.obey_shutdown = False
    starting = asyncio.ensure_future(pool.supervisor.start(timeout_s=STEP_S))
    await pool.until(lambda: pool.spawner.started, "the worker to be spawned")
    process = pool.spawner.started[0]
    await pool.until(lambda: pool.workers[0].process is process, "the handle to get it")
    stopping = asyncio.ensure_future(pool.supervisor.stop(grace_s=1.0))
    await pool.until(lambda: pool.workers[0].state is WorkerState.STOPPING, "stopping")
    process.ready()
    assert pool.workers[0].state is WorkerState.STOPPING and not pool.workers[0].live
    process.exit(0)
    await asyncio.wait_for(stopping, STEP_S)
    await asyncio.wait_for(starting, STEP_S)


# --- environment ---------------------------------------------------------------------


def test_workers_get_the_folder_that_holds_the_code_on_their_path() -> None:
    """Workers import the broker's own copy of workers/, wherever the daemon runs."""
    env = worker_environment({"PYTHONPATH": "/elsewhere", "A": "1"}, {"A": "2", "B": "3"})
    root, rest = env["PYTHONPATH"].split(os.pathsep, 1)
    assert (Path(root) / "workers" / "__main__.py").is_file()
    assert (Path(root) / "broker" / "pool" / "supervisor.py").is_file()
    assert rest == "/elsewhere"
    assert (env["A"], env["B"], env["PYTHONUNBUFFERED"]) == ("2", "3", "1")


# --- a worker asking to be replaced (its tool threads are stranded) ------------------


async def test_a_recycle_request_drains_the_worker_then_replaces_it(
    pools: Callable[..., Pool],
) -> None:
    """Even the only worker drains: its later calls would fail, so it must be replaced."""
    pool = pools(1)
    await pool.supervisor.start(timeout_s=STEP_S)
    old = pool.process(0)
    handle = pool.workers[0]
    handle.calls.add(7)
    old.events.handle_message(Recycle("stranded threads"))
    assert handle.state is WorkerState.DRAINING and not handle.live
    assert old.sent(Shutdown) == [], "a call is still running"
    assert pool.messages == [], "the request is the supervisor's, not the call path's"
    old.events.handle_message(Result(7, b"{}"))
    assert handle.state is WorkerState.STOPPING
    fresh = await pool.replaced(0, old)
    assert old.sent(Shutdown) == [Shutdown(1.0)]
    assert pool.lost == [(0, set(), f"worker process {old.pid} exited (code 0)")]
    assert fresh.pid != old.pid


async def test_an_idle_worker_that_asks_is_replaced_at_once(pools: Callable[..., Pool]) -> None:
    pool = pools(2)
    await pool.supervisor.start(timeout_s=STEP_S)
    old = pool.process(1)
    old.events.handle_message(Recycle("stranded threads"))
    assert pool.workers[1].state is WorkerState.STOPPING
    await pool.replaced(1, old)
    assert pool.workers[0].state is WorkerState.READY


@pytest.mark.parametrize("hang", ["silent", "ignores its cancel"])
async def test_a_draining_worker_hung_in_its_last_call_is_replaced(
    pools: Callable[..., Pool], hang: str
) -> None:
    """--max-calls-per-worker drained a worker whose last call hangs: it is watched
    like a ready worker, recycled when it stops answering heartbeats or ignores the
    cancel of that call, and its slot gets a successor."""
    pool = pools(2, max_calls=1)
    await pool.supervisor.start(timeout_s=STEP_S)
    old = pool.process(0)
    handle = pool.workers[0]
    handle.calls.add(7)
    pool.supervisor.note_dispatch(handle)
    assert handle.state is WorkerState.DRAINING
    if hang == "silent":
        pool.clock.now += 31.0  # past the 30 s heartbeat timeout
    else:
        pool.supervisor.cancel_call(handle, 7)
        pool.clock.now += CANCEL_GRACE_S + 1
        old.events.handle_message(Heartbeat(1))
    pool.supervisor.check_health()
    assert old.killed
    fresh = await pool.replaced(0, old)
    assert fresh.pid != old.pid
    assert pool.lost[0][1] == {7}
