"""WebSocket close codes of the daemon's op-dialect session opening (4000-4999 are ours).

The daemon closes with them; the shim reads them (4003 means the token is wrong,
and retrying will not help).
"""

from __future__ import annotations

import enum

__all__ = ["SessionClose"]


class SessionClose(enum.IntEnum):
    NOT_JSON = 4000
    NOT_HELLO = 4001
    HELLO_TIMEOUT = 4002
    UNAUTHORIZED = 4003
    # One connection per session: a newer connection took this one's session over.
    TAKEN_OVER = 4004
