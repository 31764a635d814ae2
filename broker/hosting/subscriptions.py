"""Who subscribed to which resource of which server. Pure.

Several sessions may subscribe to the same resource of one shared instance. The
server is told once, when the first one subscribes, and `resources/unsubscribe` goes
to it only when the last one leaves (or its session ends); in between the broker
answers for it. `notifications/resources/updated` goes to the subscribers only.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Subscriptions"]


class Subscriptions:
    """(server, uri) -> the sessions subscribed."""

    __slots__ = ("_by_key", "_by_session")

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], set[str]] = {}
        self._by_session: dict[str, set[tuple[str, str]]] = {}

    def subscribe(self, server: str, uri: str, session: str) -> bool:
        """Record it; True when the server must be told (nobody was subscribed)."""
        key = (server, uri)
        sessions = self._by_key.setdefault(key, set())
        first = not sessions
        sessions.add(session)
        self._by_session.setdefault(session, set()).add(key)
        return first

    def unsubscribe(self, server: str, uri: str, session: str) -> bool:
        """Forget it; True when the server must be told (nobody is left)."""
        key = (server, uri)
        sessions = self._by_key.get(key)
        if sessions is None or session not in sessions:
            return False
        sessions.discard(session)
        mine = self._by_session.get(session)
        if mine is not None:
            mine.discard(key)
            if not mine:
                del self._by_session[session]
        if sessions:
            return False
        del self._by_key[key]
        return True

    def uris(self, server: str, session: str | None = None) -> list[str]:
        """The URIs of `server` someone (or `session`) is subscribed to, sorted."""
        if session is None:
            return sorted(uri for name, uri in self._by_key if name == server)
        return sorted(uri for name, uri in self._by_session.get(session, ()) if name == server)

    def subscribers(self, server: str, uri: str) -> Iterable[str]:
        return tuple(self._by_key.get((server, uri), ()))

    def end_session(self, session: str) -> list[tuple[str, str]]:
        """Drop a session's subscriptions; the (server, uri) pairs nobody holds now."""
        emptied = []
        for server, uri in sorted(self._by_session.get(session, set())):
            if self.unsubscribe(server, uri, session):
                emptied.append((server, uri))
        return emptied
