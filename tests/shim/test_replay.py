"""Unit tests for what a reconnect does to owed requests, and retry safety (shim.replay)."""

from __future__ import annotations

import json

import pytest

from shim.client_lines import ClientRequest
from shim.daemon_frames import id_key
from shim.pending import NOT_SENT, Pending
from shim.replay import (
    REPLAY_ID_PREFIX,
    Resend,
    after_reconnect,
    replayed_initialize,
    retry_safe,
    retry_safe_tools,
)


@pytest.mark.parametrize(
    ("annotations", "safe"),
    [
        ({"readOnlyHint": True}, True),
        ({"idempotentHint": True}, True),
        ({"readOnlyHint": False, "idempotentHint": True}, True),
        ({"readOnlyHint": False, "idempotentHint": False}, False),
        ({"destructiveHint": False}, False),
        ({}, False),
        (None, False),
        ("readOnlyHint", False),
    ],
)
def test_retry_safe_needs_read_only_or_idempotent(annotations: object, safe: bool) -> None:
    assert retry_safe(annotations) is safe


def test_retry_safe_tools_of_a_tools_list_answer() -> None:
    tools = [
        {"name": "echo", "annotations": {"readOnlyHint": True, "idempotentHint": True}},
        {"name": "put", "annotations": {"idempotentHint": True}},
        {"name": "chat", "annotations": {"readOnlyHint": False, "idempotentHint": False}},
        {"name": "bare"},
        {"annotations": {"readOnlyHint": True}},
        "not a tool",
    ]
    frame = json.dumps({"jsonrpc": "2.0", "id": 2, "result": {"tools": tools}}).encode()
    assert retry_safe_tools(frame) == {"echo", "put"}


@pytest.mark.parametrize(
    "frame",
    [
        b"not json",
        b"[]",
        b'{"jsonrpc":"2.0","id":2,"error":{"code":-1}}',
        b'{"result":{"tools":3}}',
    ],
)
def test_retry_safe_tools_of_anything_else_is_empty(frame: bytes) -> None:
    assert retry_safe_tools(frame) == set()


def pending(method: str = "tools/call", tool: str | None = "t", sent: bool = True) -> Pending:
    request = ClientRequest(id_key(1), 1, method, tool, b"{}")
    return Pending(request, sent_generation=1 if sent else NOT_SENT)


SAFE = frozenset({"safe"})


def test_a_resumed_session_gets_everything_again() -> None:
    """The same daemon joins a re-sent id to the call it has: nothing can run twice."""
    assert after_reconnect(pending(tool="unsafe"), True, SAFE) is Resend.SEND


def test_after_a_restart_only_safe_calls_are_re_sent() -> None:
    assert after_reconnect(pending(tool="safe"), False, SAFE) is Resend.RESEND_SAFE
    assert after_reconnect(pending(tool="unsafe"), False, SAFE) is Resend.FAIL_LOST


def test_after_a_restart_unsent_requests_and_other_methods_are_sent() -> None:
    assert after_reconnect(pending(tool="unsafe", sent=False), False, SAFE) is Resend.SEND
    assert after_reconnect(pending("tools/list", None), False, SAFE) is Resend.SEND


def test_replayed_initialize_keeps_the_params_under_an_id_of_its_own() -> None:
    line = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "x"}}
    ).encode()
    key, replay = replayed_initialize(line, 3)
    message = json.loads(replay)
    assert message["id"] == f"{REPLAY_ID_PREFIX}3" and key == id_key(message["id"])
    assert message["params"] == {"protocolVersion": "x"} and message["method"] == "initialize"
