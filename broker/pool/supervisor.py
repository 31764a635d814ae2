"""Owns the worker processes: starts them, watches them, restarts or recycles them.

The supervisor knows nothing of sessions or caps. It meets the call path through
`WorkerHandle.send` and four callbacks: a worker became ready, a worker sent a
message, a worker was lost (with the ids of the calls it still held), the pool
failed for good. Each slot's life is the state machine in `broker.pool.worker`; what
to do after an exit or a missed heartbeat is decided in `broker.pool.policy`; how a
process is started is the `Spawner` it is given (`broker.pool.spawn`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from broker.pool.policy import (
    Halt,
    describe_exit,
    judge_exit,
    recycle_after,
    recycle_reason,
    should_drain,
)
from broker.pool.spawn import Spawner, SubprocessSpawner
from broker.pool.worker import WorkerHandle, WorkerState, move
from exai.framing import FramingError
from exai.ipc import Cancel, Heartbeat, Ready, Recycle, Shutdown, WorkerMessage

__all__ = ["PoolFailure", "Supervisor", "WorkerHandle", "WorkerState", "worker_environment"]

log = logging.getLogger("broker.pool.supervisor")

_S = WorkerState


class PoolFailure(RuntimeError):
    """The pool cannot run: workers keep dying before they are ready."""


@dataclasses.dataclass(frozen=True, slots=True)
class _SlotEvents:
    """The WorkerEvents of one slot's current process."""

    supervisor: Supervisor
    handle: WorkerHandle

    def handle_message(self, message: WorkerMessage) -> None:
        self.supervisor.handle_message(self.handle, message)

    def handle_stderr_line(self, line: bytes) -> None:
        self.supervisor.log_worker_line(self.handle, line)

    def handle_corrupt_stream(self, error: FramingError) -> None:
        log.error(
            "worker %s pid=%s sent a corrupt frame (%s); killing it",
            self.handle.slot,
            self.handle.pid,
            error,
        )
        self.handle.kill()


