"""Unit tests for the session hello and the daemon's answer to it (shim.hello)."""

from __future__ import annotations

import json

import pytest

from shim.hello import CLOSE_UNAUTHORIZED, SessionRefused, hello_frame, read_hello_ack


def test_hello_asks_for_acks_and_carries_the_token_only_when_set() -> None:
    assert json.loads(hello_frame("s1", None)) == {"op": "hello", "session_id": "s1", "acks": True}
    with_token = json.loads(hello_frame("s1", "secret"))
    assert with_token["token"] == "secret"


@pytest.mark.parametrize(
    ("ack", "resumed"), [({"ok": True}, False), ({"ok": True, "resumed": True}, True)]
)
def test_accepted_hello_says_whether_the_session_was_resumed(
    ack: dict[str, object], resumed: bool
) -> None:
    assert read_hello_ack(json.dumps({"op": "hello_ack", **ack}).encode()) is resumed


def refusal(frame: dict[str, object], close_code: int | None = None) -> SessionRefused:
    with pytest.raises(SessionRefused) as caught:
        read_hello_ack(json.dumps(frame).encode())
    return caught.value.closed_with(close_code)


def test_refusal_with_code_unauthorized_is_unauthorized() -> None:
    """The daemon's code decides, whatever the text and whatever the close code."""
    refused = refusal({"op": "hello_ack", "ok": False, "error": "bad", "code": "UNAUTHORIZED"})
    assert refused.code == "UNAUTHORIZED" and refused.unauthorized
    assert refused.closed_with(1000).unauthorized
    assert str(refused) == "daemon refused the session: bad"


def test_refusal_with_another_code_is_not_unauthorized_whatever_it_says() -> None:
    frame = {"op": "hello_ack", "ok": False, "error": "unauthorized", "code": "INVALID_FRAME"}
    assert not refusal(frame).unauthorized
    # Not even with the close code of a refused token: the hello_ack's code wins.
    assert not refusal(frame, CLOSE_UNAUTHORIZED).unauthorized


def test_refusal_without_a_code_is_judged_by_the_close_code() -> None:
    """A daemon that sends no code: the close code 4003 is what marks a refused token."""
    frame = {"op": "hello_ack", "ok": False, "error": "unauthorized"}
    assert refusal(frame, CLOSE_UNAUTHORIZED).unauthorized
    assert not refusal(frame, 4001).unauthorized
    assert not refusal(frame).unauthorized


@pytest.mark.parametrize("frame", [b"not json", b"[1]", b'"ok"', b"{}"])
def test_unreadable_answers_are_refusals(frame: bytes) -> None:
    with pytest.raises(SessionRefused) as caught:
        read_hello_ack(frame)
    assert not caught.value.unauthorized


def test_a_resuming_hello_names_the_requests_still_awaited() -> None:
    """The daemon gives those back (never re-runs them) and lets go of every other answer."""
    assert json.loads(hello_frame("s1", None, [1, "two"])) == {
        "op": "hello",
        "session_id": "s1",
        "acks": True,
        "awaited": [1, "two"],
    }
