"""The WebSocket keep-alive (EXAI_WS_PING_INTERVAL / EXAI_WS_PING_TIMEOUT), on the
daemon's real app on a loopback test server with a fake backend."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from aiohttp import WSMsgType

from tests.broker.test_web_app import Client, FakeBackend
from tests.broker.test_web_app import served as served_app
from tests.conftest import async_wait_for, scaled


@contextlib.asynccontextmanager
async def served(interval_s: float, timeout_s: float) -> AsyncIterator[tuple[Client, FakeBackend]]:
    environ = {"EXAI_WS_PING_INTERVAL": str(interval_s), "EXAI_WS_PING_TIMEOUT": str(timeout_s)}
    async with served_app(environ) as (client, backend, _):
        yield client, backend


async def test_a_peer_that_never_answers_pings_is_dropped() -> None:
    """Interval 0.2 s, timeout 0.3 s: a client that reads but never pongs gets one ping,
    and about half a second later the daemon is gone from under it; the drop does not
    count as a goodbye (its session could resume)."""
    async with served(0.2, 0.3) as (client, backend):
        ws = await client.ws_connect("/", autoping=False)
        opened = time.monotonic()
        first = await ws.receive(timeout=scaled(5))
        assert first.type is WSMsgType.PING
        following = await ws.receive(timeout=scaled(5))
        assert following.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)
        assert time.monotonic() - opened >= 0.2 + 0.3
        await async_wait_for(lambda: backend.closed, 5, "the daemon to let the connection go")
        assert backend.closed == [False]
        assert len(backend.clients) == 0


async def test_a_peer_answering_late_but_within_the_timeout_stays() -> None:
    """Interval 0.1 s, timeout 5 s: a client that answers every ping 0.3 s late (three
    intervals) is pinged again after each answer and is still served afterwards."""
    async with served(0.1, 5.0) as (client, backend):
        ws = await client.ws_connect("/", autoping=False)
        for _ in range(3):
            msg = await ws.receive(timeout=scaled(5))
            assert msg.type is WSMsgType.PING, msg
            await asyncio.sleep(0.3)
            await ws.pong(msg.data)
        await ws.send_str("still here")
        while (msg := await ws.receive(timeout=scaled(5))).type is WSMsgType.PING:
            await ws.pong(msg.data)
        assert (msg.type, msg.data) == (WSMsgType.TEXT, "still here")
        await ws.close()
        await async_wait_for(lambda: backend.closed, 5, "the goodbye to arrive")
        assert backend.closed == [True]


async def test_a_busy_peer_is_not_pinged() -> None:
    """Frames are signs of life: a client that sends one every 50 ms for two seconds
    with a 0.8 s interval never gets a ping."""
    async with served(0.8, 0.8) as (client, _):
        ws = await client.ws_connect("/", autoping=False)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            await ws.send_str("tick")
            msg = await ws.receive(timeout=scaled(5))
            assert (msg.type, msg.data) == (WSMsgType.TEXT, "tick"), msg
            await asyncio.sleep(0.05)
        await ws.close()


async def test_the_daemon_answers_a_client_ping() -> None:
    """A client's own ping gets its pong back, payload and all."""
    async with served(25.0, 10.0) as (client, _):
        ws = await client.ws_connect("/", autoping=False)
        await ws.ping(b"are-you-there")
        msg = await ws.receive(timeout=scaled(5))
        assert (msg.type, msg.data) == (WSMsgType.PONG, b"are-you-there")
        await ws.close()


async def test_an_aiohttp_client_with_its_own_heartbeat_stays_connected() -> None:
    """Both sides pinging (the client with aiohttp's heartbeat) keeps the connection up
    well past both timeouts."""
    async with served(0.3, 0.5) as (client, backend):
        ws = await client.ws_connect("/", heartbeat=0.5)
        received = asyncio.ensure_future(ws.receive())
        done, _ = await asyncio.wait({received}, timeout=1.5)
        assert not done, received.result()
        received.cancel()
        assert not ws.closed
        await ws.close()
        await async_wait_for(lambda: backend.closed == [True], 5, "the goodbye to arrive")
