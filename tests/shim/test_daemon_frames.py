"""Unit tests for reading the daemon's frames (shim.daemon_frames): which request a response
answers, and what the shim does with it, without ever parsing a result."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from shim.daemon_frames import DaemonFrame, FrameKind, classify, id_key

IDS: list[Any] = [
    0,
    1,
    -7,
    2**70,
    1.5,
    "abc",
    "",
    'say "hi"',
    "back\\slash",
    "caf\u00e9",
    "\U0001f600 emoji",
    "line\nbreak",
    "\u2028",
    None,
]


def answered_key(frame: bytes) -> str | None:
    """The id key of the request `frame` answers; None when it answers none."""
    seen = classify(frame)
    return seen.key if seen.kind in (FrameKind.ANSWER, FrameKind.CUT_BY_RESTART) else None


def daemon_response(raw_id: bytes, body: bytes = b'"result":{"content":[]}') -> bytes:
    """A response as the daemon writes it: compact, id right after jsonrpc."""
    return b'{"jsonrpc":"2.0","id":' + raw_id + b"," + body + b"}"


@pytest.mark.parametrize("value", IDS)
@pytest.mark.parametrize("ascii_only", [True, False], ids=["escaped", "utf8"])
def test_same_id_from_client_and_daemon_has_the_same_key(value: Any, ascii_only: bool) -> None:
    """The id the client sent and the id the daemon echoes back map to one pending entry."""
    client_line = json.dumps(
        {"jsonrpc": "2.0", "id": value, "method": "tools/call"}, ensure_ascii=ascii_only
    )
    client_key = id_key(json.loads(client_line)["id"])
    raw_id = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert answered_key(daemon_response(raw_id)) == client_key
    assert answered_key(daemon_response(raw_id, b'"error":{"code":-32050}')) == client_key


@pytest.mark.parametrize("value", IDS)
def test_msgspec_encoded_response_matches(value: Any) -> None:
    """Responses the daemon builds with msgspec (raw UTF-8, no escapes) match too."""
    frame = msgspec.json.encode({"jsonrpc": "2.0", "id": value, "result": {}})
    assert answered_key(frame) == id_key(value)


def test_string_and_number_ids_are_different() -> None:
    """`1` and `"1"` are different JSON-RPC ids."""
    assert id_key(1) != id_key("1")
    assert answered_key(daemon_response(b"1")) != answered_key(daemon_response(b'"1"'))


def test_escaped_quote_in_id_is_not_cut_short() -> None:
    """An id with an escaped quote is read whole, not up to the first quote."""
    frame = daemon_response(b'"a\\"b,\\"id\\":2"')
    assert answered_key(frame) == id_key('a"b,"id":2')


def test_id_is_read_without_the_result() -> None:
    """The id is found from the start of the frame; a huge (here: truncated) result is
    not parsed."""
    frame = b'{"jsonrpc":"2.0","id":"call-9","result":{"content":[{"type":"text","text":"xxx'
    assert answered_key(frame) == id_key("call-9")
    big = daemon_response(b"17", b'"result":{"blob":"' + b"x" * 5_000_000 + b'"}')
    assert answered_key(big) == id_key(17)


def test_long_id_is_recognised() -> None:
    """A legal but long string id still matches its pending request."""
    value = "x" * 2000
    assert answered_key(daemon_response(json.dumps(value).encode())) == id_key(value)


def test_loosely_formatted_response_falls_back_to_full_parse() -> None:
    """A response not in the daemon's compact form is still recognised."""
    frame = b'{ "id" : 3, "jsonrpc": "2.0", "result": {} }'
    assert answered_key(frame) == id_key(3)


@pytest.mark.parametrize(
    "frame",
    [
        b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,'
        b'"progress":0.5}}',
        b'{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}',
        b'{"jsonrpc": "2.0", "method": "notifications/message", "params": {"id": 4}}',
        b"not json",
        b"[1, 2]",
    ],
)
def test_notifications_and_garbage_have_no_id(frame: bytes) -> None:
    """Frames that answer no request give None, so they are forwarded, not matched."""
    assert answered_key(frame) is None


# --- what the shim does with a frame -------------------------------------------------


def tool_result(raw_id: bytes, text: str) -> bytes:
    """A successful tools/call result as the daemon splices it: id, then the raw result."""
    result = {"content": [{"type": "text", "text": text}], "isError": False}
    return daemon_response(raw_id, b'"result":' + json.dumps(result).encode())


