"""Unit tests for broker.router.router: frames in, frames out, through a fake peer.

The router runs over a real CallManager and SessionRegistry with fake workers (see
test_calls_manager.py) and no socket: a peer records what it is sent and how it was
closed. Replies are checked byte for byte where clients or the shim match on bytes.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from broker.router.codec import Dialect, FrameCodec
from broker.router.router import (
    CLOSE_NOT_HELLO,
    CLOSE_NOT_JSON,
    CLOSE_TAKEN_OVER,
    CLOSE_UNAUTHORIZED,
    HELLO_TIMEOUT,
    FrameRouter,
)
from broker.web.auth import Auth
from exai import __version__
from exai.ipc import Call, Cancel
from tests.broker.test_calls_manager import CATALOG, Broker, VirtualLoop

TOKEN = "s3cret"


class FakePeer:
    """A connection as the router sees it: frames sent, and the close, recorded."""

    def __init__(self, *, authenticated: bool = True) -> None:
        self.session: Any = None
        self.authenticated = authenticated
        self.dialect = Dialect.MCP
        self.sent: list[bytes] = []
        self.closed: tuple[int, str] | None = None

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    @property
    def frames(self) -> list[dict[str, Any]]:
        return [json.loads(f) for f in self.sent]

    @property
    def last(self) -> dict[str, Any]:
        return dict(json.loads(self.sent[-1]))


class Front:
    """A router over a broker with fake workers; `feed` hands it one frame."""

    def __init__(self, broker: Broker, token: str = "") -> None:
        self.broker = broker
        self.auth = Auth(token)
        self.router = FrameRouter(
            broker.settings,
            FrameCodec(),
            broker.manager,
            broker.sessions,
            self.auth,
            lambda: {"ready": True, "sessions": len(broker.sessions.sessions)},
        )

    def feed(self, peer: FakePeer, frame: Any) -> None:
        data = frame if isinstance(frame, bytes) else json.dumps(frame).encode()
        self.router.handle(peer, data)

    def hello(self, session_id: str = "s-1", **fields: Any) -> FakePeer:
        """A fresh op connection that has said hello (and was accepted)."""
        peer = FakePeer(authenticated=False)
        self.feed(peer, {"op": "hello", "session_id": session_id, **fields})
        assert peer.frames[0]["ok"] is True, peer.frames
        return peer


@pytest.fixture
def front(loop: VirtualLoop) -> Front:
    """A router with token auth off."""
    return Front(Broker(loop))


@pytest.fixture
def guarded(loop: VirtualLoop) -> Front:
    """A router whose clients need TOKEN."""
    return Front(Broker(loop), TOKEN)


# --- opening a session ---------------------------------------------------------------


def test_hello_opens_an_op_session(front: Front) -> None:
    """hello is answered with the session id, not resumed, naming the server and its tools."""
    peer = FakePeer(authenticated=False)
    front.feed(peer, {"op": "hello", "session_id": "op-1"})
    assert peer.sent == [
        b'{"op":"hello_ack","ok":true,"session_id":"op-1","resumed":false,'
        b'"server":{"name":"exai-broker","version":"' + __version__.encode() + b'","tools":3}}'
    ]
    assert peer.dialect is Dialect.OP and peer.authenticated and peer.closed is None
    assert peer.session is front.broker.sessions.sessions["op-1"]


def test_hello_without_a_session_id_gets_a_fresh_one(front: Front) -> None:
    """An empty or blank session id is replaced by a random one."""
    peer = FakePeer()
    front.feed(peer, {"op": "hello", "session_id": "  "})
    assert len(peer.last["session_id"]) == 32


@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_hello_with_a_wrong_token_is_refused_with_a_code(guarded: Front, token: Any) -> None:
    """The refusal says "unauthorized" in words and as UNAUTHORIZED, then closes 4003."""
    peer = FakePeer(authenticated=False)
    frame: dict[str, Any] = {"op": "hello", "session_id": "x"}
    if token is not None:
        frame["token"] = token
    guarded.feed(peer, frame)
    assert peer.sent == [
        b'{"op":"hello_ack","ok":false,"error":"unauthorized","code":"UNAUTHORIZED"}'
    ]
    assert peer.closed == (CLOSE_UNAUTHORIZED, "unauthorized")
    assert peer.session is None and guarded.broker.sessions.sessions == {}


def test_hello_with_the_token_or_a_bearer_header_is_accepted(guarded: Front) -> None:
    """The token in hello, or a connection already authenticated by its HTTP header."""
    guarded.hello("a", token=TOKEN)
    peer = FakePeer(authenticated=True)
    guarded.feed(peer, {"op": "hello", "session_id": "b"})
    assert peer.last["ok"] is True


@pytest.mark.parametrize(
    ("frame", "error", "code", "close"),
    [
        (b"this is not json", "not JSON", "INVALID_FRAME", CLOSE_NOT_JSON),
        (b'{"op":"hello","token":5}', "not JSON", "INVALID_FRAME", CLOSE_NOT_JSON),
        ({"hello": "there"}, "expected hello", "INVALID_FRAME", CLOSE_NOT_HELLO),
        ({"op": "list_tools"}, "unauthorized", "UNAUTHORIZED", CLOSE_UNAUTHORIZED),
        ({"op": "frobnicate"}, "unauthorized", "UNAUTHORIZED", CLOSE_UNAUTHORIZED),
        ({"jsonrpc": "2.0", "id": 1, "method": "ping"}, "unauthorized", "UNAUTHORIZED", 4003),
    ],
    ids=["not-json", "ill-typed-hello", "no-op", "op", "unknown-op", "jsonrpc"],
)
def test_a_first_frame_that_is_no_hello_is_refused(
    guarded: Front, frame: Any, error: str, code: str, close: int
) -> None:
    """Before the token nothing is served: one failed hello_ack (text and code), then close."""
    peer = FakePeer(authenticated=False)
    guarded.feed(peer, frame)
    assert peer.frames == [{"op": "hello_ack", "ok": False, "error": error, "code": code}]
    assert peer.closed is not None and peer.closed[0] == close
    assert peer.session is None


def test_a_session_id_over_128_characters_is_refused(front: Front) -> None:
    """The id is the client's word: too long is refused before anything is kept."""
    peer = FakePeer(authenticated=False)
    front.feed(peer, {"op": "hello", "session_id": "x" * 129})
    assert peer.frames == [
        {
            "op": "hello_ack",
            "ok": False,
            "error": "session_id longer than 128 characters",
            "code": "INVALID_FRAME",
        }
    ]
    assert peer.closed == (CLOSE_NOT_HELLO, "bad session id")


