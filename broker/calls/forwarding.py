"""What the call manager needs of a hosted server to forward requests to it.

A forwarded request is a call like a tool call (admitted, timed, cancelled,
counted), but it goes to the instance of a hosted server that serves its session
instead of to a worker, as JSON-RPC whose params stay raw. The hosting side
implements these protocols; the manager never imports it.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["ForwardTarget", "Forwarder"]


class ForwardTarget(Protocol):
    """One running instance: requests go in under the call's number."""

    def request(
        self, handle: int, method: str, params: bytes | None, token: bytes | None
    ) -> None: ...

    def cancel(self, handle: int, reason: str | None = None) -> None: ...


class Forwarder(Protocol):
    """Places a session's requests on instances; raises BrokerError when it never can."""

    def place(self, session_id: str) -> ForwardTarget | None:
        """The instance for the session now, or None while one starts (the call waits)."""
        ...

    def answer_input(self, session_id: str, key: str, response: bytes) -> bool:
        """A 2026-07-28 retry's response to the server request `key`."""
        ...

    def end_session(self, session_id: str) -> None: ...
