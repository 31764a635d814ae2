"""stdio <-> WebSocket: forwards a client's MCP JSON-RPC to the daemon and back.

The shim parses only what it must: request ids (to know what it still owes the
client), the client's `initialize` (to replay it after a daemon restart) and
`tools/list` results (to know which tools are safe to re-send). Everything else
passes through byte for byte.

Never losing or doubling a call rests on three rules:
- every request stays in `pending` until its response reaches the client;
- on reconnect to the same daemon (session resumed) pending requests are re-sent
  with their original ids, and the daemon joins them to the calls it already has;
- on a restarted daemon, only calls to read-only or idempotent tools are re-sent;
  the others are answered with WORKER_LOST, since they may or may not have run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import random
import re
import secrets
import sys
from collections.abc import Callable
from typing import Any

from exai.errors import JSONRPC_CODES, ErrorCode
from exai.settings import ShimSettings
from shim import websocket
from shim.autostart import Autostarter
from shim.websocket import ConnectionClosed, HandshakeError, WebSocket

__all__ = ["Bridge"]

log = logging.getLogger("shim")

BACKOFF_START_S = 0.05
BACKOFF_MAX_S = 2.0
REPLAY_ID_PREFIX = "exai-shim-replay-"
_RESPONSE_PREFIX = b'{"jsonrpc":"2.0","id":'
_id_decoder = json.JSONDecoder()


@dataclasses.dataclass(slots=True, eq=False)
class Pending:
    """A client request the shim still owes an answer for."""

    key: str
    line: bytes
    method: str
    tool: str | None
    sent_generation: int = -1
    acked: bool = False
    retried: bool = False
    timer: asyncio.TimerHandle | None = None


def id_key(value: Any) -> str:
    """A canonical text for a JSON-RPC id, equal for the same id on both sides."""
    return json.dumps(value, separators=(",", ":"))


def response_id_key(frame: bytes) -> str | None:
    """The id of a daemon response, read without decoding the (maybe large) result."""
    if frame.startswith(_RESPONSE_PREFIX):
        text = frame[len(_RESPONSE_PREFIX) : len(_RESPONSE_PREFIX) + 1024].decode(
            "utf-8", "replace"
        )
        try:
            value, _ = _id_decoder.raw_decode(text)
            return id_key(value)
        except ValueError:
            pass  # an id longer than the window: fall back to a full parse
    try:
        message = json.loads(frame)
    except ValueError:
        return None
    if isinstance(message, dict) and "id" in message and "method" not in message:
        return id_key(message["id"])
    return None


class Bridge:
    """One client, one daemon session, any number of reconnects."""

    def __init__(self, settings: ShimSettings, write_line: Callable[[bytes], None]) -> None:
        self.settings = settings
        self.write_line = write_line
        self.session_id = secrets.token_hex(16)
        self.pending: dict[str, Pending] = {}
        self.safe_tools: set[str] = set()
        self.init_line: bytes | None = None
        self.initialized_line: bytes | None = None
        self.ws: WebSocket | None = None
        self.generation = 0
        self.ever_connected = False
        self.last_error = "not connected yet"
        self.stdin_closed = False
        self.done = asyncio.Event()
        self._replay_seq = 0
        self._replays: set[str] = set()
        self._loop = asyncio.get_running_loop()
        self._connected = asyncio.Event()
        self._reconnect_now = asyncio.Event()
        self.autostarter: Autostarter | None = (
            Autostarter(settings.log_dir) if settings.autostart else None
        )

    # --- client side -----------------------------------------------------------------

    def handle_client_line(self, line: bytes) -> None:
        try:
            message = json.loads(line)
            if not line.isascii():
                line.decode("utf-8")
            if b"\\ud" in line or b"\\uD" in line:
                # A lone surrogate escape parses but cannot travel on as UTF-8.
                json.dumps(message, ensure_ascii=False).encode("utf-8")
        except (ValueError, RecursionError) as exc:
            self._reply_error(_guess_id(line), -32700, f"parse error: {exc}", None)
            return
        if not isinstance(message, dict):
            # A batch or a bare value: the daemon would refuse it too; answer here.
            self._reply_error(None, -32600, "expected one JSON-RPC object per line", None)
            return
        method = message.get("method")
        if message.get("jsonrpc") != "2.0":
            if "id" in message or method is not None:
                request_id = message.get("id") if _valid_id(message.get("id")) else None
                self._reply_error(request_id, -32600, 'expected "jsonrpc": "2.0"', None)
            return
        if "id" in message and not _valid_id(message["id"]):
            self._reply_error(None, -32600, "a request id must be a string or an integer", None)
            return
        if "id" in message and isinstance(method, str):
            key = id_key(message["id"])
            params = message.get("params")
            tool = (
                params.get("name") if method == "tools/call" and isinstance(params, dict) else None
            )
            if method == "initialize":
                self.init_line = line
            if key in self.pending:
                self._reply_error(message["id"], -32600, "request id already in use", None)
                return
            pending = Pending(key, line, method, tool if isinstance(tool, str) else None)
            self.pending[key] = pending
            pending.timer = self._loop.call_later(
                self.settings.rpc_timeout_s, self._rpc_timeout, pending
            )
            self._send_pending(pending)
            return
        if method == "notifications/initialized":
            self.initialized_line = line
        elif method == "notifications/cancelled":
            params = message.get("params")
            if isinstance(params, dict) and "requestId" in params:
                # The daemon sends no response to a cancelled request: stop waiting for one.
                self._forget(id_key(params["requestId"]))
        self._send(line)

    def handle_stdin_eof(self) -> None:
        self.stdin_closed = True
        self._maybe_done()

    def handle_oversize(self, size: int) -> None:
        self._reply_error(None, -32600, f"line of {size} bytes is too large", None)

    # --- daemon side -----------------------------------------------------------------

    def handle_daemon_frame(self, frame: bytes) -> None:
        if frame.startswith(b'{"op":'):
            self._handle_op(frame)
            return
        key = response_id_key(frame)
        if key is None:
            self.write_line(frame)  # a notification (progress) for the client
            return
        if key in self._replays:
            self._replays.discard(key)
            return
        pending = self.pending.get(key)
        if pending is None:
            return  # a duplicate of an answer already delivered
        if _cut_by_restart(frame) and pending.tool in self.safe_tools:
            # The daemon is restarting and this tool is safe to run again: keep the
            # request and re-send it to the next daemon instead of failing the client.
            pending.sent_generation = -1
            return
        del self.pending[key]
        if pending.timer is not None:
            pending.timer.cancel()
        if pending.method == "tools/list":
            self._learn_tools(frame)
        self.write_line(frame)
        self._maybe_done()

    def _handle_op(self, frame: bytes) -> None:
        try:
            message = json.loads(frame)
        except ValueError:
            return
        if message.get("op") == "ack":
            pending = self.pending.get(id_key(message.get("id")))
            if pending is not None:
                pending.acked = True
                if pending.timer is not None:
                    pending.timer.cancel()
                    pending.timer = None
        elif message.get("op") == "error":
            log.warning("daemon refused a frame: %s", message.get("error"))

    def _learn_tools(self, frame: bytes) -> None:
        try:
            tools = json.loads(frame).get("result", {}).get("tools", [])
        except (ValueError, AttributeError):
            return
        for tool in tools:
            annotations = tool.get("annotations") or {}
            if annotations.get("readOnlyHint") or annotations.get("idempotentHint"):
                self.safe_tools.add(tool.get("name"))

    # --- sending ---------------------------------------------------------------------

    def _send_pending(self, pending: Pending) -> None:
        if self.ws is not None and self._connected.is_set():
            if pending.sent_generation != -1 and not pending.acked:
                # A re-send after a reconnect: it gets a full RPC timeout of its own.
                self._restart_timer(pending)
            pending.sent_generation = self.generation
            self._send(pending.line)

    def _restart_timer(self, pending: Pending) -> None:
        if pending.timer is not None:
            pending.timer.cancel()
        pending.timer = self._loop.call_later(
            self.settings.rpc_timeout_s, self._rpc_timeout, pending
        )

    def _send(self, line: bytes) -> None:
        ws = self.ws
        if ws is None or not self._connected.is_set():
            return
        # A failed send surfaces as a closed connection in the reader; the request stays
        # pending and is re-sent after the reconnect.
        ws.send_text_nowait(line)

    def _reply_error(
        self, request_id: Any, code: int, message: str, data: dict[str, Any] | None
    ) -> None:
        error: dict[str, Any] = {"code": code, "message": message}
        if data:
            error["data"] = data
        self.write_line(
            json.dumps(
                {"jsonrpc": "2.0", "id": request_id, "error": error}, separators=(",", ":")
            ).encode()
        )

    def _fail_pending(self, pending: Pending, code: ErrorCode, message: str) -> None:
        self.pending.pop(pending.key, None)
        if pending.timer is not None:
            pending.timer.cancel()
        self._reply_error(
            json.loads(pending.key), JSONRPC_CODES[code], message, {"code": str(code)}
        )
        self._maybe_done()

    def _fail_unsent(self, code: ErrorCode, message: str) -> None:
        """Answer every request not yet sent to a daemon: retrying will not help."""
        for pending in list(self.pending.values()):
            if pending.sent_generation == -1:
                self._fail_pending(pending, code, message)

    def _forget(self, key: str) -> None:
        pending = self.pending.pop(key, None)
        if pending is not None and pending.timer is not None:
            pending.timer.cancel()
        self._maybe_done()

    def _rpc_timeout(self, pending: Pending) -> None:
        pending.timer = None
        if self.pending.get(pending.key) is not pending:
            return
        if self._connected.is_set() and not pending.retried:
            # No ack in time: the connection may be half-dead. Reconnect and re-send once;
            # the daemon joins the re-sent id to the original call, so it cannot run twice.
            # The retry's own timer starts when it is re-sent on the new connection.
            pending.retried = True
            log.warning(
                "no answer to %s within %g s; reconnecting and retrying once",
                pending.method,
                self.settings.rpc_timeout_s,
            )
            self._reconnect_now.set()
            return
        self._fail_pending(pending, ErrorCode.UNAVAILABLE, self._unreachable_message())

    def _unreachable_message(self) -> str:
        return (
            f"exai-broker daemon at {self.settings.url} did not answer within "
            f"{self.settings.rpc_timeout_s:g} s (EXAI_SHIM_RPC_TIMEOUT); last error: "
            f"{self.last_error}. Is the daemon running (python -m broker)?"
        )

    def _maybe_done(self) -> None:
        if self.stdin_closed and not self.pending:
            self.done.set()

    # --- connection management -------------------------------------------------------

    async def run_connection(self) -> None:
        """Connect, serve, and reconnect with backoff until the bridge is done."""
        attempt = 0
        while not self.done.is_set():
            try:
                ws, resumed = await self._open()
            except (OSError, HandshakeError, ConnectionClosed, TimeoutError, ValueError) as exc:
                self.last_error = _describe(exc)
                attempt += 1
                if isinstance(exc, ConnectionRefusedError) and self.autostarter is not None:
                    self.autostarter.maybe_start()
                if _refused_token(exc):
                    self._fail_unsent(
                        ErrorCode.UNAUTHORIZED,
                        f"the daemon at {self.settings.url} refused our token "
                        f"({self.last_error}): set EXAI_WS_TOKEN in this client's shim env "
                        "to the daemon's token",
                    )
                delay = min(BACKOFF_MAX_S, BACKOFF_START_S * 2 ** min(attempt, 10))
                if attempt == 1 or attempt % 20 == 0:
                    log.warning("cannot reach daemon at %s: %s", self.settings.url, self.last_error)
                await asyncio.sleep(delay * (0.5 + random.random()))
                continue
            attempt = 0
            self.ws = ws
            self.generation += 1
            self._connected.set()
            self._after_connect(resumed)
            self.ever_connected = True
            await self._serve(ws)
            self._connected.clear()
            self.ws = None

    async def _open(self) -> tuple[WebSocket, bool]:
        settings = self.settings
        headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else None
        ws = await websocket.connect(
            settings.host,
            settings.port,
            headers=headers,
            open_timeout_s=settings.rpc_timeout_s,
            max_message_bytes=settings.max_frame_bytes,
        )
        hello = {"op": "hello", "session_id": self.session_id, "acks": True}
        if settings.token:
            hello["token"] = settings.token
        try:
            await ws.send_text(json.dumps(hello).encode())
            ack = json.loads(await asyncio.wait_for(ws.recv(), settings.rpc_timeout_s))
        except BaseException:
            await ws.close()
            raise
        if not isinstance(ack, dict) or not ack.get("ok"):
            await ws.close()
            error = ack.get("error") if isinstance(ack, dict) else ack
            raise ValueError(f"daemon refused the session: {error}")
        return ws, bool(ack.get("resumed"))

    def _after_connect(self, resumed: bool) -> None:
        if self.ever_connected and not resumed:
            self._replay_session()
        for pending in list(self.pending.values()):
            if pending.sent_generation == -1 or resumed or pending.method != "tools/call":
                self._send_pending(pending)
            elif pending.tool in self.safe_tools:
                log.info("daemon restarted; re-sending call to read-only tool %s", pending.tool)
                self._send_pending(pending)
            else:
                self._fail_pending(
                    pending,
                    ErrorCode.WORKER_LOST,
                    f"the daemon restarted while {pending.tool!r} was running; it may or may not "
                    "have completed, and it is not marked idempotent, so it was not re-run",
                )

    def _replay_session(self) -> None:
        """A new daemon knows nothing of this client: re-run its initialize first."""
        if self.init_line is None:
            return
        message = json.loads(self.init_line)
        self._replay_seq += 1
        message["id"] = f"{REPLAY_ID_PREFIX}{self._replay_seq}"
        self._replays.add(id_key(message["id"]))
        self._send(json.dumps(message, separators=(",", ":")).encode())
        if self.initialized_line is not None:
            self._send(self.initialized_line)

    async def _serve(self, ws: WebSocket) -> None:
        reader = self._loop.create_task(self._read(ws))
        reconnect = self._loop.create_task(self._reconnect_now.wait())
        finished = self._loop.create_task(self.done.wait())
        try:
            await asyncio.wait({reader, reconnect, finished}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, reconnect, finished):
                task.cancel()
            self._reconnect_now.clear()
            self._connected.clear()
            code = 1000 if self.done.is_set() else 4000
            # A connection dropped for not answering gets no closing handshake: waiting
            # for one would only eat into the retry's time.
            await ws.close(code=code, timeout_s=1.0 if self.done.is_set() else 0.0)

    async def _read(self, ws: WebSocket) -> None:
        try:
            while True:
                self.handle_daemon_frame(await ws.recv())
        except ConnectionClosed as exc:
            self.last_error = f"connection closed ({exc.code} {exc.reason})".strip()
            if exc.code == 1001:
                log.info("daemon is restarting; reconnecting")


_ID_RE = re.compile(
    rb'^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+)'
)


def _guess_id(line: bytes) -> Any:
    """The request id of a line too broken to parse, when it comes first (or null)."""
    match = _ID_RE.match(line[:512])
    if match is None:
        return None
    try:
        return json.loads(match.group(1))
    except ValueError:
        return None


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _cut_by_restart(frame: bytes) -> bool:
    """An error saying the daemon shut down (before or while running the call)."""
    head = frame[:1024]
    return b'"SHUTTING_DOWN"' in head or b'"daemon_shutdown"' in head


def _refused_token(exc: BaseException) -> bool:
    if isinstance(exc, HandshakeError):
        return exc.status in (401, 403)
    return isinstance(exc, ValueError) and "unauthorized" in str(exc)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, HandshakeError):
        return f"HTTP {exc.status} {exc.reason}".strip()
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def parent_alive(original_ppid: int) -> bool:
    """False once the process that started us is gone (we were re-parented)."""
    if sys.platform == "win32":
        return True
    return os.getppid() == original_ppid
