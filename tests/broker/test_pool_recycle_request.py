"""A worker that asks to be replaced (its tool threads are stranded) is taken out of
rotation, finishes the calls it holds, and is replaced without losing one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from broker.pool.supervisor import WorkerState
from exai.ipc import Recycle, Result, Shutdown
from tests.broker.test_pool_supervisor import STEP_S, Pool


@pytest.fixture
async def pools() -> AsyncIterator[Callable[..., Pool]]:
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