def test_the_adapter_refuses_a_silent_connection_with_hello_timeout(front: Front) -> None:
    """`refuse(peer, HELLO_TIMEOUT)` is the frame and close for "no hello in time"."""
    peer = FakePeer(authenticated=False)
    front.router.refuse(peer, HELLO_TIMEOUT)
    assert peer.sent == [
        b'{"op":"hello_ack","ok":false,"error":"no hello in time","code":"TIMEOUT"}'
    ]
    assert peer.closed == (4002, "no hello in time")


def test_a_reconnect_resumes_the_session_and_takes_it_over(front: Front) -> None:
    """The same session id resumes: answers held while away come after the ack, and the
    old connection is closed 4004."""
    first = front.hello("keep")
    session = first.session
    session.detach(0.0)
    session.send(b'{"held":1}')
    second = front.hello("keep")
    assert second.frames[0]["resumed"] is True
    assert second.sent[1:] == [b'{"held":1}']
    third = front.hello("keep")
    assert second.closed == (CLOSE_TAKEN_OVER, "session taken over by a new connection")
    assert third.session is session


def test_a_late_frame_from_a_replaced_connection_is_not_run(front: Front) -> None:
    """A shim's call re-sent on its new connection runs once, even when the copy it
    first sent arrives late on the connection the new one replaced (a cut link)."""
    call = {"jsonrpc": "2.0", "id": "r1", "method": "tools/call"}
    call["params"] = {"name": "echo", "arguments": {"text": "x"}}
    first = front.hello("keep", acks=True, awaited=[])
    second = front.hello("keep", acks=True, awaited=["r1"])
    assert first.closed == (CLOSE_TAKEN_OVER, "session taken over by a new connection")
    front.feed(second, call)
    broker = front.broker
    assert len(broker.dispatched()) == 1
    broker.succeed(broker.last_call_id())
    answered = second.last
    assert answered["id"] == "r1" and "result" in answered
    sent_before = len(first.sent)
    front.feed(first, call)
    assert len(broker.dispatched()) == 1
    assert len(first.sent) == sent_before and second.last == answered


