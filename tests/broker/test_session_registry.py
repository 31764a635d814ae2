"""Unit tests for broker.calls.session: opening, resuming and expiring sessions, the
outbox that holds answers while a client is away, and the count of answers lost."""

from __future__ import annotations

import pytest

from broker.calls.session import RECENT_MAX, Session, SessionRegistry

GRACE_S = 60.0


def registry(outbox_max_bytes: int = 1024) -> SessionRegistry:
    """A registry with a small outbox, so tests can fill it."""
    return SessionRegistry(GRACE_S, outbox_max_bytes)


def test_open_creates_then_resumes_a_session() -> None:
    """A new id opens a fresh session; the same id again resumes it, with the latest acks."""
    sessions = registry()
    sent: list[bytes] = []
    session, resumed, held = sessions.open("a", sent.append, acks=False)
    assert (resumed, held, session.attached, session.acks) == (False, [], True, False)
    again, resumed, held = sessions.open("a", sent.append, acks=True)
    assert again is session and resumed and held == []
    assert session.acks is True
    assert sessions.attached_count == 1


def test_frames_sent_while_detached_arrive_in_order_on_resume() -> None:
    """Answers for a client that is away wait in the outbox and come first on reconnect."""
    sessions = registry()
    session, _, _ = sessions.open("a", lambda f: None, acks=True)
    session.detach(now=10.0)
    assert not session.attached and sessions.attached_count == 0
    for frame in (b"one", b"two", b"three"):
        session.send(frame)
    received: list[bytes] = []
    _, resumed, held = sessions.open("a", received.append, acks=True)
    assert resumed and held == [b"one", b"two", b"three"]
    session.send(b"four")
    assert received == [b"four"]
    assert session.outbox_bytes == 0


def test_a_closed_session_is_not_resumed() -> None:
    """Once a session has ended, its id opens a new one, and the old one discards frames."""
    sessions = registry()
    old, _, _ = sessions.open("a", lambda f: None, acks=False)
    old.detach(0.0)
    old.closed = True
    new, resumed, _ = sessions.open("a", lambda f: None, acks=False)
    assert new is not old and not resumed
    old.send(b"late")
    assert list(old.outbox) == []
    assert sessions.frames_dropped == 0


def test_a_full_outbox_drops_frames_and_the_registry_counts_them() -> None:
    """Past the byte bound (or the frame bound) frames are dropped, and frames_dropped
    counts them across every session, including sessions already forgotten."""
    sessions = registry(outbox_max_bytes=10)
    first, _, _ = sessions.open("a", lambda f: None, acks=False)
    first.detach(0.0)
    first.send(b"12345")
    first.send(b"67890")
    first.send(b"x")  # 11 bytes would not fit
    assert list(first.outbox) == [b"12345", b"67890"]
    second, _, _ = sessions.open("b", lambda f: None, acks=False)
    second.outbox_max_frames = 1
    second.detach(0.0)
    second.send(b"a")
    second.send(b"b")
    assert sessions.frames_dropped == 2
    sessions.forget(first)
    assert sessions.frames_dropped == 2


def test_frames_dropped_is_read_only() -> None:
    """The count is for reporting; nobody outside the registry sets it."""
    sessions = registry()
    with pytest.raises(AttributeError):
        sessions.frames_dropped = 5  # type: ignore[misc]


def test_expired_lists_sessions_detached_past_the_grace() -> None:
    """Only detached sessions whose grace is over are due to be ended."""
    sessions = registry()
    attached, _, _ = sessions.open("attached", lambda f: None, acks=False)
    fresh, _, _ = sessions.open("fresh", lambda f: None, acks=False)
    stale, _, _ = sessions.open("stale", lambda f: None, acks=False)
    stale.detach(now=100.0)
    fresh.detach(now=100.0 + GRACE_S / 2)
    assert sessions.expired(now=100.0 + GRACE_S) == [stale]
    assert attached not in sessions.expired(now=1e9)


def test_forget_removes_only_the_same_session() -> None:
    """Forgetting an old session object leaves a newer one with the same id alone."""
    sessions = registry()
    old, _, _ = sessions.open("a", lambda f: None, acks=False)
    old.closed = True
    new, _, _ = sessions.open("a", lambda f: None, acks=False)
    sessions.forget(old)
    assert sessions.sessions == {"a": new}
    sessions.forget(new)
    assert sessions.sessions == {}


def test_a_forgotten_session_lets_go_of_what_it_kept_for_a_reconnect() -> None:
    """Whoever still refers to an ended session (a finished call, say) holds no answers
    through it: its kept answers and its outbox are dropped, and it takes no more."""
    sessions = registry(outbox_max_bytes=1 << 20)
    session, _, _ = sessions.open("a", lambda f: None, acks=True)
    session.remember(b'"r1"', b"x" * 1000)
    session.detach(0.0)
    session.send(b"held")
    assert session.held_bytes > 1000
    sessions.forget(session)
    session.send(b"late")
    assert session.closed and session.held_bytes == 0
    assert not session.recent and not session.outbox
    assert session.replay(b'"r1"') is None


def test_remembered_answers_are_bounded_but_keep_the_newest() -> None:
    """A retrying client is answered from memory; the memory forgets the oldest first."""
    session = Session("s")
    for n in range(RECENT_MAX + 5):
        session.remember(str(n).encode(), b"answer")
    assert len(session.recent) == RECENT_MAX
    assert b"0" not in session.recent and str(RECENT_MAX + 4).encode() in session.recent
    session.remember(b"huge", b"x" * (16 * 1024 * 1024))
    assert list(session.recent) == [b"huge"]
