"""The bridge's side of servers-file servers on `--pool ray`: one ServerProcess actor each.

The daemon asks (ProcessOpen, ProcessInput, ProcessSignal through the bridge's IPC
pipes) and hears back (ProcessStarted, ProcessOutput, ProcessExited). Each actor is
pinned to the bridge's own node: a server acts on the files, checkouts and credentials
of the machine its user configured it on. It takes no CPU reservation (a stdio server
idles most of its life and must not keep the tool hosts from being scheduled), and is
never restarted or retried by Ray: a lost process is an exit, which the daemon answers
by restarting that server with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from exai.ipc import (
    ProcessExited,
    ProcessInput,
    ProcessOpen,
    ProcessOutput,
    ProcessSignal,
    ProcessStarted,
)
from workers.ray_actors import NAMESPACE, ServerProcess

__all__ = ["RayProcesses"]

log = logging.getLogger("workers.ray")

START_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 5.0


@dataclasses.dataclass(slots=True, eq=False)
class _Running:
    actor: Any
    # Stdin bytes not yet handed to the actor; one write is in flight at a time, so
    # they reach the server in order.
    pending: bytearray = dataclasses.field(default_factory=bytearray)
    eof: bool = False
    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)


class RayProcesses:
    """Runs the daemon's server processes in actors on this node."""

    def __init__(self, ray: Any, send: Callable[[Any], None]) -> None:
        self._ray = ray
        self._send = send
        self._cls = ray.remote(ServerProcess)
        self._node = ray.get_runtime_context().get_node_id()
        self._running: dict[int, _Running] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def handle(self, message: Any) -> bool:
        """Act on a process message from the daemon; False for any other message."""
        if isinstance(message, ProcessInput):
            running = self._running.get(message.handle)
            if running is not None and not running.eof:
                running.pending += message.data
                running.eof = message.eof
                running.wake.set()
            return True
        if isinstance(message, ProcessOpen):
            self._spawn(self._run(message))
            return True
        if isinstance(message, ProcessSignal):
            running = self._running.get(message.handle)
            if running is not None:
                running.actor.end.remote(message.kill)
            return True
        return False

    async def aclose(self) -> None:
        """Stop every server (their actors go with the bridge's Ray session)."""
        ending = [r.actor.end.remote(True) for r in self._running.values()]
        if ending:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*ending, return_exceptions=True), 2.0)
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, message: ProcessOpen) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        handle = message.handle
        actor = self._cls.options(
            num_cpus=0,
            max_restarts=0,
            max_task_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(self._node, soft=False),
            namespace=NAMESPACE,
        ).remote()
        try:
            pid, node, error = await asyncio.wait_for(
                actor.start.remote(message.argv, message.env, message.cwd), START_TIMEOUT_S
            )
        except (self._ray.exceptions.RayError, TimeoutError) as exc:
            pid, node, error = None, "", f"its actor did not start: {exc}"
        if error is not None or pid is None:
            self._send(ProcessStarted(handle, error=error or "it did not start"))
            self._ray.kill(actor)
            return
        running = _Running(actor)
        self._running[handle] = running
        self._send(ProcessStarted(handle, pid, node))
        log.info("%s: server process %s started in an actor on %s", message.name, pid, node)
        writer = asyncio.ensure_future(self._write(running))
        returncode: int | None = None
        try:
            async for ref in actor.output.remote():
                fd, data = await ref
                if fd == 0:
                    returncode = data
                    break
                self._send(ProcessOutput(handle, fd, data))
        except self._ray.exceptions.RayError as exc:
            log.warning("%s: server process %s lost with its actor: %s", message.name, pid, exc)
        finally:
            writer.cancel()
            self._running.pop(handle, None)
            self._send(ProcessExited(handle, returncode))
            self._ray.kill(actor)

    async def _write(self, running: _Running) -> None:
        while True:
            await running.wake.wait()
            running.wake.clear()
            while running.pending or running.eof:
                data, running.pending = bytes(running.pending), bytearray()
                eof = running.eof
                try:
                    await running.actor.write.remote(data, eof)
                except self._ray.exceptions.RayError:
                    return  # the actor is gone: its output stream says so
                if eof:
                    return
