"""Unit tests for reading the client's lines (shim.client_lines)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shim.client_lines import ClientRequest, Forward, Invalid, read_client_line
from shim.daemon_frames import id_key


def line(**message: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", **message}).encode()


def reply_of(seen: object) -> dict[str, Any]:
    assert isinstance(seen, Invalid), seen
    reply: dict[str, Any] = json.loads(seen.reply)
    return reply


def test_a_tool_call_is_a_request_naming_its_tool() -> None:
    raw = line(id=7, method="tools/call", params={"name": "echo"})
    assert read_client_line(raw) == ClientRequest(id_key(7), 7, "tools/call", "echo", raw)


def test_other_requests_name_no_tool() -> None:
    raw = line(id="a", method="tools/list", params={"name": "echo"})
    assert read_client_line(raw) == ClientRequest(id_key("a"), "a", "tools/list", None, raw)
    odd = read_client_line(line(id=1, method="tools/call", params={"name": 5}))
    assert isinstance(odd, ClientRequest) and odd.tool is None


def test_notifications_and_client_answers_are_forwarded() -> None:
    assert read_client_line(line(method="notifications/initialized")) == Forward(
        "notifications/initialized"
    )
    cancelled = read_client_line(line(method="notifications/cancelled", params={"requestId": 4}))
    assert cancelled == Forward("notifications/cancelled", id_key(4))
    assert read_client_line(line(id=9, result={})) == Forward(None)


def test_broken_json_is_a_parse_error_with_the_id_when_it_can_be_read() -> None:
    reply = reply_of(read_client_line(b'{"jsonrpc":"2.0","id":12,"method":'))
    assert reply["id"] == 12 and reply["error"]["code"] == -32700


@pytest.mark.parametrize(
    ("raw", "request_id"),
    [
        (b"[1, 2]", None),
        (b'{"id": 3, "method": "ping"}', 3),
        (b'{"jsonrpc": "1.0", "id": true, "method": "ping"}', None),
        (b'{"jsonrpc": "2.0", "id": 1.5, "method": "ping"}', None),
    ],
)
def test_invalid_requests_are_answered_here(raw: bytes, request_id: Any) -> None:
    reply = reply_of(read_client_line(raw))
    assert reply["id"] == request_id and reply["error"]["code"] == -32600


def test_a_line_without_jsonrpc_id_or_method_is_dropped() -> None:
    assert read_client_line(b'{"x": 1}') is None


def test_a_lone_surrogate_is_a_parse_error() -> None:
    reply = reply_of(read_client_line(b'{"jsonrpc":"2.0","id":1,"method":"\\ud800"}'))
    assert reply["error"]["code"] == -32700
