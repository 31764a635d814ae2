"""Where the daemon sends a client's MCP request when it hosts servers. Pure.

The router asks its front (one hosted server, or the fleet of a servers file) for a
route and acts on it: forward the request (to the one server, or to the member that
owns the tool, prompt or resource, with its params rewritten to that server's own
names), answer it at once, answer it once a merged list is gathered, or run it as
one of the daemon's own tools.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable

from broker.calls.forwarding import Forwarder as Target

__all__ = ["BUILTIN", "Answer", "Builtin", "Forward", "Later", "Route", "Target"]


@dataclasses.dataclass(frozen=True, slots=True)
class Forward:
    """Forward with these params; `target` None means the daemon's one hosted server.
    `server` names the member for metrics."""

    target: Target | None
    params: bytes | None
    server: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    result: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Later:
    """A result the daemon gathers from several servers first."""

    result: Awaitable[bytes]


@dataclasses.dataclass(frozen=True, slots=True)
class Builtin:
    """One of the daemon's own tools: the workers run it."""


BUILTIN = Builtin()
Route = Forward | Answer | Later | Builtin
