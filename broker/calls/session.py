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

import msgspec

from broker.hosting.instance import ClientHello

__all__ = ["EVICTED", "Outbound", "Session", "canonical_id"]

Outbound = Callable[[bytes], None]

# Answers kept after they were sent, for a re-send from a shim whose connection
# dropped before they arrived. Small: a resuming shim names what it still awaits, and
# an answer let go of is told as such (never re-run), so this only spares that error
# for the last answers sent before a drop; every attached shim holds this much.
RECENT_MAX = 256
RECENT_MAX_BYTES = 1024 * 1024
# Ids of answers that had to be let go of: a re-send of one is told so, never re-run.
# Only the latest matter: a shim re-sends only what it still awaits, after a drop.
EVICTED_MAX = 1024
# What `replay` says of a re-sent id whose call completed but whose answer is gone.
EVICTED = b""


def canonical_id(raw: bytes) -> bytes:
    """A request id in one spelling (`1`, `"a"`), however the client wrote it."""
    try:
        return msgspec.json.encode(msgspec.json.decode(raw))
    except msgspec.DecodeError:
        return raw


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
    # Ids whose answers were evicted from `recent` (values unused: an ordered set).
    evicted: OrderedDict[bytes, None] = dataclasses.field(default_factory=OrderedDict)
    # The ids a resuming shim said it still awaits (canonical), or None for a client
    # that does not say (then every id in `recent` counts as a re-send).
    awaited: set[bytes] | None = None
    # Who the client said it is (initialize, or a 2026-07-28 envelope): what a hosted
    # server's own instance for this session is told.
    client: ClientHello | None = None
    # True once the client sent a JSON-RPC frame: only such a client can be sent a hosted
    # server's own notifications and requests (the op dialect has no frames for them).
    speaks_mcp: bool = False
    # True once it sent a 2026-07-28 request: list changes and resource updates reach it
    # only through the `subscriptions/listen` streams it opens.
    modern: bool = False

    def remember(self, key: bytes, frame: bytes) -> None:
        self.recent[key] = frame
        self.recent_bytes += len(frame)
        # The newest answer is always kept, however large, so an immediate re-send of
        # that id is still answered from here rather than run again.
        while len(self.recent) > 1 and (
            len(self.recent) > RECENT_MAX or self.recent_bytes > RECENT_MAX_BYTES
        ):
            old_key, old = self.recent.popitem(last=False)
            self.recent_bytes -= len(old)
            self.evicted[old_key] = None
            if len(self.evicted) > EVICTED_MAX:
                self.evicted.popitem(last=False)

    def expect_resends(self, awaited: list[Any]) -> None:
        """A shim resumed, still awaiting the answers of `awaited` (ids): every other
        answer kept for it has arrived, and is let go of."""
        keys = {msgspec.json.encode(value) for value in awaited}
        for key in [k for k in self.recent if canonical_id(k) not in keys]:
            self.recent_bytes -= len(self.recent.pop(key))
        for key in [k for k in self.evicted if canonical_id(k) not in keys]:
            del self.evicted[key]
        self.awaited = keys

    def replay(self, key: bytes) -> bytes | None:
        """The answer to give a request id instead of running it: the kept answer of a
        re-send, EVICTED for a re-send whose answer is gone, None to run it (a new
        request, even one reusing the id of an answer the client has)."""
        awaited = self.awaited
        if awaited is not None:
            canonical = canonical_id(key) if awaited else b""
            if canonical not in awaited:
                stale = self.recent.pop(key, None)
                if stale is not None:
                    self.recent_bytes -= len(stale)
                self.evicted.pop(key, None)
                return None
            awaited.discard(canonical)
        frame = self.recent.get(key)
        if frame is not None:
            return frame
        return EVICTED if key in self.evicted else None

    @property
    def held_bytes(self) -> int:
        """What this session keeps for a reconnect."""
        return self.outbox_bytes + self.recent_bytes

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

    def release(self) -> None:
        """The session is gone for good: drop what it kept for a reconnect now, rather
        than when the last object that still refers to it (a finished call, a task's
        local) lets go of it."""
        self.closed = True
        self.send_fn = None
        self.owner = None
        self.outbox.clear()
        self.outbox_bytes = 0
        self.recent.clear()
        self.recent_bytes = 0
        self.evicted.clear()
        self.awaited = None

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

    def over_budget(self, max_bytes: int, max_sessions: int) -> list[Session]:
        """Detached sessions to end now, oldest first, so that what the others hold
        stays within `max_bytes` and there are at most `max_sessions` of them."""
        detached = sorted(
            (s for s in self.sessions.values() if s.detached_at is not None and not s.closed),
            key=lambda s: s.detached_at or 0.0,
        )
        total = sum(s.held_bytes for s in detached)
        ended: list[Session] = []
        for session in detached:
            if total <= max_bytes and len(detached) - len(ended) <= max_sessions:
                break
            ended.append(session)
            total -= session.held_bytes
        return ended

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
        session.release()

    @property
    def attached_count(self) -> int:
        return sum(1 for s in self.sessions.values() if s.attached)

    @property
    def frames_dropped(self) -> int:
        """Answers lost because a detached session's outbox was full (all sessions, ever)."""
        return self._frames_dropped

    def _count_drop(self) -> None:
        self._frames_dropped += 1
