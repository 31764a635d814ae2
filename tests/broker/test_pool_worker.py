"""Unit tests for broker.pool.worker: the table of a worker slot's legal moves, `move`
refusing everything else, and the states as the health snapshot shows them. Pure."""

from __future__ import annotations

import itertools
import json

import orjson
import pytest

from broker.pool.worker import IllegalMove, WorkerHandle, WorkerState, move

S = WorkerState
LEGAL = {
    (S.STARTING, S.READY),
    (S.STARTING, S.STOPPING),
    (S.STARTING, S.DEAD),
    (S.READY, S.DRAINING),
    (S.READY, S.STOPPING),
    (S.READY, S.DEAD),
    (S.DRAINING, S.STOPPING),
    (S.DRAINING, S.DEAD),
    (S.STOPPING, S.DEAD),
    (S.DEAD, S.STARTING),
}


def handle_in(state: WorkerState) -> WorkerHandle:
    handle = WorkerHandle(3)
    handle.state = state
    return handle


def test_a_new_slot_is_starting_and_not_live() -> None:
    """A slot's first process is started at once: it begins STARTING, taking no calls."""
    handle = WorkerHandle(0)
    assert handle.state is WorkerState.STARTING
    assert not handle.live


@pytest.mark.parametrize("state", list(WorkerState))
def test_only_a_ready_worker_is_live(state: WorkerState) -> None:
    """Calls go to READY workers only: not while starting, draining, stopping or dead."""
    assert handle_in(state).live is (state is WorkerState.READY)


@pytest.mark.parametrize(("from_state", "to_state"), sorted(LEGAL))
def test_legal_moves_change_the_state_and_return_the_old_one(
    from_state: WorkerState, to_state: WorkerState
) -> None:
    """Each move of the table is allowed; `move` says which state was left."""
    handle = handle_in(from_state)
    assert move(handle, to_state) is from_state
    assert handle.state is to_state


ILLEGAL = sorted(set(itertools.product(WorkerState, repeat=2)) - LEGAL)


@pytest.mark.parametrize(("from_state", "to_state"), ILLEGAL)
def test_every_other_move_raises_and_leaves_the_worker_alone(
    from_state: WorkerState, to_state: WorkerState
) -> None:
    """Standing still, skipping DEAD on the way back, leaving STOPPING for anything but
    DEAD: refused, naming the slot and the move."""
    handle = handle_in(from_state)
    with pytest.raises(IllegalMove) as info:
        move(handle, to_state)
    assert handle.state is from_state
    assert (info.value.from_state, info.value.to_state) == (from_state, to_state)
    assert f"worker 3: {from_state.name} -> {to_state.name}" in str(info.value)


def test_a_full_life_starts_again_only_through_dead() -> None:
    """starting, ready, draining, stopping, dead, starting: the recycling path."""
    handle = WorkerHandle(0)
    for state in (S.READY, S.DRAINING, S.STOPPING, S.DEAD, S.STARTING):
        move(handle, state)
    assert handle.state is S.STARTING


def test_states_compare_and_serialise_as_the_strings_the_health_snapshot_shows() -> None:
    """Callers compare with "ready"; the health file and metrics labels show the value."""
    assert [str(s) for s in WorkerState] == ["starting", "ready", "draining", "stopping", "dead"]
    handle = handle_in(S.READY)
    assert handle.state == "ready"
    assert json.dumps({"state": handle.state}) == '{"state": "ready"}'
    assert orjson.dumps({"state": handle.state}) == b'{"state":"ready"}'
    assert f"{handle.state}" == "ready"
