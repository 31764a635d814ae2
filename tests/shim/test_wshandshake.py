"""Unit tests for the sans-I/O WebSocket opening handshake (shim.wshandshake)."""

import base64

import pytest

from shim.wshandshake import (
    HandshakeError,
    accept_for,
    handshake_request,
    make_key,
    parse_handshake_response,
)


def test_accept_for_rfc_example() -> None:
    # The worked example from RFC 6455 section 1.3.
    assert accept_for("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_make_key_is_random_16_bytes() -> None:
    k1, k2 = make_key(), make_key()
    assert k1 != k2
    assert len(base64.b64decode(k1, validate=True)) == 16


def test_handshake_request_contents() -> None:
    req = handshake_request(
        "127.0.0.1",
        8765,
        "/mcp?x=1",
        "KEY==",
        headers={"Authorization": "Bearer abc"},
        subprotocols=["mcp", "mcp.v2"],
    )
    assert req.endswith(b"\r\n\r\n")
    lines = req.decode("latin-1").split("\r\n")
    assert lines[0] == "GET /mcp?x=1 HTTP/1.1"
    headers = {k.lower(): v for k, _, v in (ln.partition(": ") for ln in lines[1:] if ln)}
    assert headers["host"] == "127.0.0.1:8765"
    assert headers["upgrade"] == "websocket"
    assert headers["connection"] == "Upgrade"
    assert headers["sec-websocket-key"] == "KEY=="
    assert headers["sec-websocket-version"] == "13"
    assert headers["sec-websocket-protocol"] == "mcp, mcp.v2"
    assert headers["authorization"] == "Bearer abc"
    assert "origin" not in headers


def test_handshake_request_minimal_and_ipv6() -> None:
    req = handshake_request("::1", 80, "/", "K")
    text = req.decode("latin-1")
    assert "Host: [::1]:80\r\n" in text
    assert "Sec-WebSocket-Protocol" not in text
    assert "Origin" not in text


@pytest.mark.parametrize(
    ("headers", "path"),
    [
        ({"Origin": "http://evil"}, "/"),
        ({"Host": "x"}, "/"),
        ({"X-Bad": "a\r\nInjected: 1"}, "/"),
        ({"Bad Name": "v"}, "/"),
        (None, "no-slash"),
        (None, "/a b"),
    ],
)
def test_handshake_request_rejects_bad_input(headers: dict[str, str] | None, path: str) -> None:
    with pytest.raises(ValueError):
        handshake_request("127.0.0.1", 1, path, "K", headers=headers)


def _response(key: str, *, accept: str | None = None, extra: str = "") -> bytes:
    acc = accept_for(key) if accept is None else accept
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {acc}\r\n"
        f"{extra}"
        "\r\n"
    ).encode("latin-1")


def test_parse_handshake_response_good() -> None:
    key = make_key()
    resp = parse_handshake_response(
        _response(key, extra="Sec-WebSocket-Protocol: mcp\r\nX-Thing: 1\r\n"), key, ["mcp"]
    )
    assert resp.status == 101
    assert resp.reason == "Switching Protocols"
    assert resp.subprotocol == "mcp"
    assert resp.headers["x-thing"] == "1"
    assert resp.headers["upgrade"] == "websocket"


def test_parse_handshake_response_no_subprotocol() -> None:
    key = make_key()
    assert parse_handshake_response(_response(key), key).subprotocol is None


def test_parse_handshake_response_bad_accept() -> None:
    key = make_key()
    with pytest.raises(HandshakeError) as ei:
        parse_handshake_response(_response(key, accept=accept_for(make_key())), key)
    assert ei.value.status == 101
    assert "Accept" in ei.value.body_hint


def test_parse_handshake_response_401() -> None:
    head = (
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 12\r\n"
        b'WWW-Authenticate: Bearer realm="x"\r\n\r\n'
    )
    with pytest.raises(HandshakeError) as ei:
        parse_handshake_response(head, make_key())
    assert ei.value.status == 401
    assert ei.value.reason == "Unauthorized"
    assert ei.value.headers["content-length"] == "12"


@pytest.mark.parametrize(
    "head",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 abc Nope\r\n\r\n",
    ],
)
def test_parse_handshake_response_malformed(head: bytes) -> None:
    with pytest.raises(HandshakeError) as ei:
        parse_handshake_response(head, "K")
    assert ei.value.status == 0


def test_parse_handshake_response_rejects_extension_and_unoffered_protocol() -> None:
    key = make_key()
    with pytest.raises(HandshakeError):
        parse_handshake_response(
            _response(key, extra="Sec-WebSocket-Extensions: permessage-deflate\r\n"), key
        )
    with pytest.raises(HandshakeError):
        parse_handshake_response(
            _response(key, extra="Sec-WebSocket-Protocol: other\r\n"), key, ["mcp"]
        )


def test_parse_handshake_response_missing_upgrade() -> None:
    key = make_key()
    head = f"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: {accept_for(key)}\r\n\r\n".encode()
    with pytest.raises(HandshakeError):
        parse_handshake_response(head, key)
