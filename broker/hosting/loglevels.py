"""MCP log levels (RFC 5424 severities) and each session's threshold. Pure.

A hosted server logs at its own level; the broker keeps every client session's
`logging/setLevel` and passes a `notifications/message` on only to sessions whose
threshold it meets, so one client asking for debug output does not flood another.
"""

from __future__ import annotations

__all__ = ["LEVELS", "LogLevels", "severity"]

LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
_RANK = {name: rank for rank, name in enumerate(LEVELS)}


def severity(level: str) -> int | None:
    """The rank of `level` (debug = 0), or None for a name MCP does not define."""
    return _RANK.get(level)


class LogLevels:
    """session -> the lowest level it wants; a session that never set one gets all."""

    __slots__ = ("_threshold",)

    def __init__(self) -> None:
        self._threshold: dict[str, int] = {}

    def set(self, session: str, level: str) -> bool:
        """Record `level` for `session`; False when it is not an MCP level."""
        rank = severity(level)
        if rank is None:
            return False
        self._threshold[session] = rank
        return True

    def wants(self, session: str, level: str) -> bool:
        rank = severity(level)
        return rank is None or rank >= self._threshold.get(session, 0)

    def lowest(self) -> int | None:
        """The lowest threshold any session set (the server must log at least that
        much), or None when no session set one."""
        return min(self._threshold.values(), default=None)

    def end_session(self, session: str) -> None:
        self._threshold.pop(session, None)
