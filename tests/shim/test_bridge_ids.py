"""Unit tests for the shim's id matching (shim.bridge) and stdin line splitting (shim.stdio)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from shim.bridge import id_key, response_id_key
from shim.stdio import split_lines

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
    assert response_id_key(daemon_response(raw_id)) == client_key
    assert response_id_key(daemon_response(raw_id, b'"error":{"code":-32050}')) == client_key


@pytest.mark.parametrize("value", IDS)
def test_msgspec_encoded_response_matches(value: Any) -> None:
    """Responses the daemon builds with msgspec (raw UTF-8, no escapes) match too."""
    frame = msgspec.json.encode({"jsonrpc": "2.0", "id": value, "result": {}})
    assert response_id_key(frame) == id_key(value)


def test_string_and_number_ids_are_different() -> None:
    """`1` and `"1"` are different JSON-RPC ids."""
    assert id_key(1) != id_key("1")
    assert response_id_key(daemon_response(b"1")) != response_id_key(daemon_response(b'"1"'))


def test_escaped_quote_in_id_is_not_cut_short() -> None:
    """An id with an escaped quote is read whole, not up to the first quote."""
    frame = daemon_response(b'"a\\"b,\\"id\\":2"')
    assert response_id_key(frame) == id_key('a"b,"id":2')


def test_id_is_read_without_the_result() -> None:
    """The id is found from the start of the frame; a huge (here: truncated) result is
    not parsed."""
    frame = b'{"jsonrpc":"2.0","id":"call-9","result":{"content":[{"type":"text","text":"xxx'
    assert response_id_key(frame) == id_key("call-9")
    big = daemon_response(b"17", b'"result":{"blob":"' + b"x" * 5_000_000 + b'"}')
    assert response_id_key(big) == id_key(17)


def test_long_id_is_recognised() -> None:
    """A legal but long string id still matches its pending request."""
    value = "x" * 2000
    assert response_id_key(daemon_response(json.dumps(value).encode())) == id_key(value)


def test_loosely_formatted_response_falls_back_to_full_parse() -> None:
    """A response not in the daemon's compact form is still recognised."""
    frame = b'{ "id" : 3, "jsonrpc": "2.0", "result": {} }'
    assert response_id_key(frame) == id_key(3)


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
    assert response_id_key(frame) is None


# --- split_lines ---------------------------------------------------------------------


def test_partial_line_waits_for_its_end() -> None:
    """Bytes without a newline are kept until the line is complete."""
    buffer = bytearray()
    assert split_lines(buffer, b'{"jsonrpc":"2.0",') == []
    assert split_lines(buffer, b'"id":1}') == []
    assert split_lines(buffer, b"\n") == [b'{"jsonrpc":"2.0","id":1}']
    assert buffer == b""


def test_many_lines_in_one_chunk_and_a_tail() -> None:
    """One read with several lines gives them all in order; the tail is kept."""
    buffer = bytearray()
    chunk = b"".join(b'{"id":%d}\n' % i for i in range(100)) + b'{"id":'
    lines = split_lines(buffer, chunk)
    assert lines == [b'{"id":%d}' % i for i in range(100)]
    assert buffer == b'{"id":'
    assert split_lines(buffer, b"100}\n") == [b'{"id":100}']


def test_crlf_line_endings_are_stripped() -> None:
    """Windows clients end lines with CRLF; the carriage return is not part of the line."""
    buffer = bytearray()
    assert split_lines(buffer, b'{"a":1}\r\n{"b":2}\r\n') == [b'{"a":1}', b'{"b":2}']


def test_crlf_split_across_chunks() -> None:
    """A CR at the end of one chunk and LF at the start of the next still make one line."""
    buffer = bytearray()
    assert split_lines(buffer, b'{"a":1}\r') == []
    assert split_lines(buffer, b'\n{"b"') == [b'{"a":1}']
    assert buffer == b'{"b"'


def test_blank_lines_come_out_empty() -> None:
    """Empty lines are returned as empty (the reader skips them), never merged."""
    assert split_lines(bytearray(), b"\n\r\nx\n") == [b"", b"", b"x"]


def test_byte_by_byte_gives_the_same_lines() -> None:
    """However stdin is chunked, the same lines come out."""
    data = b'{"id":1}\r\n{"id":"two"}\n\n{"id":3}\n'
    buffer = bytearray()
    lines: list[bytes] = []
    for i in range(len(data)):
        lines.extend(split_lines(buffer, data[i : i + 1]))
    assert lines == split_lines(bytearray(), data)
    assert lines == [b'{"id":1}', b'{"id":"two"}', b"", b'{"id":3}']
