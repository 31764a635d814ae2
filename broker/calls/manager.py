"""The life of a tool call in the broker: admit, dispatch, await, answer, account.

Everything here runs as plain callbacks on the event loop (no task per call): a
frame arrives, the call is admitted and sent to a worker; the worker's result
arrives, the lease is released and the answer is queued on the session. A call's
state (call.py) says what it holds, and every path out of a call (result, tool
error, timeout, cancel, worker loss, session end, queue expiry, shutdown, refusal
for capacity) goes through `_finish`, whose move to DONE is allowed once: so the
call's capacity is released exactly once. A request refused before it is a call
(shutting down, unknown tool, bad arguments) holds nothing: it is answered and
counted, no more.

Call timeouts and deferred shim acks each run on one loop timer (timeline.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from broker.calls.accounting import CallRecord, Tally
from broker.calls.answers import (
    AnswerFrames,
    MalformedResult,
    over_capacity,
    queue_wait_expired,
    server_error,
    timed_out,
    too_large,
    worker_error,
    worker_lost,
)
from broker.calls.call import CallState, PendingCall, move
from broker.calls.catalog import Catalog
from broker.calls.forwarding import Forwarder
from broker.calls.intake import Intake
from broker.calls.placement import Placement
from broker.calls.rounds import Rounds, input_required_result
from broker.calls.scheduler import Lease, Rejection, Scheduler, Waiter, server_lane
from broker.calls.session import EVICTED, Session
from broker.calls.timeline import Timeline
from broker.pool.supervisor import Supervisor, WorkerHandle
from broker.router.codec import Dialect, FrameCodec
from exai.errors import BrokerError, Cancelled, ErrorCode, ShuttingDown, WorkerLost
from exai.ipc import Call, Progress, Result, SessionEnded
from exai.models import ModelRegistry
from exai.settings import Settings
from exai.toolresult import MalformedToolResult, check_tool_result

# CallRecord and PendingCall are the manager's vocabulary: importable from here too.
__all__ = ["CallManager", "CallRecord", "PendingCall"]

# How long a shim's call may run before the daemon acknowledges it separately.
SHIM_ACK_DELAY_S = 0.05

# Aliases, because looking a member up on an Enum class is a descriptor call (~0.1 µs),
# and every call tests its state and dialect several times.
_OP = Dialect.OP
_RECEIVED = CallState.RECEIVED
_QUEUED = CallState.QUEUED
_HELD = CallState.HELD
_RUNNING = CallState.RUNNING
_DONE = CallState.DONE


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
        self.catalog = Catalog.empty()
        # Calls sent to a worker that has not answered them yet (even if they are DONE).
        self.calls: dict[int, PendingCall] = {}
        # HELD calls waiting for a worker to be ready.
        self.backlog: deque[PendingCall] = deque()
        self.placement = Placement(settings.isolation)
        # The hosted server requests are forwarded to (`forward`), when there is one.
        self.forwarder: Forwarder | None = None
        self._rounds = Rounds()
        self.shutting_down = False
        # Set once the drain grace is over: no call starts after that, queued or not.
        self.closed = False
        self._intake = Intake(settings.default_model, registry or ModelRegistry())
        self._tally = Tally(record)
        self._frames = AnswerFrames(codec)
        self._max_frame_bytes = settings.max_frame_bytes
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

    @property
    def calls_total(self) -> int:
        """Calls finished or refused since start."""
        return self._tally.calls_total

    @property
    def errors_by_code(self) -> dict[str, int]:
        """Calls that did not end "ok", by ErrorCode (EXEC_ERROR for tool errors)."""
        return self._tally.errors_by_code

    # --- admission -------------------------------------------------------------------

    def submit(
        self,
        session: Session,
        dialect: Dialect,
        request_id: msgspec.Raw,
        tool: str,
        arguments: msgspec.Raw,
        progress_token: msgspec.Raw | None,
        *,
        modern: bool = False,
    ) -> None:
        """Start one call, or answer it at once with a typed error."""
        key = bytes(request_id)
        if self._known(session, dialect, request_id, key):
            return
        now = time.monotonic()
        try:
            self._check_open()
            raw_args, route, continuation_id = self._intake.check(self.catalog, tool, arguments)
        except BrokerError as exc:
            self._refuse(session, dialect, request_id, tool, exc)
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
            continuation_id,
            modern,
        )
        self._start(call, now)

    def forward(
        self,
        session: Session,
        dialect: Dialect,
        request_id: msgspec.Raw,
        method: str,
        params: bytes | None,
        progress_token: msgspec.Raw | None,
        *,
        label: str,
        modern: bool = False,
        target: Forwarder | None = None,
        server: str | None = None,
    ) -> None:
        """Start a request for a hosted server: admitted like a tool call, its params
        and its answer passed through as they are. `label` names it in metrics, and
        `server` the hosted server; `target` places it (the daemon's one hosted server
        when None)."""
        key = bytes(request_id)
        if self._known(session, dialect, request_id, key):
            return
        now = time.monotonic()
        try:
            self._check_open()
            provider = (
                self._intake.provider_of(self.catalog, label, params)
                if method == "tools/call"
                else None
            )
            if server is not None and server_lane(server) in self.scheduler.provider_caps:
                provider = server_lane(server)
        except BrokerError as exc:
            self._refuse(session, dialect, request_id, label, exc)
            return
        self._next_id += 1
        call = PendingCall(
            self._next_id,
            session,
            key,
            request_id,
            dialect,
            label,
            b"",
            provider,
            None,
            progress_token,
            now,
            None,
            modern,
            method,
            params,
            forwarder=target,
            server=server,
        )
        self._start(call, now)

    def _known(
        self, session: Session, dialect: Dialect, request_id: msgspec.Raw, key: bytes
    ) -> bool:
        """True when a request id is taken care of already: a re-sent id joins the call
        still running, or gets the answer its session kept. It never runs twice."""
        existing = session.calls.get(key)
        if existing is not None:
            self._ack(existing)
            return True
        return session.acks and self._replayed(session, dialect, request_id, key)

    def _check_open(self) -> None:
        if self.shutting_down:
            raise ShuttingDown("the daemon is shutting down; retry after it restarts")

    def _refuse(
        self,
        session: Session,
        dialect: Dialect,
        request_id: msgspec.Raw,
        label: str,
        exc: BrokerError,
    ) -> None:
        """Answer a request refused before it became a call: it holds nothing."""
        session.send(self._frames.error(dialect, request_id, exc))
        self._tally.refused(session.id, label, exc)

    def _replayed(
        self, session: Session, dialect: Dialect, request_id: msgspec.Raw, key: bytes
    ) -> bool:
        """Answer a shim's re-sent request from what its session kept, if it is one: the
        call is never run twice, whatever became of its answer meanwhile."""
        answered = session.replay(key)
        if answered is None:
            return False
        if answered == EVICTED:
            exc = WorkerLost(
                "this request completed while the shim was away, but its answer could not "
                "be kept for it (too many or too large answers); it was not run again",
                cause="answer_evicted",
            )
            answered = self._frames.error(dialect, request_id, exc)
        session.send(answered)
        return True

    def _start(self, call: PendingCall, now: float) -> None:
        """Admit, queue or refuse a RECEIVED call."""
        outcome = self.scheduler.try_acquire(call.session.id, call.provider, now)
        if isinstance(outcome, Lease):
            self._track(call)
            self._admit(call, outcome)
            return
        if self._queue_timeout(call) > 0:
            queued = self.scheduler.enqueue(call.session.id, call.provider, call, now)
            if isinstance(queued, Waiter):
                self._queue(call, queued, outcome)
                return
            outcome = queued
        self._finish(call, error=over_capacity(outcome))

    def _queue_timeout(self, call: PendingCall) -> float:
        """How long `call` may wait for capacity: an op client is told at once by
        default (it retries on OVER_CAPACITY), an MCP client's burst waits."""
        settings = self.settings
        return settings.queue_timeout_s if call.dialect is _OP else settings.mcp_queue_timeout_s

    def _queue(self, call: PendingCall, waiter: Waiter, rejection: Rejection) -> None:
        """RECEIVED -> QUEUED: wait for capacity, at most the queue timeout."""
        move(call, _QUEUED)
        call.waiter = waiter
        self._track(call)
        call.timer = self._loop.call_later(
            self._queue_timeout(call), self._queue_expired, call, rejection
        )
        self._ack(call)

    def _admit(self, call: PendingCall, lease: Lease) -> None:
        """A RECEIVED or QUEUED call got its capacity: its timeout starts, it runs."""
        queued = call.state is _QUEUED
        call.lease = lease
        call.admitted_at = time.monotonic()
        if queued:
            call.stop_queue_timer()
        if self.closed:
            # Capacity freed by the calls shutdown fails: this one must not start now.
            move(call, _HELD)
            self._finish(call, error=_never_started())
            return
        self._deadlines.add(call.call_id, call)
        if not queued:
            self._ack(call)  # a queued call had its ack when it was queued
        self._dispatch(call)

    def _dispatch(self, call: PendingCall) -> None:
        """Send an admitted call to a worker, or hold it until one is ready."""
        if call.method is not None:
            self._dispatch_forwarded(call)
            return
        worker = self.placement.pick(self.supervisor.workers, call.session.id, call.continuation_id)
        if worker is None:
            # Every worker is restarting or being recycled: hold the call (its capacity is
            # taken, its timeout runs) until one is ready.
            if call.state is not _HELD:
                move(call, _HELD)
            self.backlog.append(call)
            return
        move(call, _RUNNING)
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

    def _dispatch_forwarded(self, call: PendingCall) -> None:
        """Send an admitted request to its hosted instance, or hold it while one starts."""
        forwarder = call.forwarder or self.forwarder
        assert forwarder is not None and call.method is not None
        try:
            target = forwarder.place(call.session.id)
        except BrokerError as exc:
            if call.state is not _HELD:
                move(call, _HELD)  # it holds its lease: finishing from HELD gives it back
            self._finish(call, error=exc)
            return
        if target is None:
            if call.state is not _HELD:
                move(call, _HELD)
            self.backlog.append(call)
            return
        move(call, _RUNNING)
        call.target = target
        self.calls[call.call_id] = call
        token = call.progress_token
        target.request(
            call.call_id, call.method, call.params, bytes(token) if token is not None else None
        )

    def _ack(self, call: PendingCall) -> None:
        if call.dialect is _OP:
            call.session.send(self._frames.call_ack(call))
        elif call.session.acks:
            # A shim only needs the ack to stop its RPC timer (seconds long), and the
            # answer does that too: most calls answer before the ack would go, and then
            # it never goes, sparing a frame each way.
            self._acks.add(call.call_id, call)

    def _send_shim_ack(self, call: PendingCall) -> None:
        if call.state is not _DONE:
            call.session.send(self._frames.shim_ack(call))

    def _queue_expired(self, call: PendingCall, rejection: Rejection) -> None:
        waiter = call.waiter
        if call.state is not _QUEUED or waiter is None or not self.scheduler.withdraw(waiter):
            return
        call.timer = None
        # Say which cap is full now: it may not be the one that queued the call.
        scope = self.scheduler.blocking_scope(call.session.id, call.provider) or rejection.scope
        now_full = Rejection(scope, call.provider, rejection.retry_after_ms)
        self._finish(call, error=queue_wait_expired(now_full, self._queue_timeout(call)))

    # --- worker events ---------------------------------------------------------------

    def handle_worker_ready(self, worker: WorkerHandle) -> None:
        """A worker (re)started: run the calls that were waiting for one."""
        backlog, self.backlog = self.backlog, deque()
        for call in backlog:
            if call.state is _HELD:
                self._dispatch(call)

    def handle_worker_message(self, worker: WorkerHandle, message: Any) -> None:
        """A Result or Progress from a worker."""
        if isinstance(message, Result):
            self._handle_result(worker, message)
        elif isinstance(message, Progress):
            self._handle_progress(message)

    def _handle_result(self, worker: WorkerHandle, result: Result) -> None:
        worker.calls.discard(result.call_id)
        worker.cancelled.pop(result.call_id, None)
        call = self.calls.pop(result.call_id, None)
        if call is None or call.state is _DONE:
            return
        if result.result is not None:
            self._finish(call, payload=result.result, tool_error=result.is_error)
        elif result.error_code == ErrorCode.CANCELLED:
            self._finish(call, error=Cancelled("the call was cancelled"))
        else:
            self._finish(call, error=worker_error(result, call.tool))

    def _handle_progress(self, progress: Progress) -> None:
        call = self.calls.get(progress.call_id)
        if call is None or call.state is _DONE or call.progress_token is None:
            return
        call.session.send(self._frames.progress(call, progress))

    # --- hosted server events --------------------------------------------------------

    def handle_reply(self, call_id: int, result: bytes | None, error: bytes | None) -> None:
        """The hosted server answered a forwarded request: its result or error, raw."""
        call = self.calls.pop(call_id, None)
        if call is None or call.state is _DONE:
            return
        if call.parked is not None:
            # Its client was sent input_required: the answer goes to the retry.
            call.parked.reply = (result, error)
            return
        self._reply(call, result, error)

    def _reply(self, call: PendingCall, result: bytes | None, error: bytes | None) -> None:
        if result is not None:
            tool_error = False
            if call.method == "tools/call":
                try:
                    tool_error = check_tool_result(result, call.tool)
                except MalformedToolResult as exc:
                    self._finish(call, error=exc)
                    return
            self._finish(call, payload=result, tool_error=tool_error)
        else:
            self._finish(call, error=server_error(error or b"{}"), raw_error=error)

    def handle_hosted_progress(self, call_id: int, params: bytes) -> None:
        call = self.calls.get(call_id)
        if call is None or call.state is _DONE or call.progress_token is None:
            return
        call.session.send(self._frames.forwarded_progress(call, params))

    def handle_hosted_lost(self, call_id: int, reason: str) -> None:
        """The instance running a forwarded request exited: it fails (it may have run)."""
        call = self.calls.pop(call_id, None)
        if call is not None and call.state is not _DONE:
            self._finish(call, error=WorkerLost(f"{reason} while running {call.tool!r}"))

    # --- 2026-07-28 multi-round-trip requests -----------------------------------------

    def input_required(
        self, session_id: str, handles: list[int], key: str, request: bytes
    ) -> bool | None:
        """A server request for `session_id`, whose calls in flight on the instance are
        `handles`: True when it went to a 2026-07-28 call of the session as an
        `input_required` round, False when several such calls could be the one, None
        when the session has none (the request is sent to it as JSON-RPC)."""
        modern = [
            call
            for handle in handles
            if (call := self.calls.get(handle)) is not None
            and call.session.id == session_id
            and call.modern
            and call.dialect is not _OP
            and call.state is _RUNNING
        ]
        if not modern:
            return None
        if len(modern) > 1:
            return False
        call = modern[0]
        if call.parked is not None:
            call.parked.queued.append((key, request))
        else:
            self._send_round(call, [(key, request)])
        return True

    def _send_round(self, call: PendingCall, requests: list[tuple[str, bytes]]) -> None:
        """Answer the call's request with input_required; the call itself keeps running
        on the server, under a key of its own until the client retries."""
        session = call.session
        parked = self._rounds.park(call, session.id)
        call.parked = parked
        self._acks.discard(call.call_id)
        frame = self._frames.raw_result(
            call.request_id, input_required_result(requests, parked.state)
        )
        del session.calls[call.key]
        call.key = b"\0" + parked.state.encode()
        session.calls[call.key] = call
        session.send(frame)

    def resume(
        self,
        session: Session,
        request_id: msgspec.Raw,
        state: str,
        responses: dict[str, msgspec.Raw] | None,
    ) -> bool:
        """A 2026-07-28 retry: its responses go to the server, and it takes over the
        waiting call. False when `state` names no round of this session."""
        parked = self._rounds.take(state, session.id)
        if parked is None or parked.call.state is _DONE:
            return False
        call = parked.call
        forwarder = call.forwarder or self.forwarder
        assert forwarder is not None
        for key, response in (responses or {}).items():
            forwarder.answer_input(session.id, key, bytes(response))
        del session.calls[call.key]
        call.request_id = request_id
        call.key = bytes(request_id)
        session.calls[call.key] = call
        call.parked = None
        if parked.queued:
            self._send_round(call, parked.queued)
        elif parked.reply is not None:
            self._reply(call, *parked.reply)
        return True

    def round_owner(self, state: str) -> str | None:
        """The session whose 2026-07-28 round `state` names, if one is open."""
        return self._rounds.owner(state)

    def retry_held(self) -> None:
        """A hosted instance started (or failed to): the requests held for one go now."""
        backlog, self.backlog = self.backlog, deque()
        for call in backlog:
            if call.state is _HELD:
                self._dispatch(call)

    def handle_worker_lost(self, worker: WorkerHandle, call_ids: set[int], reason: str) -> None:
        """A worker died holding `call_ids`: they fail (they may have partly run)."""
        for call_id in call_ids:
            call = self.calls.pop(call_id, None)
            if call is not None and call.state is not _DONE:
                self._finish(call, error=worker_lost(reason, call.tool, worker.slot))
        self.placement.forget_worker(worker.slot)

    # --- timeouts and cancellation ---------------------------------------------------

    def _timed_out(self, call: PendingCall) -> None:
        if call.state is _DONE:
            return
        self._abandon(call)
        self._finish(call, error=timed_out(call.tool, self.settings.call_timeout_s))

    def cancel(self, session: Session, request_id: msgspec.Raw, *, answer: bool) -> bool:
        """Cancel a session's call by its request id. MCP cancels get no answer."""
        call = session.calls.get(bytes(request_id))
        if call is None or call.state is _DONE:
            return False
        self._abandon(call)
        self._finish(call, error=Cancelled("cancelled by the client"), silent=not answer)
        return True

    def end_session(self, session: Session) -> None:
        """The session is gone for good: stop its calls, free its capacity."""
        session.closed = True
        if self.placement.per_session:
            self.placement.forget_session(session.id)
            for worker in self.supervisor.live_workers():
                worker.send(SessionEnded(session.id))
        for call in list(session.calls.values()):
            if call.state is not _DONE:
                self._abandon(call)
                self._finish(call, error=Cancelled("the session ended"), silent=True)
        if self.forwarder is not None:
            self.forwarder.end_session(session.id)

    def close(
        self, sessions: Iterable[Session], running_error: Callable[[PendingCall], BrokerError]
    ) -> None:
        """The drain is over: answer every call of `sessions` still open. Those that
        never started (queued, or held for a worker) get SHUTTING_DOWN; the running ones
        `running_error(call)`. Queued calls go first, so that no capacity the others
        give back starts one."""
        self.closed = True
        self.shutting_down = True
        tracked = [call for session in sessions for call in list(session.calls.values())]
        for call in tracked:
            if call.state is _QUEUED:
                self.fail(call, _never_started())
        for call in tracked:
            if call.state is _HELD:
                self.fail(call, _never_started())
            elif call.state is _RUNNING:
                self.fail(call, running_error(call))

    def fail(self, call: PendingCall, error: BrokerError) -> None:
        """End a call with `error` now, telling its worker (if any) to stop it."""
        if call.state is _DONE:
            return
        self._abandon(call)
        self._finish(call, error=error)

    def _abandon(self, call: PendingCall) -> None:
        """Stop what a call is waiting on before it is finished early."""
        state = call.state
        if state is _QUEUED:
            assert call.waiter is not None
            self.scheduler.withdraw(call.waiter)
        elif state is _RUNNING:
            if call.target is not None:
                self.calls.pop(call.call_id, None)
                call.target.cancel(call.call_id)
                return
            assert call.worker is not None
            self.supervisor.cancel_call(call.worker, call.call_id)

    # --- completion ------------------------------------------------------------------

    def _finish(
        self,
        call: PendingCall,
        *,
        payload: bytes | None = None,
        error: BrokerError | None = None,
        silent: bool = False,
        tool_error: bool = False,
        raw_error: bytes | None = None,
    ) -> None:
        left = move(call, _DONE)
        session = call.session
        if call.parked is not None:
            # Its request was answered with input_required, and the client never retried.
            self._rounds.drop(call.parked.state)
            silent = True
        if left is not _RECEIVED:
            # It was tracked, and had its queue-wait timer or its deadline armed.
            if left is _QUEUED:
                call.stop_queue_timer()
            else:
                self._deadlines.discard(call.call_id)
            self._acks.discard(call.call_id)
            del session.calls[call.key]
            self._active -= 1
            if not self._active:
                self._idle.set()
        now = time.monotonic()
        try:
            frame = b""
            if payload is not None:
                try:
                    frame = self._frames.result(call, payload)
                    outcome = str(ErrorCode.EXEC_ERROR) if tool_error else "ok"
                except MalformedResult as exc:
                    error = exc
                # The limit is on the frame sent, not the payload: an op frame carries the
                # text twice. The client could not receive a bigger one (its frame limit
                # is ours): say so instead.
                if len(frame) > self._max_frame_bytes:
                    error = too_large(call.tool, len(frame), self._max_frame_bytes)
                    frame = b""
            if not frame:
                assert error is not None
                if raw_error is not None and call.dialect is not _OP:
                    # The hosted server's own error, as it wrote it.
                    frame = self._frames.raw_error(call.request_id, raw_error)
                else:
                    frame = self._frames.error(call.dialect, call.request_id, error)
                outcome = str(error.code)
            if not silent:
                session.send(frame)
                if session.acks:
                    session.remember(call.key, frame)
            self._tally.finished(call, outcome, len(frame), error, now)
        finally:
            # Whatever still refers to a finished call (a timer's arguments, a task's
            # local) must not keep its payload, which may be a MiB.
            call.arguments = b""
            call.params = None
            # The call is DONE already: whatever went wrong answering it, its capacity
            # must go back now, or it is never given back.
            if left is _HELD or left is _RUNNING:
                assert call.lease is not None
                for waiter, granted in self.scheduler.release(call.lease, now):
                    self._admit(waiter.payload, granted)

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

    def _track(self, call: PendingCall) -> None:
        call.session.calls[call.key] = call
        self._active += 1
        self._idle.clear()


def _never_started() -> ShuttingDown:
    return ShuttingDown("the daemon shut down before this call started; it did not run")
