"""The one-timer timeline behind call timeouts and deferred shim acks (a real loop)."""

from __future__ import annotations

import asyncio

from broker.calls.timeline import Timeline

DELAY_S = 0.05


async def test_items_fire_once_in_order_after_the_delay_unless_discarded() -> None:
    loop = asyncio.get_running_loop()
    fired: list[tuple[str, float]] = []
    timeline: Timeline[str] = Timeline(
        loop, DELAY_S, lambda item: fired.append((item, loop.time()))
    )
    start = loop.time()
    due_a = timeline.add(1, "a")
    timeline.add(2, "b")
    timeline.add(3, "c")
    timeline.discard(2)
    # A key already waiting keeps its moment.
    assert timeline.add(1, "a again") == due_a
    await asyncio.sleep(DELAY_S * 4)
    assert [item for item, _ in fired] == ["a", "c"]
    assert all(at >= start + DELAY_S - 0.002 for _, at in fired)
    assert len(timeline) == 0


async def test_items_added_while_firing_get_their_own_full_delay() -> None:
    loop = asyncio.get_running_loop()
    fired: list[str] = []
    timeline: Timeline[str] = Timeline(loop, DELAY_S, fired.append)

    def fire_and_add(item: str) -> None:
        fired.append(item)
        if item == "first":
            chained.add(2, "second")

    chained: Timeline[str] = Timeline(loop, DELAY_S, fire_and_add)
    chained.add(1, "first")
    timeline.add(1, "other")
    await asyncio.sleep(DELAY_S * 1.5)
    assert sorted(fired) == ["first", "other"]
    await asyncio.sleep(DELAY_S * 2)
    assert sorted(fired) == ["first", "other", "second"]
    assert len(chained) == 0
