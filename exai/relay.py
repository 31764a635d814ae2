"""JSON-RPC toward one hosted MCP server instance: ids rewritten, payloads untouched.

Sans I/O: `Relay` turns what the broker wants to send into lines for the server, and
each line the server writes into one event. Whoever owns the server's pipes (the
daemon for a stdio server, a worker for an in-process SDK server) feeds it.

Many client sessions share one instance, and their request ids and progress tokens
collide (every client starts at 1), so each forwarded request gets an id of the
instance's own, and a progress token equal to that id. The envelope is decoded;
`params`, `result` and `error` stay raw JSON, so values reach the other side as
they were written (1 stays 1, absent fields stay absent). Only a progress token is
spliced in or out, at the top level of `params` or of its `_meta`.

A request the server sends (sampling, elicitation, roots) gets a broker-wide ask
number; its answer goes back under the server's own id.

What the server writes is not trusted: a line that is not UTF-8, nests too deeply to
parse, or answers with neither a result nor a well-formed error object still ends the
request it answers, as a Reply carrying an error object of the relay's own (EXEC_ERROR),
so whoever waits for it is answered at once and never relays what a client could not
read. Progress whose `progress` is not a number is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

import msgspec

from exai.errors import BrokerError, ErrorCode
from exai.jsonrpc import Message

__all__ = [
    "Ask",
    "Garbage",
    "Notice",
    "Progress",
    "Relay",
    "RelayEvent",
    "Reply",
    "UnusableAnswer",
    "unusable",
]

_RawDict = dict[str, msgspec.Raw]


class Reply(NamedTuple):
    """The server answered request `handle`: `result` or `error` is raw JSON."""

    handle: int
    result: bytes | None
    error: bytes | None


class Progress(NamedTuple):
    """Progress for request `handle`; `params` has the client's token put back."""

    handle: int
    params: bytes


class Notice(NamedTuple):
    """A notification the server sent on its own (log message, list_changed, ...)."""

    method: str
    params: bytes | None


class Ask(NamedTuple):
    """A request from the server to a client; answer it with `Relay.answer(ask, ...)`."""

    ask_id: int
    method: str
    params: bytes | None
    # The requests of ours the server had not answered when it asked: a server asks
    # about one of them, so these say which session(s) it may be for.
    in_flight: tuple[int, ...]


class Garbage(NamedTuple):
    """A line that is not a JSON-RPC message we can use; `why` says what is wrong."""

    line: bytes
    why: str


RelayEvent = Reply | Progress | Notice | Ask | Garbage


class _ErrorObject(msgspec.Struct):
    code: int
    message: str


class _ProgressShape(msgspec.Struct):
    progress: float
    total: float | None = None
    message: str | None = None


_ERROR_OBJECT = msgspec.json.Decoder(_ErrorObject)
_PROGRESS_SHAPE = msgspec.json.Decoder(_ProgressShape)
# Where a line too deep to parse may still say which request it answers.
_NUMERIC_ID = re.compile(rb'"id"\s*:\s*(\d{1,18})')


class UnusableAnswer(BrokerError):
    """The hosted server answered a request with something no client can be given."""

    code = ErrorCode.EXEC_ERROR


def unusable(why: str, kind: type[BrokerError] = UnusableAnswer) -> bytes:
    """The error object a request gets when the server's answer to it is unusable."""
    exc = kind(f"the hosted server's answer was unusable: {why}")
    return msgspec.json.encode(
        {"code": exc.jsonrpc_code, "message": exc.message, "data": exc.to_data()}
    )


class _Pending(msgspec.Struct):
    handle: int
    # The client's own progress token, raw JSON; empty when it sent none.
    token: bytes


