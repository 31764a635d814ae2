"""Raw JSON fields of client frames: ids, params, arguments. Pure.

They stay undecoded (`msgspec.Raw`) so the broker never re-encodes a payload and an
id goes back to the client byte for byte as it came.
"""

from __future__ import annotations

import msgspec

__all__ = ["ABSENT", "present", "valid_id"]

# msgspec cannot put Raw in a union, so an empty Raw stands for "field absent".
ABSENT = msgspec.Raw(b"")

_ID_FIRST_BYTES = frozenset(b'"-0123456789')


def present(raw: msgspec.Raw) -> bool:
    """True when a Raw field was in the frame (JSON null counts as present)."""
    return len(raw) > 0


def valid_id(raw: msgspec.Raw) -> bool:
    """A JSON string or number: what its first byte says (the frame parsed as JSON)."""
    data = bytes(raw)
    return bool(data) and data[0] in _ID_FIRST_BYTES
