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
    """state -> the states it may move to."""

    __slots__ = ("_allowed",)

    def __init__(self, allowed: Mapping[S, Iterable[S]]) -> None:
        self._allowed = {state: frozenset(targets) for state, targets in allowed.items()}

    def check(self, what: str, from_state: S, to_state: S) -> None:
        """Raise IllegalMove unless `from_state -> to_state` is in the table."""
        if to_state not in self._allowed[from_state]:
            raise IllegalMove(what, from_state, to_state)

    def targets(self, state: S) -> frozenset[S]:
        return self._allowed[state]