class Relay:
    """One hosted instance's id space. `handle`s are the caller's request numbers."""

    __slots__ = ("_asks", "_by_handle", "_decoder", "_next_ask", "_next_id", "_pending")

    def __init__(self) -> None:
        self._next_id = 0
        self._next_ask = 0
        self._pending: dict[int, _Pending] = {}
        self._by_handle: dict[int, int] = {}
        self._asks: dict[int, bytes] = {}
        self._decoder = msgspec.json.Decoder(Message)

    # --- toward the server -------------------------------------------------------

    def request(
        self, handle: int, method: str, params: bytes | None, token: bytes | None = None
    ) -> bytes:
        """The line that sends `method` for `handle`. `token` is the client's progress
        token (raw JSON) when it asked for progress; the server sees our id instead."""
        self._next_id += 1
        server_id = self._next_id
        self._pending[server_id] = _Pending(handle, token or b"")
        self._by_handle[handle] = server_id
        if token:
            params = _with_meta_token(params, str(server_id).encode())
        head = b'{"jsonrpc":"2.0","id":%d,"method":' % server_id + msgspec.json.encode(method)
        if params is None:
            return head + b"}\n"
        return head + b',"params":' + params + b"}\n"

    def cancel(self, handle: int, reason: str | None = None) -> bytes | None:
        """The `notifications/cancelled` line for `handle`, or None if it is not pending.
        The request is forgotten: whatever the server still sends for it is dropped."""
        server_id = self._by_handle.pop(handle, None)
        if server_id is None:
            return None
        del self._pending[server_id]
        params: dict[str, object] = {"requestId": server_id}
        if reason:
            params["reason"] = reason
        return _line({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params})

    def notify(self, method: str, params: bytes | None = None) -> bytes:
        """A client notification for the server (e.g. `notifications/roots/list_changed`)."""
        head = b'{"jsonrpc":"2.0","method":' + msgspec.json.encode(method)
        if params is None:
            return head + b"}\n"
        return head + b',"params":' + params + b"}\n"

    def answer(self, ask_id: int, result: bytes | None, error: bytes | None = None) -> bytes | None:
        """The line that answers the server's request `ask_id`; None if it is unknown
        (answered already). Exactly one of `result` and `error` (raw JSON)."""
        server_id = self._asks.pop(ask_id, None)
        if server_id is None:
            return None
        body = b',"error":' + error if error is not None else b',"result":' + (result or b"{}")
        return b'{"jsonrpc":"2.0","id":' + server_id + body + b"}\n"

    def forget(self, handle: int) -> None:
        """Stop tracking `handle` without telling the server (it is gone)."""
        server_id = self._by_handle.pop(handle, None)
        if server_id is not None:
            self._pending.pop(server_id, None)

    def in_flight(self) -> int:
        """How many requests the server has not answered yet."""
        return len(self._by_handle)

    def pending(self) -> Iterable[int]:
        """The handles the server has not answered yet."""
        return self._by_handle.keys()

    def pending_asks(self) -> Iterable[int]:
        return self._asks.keys()

    # --- from the server ---------------------------------------------------------

    def receive(self, line: bytes) -> RelayEvent | None:
        """The event one line from the server stands for; None when there is nothing to
        pass on (an answer to a request we cancelled, progress for one we forgot)."""
        try:
            env = self._decoder.decode(line)
        except msgspec.DecodeError as exc:
            return Garbage(line, f"not a JSON-RPC object: {exc}")
        except RecursionError:
            event = self.salvage(line, "it is nested too deeply to parse")
            return event or Garbage(line[:200], "nested too deeply to parse")
        has_id = len(env.id) > 0 and bytes(env.id) != b"null"
        if not line.isascii() and not _is_utf8(line):
            if env.method is None and has_id:
                return self._receive_response(env, line, "it is not UTF-8")
            return Garbage(line, "not UTF-8")
        if env.method is None:
            if not has_id:
                return Garbage(line, "neither a request, a notification nor a response")
            return self._receive_response(env, line)
        params = bytes(env.params) if len(env.params) else None
        if has_id:
            self._next_ask += 1
            self._asks[self._next_ask] = bytes(env.id)
            return Ask(self._next_ask, env.method, params, tuple(self._by_handle))
        if env.method == "notifications/progress" and params is not None:
            return self._receive_progress(params)
        return Notice(env.method, params)

    def _receive_response(
        self, env: Message, line: bytes, broken: str | None = None
    ) -> RelayEvent | None:
        try:
            server_id = int(bytes(env.id))
        except ValueError:
            return Garbage(line, "a response to an id we never sent")
        pending = self._pending.pop(server_id, None)
        if pending is None:
            return None
        handle = pending.handle
        self._by_handle.pop(handle, None)
        if broken is not None:
            return Reply(handle, None, unusable(broken))
        if len(env.error):
            error = bytes(env.error)
            try:
                _ERROR_OBJECT.decode(error)
            except msgspec.DecodeError as exc:
                why = f"its error is not an object with an integer code and a message ({exc})"
                return Reply(handle, None, unusable(why))
            return Reply(handle, None, error)
        if len(env.result):
            return Reply(handle, bytes(env.result), None)
        return Reply(handle, None, unusable("it has neither a result nor an error"))

    def salvage(
        self, head: bytes, why: str, kind: type[BrokerError] = UnusableAnswer
    ) -> Reply | None:
        """End the request a line that cannot be parsed (too deep, too long: `head` is
        as much of it as is kept) answers, when an `"id"` key at its top level names one
        of ours. None when it names none."""
        for match in _NUMERIC_ID.finditer(head):
            before = head[: match.start()]
            depth = before.count(b"{") + before.count(b"[") - before.count(b"}")
            depth -= before.count(b"]")
            server_id = int(match.group(1))
            if depth == 1 and server_id in self._pending:
                pending = self._pending.pop(server_id)
                self._by_handle.pop(pending.handle, None)
                return Reply(pending.handle, None, unusable(why, kind))
        return None

    def _receive_progress(self, params: bytes) -> RelayEvent | None:
        try:
            fields = msgspec.json.decode(params, type=_RawDict)
            server_id = int(bytes(fields["progressToken"]))
        except (msgspec.DecodeError, KeyError, ValueError):
            return None  # a token we never handed out: not for any of our clients
        pending = self._pending.get(server_id)
        if pending is None or not pending.token:
            return None
        try:
            _PROGRESS_SHAPE.decode(params)
        except (msgspec.DecodeError, RecursionError) as exc:
            return Garbage(params[:200], f"progress that breaks the schema: {exc}")
        fields["progressToken"] = msgspec.Raw(pending.token)
        return Progress(pending.handle, msgspec.json.encode(fields))


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode()
    except UnicodeDecodeError:
        return False
    return True


def _with_meta_token(params: bytes | None, token: bytes) -> bytes:
    """`params` with `_meta.progressToken` set to `token`, every other byte kept."""
    fields = msgspec.json.decode(params, type=_RawDict) if params else {}
    meta_raw = fields.get("_meta")
    meta = msgspec.json.decode(meta_raw, type=_RawDict) if meta_raw is not None else {}
    meta["progressToken"] = msgspec.Raw(token)
    fields["_meta"] = msgspec.Raw(msgspec.json.encode(meta))
    return msgspec.json.encode(fields)


def _line(message: dict[str, object]) -> bytes:
    return msgspec.json.encode(message) + b"\n"