def test_an_authenticated_peer_may_skip_hello(front: Front) -> None:
    """A JSON-RPC first frame opens an MCP session and is answered; an op one an op session."""
    mcp = FakePeer()
    front.feed(mcp, {"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert mcp.sent == [b'{"jsonrpc":"2.0","id":1,"result":{}}']
    assert mcp.dialect is Dialect.MCP and mcp.session is not None
    op = FakePeer()
    front.feed(op, {"op": "health"})
    assert op.dialect is Dialect.OP
    assert op.frames == [{"op": "health_res", "health": {"ready": True, "sessions": 2}}]


# --- the op dialect ------------------------------------------------------------------


def test_list_tools_sends_the_workers_list_as_it_came(front: Front) -> None:
    """list_tools_res carries the tool list bytes the worker announced."""
    peer = front.hello()
    front.feed(peer, {"op": "list_tools"})
    assert peer.sent[-1] == b'{"op":"list_tools_res","tools":' + CATALOG.tools_json + b"}"


def test_call_tool_is_acked_run_and_answered(front: Front) -> None:
    """call_tool goes to a worker with its arguments as sent; its answer comes back."""
    peer = front.hello()
    front.feed(
        peer, b'{"op":"call_tool","request_id":"r 1","name":"echo","arguments":{"text":"x"}}'
    )
    assert peer.sent[-1] == b'{"op":"call_tool_ack","request_id":"r 1"}'
    broker = front.broker
    call = broker.dispatched()[0]
    assert (call.tool, call.arguments) == ("echo", b'{"text":"x"}')
    broker.succeed(call.call_id)
    assert peer.last["op"] == "call_tool_res" and peer.last["text"] == "hi"


@pytest.mark.parametrize(
    ("frame", "message", "request_id"),
    [
        ({"op": "call_tool", "request_id": "o1"}, "call_tool needs the tool's name", "o1"),
        ({"op": "call_tool", "name": "echo"}, "call_tool needs a string or integer", None),
        ({"op": "call_tool", "request_id": {"a": 1}, "name": "e"}, "string or integer", {"a": 1}),
        ({"op": "cancel"}, "cancel needs the request_id", None),
        ({"op": "hello", "session_id": "other"}, "already has a session", None),
        ({"op": "frobnicate", "request_id": 4}, "unknown op 'frobnicate'", 4),
        ({"op": ""}, "unknown op ''", None),
        ({"no": "op"}, 'a frame needs "jsonrpc": "2.0" or an "op"', None),
    ],
)
def test_bad_op_frames_get_an_error_frame_and_the_session_lives_on(
    front: Front, frame: dict[str, Any], message: str, request_id: Any
) -> None:
    """Each mistake is an `"op": "error"` INVALID_FRAME (with the frame's request_id, if
    any); the connection stays open and serves the next call."""
    peer = front.hello()
    front.feed(peer, frame)
    error = peer.last
    assert error["op"] == "error"
    assert error["error"]["code"] == "INVALID_FRAME"
    assert message in error["error"]["message"]
    assert error.get("request_id") == request_id
    assert peer.closed is None
    front.feed(peer, {"op": "call_tool", "request_id": 1, "name": "echo", "arguments": {}})
    assert peer.last == {"op": "call_tool_ack", "request_id": 1}
    assert front.router.stats.bad_frames == 1


def test_an_unknown_op_error_is_byte_exact(front: Front) -> None:
    """The error for an unknown op, as op clients have always received it."""
    peer = front.hello()
    front.feed(peer, b'{"op":"frobnicate"}')
    assert peer.sent[-1] == (
        b'{"op":"error","error":{"message":"unknown op \'frobnicate\'","code":"INVALID_FRAME"}}'
    )


def test_cancel_answers_the_call_as_cancelled(front: Front) -> None:
    """An op cancel stops the call on its worker and answers it CANCELLED."""
    peer = front.hello()
    front.feed(peer, {"op": "call_tool", "request_id": 8, "name": "echo", "arguments": {}})
    call_id = front.broker.last_call_id()
    worker = front.broker.worker_of(call_id)
    front.feed(peer, {"op": "cancel", "request_id": 8})
    assert worker.received(Cancel) == [Cancel(call_id)]
    assert peer.last["op"] == "call_tool_res"
    assert peer.last["error"]["code"] == "CANCELLED"
    front.broker.assert_capacity_free()


def test_rotate_token(guarded: Front, front: Front) -> None:
    """rotate_token needs auth on and the old token; afterwards hello needs the new one."""
    peer = front.hello()
    front.feed(peer, {"op": "rotate_token", "old": "", "new": "n"})
    assert peer.last["error"]["code"] == "UNAUTHORIZED"
    peer = guarded.hello(token=TOKEN)
    for bad, code in (
        ({"op": "rotate_token", "old": "nope", "new": "n"}, "UNAUTHORIZED"),
        ({"op": "rotate_token", "old": TOKEN, "new": "has space"}, "INVALID_FRAME"),
        # It could never be matched in an Authorization header.
        ({"op": "rotate_token", "old": TOKEN, "new": "tökén"}, "INVALID_FRAME"),
        ({"op": "rotate_token", "old": TOKEN}, "INVALID_FRAME"),
    ):
        guarded.feed(peer, bad)
        assert peer.last["error"]["code"] == code, bad
    guarded.feed(peer, {"op": "rotate_token", "old": TOKEN, "new": "fresh"})
    assert peer.sent[-1] == b'{"op":"rotate_token_res","ok":true}'
    refused = FakePeer(authenticated=False)
    guarded.feed(refused, {"op": "hello", "token": TOKEN})
    assert refused.last["code"] == "UNAUTHORIZED"
    guarded.hello("again", token="fresh")


# --- MCP JSON-RPC --------------------------------------------------------------------


def mcp_peer(front: Front) -> FakePeer:
    peer = FakePeer()
    front.feed(peer, {"jsonrpc": "2.0", "id": 0, "method": "ping"})
    return peer


def test_initialize_picks_a_supported_version(front: Front) -> None:
    """A known protocolVersion is echoed; an unknown one gets the latest handshake version."""
    peer = mcp_peer(front)
    for wanted, version in (("2025-03-26", "2025-03-26"), ("1999-01-01", "2025-11-25")):
        params = {"protocolVersion": wanted, "capabilities": {}}
        front.feed(peer, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params})
        result = peer.last["result"]
        assert result["protocolVersion"] == version
        assert result["serverInfo"] == {"name": "exai-broker", "version": __version__}


def test_tools_list_and_a_modern_call_get_their_revisions_shapes(front: Front) -> None:
    """tools/list is the catalog's bytes; a 2026-07-28 call's result is stamped."""
    peer = mcp_peer(front)
    front.feed(peer, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    assert peer.sent[-1] == b'{"jsonrpc":"2.0","id":2,"result":' + CATALOG.list_result + b"}"
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "progressToken": "t"}
    params = {"name": "echo", "arguments": {"text": "m"}, "_meta": meta}
    front.feed(peer, {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": params})
    call = front.broker.dispatched()[-1]
    assert isinstance(call, Call) and call.want_progress
    front.broker.succeed(call.call_id)
    result = peer.last["result"]
    assert result["resultType"] == "complete" and result["content"][0]["text"] == "hi"


def test_notifications_cancelled_stops_the_call_without_an_answer(front: Front) -> None:
    """An MCP cancel is a notification: the call stops, nothing is sent."""
    peer = mcp_peer(front)
    params = {"name": "echo", "arguments": {}}
    front.feed(peer, {"jsonrpc": "2.0", "id": "c", "method": "tools/call", "params": params})
    sent = len(peer.sent)
    front.feed(
        peer, {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "c"}}
    )
    assert len(peer.sent) == sent
    front.broker.assert_capacity_free()


@pytest.mark.parametrize(
    ("frame", "code", "request_id"),
    [
        (b"not json", -32700, None),
        (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', -32600, None),
        ({"jsonrpc": "2.0", "id": 5, "method": "nope/nope"}, -32601, 5),
        ({"jsonrpc": "1.0", "id": 6, "method": "ping"}, -32600, 6),
        ({"jsonrpc": "2.0", "id": [1], "method": "ping"}, -32600, None),
        ({"jsonrpc": "2.0", "id": 7}, -32600, 7),
        ({"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {}}, -32602, 8),
    ],
)
def test_bad_mcp_frames_get_a_jsonrpc_error(
    front: Front, frame: Any, code: int, request_id: Any
) -> None:
    """An MCP session's mistakes are JSON-RPC errors with the request's id when it had one."""
    peer = mcp_peer(front)
    front.feed(peer, frame)
    error = peer.last
    assert error["jsonrpc"] == "2.0" and error["id"] == request_id
    assert error["error"]["code"] == code
    assert peer.closed is None


def test_a_broken_notification_is_never_answered(front: Front) -> None:
    """JSON-RPC does not answer notifications, even broken ones; they still count as bad."""
    peer = mcp_peer(front)
    sent = len(peer.sent)
    front.feed(peer, {"jsonrpc": "1.0", "method": "notifications/initialized"})
    assert len(peer.sent) == sent
    assert front.router.stats.bad_frames == 1


def test_an_op_session_gets_op_errors_for_garbage_and_jsonrpc_errors_for_requests(
    front: Front,
) -> None:
    """Errors answer in the dialect of the frame: op errors for op-ish garbage, JSON-RPC
    errors for anything that looks like a request."""
    peer = front.hello()
    front.feed(peer, b"garbage")
    assert peer.last["op"] == "error"
    front.feed(peer, {"jsonrpc": "2.0", "id": 9, "method": "nope"})
    assert peer.last["error"]["code"] == -32601 and peer.last["id"] == 9


def test_every_frame_is_counted(front: Front) -> None:
    """frames counts all frames, bad_frames only the refused ones."""
    peer = mcp_peer(front)
    front.feed(peer, b"{")
    stats = front.router.stats
    assert (stats.frames, stats.bad_frames) == (2, 1)


def test_dialects_keep_their_wire_words() -> None:
    """Dialect is a StrEnum: it logs, compares and encodes as the words it replaced."""
    assert (Dialect.MCP, Dialect.OP) == ("mcp", "op")
    assert f"{Dialect.OP}" == "op"
    assert msgspec.json.encode(Dialect.MCP) == b'"mcp"'


def test_a_defect_while_handling_a_frame_costs_that_request_not_the_connection(
    front: Front, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong inside the router answers that request with a typed
    INTERNAL error; the connection stays open and its next request is served."""
    peer = FakePeer()
    front.feed(peer, {"jsonrpc": "2.0", "id": 1, "method": "ping"})

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(front.broker.manager, "submit", broken)
    front.feed(
        peer,
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo"}},
    )
    assert peer.last["id"] == 2
    assert peer.last["error"]["data"]["code"] == "INTERNAL"
    assert peer.closed is None
    monkeypatch.undo()
    front.feed(peer, {"jsonrpc": "2.0", "id": 3, "method": "ping"})
    assert peer.last == {"jsonrpc": "2.0", "id": 3, "result": {}}
