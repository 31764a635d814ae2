"""Unit tests for the bridge (shim.bridge) while its daemon is away: every call it owes
is answered, re-sent or cancelled, and the shim ends once its client has gone."""

from __future__ import annotations

import asyncio

from tests.conftest import scaled
from tests.shim.test_bridge import Client, tool_text

# Short enough that a test sees the shim's own timeout fire; the waits below are scaled.
RPC_TIMEOUT_S = 0.2


async def wait_for(event: asyncio.Event, timeout_s: float = 5.0) -> None:
    """Return once `event` is set; fail after `timeout_s` (scaled)."""
    await asyncio.wait_for(event.wait(), scaled(timeout_s))


def started_client() -> Client:
    made = Client(rpc_timeout_s=RPC_TIMEOUT_S)
    made.send(id="init", method="initialize", params={})
    made.answer({"id": "init", "result": {}})
    made.written.clear()
    made.wrote.clear()
    return made


async def test_an_acked_call_is_answered_when_the_daemon_stays_down() -> None:
    client = started_client()
    try:
        client.call(5, "chat")
        client.bridge.handle_daemon_frame(b'{"op":"ack","id":5}')
        client.bridge.handle_disconnected()
        await wait_for(client.wrote)
        [failed] = client.answers()
        assert failed["id"] == 5 and failed["error"]["data"] == {"code": "UNAVAILABLE"}
        assert "EXAI_SHIM_RPC_TIMEOUT" in failed["error"]["message"]
        assert len(client.bridge.pending) == 0
    finally:
        client.bridge.abandon()


async def test_an_acked_call_resent_on_a_resumed_session_is_answered_once() -> None:
    client = started_client()
    try:
        client.call(6, "chat")
        client.bridge.handle_daemon_frame(b'{"op":"ack","id":6}')
        client.bridge.handle_disconnected()
        resumed = client.connect(resumed=True)
        assert [m["id"] for m in resumed.sent] == [6]
        client.bridge.handle_daemon_frame(b'{"op":"ack","id":6}')
        frame = client.answer({"id": 6, "result": tool_text("done")})
        assert client.written == [frame]
    finally:
        client.bridge.abandon()


async def test_the_bridge_is_done_soon_after_stdin_closes_with_a_call_still_running() -> None:
    """The daemon acked the call and stays connected, but it never answers."""
    client = started_client()
    try:
        client.call(7, "chat")
        client.bridge.handle_daemon_frame(b'{"op":"ack","id":7}')
        client.bridge.handle_stdin_eof()
        await wait_for(client.bridge.done)
        # Answered before the shim goes: a call is never dropped without a word.
        [failed] = client.answers()
        assert failed["id"] == 7 and failed["error"]["data"] == {"code": "UNAVAILABLE"}
    finally:
        client.bridge.abandon()


def cancel(client: Client, request_id: int) -> None:
    client.send(method="notifications/cancelled", params={"requestId": request_id})


async def test_a_cancel_sent_while_reconnecting_reaches_the_daemon_after() -> None:
    client = started_client()
    try:
        client.call(8, "chat")
        client.bridge.handle_daemon_frame(b'{"op":"ack","id":8}')
        client.bridge.handle_disconnected()
        cancel(client, 8)
        resumed = client.connect(resumed=True)
        assert resumed.sent == [
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 8}}
        ]
        assert client.written == [] and len(client.bridge.pending) == 0
    finally:
        client.bridge.abandon()


async def test_a_call_cancelled_before_it_reached_a_daemon_is_not_replayed() -> None:
    client = started_client()
    try:
        client.bridge.handle_disconnected()
        client.call(9, "chat")
        cancel(client, 9)
        assert client.connect(resumed=True).sent == []
        assert client.written == [] and len(client.bridge.pending) == 0
    finally:
        client.bridge.abandon()


async def test_no_daemon_answers_the_requests_no_daemon_ever_had() -> None:
    client = started_client()
    try:
        client.call(10, "chat")
        client.bridge.handle_disconnected()
        client.call(11, "chat")
        client.bridge.handle_no_daemon("nothing listens at ws://127.0.0.1:1")
        [failed] = client.answers()
        assert failed["id"] == 11 and failed["error"]["code"] == -32054
        assert failed["error"]["data"] == {"code": "UNAVAILABLE"}
        assert failed["error"]["message"] == "nothing listens at ws://127.0.0.1:1"
        # The one a daemon has is left to the reconnect.
        assert [p.request.request_id for p in client.bridge.pending.values()] == [10]
    finally:
        client.bridge.abandon()


async def test_a_request_while_refused_outright_asks_for_a_fresh_attempt() -> None:
    client = started_client()
    try:
        tries: list[bool] = []
        connection = client.bridge.connection
        connection.try_now = lambda: tries.append(True)  # type: ignore[method-assign]
        client.call(12, "chat")
        assert tries == []  # connected: nothing to hurry
        client.bridge.handle_disconnected()
        connection.refused_outright = True
        client.call(13, "chat")
        assert tries == [True]
    finally:
        client.bridge.abandon()
