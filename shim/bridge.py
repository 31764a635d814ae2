"""stdio <-> WebSocket: forwards a client's MCP JSON-RPC to the daemon and back.

The bridge is the shim's adapter and holds its state: the requests it still owes
(pending.py), the tools safe to re-send, the client's initialize. It parses nothing
itself: client_lines.py reads the client's lines, daemon_frames.py the daemon's
frames, replay.py says what a reconnect does to each owed request, and
connection.py keeps the daemon connected. Everything the shim does not need to
read passes through byte for byte.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

from exai.errors import JSONRPC_CODES, ErrorCode
from exai.settings import ShimSettings
from shim.client_lines import (
    INVALID_REQUEST,
    ClientRequest,
    Forward,
    Invalid,
    error_response,
    read_client_line,
)
from shim.connection import ConnectionLoop
from shim.daemon_frames import DaemonFrame, FrameKind, classify
from shim.pending import NOT_SENT, Pending, PendingTable
from shim.replay import Resend, after_reconnect, replayed_initialize, retry_safe_tools
from shim.websocket import WebSocket

__all__ = ["Bridge"]

log = logging.getLogger(__name__)


class Bridge:
    """One client, one daemon session, any number of reconnects."""

    def __init__(self, settings: ShimSettings, write_line: Callable[[bytes], None]) -> None:
        self.settings = settings
        self.write_line = write_line
        self.session_id = secrets.token_hex(16)
        self.pending = PendingTable(
            asyncio.get_running_loop(), settings.rpc_timeout_s, self._handle_rpc_timeout
        )
        self.safe_tools: set[str] = set()
        self.init_line: bytes | None = None
        self.initialized_line: bytes | None = None
        self.ws: WebSocket | None = None
        self.generation = 0
        self.ever_connected = False
        self.stdin_closed = False
        self.done = asyncio.Event()
        self.connection = ConnectionLoop(settings, self.session_id, self)
        self._replay_seq = 0
        self._replays: set[str] = set()
        # Cancels the client sent while no connection was up, for the next one.
        self._held_cancels: list[bytes] = []
        self._connected = asyncio.Event()

    async def run_connection(self) -> None:
        """Keep a connection to the daemon until the bridge is done."""
        await self.connection.run()

    # --- client side -----------------------------------------------------------------

    def handle_client_line(self, line: bytes) -> None:
        seen = read_client_line(line)
        if isinstance(seen, ClientRequest):
            self._handle_request(seen)
        elif isinstance(seen, Forward):
            if seen.method == "notifications/initialized":
                self.initialized_line = line
            elif seen.cancelled_key is not None:
                self._handle_cancel(seen.cancelled_key, line)
                return
            self._send(line)
        elif isinstance(seen, Invalid):
            self.write_line(seen.reply)

    def _handle_cancel(self, key: str, line: bytes) -> None:
        pending = self.pending.get(key)
        # The daemon sends no response to a cancelled request: stop waiting for one.
        self._forget(key)
        if self._connected.is_set():
            self._send(line)
        elif pending is not None and pending.sent:
            # The daemon may have the call (or its answer is on the way): it must hear of
            # the cancel once we are back, or the call runs on and holds its capacity.
            # One that never reached a daemon is simply not replayed.
            self._held_cancels.append(line)

    def _handle_request(self, request: ClientRequest) -> None:
        if request.method == "initialize":
            self.init_line = request.line
        if request.key in self.pending:
            self.write_line(
                error_response(request.request_id, INVALID_REQUEST, "request id already in use")
            )
            return
        limit = self.settings.max_frame_bytes
        if len(request.line) > limit:
            # The daemon would close the connection on it, and again on every re-send.
            self.write_line(
                error_response(
                    request.request_id,
                    JSONRPC_CODES[ErrorCode.INVALID_FRAME],
                    f"request of {len(request.line)} bytes exceeds the frame limit of "
                    f"{limit} bytes (EXAI_WS_MAX_BYTES)",
                    {"code": str(ErrorCode.INVALID_FRAME)},
                )
            )
            return
        pending = Pending(request)
        self.pending.add(pending)
        self._send_pending(pending)
        if self.connection.refused_outright:
            # Answer from a fresh attempt rather than the backoff's: a daemon started
            # meanwhile gets the request, and otherwise the refusal answers it at once.
            self.connection.try_now()

    def handle_stdin_eof(self) -> None:
        self.stdin_closed = True
        self._maybe_done()
        if not self.done.is_set():
            # The client may still read the answers it is owed, but a call that never
            # ends must not keep the shim alive after its client has left.
            asyncio.get_running_loop().call_later(
                self.settings.rpc_timeout_s, self._handle_eof_grace_over
            )

    def _handle_eof_grace_over(self) -> None:
        for pending in list(self.pending.values()):
            self._fail_pending(
                pending,
                ErrorCode.UNAVAILABLE,
                f"no answer within {self.settings.rpc_timeout_s:g} s (EXAI_SHIM_RPC_TIMEOUT) "
                "after the client closed the shim's stdin; the shim is exiting",
            )
        self.done.set()

    def handle_oversize(self, size: int) -> None:
        self.write_line(error_response(None, INVALID_REQUEST, f"line of {size} bytes is too large"))

    def abandon(self) -> None:
        """The client is gone, or stops us: nothing owed will be delivered, so stop.

        The connection then closes with 1000, which ends the session on the daemon:
        its calls are cancelled and their capacity freed, not kept for a resume."""
        self.pending.clear()
        self.stdin_closed = True
        self.done.set()

    # --- daemon side -----------------------------------------------------------------

    def handle_daemon_frame(self, frame: bytes) -> None:
        seen = classify(frame)
        kind = seen.kind
        if kind is FrameKind.ANSWER or kind is FrameKind.CUT_BY_RESTART:
            self._handle_answer(seen, frame)
        elif kind is FrameKind.NOTIFICATION:
            self.write_line(frame)  # progress and the like, for the client
        elif kind is FrameKind.ACK:
            self._handle_ack(seen)
        elif kind is FrameKind.REFUSAL:
            log.warning("daemon refused a frame: %s", seen.detail)

    def _handle_answer(self, seen: DaemonFrame, frame: bytes) -> None:
        key = seen.key
        assert key is not None
        if key in self._replays:
            self._replays.discard(key)
            return
        pending = self.pending.get(key)
        if pending is None:
            return  # a duplicate of an answer already delivered
        if seen.kind is FrameKind.CUT_BY_RESTART and pending.request.tool in self.safe_tools:
            # The daemon is restarting and this tool is safe to run again: keep the
            # request and re-send it to the next daemon instead of failing the client.
            pending.sent_generation = NOT_SENT
            return
        self.pending.pop(key)
        if pending.request.method == "tools/list":
            self.safe_tools |= retry_safe_tools(frame)
        self.write_line(frame)
        self._maybe_done()

    def _handle_ack(self, seen: DaemonFrame) -> None:
        pending = self.pending.get(seen.key) if seen.key is not None else None
        if pending is not None:
            pending.acked = True
            self.pending.stop_timer(pending)

    # --- the connection's life -------------------------------------------------------

    def awaited_ids(self) -> list[Any]:
        return [p.request.request_id for p in self.pending.values() if p.sent]

    def handle_connected(self, ws: WebSocket, resumed: bool) -> None:
        self.ws = ws
        self.generation += 1
        self._connected.set()
        if self.ever_connected and not resumed:
            self._replay_session()
        held, self._held_cancels = self._held_cancels, []
        if resumed:
            # A restarted daemon knows none of these calls: only a resumed session needs them.
            for line in held:
                self._send(line)
        for pending in list(self.pending.values()):
            fate = after_reconnect(pending, resumed, self.safe_tools)
            tool = pending.request.tool
            if fate is Resend.SEND:
                self._send_pending(pending)
            elif fate is Resend.RESEND_SAFE:
                log.info("daemon restarted; re-sending call to read-only tool %s", tool)
                self._send_pending(pending)
            else:
                self._fail_pending(
                    pending,
                    ErrorCode.WORKER_LOST,
                    f"the daemon restarted while {tool!r} was running; it may or may not have "
                    "completed, and it is not marked idempotent, so it was not re-run",
                )
        self.ever_connected = True

    def handle_disconnected(self) -> None:
        self._connected.clear()
        self.ws = None
        for pending in self.pending.values():
            if pending.acked:
                # Its ack was from a connection that is gone: without a timer of its own
                # again, a daemon that stays down would leave the client waiting forever.
                pending.acked = False
                self.pending.restart_timer(pending)

    def handle_unauthorized(self, message: str) -> None:
        """Answer every request not yet sent to a daemon: retrying will not help."""
        self._fail_unsent(ErrorCode.UNAUTHORIZED, message)

    def handle_no_daemon(self, message: str) -> None:
        """Answer every request not yet sent: no daemon ever had them, none listens now."""
        self._fail_unsent(ErrorCode.UNAVAILABLE, message)

    def _fail_unsent(self, code: ErrorCode, message: str) -> None:
        for pending in list(self.pending.values()):
            if not pending.sent:
                self._fail_pending(pending, code, message)

    def handle_oversized_frame(self, head: bytes, size: int, limit: int) -> None:
        """The daemon sent a frame over our limit (skipped): answer its request instead."""
        key = classify(head).key
        pending = self.pending.get(key) if key is not None else None
        if pending is None:
            log.warning("skipped a daemon frame of %d bytes (limit %d)", size, limit)
            return
        self._fail_pending(
            pending,
            ErrorCode.RESULT_TOO_LARGE,
            f"the result of {size} bytes exceeds the shim's frame limit of {limit} bytes "
            "(EXAI_WS_MAX_BYTES in the shim's env)",
        )

    def handle_frame_refused_as_too_large(self, reason: str) -> None:
        """The daemon closed the connection over a frame too large for it: answer the
        request that must have been it, so that the reconnect does not re-send it."""
        suspects = [
            pending
            for pending in self.pending.values()
            if pending.sent_generation == self.generation and not pending.acked
        ]
        if not suspects:
            return
        culprit = max(suspects, key=lambda pending: len(pending.request.line))
        self._fail_pending(
            culprit,
            ErrorCode.INVALID_FRAME,
            f"the daemon refused a request of {len(culprit.request.line)} bytes as larger "
            f"than its frame limit (EXAI_WS_MAX_BYTES; it said: {reason or 'message too big'})",
        )

    def _replay_session(self) -> None:
        """A new daemon knows nothing of this client: re-run its initialize first."""
        if self.init_line is None:
            return
        self._replay_seq += 1
        key, line = replayed_initialize(self.init_line, self._replay_seq)
        self._replays.add(key)
        self._send(line)
        if self.initialized_line is not None:
            self._send(self.initialized_line)

    # --- sending and answering -------------------------------------------------------

    def _send_pending(self, pending: Pending) -> None:
        if self.ws is not None and self._connected.is_set():
            if pending.sent and not pending.acked:
                # A re-send after a reconnect: it gets a full RPC timeout of its own.
                self.pending.restart_timer(pending)
            pending.sent_generation = self.generation
            self._send(pending.request.line)

    def _send(self, line: bytes) -> None:
        ws = self.ws
        if ws is None or not self._connected.is_set():
            return
        # A failed send surfaces as a closed connection in the reader; the request stays
        # pending and is re-sent after the reconnect.
        ws.send_text_nowait(line)

    def _fail_pending(self, pending: Pending, code: ErrorCode, message: str) -> None:
        request = pending.request
        self.pending.pop(request.key)
        self.write_line(
            error_response(request.request_id, JSONRPC_CODES[code], message, {"code": str(code)})
        )
        self._maybe_done()

    def _forget(self, key: str) -> None:
        self.pending.pop(key)
        self._maybe_done()

    def _handle_rpc_timeout(self, pending: Pending) -> None:
        if self._connected.is_set() and not pending.retried:
            # No ack in time: the connection may be half-dead. Reconnect and re-send once;
            # the daemon joins the re-sent id to the original call, so it cannot run twice.
            # The retry's own timer starts when it is re-sent on the new connection.
            pending.retried = True
            log.warning(
                "no answer to %s within %g s; reconnecting and retrying once",
                pending.request.method,
                self.settings.rpc_timeout_s,
            )
            self.connection.reconnect()
            return
        self._fail_pending(pending, ErrorCode.UNAVAILABLE, self._unreachable_message())

    def _unreachable_message(self) -> str:
        return (
            f"exai-broker daemon at {self.settings.url} did not answer within "
            f"{self.settings.rpc_timeout_s:g} s (EXAI_SHIM_RPC_TIMEOUT); last error: "
            f"{self.connection.last_error}. Is the daemon running (python -m broker)?"
        )

    def _maybe_done(self) -> None:
        if self.stdin_closed and not self.pending:
            self.done.set()
