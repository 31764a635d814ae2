"""The life of a tool call in the broker: admit, dispatch, await, answer, account.

Everything here runs as plain callbacks on the event loop (no task per call): a
frame arrives, the call is admitted and sent to a worker; the worker's result
arrives, the lease is released and the answer is queued on the session. Every path
out of a call (result, tool error, timeout, cancel, worker loss, session end) goes
through `_finish`, which releases the call's capacity exactly once.

Call timeouts and deferred shim acks each run on one loop timer (timeline.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import msgspec

from broker.calls.catalog import Catalog
from broker.calls.routing import Route, resolve_route
from broker.calls.scheduler import Lease, Rejection, Scheduler, Waiter
from broker.calls.session import Session
from broker.calls.timeline import Timeline
from broker.calls.validation import parse_arguments
from broker.pool.supervisor import Supervisor, WorkerHandle
from broker.router.codec import FrameCodec
from broker.router.modern import stamp_result
from exai.errors import (
    BrokerError,
    Cancelled,
    ErrorCode,
    InvalidArguments,
    OverCapacity,
    ResultTooLarge,
    ShuttingDown,
    Timeout,
    ToolNotFound,
    WorkerLost,
)
from exai.ipc import Call, Progress, Result, SessionEnded
from exai.models import ModelRegistry
from exai.settings import Settings

__all__ = ["CallManager", "CallRecord", "PendingCall"]

log = logging.getLogger("broker.calls.manager")

STICKY_MAX = 10_000
# How long a shim's call may run before the daemon acknowledges it separately.
SHIM_ACK_DELAY_S = 0.05
# Routes remembered per (tool, requested model); the model is the client's word, so
# the memo is bounded.
ROUTES_MAX = 4096


class _ToolResult(msgspec.Struct):
    content: list[dict[str, Any]] = []
    isError: bool = False
    structuredContent: Any = None


class PendingCall(msgspec.Struct, eq=False):
    call_id: int
    session: Session
    key: bytes
    request_id: msgspec.Raw
    dialect: str
    tool: str
    arguments: bytes
    provider: str | None
    model: str | None
    progress_token: msgspec.Raw | None
    received_at: float
    continuation_id: str | None = None
    # The request declared the 2026-07-28 envelope: its result gets that revision's shape.
    modern: bool = False
    lease: Lease | None = None
    waiter: Waiter | None = None
    worker: WorkerHandle | None = None
    admitted_at: float = 0.0
    # Loop time at which the call times out (set on admission).
    deadline: float = 0.0
    # The queue-wait timer, while the call waits for capacity.
    timer: asyncio.TimerHandle | None = None
    acked: bool = False
    done: bool = False


class CallRecord(msgspec.Struct, frozen=True):
    """What the metrics line of one finished call says."""

    t: float
    session: str
    tool: str
    provider: str | None
    model: str | None
    outcome: str
    latency_ms: float
    queue_ms: float
    worker: int | None
    bytes_in: int
    bytes_out: int


class CallManager:
    """Admits calls against the scheduler, runs them on workers, answers sessions."""

    def __init__(
        self,
        settings: Settings,
        scheduler: Scheduler,
        supervisor: Supervisor,
        codec: FrameCodec,
        record: Callable[[CallRecord], None],
        registry: ModelRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.supervisor = supervisor
        self.codec = codec
        self.record = record
        self.registry = registry or ModelRegistry()
        self.catalog = Catalog.empty()
        self.calls: dict[int, PendingCall] = {}
        self.sticky: OrderedDict[str, int] = OrderedDict()
        self.backlog: deque[PendingCall] = deque()
        self.shutting_down = False
        self.calls_total = 0
        self.errors_by_code: dict[str, int] = {}
        self._next_id = 0
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop = asyncio.get_running_loop()
        self._deadlines: Timeline[PendingCall] = Timeline(
            self._loop, settings.call_timeout_s, self._timed_out
        )
        self._acks: Timeline[PendingCall] = Timeline(
            self._loop, SHIM_ACK_DELAY_S, self._send_shim_ack
        )
        self._routes: dict[tuple[str, str | None], Route] = {}
        self._routes_catalog = self.catalog

    # --- admission -------------------------------------------------------------------

    def submit(
        self,
        session: Session,
        dialect: str,
        request_id: msgspec.Raw,
        tool: str,
        arguments: msgspec.Raw,
        progress_token: msgspec.Raw | None,
        *,
        modern: bool = False,
    ) -> None:
        """Start one call, or answer it at once with a typed error."""
        key = bytes(request_id)
        existing = session.calls.get(key)
        if existing is not None:
            # A re-sent request id joins the call already running: it never runs twice.
            self._ack(existing)
            return
        answered = session.recent.get(key)
        if answered is not None:
            session.send(answered)
            return
        now = time.monotonic()
        try:
            if self.shutting_down:
                raise ShuttingDown("the daemon is shutting down; retry after it restarts")
            catalog = self.catalog
            if tool not in catalog.by_name:
                raise ToolNotFound(f"unknown tool {tool!r}", tool=tool)
            raw_args = bytes(arguments) if arguments else b"{}"
            args = parse_arguments(raw_args)
            model = args.get("model")
            continuation = args.get("continuation_id")
            if model is not None and not isinstance(model, str):
                raise InvalidArguments("arguments.model must be a string", path="model")
            route = self._route(catalog, tool, model)
            catalog.validator.validate(tool, args)
        except BrokerError as exc:
            self._answer_error_now(session, dialect, request_id, tool, exc)
            return
        self._next_id += 1
        call = PendingCall(
            self._next_id,
            session,
            key,
            request_id,
            dialect,
            tool,
            raw_args,
            route.provider,
            route.model,
            progress_token,
            now,
            continuation if isinstance(continuation, str) else None,
            modern,
        )
        outcome = self.scheduler.try_acquire(session.id, route.provider, now)
        if isinstance(outcome, Rejection):
            if self.settings.queue_timeout_s > 0:
                queued = self.scheduler.enqueue(session.id, route.provider, call, now)
                if isinstance(queued, Waiter):
                    call.waiter = queued
                    self._track(session, call)
                    call.timer = self._loop.call_later(
                        self.settings.queue_timeout_s, self._queue_expired, call, outcome
                    )
                    self._ack(call)
                    return
                outcome = queued
            self._reject(call, outcome)
            return
        self._track(session, call)
        self._start(call, outcome)

    def _route(self, catalog: Catalog, tool: str, model: str | None) -> Route:
        """resolve_route, remembered: it depends only on its arguments and the catalog."""
        if self._routes_catalog is not catalog:
            self._routes_catalog = catalog
            self._routes.clear()
        route = self._routes.get((tool, model))
        if route is None:
            route = resolve_route(
                tool,
                model,
                model_tools=catalog.model_tools,
                default_model=self.settings.default_model,
                registry=self.registry,
            )
            if len(self._routes) >= ROUTES_MAX:
                self._routes.clear()
            self._routes[(tool, model)] = route
        return route

    def _start(self, call: PendingCall, lease: Lease) -> None:
        """Run an admitted call on a worker (or hold it until one is ready)."""
        if call.lease is None:
            call.lease = lease
            call.admitted_at = time.monotonic()
            if call.timer is not None:
                call.timer.cancel()  # the queue-wait timer; the call timeout starts now
                call.timer = None
            call.deadline = self._deadlines.add(call.call_id, call)
            if not call.acked:
                self._ack(call)
        worker = self._pick_worker(call)
        if worker is None:
            # Every worker is restarting or being recycled: hold the call (its capacity is
            # taken, its timeout runs) until one is ready.
            self.backlog.append(call)
            return
        call.worker = worker
        worker.calls.add(call.call_id)
        self.supervisor.note_dispatch(worker)
        self.calls[call.call_id] = call
        worker.send(
            Call(
                call.call_id,
                call.tool,
                call.arguments,
                call.session.id,
                call.model,
                call.progress_token is not None,
            )
        )

    def _ack(self, call: PendingCall) -> None:
        # Spliced rather than encoded: the request id is raw JSON, sent back as it came.
        call.acked = True
        if call.dialect == "op":
            call.session.send(b'{"op":"call_tool_ack","request_id":' + call.request_id + b"}")
        elif call.session.acks:
            # A shim only needs the ack to stop its RPC timer (seconds long), and the
            # answer does that too: most calls answer before the ack would go, and then
            # it never goes, sparing a frame each way.
            self._acks.add(call.call_id, call)

    def _send_shim_ack(self, call: PendingCall) -> None:
        if not call.done:
            call.session.send(b'{"op":"ack","id":' + call.request_id + b"}")

    def _pick_worker(self, call: PendingCall) -> WorkerHandle | None:
        workers = self.supervisor.workers
        # Per-session server instances live in one worker, so a session sticks to it;
        # so does a conversation (continuation_id), whose history lives in a worker.
        sticky_key = (
            f"session:{call.session.id}"
            if self.settings.isolation == "session"
            else call.continuation_id
        )
        if sticky_key is not None:
            slot = self.sticky.get(sticky_key)
            if slot is not None and workers[slot].live:
                self.sticky.move_to_end(sticky_key)
                return workers[slot]
        best: WorkerHandle | None = None
        for worker in workers:
            if worker.state == "ready" and (best is None or len(worker.calls) < len(best.calls)):
                best = worker
        if best is not None and sticky_key is not None:
            self.sticky[sticky_key] = best.slot
            if len(self.sticky) > STICKY_MAX:
                self.sticky.popitem(last=False)
        return best

    def _reject(self, call: PendingCall, rejection: Rejection) -> None:
        exc = OverCapacity(
            rejection.describe(),
            scope=rejection.scope,
            provider=rejection.provider,
            retry_after_ms=rejection.retry_after_ms,
        )
        self._answer_error_now(
            call.session, call.dialect, call.request_id, call.tool, exc, call=call
        )

    def _queue_expired(self, call: PendingCall, rejection: Rejection) -> None:
        if call.waiter is not None and self.scheduler.withdraw(call.waiter):
            call.timer = None
            scope = self.scheduler.blocking_scope(call.session.id, call.provider) or rejection.scope
            self._finish(
                call,
                error=OverCapacity(
                    f"waited {self.settings.queue_timeout_s:g} s in the queue: "
                    + Rejection(scope, call.provider, rejection.retry_after_ms).describe(),
                    scope=scope,
                    provider=call.provider,
                    retry_after_ms=rejection.retry_after_ms,
                ),
            )

    # --- worker events ---------------------------------------------------------------

    def handle_worker_ready(self, worker: WorkerHandle) -> None:
        """A worker (re)started: run the calls that were waiting for one."""
        backlog, self.backlog = self.backlog, deque()
        for call in backlog:
            if not call.done and call.lease is not None:
                self._start(call, call.lease)

    def handle_worker_message(self, worker: WorkerHandle, message: Any) -> None:
        if isinstance(message, Result):
            self._handle_result(worker, message)
        elif isinstance(message, Progress):
            self._handle_progress(message)

    def _handle_result(self, worker: WorkerHandle, result: Result) -> None:
        worker.calls.discard(result.call_id)
        worker.cancelled.pop(result.call_id, None)
        call = self.calls.pop(result.call_id, None)
        if call is None or call.done:
            return
        if result.result is not None:
            self._finish(call, payload=result.result, tool_error=result.is_error)
        elif result.error_code == ErrorCode.CANCELLED:
            self._finish(call, error=Cancelled("the call was cancelled"))
        else:
            self._finish(call, error=_worker_error(result, call.tool))

    def _handle_progress(self, progress: Progress) -> None:
        call = self.calls.get(progress.call_id)
        if call is None or call.done or call.progress_token is None:
            return
        if call.dialect == "op":
            frame = self.codec.encode(
                {
                    "op": "progress",
                    "request_id": call.request_id,
                    "progress": progress.progress,
                    "total": progress.total,
                    "message": progress.message,
                }
            )
        else:
            frame = self.codec.progress(
                call.progress_token, progress.progress, progress.total, progress.message
            )
        call.session.send(frame)

    def handle_worker_lost(self, worker: WorkerHandle, call_ids: set[int], reason: str) -> None:
        for call_id in call_ids:
            call = self.calls.pop(call_id, None)
            if call is not None and not call.done:
                self._finish(
                    call,
                    error=WorkerLost(
                        f"{reason} while running {call.tool!r}; it is being restarted",
                        worker=worker.slot,
                    ),
                )
        for cid, slot in list(self.sticky.items()):
            if slot == worker.slot:
                del self.sticky[cid]

    # --- timeouts and cancellation ---------------------------------------------------

    def _timed_out(self, call: PendingCall) -> None:
        if call.done:
            return
        if call.worker is not None:
            self.supervisor.cancel_call(call.worker, call.call_id)
        self._finish(
            call,
            error=Timeout(
                f"{call.tool!r} did not finish within {self.settings.call_timeout_s:g} s "
                "(EXAI_WS_CALL_TIMEOUT); it was cancelled",
                timeout_s=self.settings.call_timeout_s,
            ),
        )

    def cancel(self, session: Session, request_id: msgspec.Raw, *, answer: bool) -> bool:
        """Cancel a session's call by its request id. MCP cancels get no answer."""
        call = session.calls.get(bytes(request_id))
        if call is None or call.done:
            return False
        if call.waiter is not None:
            self.scheduler.withdraw(call.waiter)
        if call.worker is not None:
            self.supervisor.cancel_call(call.worker, call.call_id)
        self._finish(call, error=Cancelled("cancelled by the client"), silent=not answer)
        return True

    def end_session(self, session: Session) -> None:
        """The session is gone for good: stop its calls, free its capacity."""
        session.closed = True
        if self.settings.isolation == "session":
            self.sticky.pop(f"session:{session.id}", None)
            for worker in self.supervisor.live_workers():
                worker.send(SessionEnded(session.id))
        for call in list(session.calls.values()):
            if call.waiter is not None:
                self.scheduler.withdraw(call.waiter)
            if call.worker is not None:
                self.supervisor.cancel_call(call.worker, call.call_id)
            self._finish(call, error=Cancelled("the session ended"), silent=True)

    def fail(self, call: PendingCall, error: BrokerError) -> None:
        """End a call with `error` now, telling its worker (if any) to stop it."""
        if call.done:
            return
        if call.waiter is not None:
            self.scheduler.withdraw(call.waiter)
        if call.worker is not None:
            self.supervisor.cancel_call(call.worker, call.call_id)
        self._finish(call, error=error)

    # --- completion ------------------------------------------------------------------

    def _finish(
        self,
        call: PendingCall,
        *,
        payload: bytes | None = None,
        error: BrokerError | None = None,
        silent: bool = False,
        tool_error: bool = False,
    ) -> None:
        call.done = True
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        if call.deadline:
            self._deadlines.discard(call.call_id)
            self._acks.discard(call.call_id)
        now = time.monotonic()
        session = call.session
        if session.calls.get(call.key) is call:
            del session.calls[call.key]
            self._active -= 1
            if not self._active:
                self._idle.set()
        if payload is not None and len(payload) > self.settings.max_frame_bytes - 1024:
            # The client could not receive it (its frame limit is ours): say so instead.
            error = ResultTooLarge(
                f"{call.tool!r} returned {len(payload)} bytes, more than EXAI_WS_MAX_BYTES "
                f"({self.settings.max_frame_bytes}) allows in one frame",
                bytes=len(payload),
            )
            payload = None
        if payload is not None:
            frame = self._result_frame(call, payload)
            outcome = str(ErrorCode.EXEC_ERROR) if tool_error else "ok"
        else:
            assert error is not None
            frame = self._error_frame(call.dialect, call.request_id, error)
            outcome = str(error.code)
        if not silent:
            session.send(frame)
            if session.acks:
                session.remember(call.key, frame)
        if outcome != "ok":
            self.errors_by_code[outcome] = self.errors_by_code.get(outcome, 0) + 1
            log.info(
                "call %r of session %s -> %s%s",
                call.tool[:64],
                session.id[:8],
                outcome,
                f": {error.message}" if error is not None else "",
            )
        self.calls_total += 1
        queue_ms = ((call.admitted_at or now) - call.received_at) * 1000.0
        self.record(
            CallRecord(
                time.time(),
                session.id,
                call.tool,
                call.provider,
                call.model,
                outcome,
                (now - call.received_at) * 1000.0,
                queue_ms,
                call.worker.slot if call.worker is not None else None,
                len(call.arguments),
                len(frame),
            )
        )
        lease = call.lease
        if lease is not None:
            call.lease = None
            for waiter, granted in self.scheduler.release(lease, now):
                self._start(waiter.payload, granted)

    def _answer_error_now(
        self,
        session: Session,
        dialect: str,
        request_id: msgspec.Raw,
        tool: str,
        exc: BrokerError,
        call: PendingCall | None = None,
    ) -> None:
        if call is not None:
            self._finish(call, error=exc)
            return
        session.send(self._error_frame(dialect, request_id, exc))
        code = str(exc.code)
        log.info("call %r of session %s -> %s: %s", tool[:64], session.id[:8], code, exc.message)
        self.errors_by_code[code] = self.errors_by_code.get(code, 0) + 1
        self.calls_total += 1
        self.record(
            CallRecord(time.time(), session.id, tool, None, None, code, 0.0, 0.0, None, 0, 0)
        )

    def _result_frame(self, call: PendingCall, payload: bytes) -> bytes:
        if call.dialect != "op":
            if call.modern:
                payload = stamp_result(payload, "tools/call")
            # What codec.result encodes, spliced: both the id and the result are raw JSON.
            return b'{"jsonrpc":"2.0","id":' + call.request_id + b',"result":' + payload + b"}"
        result = msgspec.json.decode(payload, type=_ToolResult)
        outputs = [c for c in result.content if isinstance(c, dict)]
        text = "\n".join(str(c.get("text", "")) for c in outputs if c.get("type") == "text")
        frame: dict[str, Any] = {
            "op": "call_tool_res",
            "request_id": call.request_id,
            "outputs": outputs,
            "text": text,
            "isError": result.isError,
        }
        if result.structuredContent is not None:
            frame["structuredContent"] = result.structuredContent
        if result.isError:
            frame["error"] = {"code": str(ErrorCode.EXEC_ERROR), "message": text}
        return self.codec.encode(frame)

    def _error_frame(self, dialect: str, request_id: msgspec.Raw, exc: BrokerError) -> bytes:
        if dialect == "op":
            return self.codec.op_error("call_tool_res", request_id, exc)
        return self.codec.error(request_id, exc)

    # --- views -----------------------------------------------------------------------

    def inflight(self) -> int:
        """Calls admitted or queued and not yet answered."""
        return self._active

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no call is in flight; False if the timeout came first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def _track(self, session: Session, call: PendingCall) -> None:
        session.calls[call.key] = call
        self._active += 1
        self._idle.clear()


def _worker_error(result: Result, tool: str) -> BrokerError:
    """The typed error for a worker's failed Result."""
    message = result.error_message or "the tool failed"
    kinds: dict[str | None, type[BrokerError]] = {
        ErrorCode.TOOL_NOT_FOUND: ToolNotFound,
        ErrorCode.OVER_CAPACITY: OverCapacity,
        ErrorCode.WORKER_LOST: WorkerLost,
        ErrorCode.INVALID_ARGUMENTS: InvalidArguments,
    }
    kind = kinds.get(result.error_code, BrokerError)
    if kind is OverCapacity:
        scope = "provider" if result.provider else "global"
        return OverCapacity(message, scope=scope, provider=result.provider, retry_after_ms=1000)
    return kind(message, tool=tool)
