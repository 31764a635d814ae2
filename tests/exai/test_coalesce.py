"""Frames queued in one loop iteration leave in one write."""

from __future__ import annotations

import asyncio

from exai.coalesce import WriteCoalescer


async def test_a_burst_is_one_write_and_the_next_turn_another() -> None:
    writes: list[bytes] = []
    out = WriteCoalescer(asyncio.get_running_loop(), writes.append)
    for frame in (b"a", b"b", b"c"):
        out.add(frame)
    assert writes == []  # nothing leaves before the loop turns
    await asyncio.sleep(0)
    out.buffer += b"d"
    out.schedule()
    out.schedule()
    await asyncio.sleep(0)
    assert writes == [b"abc", b"d"]


async def test_flush_now_and_discard() -> None:
    writes: list[bytes] = []
    out = WriteCoalescer(asyncio.get_running_loop(), writes.append)
    out.add(b"x")
    out.flush()
    out.add(b"lost")
    out.discard()
    await asyncio.sleep(0)
    assert writes == [b"x"]
