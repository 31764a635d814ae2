"""Sticky placement: which worker (or actor) a key was served by, most recent first.

A conversation (`continuation_id`) or a per-session server instance lives in one
worker, so later calls with the same key go back there. The map is bounded: keys
come from clients, and the least recently used one is forgotten first. Pure.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["STICKY_MAX", "StickyMap"]

STICKY_MAX = 10_000


class StickyMap:
    """key -> slot, bounded, least recently used dropped first."""

    __slots__ = ("_slots", "max_keys")

    def __init__(self, max_keys: int = STICKY_MAX) -> None:
        self.max_keys = max_keys
        self._slots: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._slots)

    def get(self, key: str) -> int | None:
        """The slot `key` was placed on, refreshed as most recently used."""
        slot = self._slots.get(key)
        if slot is not None:
            self._slots.move_to_end(key)
        return slot

    def place(self, key: str, slot: int) -> None:
        """Remember that `key` now lives on `slot`."""
        self._slots[key] = slot
        self._slots.move_to_end(key)
        if len(self._slots) > self.max_keys:
            self._slots.popitem(last=False)

    def forget(self, key: str) -> None:
        self._slots.pop(key, None)

    def forget_slot(self, slot: int) -> None:
        """Drop every key placed on `slot` (its worker died: their state went with it)."""
        for key in [k for k, s in self._slots.items() if s == slot]:
            del self._slots[key]
