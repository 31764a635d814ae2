"""The sticky map: bounded, least recently used first out, slots forgotten whole."""

from __future__ import annotations

from exai.sticky import StickyMap


def test_a_key_returns_to_its_slot_and_the_oldest_is_dropped_at_the_bound() -> None:
    sticky = StickyMap(max_keys=2)
    sticky.place("a", 1)
    sticky.place("b", 2)
    assert sticky.get("a") == 1  # refreshes a: b is now the oldest
    sticky.place("c", 3)
    assert (sticky.get("a"), sticky.get("b"), sticky.get("c")) == (1, None, 3)
    assert len(sticky) == 2


def test_forgetting_a_slot_drops_every_key_on_it() -> None:
    sticky = StickyMap()
    for key, slot in (("a", 0), ("b", 1), ("c", 0)):
        sticky.place(key, slot)
    sticky.forget_slot(0)
    sticky.forget("missing")
    assert (sticky.get("a"), sticky.get("b"), sticky.get("c")) == (None, 1, None)
