"""How the Ray bridge places calls on its tool hosts (`RayToolPool._pick`): the least
busy live host, and a conversation or a session kept on its host. No Ray needed: the
hosts are stand-ins and no call is made."""

from __future__ import annotations

import asyncio
from typing import Any

from exai.settings import load_settings
from exai.sticky import StickyMap
from workers.ray_pool import RayToolPool, _Host


def bridge(hosts: int, **environ: str) -> RayToolPool:
    """A bridge with `hosts` live stand-in hosts, as `start` would leave it."""
    pool = RayToolPool(load_settings({"EXAI_POOL": "ray", **environ}), {})
    pool._hosts = [_Host(i, actor=None) for i in range(hosts)]
    for host in pool._hosts:
        host.live = True
    pool._any_live = asyncio.Event()
    pool._any_live.set()
    return pool


def chat(continuation_id: str | None = None) -> dict[str, Any]:
    return {"prompt": "hi"} if continuation_id is None else {"continuation_id": continuation_id}


async def test_calls_without_a_key_go_to_the_least_busy_host() -> None:
    pool = bridge(3)
    pool._hosts[0].calls = 2
    pool._hosts[1].calls = 1
    pool._hosts[2].calls = 4
    assert (await pool._pick(chat(), "s1")).index == 1
    assert len(pool._sticky) == 0, "nothing to remember without a key"


async def test_a_conversation_stays_on_its_host_even_when_another_is_idle() -> None:
    pool = bridge(3)
    first = await pool._pick(chat("conv-1"), "s1")
    first.calls = 10
    for _ in range(5):
        assert await pool._pick(chat("conv-1"), "s2") is first


async def test_a_conversation_whose_host_is_down_moves_and_stays_on_the_new_one() -> None:
    pool = bridge(2)
    first = await pool._pick(chat("conv-1"), "s1")
    first.live = False
    second = await pool._pick(chat("conv-1"), "s1")
    assert second is not first
    first.live = True
    assert await pool._pick(chat("conv-1"), "s1") is second


async def test_with_session_isolation_a_session_sticks_to_one_host() -> None:
    pool = bridge(3, EXAI_ISOLATION="session")
    host = await pool._pick(chat(), "session-a")
    host.calls = 5
    assert await pool._pick(chat("other-conversation"), "session-a") is host
    assert await pool._pick(chat(), "session-b") is not host


async def test_the_sticky_keys_are_bounded() -> None:
    """Keys come from clients: the least recently used is forgotten past the bound."""
    pool = bridge(2)
    assert isinstance(pool._sticky, StickyMap)
    pool._sticky = StickyMap(max_keys=2)
    for key in ("a", "b", "c"):
        await pool._pick(chat(key), "s")
    assert len(pool._sticky) == 2
    assert pool._sticky.get("a") is None
