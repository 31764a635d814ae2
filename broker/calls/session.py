"""A client session: its identity, its calls in flight, and where its answers go.

A session outlives its connection for a grace period, so a shim that reconnects
with the same session id receives what it missed. While detached, answers are
held in a bounded outbox.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

__all__ = ["Outbound", "Session"]

Outbound = Callable[[bytes], None]

RECENT_MAX = 1024
RECENT_MAX_BYTES = 8 * 1024 * 1024


@dataclasses.dataclass(slots=True, eq=False)
class Session:
    """One client's view of the daemon. Request ids are keys only within a session."""

    id: str
    acks: bool = False
    calls: dict[bytes, Any] = dataclasses.field(default_factory=dict)
    send_fn: Outbound | None = None
    # The connection currently attached (whatever the front end uses; compared by identity).
    owner: Any = None
    outbox: deque[bytes] = dataclasses.field(default_factory=deque)
    outbox_bytes: int = 0
    outbox_max_bytes: int = 64 * 1024 * 1024
    outbox_max_frames: int = 10_000
    # Told of each frame the full outbox could not hold (the registry counts them).
    on_drop: Callable[[], None] | None = None
    detached_at: float | None = None
    closed: bool = False
    # Answers already sent, by request id: a re-sent id gets the same answer again
    # instead of a second run (only for sessions that retry, i.e. shims).
    recent: OrderedDict[bytes, bytes] = dataclasses.field(default_factory=OrderedDict)
    recent_bytes: int = 0

    def remember(self, key: bytes, frame: bytes) -> None:
        self.recent[key] = frame
        self.recent_bytes += len(frame)
        # The newest answer is always kept, however large, so an immediate re-send of
        # that id is still answered from here rather than run again.
        while len(self.recent) > 1 and (
            len(self.recent) > RECENT_MAX or self.recent_bytes > RECENT_MAX_BYTES
        ):
            _, old = self.recent.popitem(last=False)
            self.recent_bytes -= len(old)

    @property
    def attached(self) -> bool:
        return self.send_fn is not None

    def send(self, data: bytes) -> None:
        """Deliver a frame now, or hold it for the reconnect if the connection is gone."""
        send_fn = self.send_fn
        if send_fn is not None:
            send_fn(data)
            return
        if self.closed:
            return
        if len(self.outbox) >= self.outbox_max_frames or (
            self.outbox_bytes + len(data) > self.outbox_max_bytes
        ):
            if self.on_drop is not None:
                self.on_drop()
            return
        self.outbox.append(data)
        self.outbox_bytes += len(data)

    def attach(self, send_fn: Outbound) -> list[bytes]:
        """Bind a connection; returns the frames held while detached, in order."""
        self.send_fn = send_fn
        self.detached_at = None
        held = list(self.outbox)
        self.outbox.clear()
        self.outbox_bytes = 0
        return held

    def detach(self, now: float) -> None:
        self.send_fn = None
        self.owner = None
        self.detached_at = now


class SessionRegistry:
    """All sessions by id, attached or waiting out their resume grace."""

    def __init__(self, resume_grace_s: float, outbox_max_bytes: int) -> None:
        self.resume_grace_s = resume_grace_s
        self.outbox_max_bytes = outbox_max_bytes
        self.sessions: dict[str, Session] = {}
        self._frames_dropped = 0

    def open(
        self, session_id: str, send_fn: Outbound, acks: bool
    ) -> tuple[Session, bool, list[bytes]]:
        """Attach a connection to a session: (session, resumed, frames held while away)."""
        session = self.sessions.get(session_id)
        if session is not None and not session.closed:
            held = session.attach(send_fn)
            session.acks = acks
            return session, True, held
        session = Session(
            session_id,
            acks=acks,
            outbox_max_bytes=self.outbox_max_bytes,
            on_drop=self._count_drop,
        )
        session.attach(send_fn)
        self.sessions[session_id] = session
        return session, False, []

    def expired(self, now: float) -> list[Session]:
        """Detached sessions whose grace is over (the caller ends and forgets them)."""
        return [
            s
            for s in self.sessions.values()
            if s.detached_at is not None and now - s.detached_at >= self.resume_grace_s
        ]

    def forget(self, session: Session) -> None:
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]

    @property
    def attached_count(self) -> int:
        return sum(1 for s in self.sessions.values() if s.attached)

    @property
    def frames_dropped(self) -> int:
        """Answers lost because a detached session's outbox was full (all sessions, ever)."""
        return self._frames_dropped

    def _count_drop(self) -> None:
        self._frames_dropped += 1
