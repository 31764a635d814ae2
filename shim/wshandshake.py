"""Sans-I/O RFC 6455 opening handshake: the client's HTTP upgrade request and the
checks its ``101 Switching Protocols`` answer must pass.

Standard library only and no sockets or asyncio, so it imports fast and can be
unit-tested byte for byte.
"""

__all__ = [
    "HandshakeError",
    "HandshakeResponse",
    "accept_for",
    "handshake_request",
    "make_key",
    "parse_handshake_response",
]

import base64
import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from exai.net import host_for_url

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Headers the handshake owns; letting callers set them would break the upgrade
# (or, for Origin, make the broker treat the shim like a browser page).
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "upgrade",
        "connection",
        "origin",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
        "sec-websocket-accept",
    }
)


class HandshakeError(Exception):
    """The server refused or botched the HTTP upgrade."""

    def __init__(
        self,
        status: int,
        reason: str,
        body_hint: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.body_hint = body_hint
        self.headers: dict[str, str] = dict(headers or {})
        msg = f"WebSocket handshake failed: {status} {reason}"
        if body_hint:
            msg += f" ({body_hint})"
        super().__init__(msg)


class HandshakeResponse(NamedTuple):
    """A validated ``101 Switching Protocols`` response."""

    status: int
    reason: str
    headers: dict[str, str]
    subprotocol: str | None


def make_key() -> str:
    """Return a fresh ``Sec-WebSocket-Key`` (base64 of 16 random bytes)."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def accept_for(key: str) -> str:
    """Return the ``Sec-WebSocket-Accept`` value a server must send for ``key``."""
    digest = hashlib.sha1((key + _GUID).encode("ascii"), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def _check_token(value: str, what: str) -> None:
    if not value or any(c in value for c in "\r\n\0 \t:"):
        raise ValueError(f"invalid {what}: {value!r}")


def _check_header_value(value: str) -> None:
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"invalid header value: {value!r}")


def handshake_request(
    host: str,
    port: int,
    path: str,
    key: str,
    headers: Mapping[str, str] | None = None,
    subprotocols: Sequence[str] = (),
) -> bytes:
    """Build the HTTP/1.1 upgrade request; never sends an ``Origin`` header."""
    if not path.startswith("/") or any(c in path for c in " \r\n\0\t"):
        raise ValueError(f"invalid request path: {path!r}")
    host = host_for_url(host)
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocols:
        for proto in subprotocols:
            _check_token(proto, "subprotocol")
            if "," in proto:
                raise ValueError(f"invalid subprotocol: {proto!r}")
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
    for name, value in (headers or {}).items():
        _check_token(name, "header name")
        _check_header_value(value)
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by the handshake itself")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    text = head.decode("latin-1")
    if text.endswith("\r\n\r\n"):
        text = text[:-4]
    status_line, _, rest = text.partition("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise HandshakeError(0, "malformed HTTP status line", status_line[:200])
    status = int(parts[1])
    reason = parts[2] if len(parts) == 3 else ""
    headers: dict[str, str] = {}
    for line in rest.split("\r\n") if rest else ():
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HandshakeError(status, reason, f"malformed header line {line[:200]!r}")
        lname = name.lower()
        value = value.strip()
        headers[lname] = f"{headers[lname]}, {value}" if lname in headers else value
    return status, reason, headers


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",") if t.strip()}


def parse_handshake_response(
    head: bytes, key: str, subprotocols: Sequence[str] = ()
) -> HandshakeResponse:
    """Validate the server's response head (through ``\\r\\n\\r\\n``) for ``key``.

    Raises ``HandshakeError`` unless it is a well-formed 101 with the right accept
    value. If ``subprotocols`` is given, a chosen protocol outside it is an error.
    """
    status, reason, headers = _parse_head(head)
    if status != 101:
        raise HandshakeError(status, reason, "", headers)
    if "websocket" not in _tokens(headers.get("upgrade", "")):
        raise HandshakeError(status, reason, "missing 'Upgrade: websocket'", headers)
    if "upgrade" not in _tokens(headers.get("connection", "")):
        raise HandshakeError(status, reason, "missing 'Connection: Upgrade'", headers)
    if headers.get("sec-websocket-accept") != accept_for(key):
        raise HandshakeError(status, reason, "Sec-WebSocket-Accept mismatch", headers)
    if headers.get("sec-websocket-extensions"):
        # We never offer extensions, so any here would change the framing under us.
        raise HandshakeError(status, reason, "server selected an extension", headers)
    chosen = headers.get("sec-websocket-protocol") or None
    if chosen is not None and subprotocols and chosen not in subprotocols:
        raise HandshakeError(status, reason, f"unexpected subprotocol {chosen!r}", headers)
    return HandshakeResponse(status, reason, headers, chosen)
