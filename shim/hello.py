"""The hello that opens (or resumes) a shim's session, and the daemon's answer to it. Pure.

The daemon answers `hello` with a `hello_ack`: `ok` and whether the session was
`resumed`, or `ok: false` with an `error` text for people and a `code` (an ErrorCode)
for programs, and then it closes the connection with a 4xxx code. The shim decides
by the code, never by the text.
"""

from __future__ import annotations

import json
from typing import Any

from exai.closes import SessionClose
from exai.errors import ErrorCode

__all__ = ["CLOSE_UNAUTHORIZED", "SessionRefused", "hello_frame", "read_hello_ack"]

# The close code the daemon ends a connection with when it refuses the token. A
# daemon whose hello_ack carries no code is recognised by it.
CLOSE_UNAUTHORIZED = SessionClose.UNAUTHORIZED


class SessionRefused(Exception):
    """The daemon answered our hello with a refusal (or with something unreadable)."""

    def __init__(self, error: str, code: str | None = None, close_code: int | None = None) -> None:
        self.error = error
        self.code = code
        self.close_code = close_code
        super().__init__(f"daemon refused the session: {error}")

    @property
    def unauthorized(self) -> bool:
        """True when the refusal is of our token: retrying with it will not help."""
        if self.code is not None:
            return self.code == ErrorCode.UNAUTHORIZED
        return self.close_code == CLOSE_UNAUTHORIZED

    def closed_with(self, close_code: int | None) -> SessionRefused:
        """This refusal, knowing the close code the daemon ended the connection with."""
        return SessionRefused(self.error, self.code, close_code)


def hello_frame(session_id: str, token: str | None, awaited: list[Any] | None = None) -> bytes:
    """The hello that opens session `session_id`, or resumes it on the same daemon.

    `awaited` lists the ids of the requests sent before and still unanswered: on a
    resume the daemon gives back (never re-runs) the answers of those among them that
    completed meanwhile, and knows every other answer it kept has arrived, so a later
    request reusing such an id is a new request.
    """
    hello: dict[str, Any] = {"op": "hello", "session_id": session_id, "acks": True}
    if awaited is not None:
        hello["awaited"] = awaited
    if token:
        hello["token"] = token
    return json.dumps(hello).encode()


def read_hello_ack(frame: bytes) -> bool:
    """Whether the daemon resumed the session; raises SessionRefused if it refused it."""
    try:
        ack = json.loads(frame)
    except (ValueError, RecursionError):
        raise SessionRefused("its answer to hello is not JSON") from None
    if not isinstance(ack, dict):
        raise SessionRefused(str(ack))
    if not ack.get("ok"):
        code = ack.get("code")
        raise SessionRefused(str(ack.get("error")), code if isinstance(code, str) else None)
    return bool(ack.get("resumed"))
