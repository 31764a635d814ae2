"""Transition tables for the broker's state machines (a call's life, a worker's). Pure.

Each machine declares which moves are legal in one table; its single `move` function
asks the table before it changes anything, so an illegal move (a bug) is refused
loudly instead of leaving an object in a state nobody planned for.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

__all__ = ["IllegalMove", "Transitions"]

S = TypeVar("S", bound=enum.Enum)


class IllegalMove(RuntimeError, Generic[S]):
    """A move the table does not allow; `what` names the thing that was to move."""

    def __init__(self, what: str, from_state: S, to_state: S) -> None:
        super().__init__(f"{what}: {from_state.name} -> {to_state.name} is not allowed")
        self.from_state = from_state
        self.to_state = to_state


class Transitions(Generic[S]):
    """state -> the states it may move to.

    `table` is read directly on hot paths (a dict lookup and a set test per move);
    the error is built only when a move is refused.
    """

    __slots__ = ("table",)

    def __init__(self, allowed: Mapping[S, Iterable[S]]) -> None:
        self.table: dict[S, frozenset[S]] = {
            state: frozenset(targets) for state, targets in allowed.items()
        }

    def refuse(self, what: str, from_state: S, to_state: S) -> IllegalMove[S]:
        """The error for a move the table does not allow (raise it)."""
        return IllegalMove(what, from_state, to_state)
