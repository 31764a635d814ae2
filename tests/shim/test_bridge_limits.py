"""Unit tests for the bridge (shim.bridge) and frames over a size limit: the request or
result too large is answered with an error naming the limit; the other calls go on."""

from __future__ import annotations

import json

from exai.settings import ShimSettings
from shim.bridge import Bridge
from tests.shim.test_bridge import Client, FakeSocket, tool_text

LIMIT_BYTES = 4096


def limited_client() -> Client:
    made = Client()
    made.bridge = Bridge(
        ShimSettings(rpc_timeout_s=30.0, max_frame_bytes=LIMIT_BYTES), made._write_line
    )
    made.connect(resumed=False)
    made.written.clear()
    return made


def big_call(client: Client, request_id: int, size: int) -> None:
    arguments = {"text": "x" * size}
    client.send(id=request_id, method="tools/call", params={"name": "echo", "arguments": arguments})


async def test_a_request_over_the_limit_is_answered_and_never_sent() -> None:
    client = limited_client()
    try:
        big_call(client, 1, LIMIT_BYTES)
        client.call(2, "echo")
        [refused] = client.answers()
        assert refused["id"] == 1 and refused["error"]["data"] == {"code": "INVALID_FRAME"}
        assert str(LIMIT_BYTES) in refused["error"]["message"]
        assert [m["id"] for m in client.ws.sent] == [2]
        assert len(client.bridge.pending) == 1
    finally:
        client.bridge.abandon()


async def test_a_request_the_daemon_closed_on_is_answered_and_not_resent() -> None:
    """The daemon's limit is below ours: it closes with 1009 after reading the frame."""
    client = Client()
    try:
        client.call(1, "echo")
        client.bridge.handle_daemon_frame(b'{"op":"ack","id":1}')
        big_call(client, 2, 2000)
        client.call(3, "echo")
        client.bridge.handle_frame_refused_as_too_large("Message size 2100 exceeds limit 1024")
        [refused] = client.answers()
        assert refused["id"] == 2 and refused["error"]["data"] == {"code": "INVALID_FRAME"}
        assert "exceeds limit 1024" in refused["error"]["message"]
        client.bridge.handle_disconnected()
        resumed: FakeSocket = client.connect(resumed=True)
        assert sorted(m["id"] for m in resumed.sent) == [1, 3]
    finally:
        client.bridge.abandon()


async def test_a_result_over_the_limit_answers_its_own_call_only() -> None:
    client = Client()
    try:
        client.call(1, "echo")
        client.call(2, "echo")
        head = b'{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"xxxx'
        client.bridge.handle_oversized_frame(head, 50_000_000, 33_554_432)
        [too_large] = client.answers()
        assert too_large["id"] == 2
        assert too_large["error"]["data"] == {"code": "RESULT_TOO_LARGE"}
        assert "33554432" in too_large["error"]["message"]
        frame = client.answer({"id": 1, "result": tool_text("small")})
        assert client.written[1] == frame
        assert json.loads(frame)["id"] == 1 and len(client.bridge.pending) == 0
    finally:
        client.bridge.abandon()