class Supervisor:
    """Starts N workers and keeps N running until `stop`."""

    def __init__(
        self,
        *,
        size: int,
        env: Mapping[str, str],
        on_ready: Callable[[WorkerHandle], None],
        on_message: Callable[[WorkerHandle, Any], None],
        on_lost: Callable[[WorkerHandle, set[int], str], None],
        on_fatal: Callable[[str], None],
        heartbeat_interval_s: float = 5.0,
        heartbeat_timeout_s: float = 30.0,
        command: list[str] | None = None,
        max_calls_per_worker: int = 0,
        spawner: Spawner | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.size = size
        self.env = dict(env)
        self.workers = [WorkerHandle(slot) for slot in range(size)]
        self._on_ready = on_ready
        self._on_message = on_message
        self._on_lost = on_lost
        self._on_fatal = on_fatal
        self._spawner = spawner or SubprocessSpawner(command or [sys.executable, "-m", "workers"])
        self._clock = clock
        self._heartbeat_interval_s = heartbeat_interval_s
        self._heartbeat_timeout_s = heartbeat_timeout_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._all_ready = asyncio.Event()
        self._fatal: str | None = None
        self._heartbeat_seq = 0
        self._max_calls = max_calls_per_worker

    # --- lifecycle -------------------------------------------------------------------

    async def start(self, timeout_s: float = 60.0) -> None:
        """Start every worker and wait until all are ready (or the pool fails)."""
        for handle in self.workers:
            self._spawn(handle, delay_s=0.0)
        self._spawn_task(self._heartbeat_loop())
        waiter = asyncio.ensure_future(self._all_ready.wait())
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        except TimeoutError:
            raise PoolFailure(f"workers not ready after {timeout_s:.0f} s") from None
        if self._fatal:
            raise PoolFailure(self._fatal)

    async def stop(self, grace_s: float) -> None:
        """Ask every worker to finish within `grace_s`, then kill what is left."""
        self._stopping = True
        for handle in self.workers:
            process = handle.process
            if process is not None and process.returncode is None:
                handle.send(Shutdown(grace_s))
                if handle.state is not _S.STOPPING:
                    move(handle, _S.STOPPING)
        waits = [h.process.wait() for h in self.workers if h.process is not None]
        if waits:
            done = await asyncio.gather(
                *(asyncio.wait_for(w, grace_s + 2.0) for w in waits), return_exceptions=True
            )
            if any(isinstance(d, BaseException) for d in done):
                for handle in self.workers:
                    handle.kill()
        for task in list(self._tasks):
            task.cancel()
        for handle in self.workers:
            if handle.process is not None:
                handle.process.close()

    def live_workers(self) -> list[WorkerHandle]:
        return [w for w in self.workers if w.live]

    # --- spawning --------------------------------------------------------------------

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn(self, handle: WorkerHandle, delay_s: float) -> None:
        self._spawn_task(self._run_worker(handle, delay_s))

    async def _run_worker(self, handle: WorkerHandle, delay_s: float) -> None:
        if delay_s:
            await asyncio.sleep(delay_s)
        if self._stopping:
            return
        if handle.state is _S.DEAD:
            move(handle, _S.STARTING)
        handle.ready = None
        handle.served = 0
        handle.recycle_after = recycle_after(self._max_calls)
        handle.attach(asyncio.get_running_loop())
        try:
            process = await self._spawner.spawn(self.env, _SlotEvents(self, handle))
        except OSError as exc:
            self._fail(f"cannot start worker process {self._spawner.program}: {exc}")
            return
        handle.process = process
        handle.pid = process.pid
        handle.last_heartbeat = self._clock()
        log.info("worker %s started pid=%s", handle.slot, handle.pid)
        self._handle_exit(handle, await process.wait())

    def _handle_exit(self, handle: WorkerHandle, returncode: int | None) -> None:
        was_ready = handle.ready is not None
        planned = handle.planned_exit
        handle.planned_exit = False
        lost = set(handle.calls)
        handle.calls.clear()
        handle.cancelled.clear()
        move(handle, _S.DEAD)
        if handle.process is not None:
            handle.process.reap()
        level = logging.INFO if self._stopping or planned else logging.WARNING
        log.log(
            level,
            "worker %s pid=%s exited with %s",
            handle.slot,
            handle.pid,
            describe_exit(returncode),
        )
        reason = f"worker process {handle.pid} exited ({describe_exit(returncode)})"
        self._on_lost(handle, lost, reason)
        if self._stopping:
            return
        verdict = judge_exit(
            handle, returncode, was_ready=was_ready, planned=planned, now=self._clock()
        )
        if isinstance(verdict, Halt):
            self._fail(verdict.reason)
            return
        handle.restarts += 1
        self._spawn(handle, verdict.delay_s)

    def _fail(self, message: str) -> None:
        if self._fatal is None:
            self._fatal = message
            log.error("%s", message)
            self._all_ready.set()
            self._on_fatal(message)

    # --- messages --------------------------------------------------------------------

    def handle_message(self, handle: WorkerHandle, message: Any) -> None:
        if isinstance(message, Ready):
            self._handle_ready(handle, message)
        elif isinstance(message, Heartbeat):
            handle.last_heartbeat = self._clock()
        elif isinstance(message, Recycle):
            self._handle_recycle(handle, message.reason)
        else:
            self._on_message(handle, message)
            if handle.state is _S.DRAINING and not handle.calls:
                self._retire(handle)

    def _handle_recycle(self, handle: WorkerHandle, reason: str) -> None:
        """The worker asks to be replaced: it takes no new calls and goes once idle.

        Unlike a drain after --max-calls-per-worker this also applies to the last ready
        worker: it asks because its later calls would fail.
        """
        log.warning("worker %s pid=%s asks to be replaced: %s", handle.slot, handle.pid, reason)
        if handle.state is _S.READY:
            move(handle, _S.DRAINING)
        if handle.state is _S.DRAINING and not handle.calls:
            self._retire(handle)

    def _retire(self, handle: WorkerHandle) -> None:
        log.info(
            "worker %s pid=%s drained after %d calls; replacing it",
            handle.slot,
            handle.pid,
            handle.served,
        )
        handle.send(Shutdown(1.0))
        move(handle, _S.STOPPING)
        handle.planned_exit = True

    def _handle_ready(self, handle: WorkerHandle, message: Ready) -> None:
        if handle.state is not _S.STARTING and handle.state is not _S.STOPPING:
            # Ready comes once per process; a second one means its stream is not ours.
            log.error(
                "worker %s pid=%s sent Ready again while %s; killing it",
                handle.slot,
                handle.pid,
                handle.state,
            )
            handle.kill()
            return
        handle.ready = message
        if handle.state is _S.STARTING:
            move(handle, _S.STOPPING if self._stopping else _S.READY)
        handle.ready_at = self._clock()
        handle.last_heartbeat = handle.ready_at
        handle.early_deaths = 0
        log.info("worker %s ready pid=%s", handle.slot, message.pid)
        self._on_ready(handle)
        if all(w.ready is not None for w in self.workers):
            self._all_ready.set()

    def note_dispatch(self, handle: WorkerHandle) -> None:
        """Count a call sent to `handle`; past --max-calls-per-worker it starts draining."""
        handle.served += 1
        if handle.state is _S.READY and should_drain(handle, self.workers):
            move(handle, _S.DRAINING)

    def log_worker_line(self, handle: WorkerHandle, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip()
        if text:
            handle.last_stderr = text
            log.info("worker %s pid=%s: %s", handle.slot, handle.pid, text)

    # --- health checks ---------------------------------------------------------------

    def cancel_call(self, handle: WorkerHandle, call_id: int) -> None:
        """Tell the worker to stop a call; recycle it if it does not within the grace."""
        if call_id in handle.calls and call_id not in handle.cancelled:
            handle.cancelled[call_id] = self._clock()
            handle.send(Cancel(call_id))

    def recycle(self, handle: WorkerHandle, why: str) -> None:
        """Kill a worker that is running but unwell; its slot is restarted."""
        log.warning("recycling worker %s pid=%s: %s", handle.slot, handle.pid, why)
        if handle.state is not _S.STOPPING:
            move(handle, _S.STOPPING)
        handle.kill()

    def check_health(self) -> None:
        """One heartbeat round: recycle each running worker that is unwell, ping the rest.

        A draining worker is watched like a ready one: hung in its last call, it would
        never drain, and its slot would never get a successor.
        """
        now = self._clock()
        self._heartbeat_seq += 1
        for handle in self.workers:
            if handle.state is not _S.READY and handle.state is not _S.DRAINING:
                continue
            why = recycle_reason(handle, now, self._heartbeat_timeout_s)
            if why is not None:
                self.recycle(handle, why)
            else:
                handle.send(Heartbeat(self._heartbeat_seq))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval_s)
            self.check_health()


def worker_environment(base: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment workers start with: the merged config plus the broker's choices."""
    env = dict(base)
    env.update(overrides)
    env["PYTHONUNBUFFERED"] = "1"
    # Workers must import the same code as the broker, wherever the daemon was started:
    # the folder that holds broker/ and workers/.
    root = str(Path(os.path.abspath(__file__)).parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env
