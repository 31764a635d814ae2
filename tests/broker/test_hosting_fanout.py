"""Resource subscriptions shared on one instance, and per-session log thresholds."""

from __future__ import annotations

from broker.hosting.loglevels import LogLevels, severity
from broker.hosting.subscriptions import Subscriptions


def test_the_server_hears_the_first_subscribe_and_the_last_unsubscribe() -> None:
    subs = Subscriptions()
    assert subs.subscribe("fs", "file:///a", "s1") is True
    assert subs.subscribe("fs", "file:///a", "s2") is False
    assert set(subs.subscribers("fs", "file:///a")) == {"s1", "s2"}
    assert subs.unsubscribe("fs", "file:///a", "s1") is False
    assert subs.unsubscribe("fs", "file:///a", "s1") is False  # twice: nothing to do
    assert subs.unsubscribe("fs", "file:///a", "s2") is True
    assert list(subs.subscribers("fs", "file:///a")) == []


def test_a_session_that_ends_releases_what_only_it_held() -> None:
    subs = Subscriptions()
    subs.subscribe("fs", "a", "s1")
    subs.subscribe("fs", "b", "s1")
    subs.subscribe("fs", "b", "s2")
    subs.subscribe("git", "a", "s1")
    assert subs.end_session("s1") == [("fs", "a"), ("git", "a")]
    assert list(subs.subscribers("fs", "b")) == ["s2"]
    assert subs.end_session("s2") == [("fs", "b")]


def test_the_uris_held_are_listed_per_server_and_per_session() -> None:
    """What a restarted instance must be told: every URI of its server someone holds,
    or, for a session's own instance, that session's."""
    subs = Subscriptions()
    subs.subscribe("fs", "b", "s1")
    subs.subscribe("fs", "a", "s2")
    subs.subscribe("git", "c", "s1")
    assert subs.uris("fs") == ["a", "b"]
    assert subs.uris("fs", "s1") == ["b"] and subs.uris("git", "s2") == []


def test_log_thresholds_are_per_session() -> None:
    levels = LogLevels()
    assert levels.set("quiet", "error") and levels.set("chatty", "debug")
    assert not levels.set("bad", "verbose")
    assert levels.wants("chatty", "info") and not levels.wants("quiet", "warning")
    assert levels.wants("quiet", "critical") and levels.wants("never-set", "debug")
    assert levels.wants("quiet", "unknown-level")  # passed on: the client decides
    levels.end_session("quiet")
    assert levels.wants("quiet", "debug")
    assert severity("emergency") == 7 and severity("nope") is None
