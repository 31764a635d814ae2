"""The JSON-RPC 2.0 envelope, decoded with its payloads left raw. Pure.

`params`, `result`, `error` and ids stay undecoded (`msgspec.Raw`), so the broker never
re-encodes a payload and an id goes back to its sender byte for byte as it came.
Shared by the client-frame codec and the relay toward hosted servers.
"""

from __future__ import annotations

import msgspec

__all__ = ["ABSENT", "Message", "present", "valid_id"]

# msgspec cannot put Raw in a union, so an empty Raw stands for "field absent".
ABSENT = msgspec.Raw(b"")

_ID_FIRST_BYTES = frozenset(b'"-0123456789')


class Message(msgspec.Struct):
    """Any JSON-RPC message: request, notification, or response."""

    jsonrpc: str | None = None
    id: msgspec.Raw = ABSENT
    method: str | None = None
    params: msgspec.Raw = ABSENT
    result: msgspec.Raw = ABSENT
    error: msgspec.Raw = ABSENT


def present(raw: msgspec.Raw) -> bool:
    """True when a Raw field was in the message (JSON null counts as present)."""
    return len(raw) > 0


def valid_id(raw: msgspec.Raw) -> bool:
    """A JSON string or number: what its first byte says (the message parsed as JSON)."""
    data = bytes(raw)
    return bool(data) and data[0] in _ID_FIRST_BYTES
