"""Multi-round-trip requests (2026-07-28 `input_required`) toward a hosted server. Pure.

A 2026-07-28 client takes no requests from the server. When the hosted server asks
for sampling, elicitation or roots during such a client's request, the broker answers
that request with an `input_required` result carrying the server's request, while
the server's own request stays in flight on the same instance. The client retries
with `inputResponses` and the opaque `requestState`; the responses go to the server,
and the retry takes over the waiting request: its answer (or the next round) goes to
the retry's id. The state names the round, is unguessable and is accepted only from
the session it was given to, so no client can take over another's request.
"""

from __future__ import annotations

import secrets
from typing import Any

import msgspec

__all__ = ["Parked", "Rounds", "input_required_result"]


class Parked(msgspec.Struct, eq=False):
    """A call whose client was sent `input_required`, until the client retries."""

    call: Any  # the PendingCall (typed Any: calls/call.py imports this module's users)
    state: str
    session_id: str
    # Server requests that came after the round was sent: the next round's.
    queued: list[tuple[str, bytes]] = msgspec.field(default_factory=list)
    # The server's answer when it came before the retry: (result, error), raw JSON.
    reply: tuple[bytes | None, bytes | None] | None = None


class Rounds:
    """requestState -> the parked call."""

    __slots__ = ("_by_state",)

    def __init__(self) -> None:
        self._by_state: dict[str, Parked] = {}

    def park(self, call: Any, session_id: str) -> Parked:
        parked = Parked(call, "exai-" + secrets.token_urlsafe(18), session_id)
        self._by_state[parked.state] = parked
        return parked

    def take(self, state: str, session_id: str) -> Parked | None:
        """The call a retry resumes, if `state` is one of ours for that session."""
        parked = self._by_state.get(state)
        if parked is None or parked.session_id != session_id:
            return None
        del self._by_state[state]
        return parked

    def owner(self, state: str) -> str | None:
        """The session a round was given to (its requestState is proof enough of being
        that client where there are no sessions: it is unguessable and single-use)."""
        parked = self._by_state.get(state)
        return parked.session_id if parked is not None else None

    def drop(self, state: str) -> None:
        self._by_state.pop(state, None)

    def __len__(self) -> int:
        return len(self._by_state)


def input_required_result(requests: list[tuple[str, bytes]], state: str) -> bytes:
    """The 2026-07-28 `InputRequiredResult` asking for `requests` ((key, request JSON))."""
    body = b",".join(msgspec.json.encode(key) + b":" + request for key, request in requests)
    return (
        b'{"resultType":"input_required","inputRequests":{'
        + body
        + b'},"requestState":'
        + msgspec.json.encode(state)
        + b"}"
    )
