"""Unit tests for the shim's stdin line splitting (shim.stdio)."""

from __future__ import annotations

from shim.stdio import split_lines


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