def error_response(raw_id: bytes, code: int, message: str, data: dict[str, Any]) -> bytes:
    error = {"code": code, "message": message, "data": data}
    return daemon_response(raw_id, b'"error":' + json.dumps(error).encode())


@pytest.mark.parametrize(
    "text",
    [
        "SHUTTING_DOWN",
        '"SHUTTING_DOWN"',
        'daemon_shutdown "daemon_shutdown"',
        '{"data":{"code":"SHUTTING_DOWN"}}',
        '{"error":{"data":{"code":"WORKER_LOST","cause":"daemon_shutdown"}}}',
    ],
)
def test_a_result_that_mentions_a_shutdown_is_an_answer(text: str) -> None:
    """A read-only tool's successful result may say anything: it is the client's answer,
    never taken for the daemon shutting down (which would hold it back for a re-send)."""
    assert classify(tool_result(b"7", text)) == DaemonFrame(FrameKind.ANSWER, id_key(7))


def test_a_loosely_formatted_result_that_mentions_a_shutdown_is_an_answer() -> None:
    """The full-parse path too looks at an error's data only, never at a result."""
    frame = json.dumps(
        {"id": "r", "jsonrpc": "2.0", "result": {"content": [{"text": "SHUTTING_DOWN"}]}},
        indent=1,
    ).encode()
    assert classify(frame) == DaemonFrame(FrameKind.ANSWER, id_key("r"))


def test_shutting_down_error_is_cut_by_restart() -> None:
    """The daemon refused the call because it is stopping: data.code says so."""
    frame = error_response(b"3", -32053, "shutting down", {"code": "SHUTTING_DOWN"})
    assert classify(frame) == DaemonFrame(FrameKind.CUT_BY_RESTART, id_key(3))


def test_worker_lost_to_the_daemon_shutdown_is_cut_by_restart() -> None:
    """The call was running when the daemon stopped: WORKER_LOST with that cause."""
    data = {"code": "WORKER_LOST", "cause": "daemon_shutdown"}
    frame = error_response(b'"a"', -32052, "the daemon shut down", data)
    assert classify(frame) == DaemonFrame(FrameKind.CUT_BY_RESTART, id_key("a"))


def test_shutting_down_error_in_any_format_is_cut_by_restart() -> None:
    frame = b'{ "jsonrpc": "2.0", "error": {"code": -32053, "message": "m", "data": {"code": '
    frame += b'"SHUTTING_DOWN"}}, "id": 4 }'
    assert classify(frame) == DaemonFrame(FrameKind.CUT_BY_RESTART, id_key(4))


@pytest.mark.parametrize(
    ("message", "data"),
    [
        # The words in the text, not in the code: a tool's own failure.
        ("SHUTTING_DOWN daemon_shutdown", {"code": "EXEC_ERROR"}),
        ("the worker died", {"code": "WORKER_LOST"}),
        ("the worker died", {"code": "WORKER_LOST", "cause": "crash"}),
        ("no data code", {"cause": "daemon_shutdown"}),
    ],
)
def test_other_errors_are_answers(message: str, data: dict[str, Any]) -> None:
    frame = error_response(b"5", -32603, message, data)
    assert classify(frame) == DaemonFrame(FrameKind.ANSWER, id_key(5))


def test_error_without_data_is_an_answer() -> None:
    frame = daemon_response(b"5", b'"error":{"code":-32601,"message":"SHUTTING_DOWN"}')
    assert classify(frame) == DaemonFrame(FrameKind.ANSWER, id_key(5))


def test_a_request_from_the_daemon_is_passed_on() -> None:
    """A frame with an id and a method answers nothing of ours: the client gets it."""
    frame = b'{"jsonrpc":"2.0","id":1,"method":"roots/list"}'
    assert classify(frame).kind is FrameKind.NOTIFICATION


def test_ops_for_the_shim() -> None:
    assert classify(b'{"op":"ack","id":"x"}') == DaemonFrame(FrameKind.ACK, id_key("x"))
    refusal = classify(b'{"op":"error","error":{"message":"bad frame"}}')
    assert refusal.kind is FrameKind.REFUSAL and "bad frame" in refusal.detail
    assert classify(b'{"op":"hello_ack","ok":true}').kind is FrameKind.OTHER_OP
    assert classify(b'{"op": broken').kind is FrameKind.OTHER_OP


def test_a_huge_number_id_cut_by_the_window_is_read_whole() -> None:
    """An id longer than the window the fast path reads is never taken for a shorter one."""
    value = 10**1100
    frame = daemon_response(str(value).encode())
    assert classify(frame) == DaemonFrame(FrameKind.ANSWER, id_key(value))
