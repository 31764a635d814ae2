"""A worker process: hosts the tool server and runs the calls the broker sends it.

Started by the broker (`python -m workers`), never by hand. It speaks length-prefixed
msgpack over stdin/stdout and exits when stdin reaches EOF, so it can never outlive
the broker that started it, on any OS.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

import orjson

from exai.errors import ErrorCode
from exai.exits import ExitCode
from exai.framing import FrameDecoder, FrameEncoder, FramingError
from exai.ipc import (
    BrokerMessage,
    Call,
    Cancel,
    Heartbeat,
    ProcessOpen,
    ProcessStarted,
    Progress,
    Ready,
    Recycle,
    Result,
    SessionEnded,
    Shutdown,
)
from exai.loops import run
from exai.memory import return_big_frees
from exai.settings import PoolKind, Settings, SettingsError, load_settings
from exai.toolresult import MalformedToolResult, check_tool_result
from workers.host import load_tool_server
from workers.parentwatch import watch_parent
from workers.pipes import IpcPipes, take_ipc_stdout
from workers.threads import ToolThreads
from workers.toolserver import ProcessHost, ToolContext, ToolServer, settle

__all__ = ["Worker", "load_server", "main"]

log = logging.getLogger("workers")


class Worker:
    """Decodes broker messages, runs each call as a task, and sends results back."""

    def __init__(self, server: ToolServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.decoder: FrameDecoder[BrokerMessage] = FrameDecoder(BrokerMessage)
        self.encoder = FrameEncoder()
        self.pipes: IpcPipes | None = None
        self.stopping = asyncio.Event()
        self.grace_s = 5.0
        # Runs the daemon's server processes, for a pool that offers to (`--pool ray`).
        self.processes: ProcessHost | None = None
        self.threads: ToolThreads | None = getattr(server, "threads", None)
        if self.threads is not None:
            self.threads.on_exhausted = self.ask_to_recycle

    def ask_to_recycle(self, reason: str) -> None:
        log.warning("asking to be replaced: %s", reason)
        self.send(Recycle(reason))

    def send(self, message: Any) -> None:
        assert self.pipes is not None
        self.encoder.encode_into(message, self.pipes.buffer())
        self.pipes.schedule_flush()

    def announce(self) -> None:
        tools = orjson.dumps(self.server.tools)
        self.send(Ready(os.getpid(), tools, sorted(self.server.model_tools), self.server.name))

    def handle_data(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except FramingError:
            log.exception("corrupt IPC stream from the broker; exiting")
            self.stopping.set()
            return
        for message in messages:
            if isinstance(message, Call):
                self.tasks[message.call_id] = self.loop.create_task(self.run_call(message))
            elif isinstance(message, Cancel):
                task = self.tasks.get(message.call_id)
                if task is not None:
                    # Not at once: a call that arrived in the same read has not started,
                    # and a task cancelled before its first step never runs run_call, so
                    # no Result would be sent. The loop runs callbacks in order, so by
                    # then the task is inside run_call's try.
                    self.loop.call_soon(task.cancel)
            elif isinstance(message, Heartbeat):
                self.send(message)
            elif isinstance(message, SessionEnded):
                self.loop.create_task(self.server.session_ended(message.session_id))
            elif isinstance(message, Shutdown):
                self.grace_s = message.grace_s
                self.stopping.set()
            else:
                self.handle_process_message(message)

    def handle_process_message(self, message: Any) -> None:
        if self.processes is None:
            offer = getattr(self.server, "process_host", None)
            if offer is None:
                if isinstance(message, ProcessOpen):
                    why = "this worker pool does not run server processes"
                    self.send(ProcessStarted(message.handle, error=why))
                return
            self.processes = offer(self.send)
        assert self.processes is not None
        self.processes.handle(message)

    def handle_eof(self) -> None:
        self.stopping.set()

    def progress_sink(self, call_id: int) -> Any:
        def sink(progress: float, total: float | None, message: str | None) -> None:
            self.send(Progress(call_id, progress, total, message))

        return sink

    async def run_call(self, call: Call) -> None:
        try:
            arguments = orjson.loads(call.arguments) if call.arguments else {}
            ctx = ToolContext(
                call.call_id,
                call.session_id,
                call.model,
                self.progress_sink(call.call_id) if call.want_progress else None,
            )
            result, error = await settle(self.server, call.tool, arguments, ctx)
            if result is not None:
                try:
                    payload = orjson.dumps(result)
                    is_error = check_tool_result(payload, call.tool)
                except orjson.JSONEncodeError as exc:
                    # Int keys, integers past 64 bits, sets: the broker could not relay
                    # it anyway, and an unanswered call would hang until its timeout.
                    self.send_failure(
                        call, f"{call.tool!r} returned a result that is not JSON: {exc}"
                    )
                    return
                except MalformedToolResult as exc:
                    self.send_failure(call, exc.message)
                    return
                self.send(Result(call.call_id, payload, is_error=is_error))
            elif error is not None:
                self.send(
                    Result(call.call_id, None, error.code, str(error), provider=error.provider)
                )
        except asyncio.CancelledError:
            self.send(Result(call.call_id, None, ErrorCode.CANCELLED, "cancelled"))
        except orjson.JSONDecodeError as exc:
            self.send(Result(call.call_id, None, ErrorCode.INVALID_ARGUMENTS, str(exc)))
        except Exception as exc:
            # Whatever broke, the call is answered: an unanswered one holds its capacity
            # until the supervisor gives up on this worker.
            log.exception("call %d of %r failed in the worker", call.call_id, call.tool)
            self.send_failure(call, f"the worker failed running {call.tool!r}: {exc!r}")
        finally:
            self.tasks.pop(call.call_id, None)

    def send_failure(self, call: Call, message: str) -> None:
        self.send(Result(call.call_id, None, ErrorCode.EXEC_ERROR, message))

    async def drain(self) -> None:
        """Let running calls finish within the grace period, then cancel the rest."""
        pending = list(self.tasks.values())
        if pending:
            _, still_running = await asyncio.wait(pending, timeout=self.grace_s)
            for task in still_running:
                task.cancel()
            if still_running:
                await asyncio.wait(still_running, timeout=1.0)


def load_server(settings: Settings, environ: Mapping[str, str]) -> ToolServer:
    """What this worker hosts: the bridge to a Ray pool (`--pool ray`), or the tool server."""
    if settings.pool_kind is PoolKind.RAY:
        from workers.ray_pool import RayToolPool

        return RayToolPool(settings, environ)
    return load_tool_server(settings, environ)


async def serve(server: ToolServer) -> bool:
    """Serve until told to stop; True if tool threads are still stranded at the end."""
    loop = asyncio.get_running_loop()
    worker = Worker(server, loop)
    ipc_out = take_ipc_stdout()
    pipes = IpcPipes(loop, sys.stdin.buffer, ipc_out, worker.handle_data, worker.handle_eof)
    worker.pipes = pipes
    await pipes.start()
    try:
        await server.start()
    except Exception as exc:  # the hosted server could not start: fail before Ready
        print(
            f"cannot start tool server {server.name!r}: {type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        raise SystemExit(ExitCode.WORKER_LOAD_FAILED) from None
    if sys.platform != "win32":
        # After server.start(): a Ray driver installs its own handler, which exits from
        # inside whatever callback is running; a graceful stop is what is wanted.
        loop.add_signal_handler(signal.SIGTERM, worker.stopping.set)
    worker.announce()
    await worker.stopping.wait()
    await worker.drain()
    if worker.processes is not None:
        await worker.processes.aclose()
    await server.aclose()
    # Let the last results reach the pipe before the process goes away.
    await asyncio.sleep(0)
    pipes.schedule_flush()
    await asyncio.sleep(0.05)
    return worker.threads is not None and worker.threads.stranded > 0


def main() -> int:
    # Ctrl+C in a terminal reaches the whole process group; the broker decides when
    # its workers stop (Shutdown, or stdin EOF), so a worker ignores it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch_parent()
    return_big_frees()  # a worker builds large results all its life, too
    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Load the tool server before the loop starts so an import error fails fast and
    # visibly, before Ready: the supervisor treats that as a broken configuration.
    try:
        server = load_server(settings, os.environ)
    except Exception as exc:  # any import-time failure of the hosted server
        print(
            f"cannot load tool server {settings.server or 'builtin'!r}: "
            f"{type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return ExitCode.WORKER_LOAD_FAILED
    if run(serve(server)):
        # A normal exit joins every pool thread, and a stranded one may never return.
        logging.shutdown()
        sys.stderr.flush()
        os._exit(ExitCode.OK)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
