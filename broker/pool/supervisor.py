"""Owns the worker processes: starts them, watches them, restarts or recycles them.

The supervisor knows nothing of sessions or caps. It meets the call path through
`WorkerHandle.send` and three callbacks: a worker became ready, a worker sent a
message, a worker was lost (with the ids of the calls it still held).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

from exai.exits import ExitCode
from exai.framing import FrameDecoder, FrameEncoder, FramingError
from exai.ipc import Cancel, Heartbeat, Ready, Shutdown, WorkerMessage

__all__ = ["PoolFailure", "Supervisor", "WorkerHandle"]

log = logging.getLogger("broker.pool.supervisor")

_POSIX = sys.platform != "win32"

# A worker that exits before Ready this many times in a row means the configuration
# is broken (bad --server, missing dependency): restarting would only loop.
MAX_EARLY_DEATHS = 3
BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 5.0
# How long a worker must stay up before its restart backoff is forgotten.
STABLE_AFTER_S = 30.0
# How long a worker may take to stop a cancelled call before it is recycled.
CANCEL_GRACE_S = 10.0


class PoolFailure(RuntimeError):
    """The pool cannot run: workers keep dying before they are ready."""


@dataclasses.dataclass(slots=True, eq=False)
class WorkerHandle:
    """One worker slot. `calls` are the call ids the worker holds (its load)."""

    slot: int
    pid: int | None = None
    state: str = "starting"
    restarts: int = 0
    early_deaths: int = 0
    ready_at: float = 0.0
    calls: set[int] = dataclasses.field(default_factory=set)
    cancelled: dict[int, float] = dataclasses.field(default_factory=dict)
    ready: Ready | None = None
    served: int = 0
    last_stderr: str = ""
    recycle_after: int = 0
    planned_exit: bool = False
    backoff_s: float = 0.0
    last_heartbeat: float = 0.0
    transport: asyncio.SubprocessTransport | None = None
    _out: bytearray = dataclasses.field(default_factory=bytearray)
    _flush_scheduled: bool = False
    _encoder: FrameEncoder = dataclasses.field(default_factory=FrameEncoder)
    _stdin: asyncio.WriteTransport | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    @property
    def live(self) -> bool:
        return self.state == "ready"

    def send(self, message: Any) -> None:
        """Queue a message; everything queued in one loop iteration leaves in one write."""
        self._encoder.encode_into(message, self._out)
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._stdin is not None and not self._stdin.is_closing():
            self._stdin.write(bytes(self._out))
        self._out.clear()

    def kill(self) -> None:
        if self.transport is not None and self.transport.get_returncode() is None:
            with contextlib.suppress(ProcessLookupError):
                self.transport.kill()


class _WorkerProtocol(asyncio.SubprocessProtocol):
    def __init__(self, supervisor: Supervisor, handle: WorkerHandle) -> None:
        self.supervisor = supervisor
        self.handle = handle
        self.decoder: FrameDecoder[WorkerMessage] = FrameDecoder(WorkerMessage)
        self.stderr_tail = bytearray()
        self.exited = asyncio.get_running_loop().create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            try:
                messages = self.decoder.feed(data)
            except FramingError as exc:
                log.error(
                    "worker %s pid=%s sent a corrupt frame (%s); killing it",
                    self.handle.slot,
                    self.handle.pid,
                    exc,
                )
                self.handle.kill()
                return
            for message in messages:
                self.supervisor.handle_message(self.handle, message)
        else:
            self.stderr_tail.extend(data)
            *lines, rest = self.stderr_tail.split(b"\n")
            self.stderr_tail = bytearray(rest)
            for line in lines:
                self.supervisor.log_worker_line(self.handle, bytes(line))

    def process_exited(self) -> None:
        if self.stderr_tail:
            self.supervisor.log_worker_line(self.handle, bytes(self.stderr_tail))
            self.stderr_tail.clear()
        if not self.exited.done():
            self.exited.set_result(None)


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
    ) -> None:
        self.size = size
        self.env = dict(env)
        self.workers = [WorkerHandle(slot) for slot in range(size)]
        self._on_ready = on_ready
        self._on_message = on_message
        self._on_lost = on_lost
        self._on_fatal = on_fatal
        self._command = command or [sys.executable, "-m", "workers"]
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
            if handle.transport is not None and handle.transport.get_returncode() is None:
                handle.send(Shutdown(grace_s))
                handle.state = "stopping"
        waits = [self._wait_exit(h) for h in self.workers if h.transport is not None]
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
            if handle.transport is not None:
                handle.transport.close()

    async def _wait_exit(self, handle: WorkerHandle) -> None:
        protocol = handle.transport.get_protocol() if handle.transport else None
        if isinstance(protocol, _WorkerProtocol):
            await protocol.exited

    def live_workers(self) -> list[WorkerHandle]:
        return [w for w in self.workers if w.state == "ready"]

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
        loop = asyncio.get_running_loop()
        handle.state = "starting"
        handle.ready = None
        handle.served = 0
        if self._max_calls:
            # Jitter, so workers started together are not all recycled together.
            handle.recycle_after = self._max_calls + random.randint(0, self._max_calls // 10)
        handle._loop = loop
        handle._out.clear()
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _WorkerProtocol(self, handle),
                *self._command,
                env=self.env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                # Its own process group: what the worker starts (a hosted server, a
                # private Ray cluster) can be cleaned up with it, and a terminal's
                # Ctrl+C reaches only the broker, which stops the workers in order.
                start_new_session=_POSIX,
            )
        except OSError as exc:
            self._fail(f"cannot start worker process {self._command[0]}: {exc}")
            return
        handle.transport = transport
        handle.pid = transport.get_pid()
        # uvloop's pipe transports are not asyncio.WriteTransport subclasses; only the
        # write/is_closing interface is used.
        handle._stdin = cast(asyncio.WriteTransport, transport.get_pipe_transport(0))
        handle.last_heartbeat = time.monotonic()
        log.info("worker %s started pid=%s", handle.slot, handle.pid)
        await protocol.exited
        self._handle_exit(handle, transport.get_returncode())

    def _handle_exit(self, handle: WorkerHandle, returncode: int | None) -> None:
        was_ready = handle.ready is not None
        planned = handle.planned_exit
        handle.planned_exit = False
        lost = set(handle.calls)
        handle.calls.clear()
        handle.cancelled.clear()
        handle.state = "dead"
        handle._stdin = None
        if handle.transport is not None:
            handle.transport.close()
        if _POSIX and handle.pid is not None:
            # Whatever the worker left running goes with it, even after a kill -9 that
            # gave it no chance to stop its own children.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(handle.pid, signal.SIGKILL)
        level = logging.INFO if self._stopping or planned else logging.WARNING
        log.log(
            level,
            "worker %s pid=%s exited with %s",
            handle.slot,
            handle.pid,
            _describe_exit(returncode),
        )
        reason = f"worker process {handle.pid} exited ({_describe_exit(returncode)})"
        self._on_lost(handle, lost, reason)
        if self._stopping:
            return
        if not was_ready and returncode == ExitCode.WORKER_LOAD_FAILED:
            # The tool server cannot load: every restart would fail the same way.
            self._fail(
                f"worker {handle.slot} could not load the tool server: "
                f"{handle.last_stderr or 'no output'}"
            )
            return
        if not was_ready:
            handle.early_deaths += 1
            if handle.early_deaths >= MAX_EARLY_DEATHS:
                self._fail(
                    f"worker {handle.slot} died {handle.early_deaths} times before becoming "
                    f"ready ({_describe_exit(returncode)}): {handle.last_stderr or 'no output'}"
                )
                return
        if planned or (was_ready and time.monotonic() - handle.ready_at > STABLE_AFTER_S):
            handle.backoff_s = 0.0
        delay = handle.backoff_s
        handle.backoff_s = min(BACKOFF_MAX_S, max(BACKOFF_START_S, 2 * delay))
        handle.restarts += 1
        self._spawn(handle, delay)

    def _fail(self, message: str) -> None:
        if self._fatal is None:
            self._fatal = message
            log.error("%s", message)
            self._all_ready.set()
            self._on_fatal(message)

    # --- messages --------------------------------------------------------------------

    def handle_message(self, handle: WorkerHandle, message: Any) -> None:
        if isinstance(message, Ready):
            handle.ready = message
            handle.state = "ready" if not self._stopping else "stopping"
            handle.ready_at = time.monotonic()
            handle.last_heartbeat = handle.ready_at
            handle.early_deaths = 0
            log.info("worker %s ready pid=%s", handle.slot, message.pid)
            self._on_ready(handle)
            if all(w.ready is not None for w in self.workers):
                self._all_ready.set()
        elif isinstance(message, Heartbeat):
            handle.last_heartbeat = time.monotonic()
        else:
            self._on_message(handle, message)
            if handle.state == "draining" and not handle.calls:
                log.info(
                    "worker %s pid=%s drained after %d calls; replacing it",
                    handle.slot,
                    handle.pid,
                    handle.served,
                )
                handle.send(Shutdown(1.0))
                handle.state = "stopping"
                handle.planned_exit = True

    def note_dispatch(self, handle: WorkerHandle) -> None:
        """Count a call sent to `handle`; past --max-calls-per-worker it starts draining."""
        handle.served += 1
        if self._max_calls and handle.served >= handle.recycle_after:
            # Never drain the last ready worker: calls would have to wait for its successor.
            others = any(w is not handle and w.state == "ready" for w in self.workers)
            if others or self.size == 1:
                handle.state = "draining"

    def log_worker_line(self, handle: WorkerHandle, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip()
        if text:
            handle.last_stderr = text
            log.info("worker %s pid=%s: %s", handle.slot, handle.pid, text)

    # --- health checks ---------------------------------------------------------------

    def cancel_call(self, handle: WorkerHandle, call_id: int) -> None:
        """Tell the worker to stop a call; recycle it if it does not within the grace."""
        if call_id in handle.calls and call_id not in handle.cancelled:
            handle.cancelled[call_id] = time.monotonic()
            handle.send(Cancel(call_id))

    def recycle(self, handle: WorkerHandle, why: str) -> None:
        log.warning("recycling worker %s pid=%s: %s", handle.slot, handle.pid, why)
        handle.state = "stopping"
        handle.kill()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval_s)
            now = time.monotonic()
            self._heartbeat_seq += 1
            for handle in self.workers:
                if handle.state != "ready":
                    continue
                if now - handle.last_heartbeat > self._heartbeat_timeout_s:
                    self.recycle(handle, f"no heartbeat for {now - handle.last_heartbeat:.0f} s")
                    continue
                overdue = [c for c, t in handle.cancelled.items() if now - t > CANCEL_GRACE_S]
                if overdue:
                    self.recycle(handle, f"ignored cancellation of {len(overdue)} call(s)")
                    continue
                handle.send(Heartbeat(self._heartbeat_seq))


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "unknown status"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"code {returncode}"


def worker_environment(base: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """The environment workers start with: the merged config plus the broker's choices."""
    env = dict(base)
    env.update(overrides)
    env["PYTHONUNBUFFERED"] = "1"
    # Workers must import the same code as the broker, wherever the daemon was started.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env
