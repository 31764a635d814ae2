"""Unit tests for broker.calls.call: the table of a call's legal moves, and `move`
refusing everything else. Pure and synchronous."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from broker.calls.call import CallState, IllegalMove, PendingCall, move
from broker.calls.session import Session
from broker.router.codec import Dialect

S = CallState
LEGAL = {
    (S.RECEIVED, S.QUEUED),
    (S.RECEIVED, S.HELD),
    (S.RECEIVED, S.RUNNING),
    (S.RECEIVED, S.DONE),
    (S.QUEUED, S.HELD),
    (S.QUEUED, S.RUNNING),
    (S.QUEUED, S.DONE),
    (S.HELD, S.RUNNING),
    (S.HELD, S.DONE),
    (S.RUNNING, S.DONE),
}


def pending(state: CallState = CallState.RECEIVED) -> PendingCall:
    """A call as the manager makes it, put straight into `state`."""
    call = PendingCall(
        7,
        Session("s"),
        b"1",
        msgspec.Raw(b"1"),
        Dialect.MCP,
        "echo",
        b"{}",
        None,
        None,
        None,
        0.0,
    )
    call.state = state
    return call


def test_a_new_call_is_received() -> None:
    """A call starts RECEIVED, not done."""
    call = pending()
    assert call.state is CallState.RECEIVED
    assert not call.done


@pytest.mark.parametrize(("from_state", "to_state"), sorted(LEGAL))
def test_legal_moves_change_the_state_and_return_the_old_one(
    from_state: CallState, to_state: CallState
) -> None:
    """Each move of the table is allowed; `move` says which state was left."""
    call = pending(from_state)
    assert move(call, to_state) is from_state
    assert call.state is to_state


ILLEGAL = sorted(set(itertools.product(CallState, repeat=2)) - LEGAL)


@pytest.mark.parametrize(("from_state", "to_state"), ILLEGAL)
def test_every_other_move_raises_and_leaves_the_call_alone(
    from_state: CallState, to_state: CallState
) -> None:
    """Backwards moves, standing still and leaving DONE are refused, naming the move."""
    call = pending(from_state)
    with pytest.raises(IllegalMove) as info:
        move(call, to_state)
    assert call.state is from_state
    assert (info.value.from_state, info.value.to_state) == (from_state, to_state)
    assert f"{from_state.name} -> {to_state.name}" in str(info.value)


def test_done_is_final_and_reached_from_every_live_state() -> None:
    """DONE allows no move at all, and every other state can end there (so every path
    out of a call can finish it)."""
    for state in CallState:
        if state is not CallState.DONE:
            assert (state, CallState.DONE) in LEGAL
    assert not [to for (frm, to) in LEGAL if frm is CallState.DONE]
    call = pending(CallState.DONE)
    assert call.done
    with pytest.raises(IllegalMove):
        move(call, CallState.DONE)


def test_a_call_finishes_only_once() -> None:
    """The second finish of the same call is the bug `move` catches."""
    call = pending(CallState.RUNNING)
    move(call, CallState.DONE)
    with pytest.raises(IllegalMove):
        move(call, CallState.DONE)
