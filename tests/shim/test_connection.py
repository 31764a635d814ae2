"""Tests of the connection loop (shim.connection) against a fake daemon on loopback: how
a refused hello is told apart by its code (or, without one, the close code), never by
its text; and how a port where nothing listens is told from a daemon that went away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from exai.settings import ShimSettings
from shim import connection
from shim.connection import ConnectionLoop, describe, no_daemon_message, refuses_token
from shim.hello import SessionRefused
from shim.websocket import ConnectionClosed, HandshakeError, WebSocket
from tests.conftest import async_wait_for, free_port, scaled

pytestmark = pytest.mark.timeout(30)

# What the fake daemon does with a hello: frames to answer, then the close code.
Script = tuple[list[dict[str, Any]], int]


class Peer:
    """A stand-in bridge: records what the loop tells it."""

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.connected: list[bool] = []
        self.frames: list[bytes] = []
        self.unauthorized: list[str] = []
        self.no_daemon: list[str] = []
        self.refused_as_too_large: list[str] = []

    def handle_connected(self, ws: WebSocket, resumed: bool) -> None:
        self.connected.append(resumed)

    def awaited_ids(self) -> list[Any]:
        return []

    def handle_disconnected(self) -> None:
        pass

    def handle_daemon_frame(self, frame: bytes) -> None:
        self.frames.append(frame)

    def handle_unauthorized(self, message: str) -> None:
        self.unauthorized.append(message)

    def handle_no_daemon(self, message: str) -> None:
        self.no_daemon.append(message)

    def handle_oversized_frame(self, head: bytes, size: int, limit: int) -> None:
        raise AssertionError("no frame here is over the limit")

    def handle_frame_refused_as_too_large(self, reason: str) -> None:
        self.refused_as_too_large.append(reason)


class FakeDaemon:
    """Answers each hello with `script`, counting the hellos it got."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.hellos: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        assert self.runner is not None
        await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.hellos.append(json.loads(await ws.receive_str()))
        frames, close_code = self.script
        for frame in frames:
            await ws.send_str(json.dumps(frame))
        if close_code:
            await ws.close(code=close_code, message=b"bye")
        else:
            async for _ in ws:
                pass
        return ws


StartLoop = Callable[[Script], Awaitable[tuple[FakeDaemon, Peer, ConnectionLoop]]]


@pytest.fixture
async def start_loop() -> AsyncIterator[StartLoop]:
    """Start a fake daemon and a ConnectionLoop that keeps connecting to it."""
    runners: list[web.AppRunner] = []
    tasks: list[asyncio.Task[None]] = []

    async def start(script: Script) -> tuple[FakeDaemon, Peer, ConnectionLoop]:
        daemon = FakeDaemon(script)
        app = web.Application()
        app.router.add_get("/", daemon.handle)
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        runners.append(runner)
        daemon.runner = runner
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port: int = runner.addresses[0][1]
        peer = Peer()
        loop = ConnectionLoop(ShimSettings(port=port, rpc_timeout_s=5.0), "s-1", peer)
        tasks.append(asyncio.get_running_loop().create_task(loop.run()))
        return daemon, peer, loop

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for runner in runners:
        await runner.cleanup()


def refused(error: str, code: str | None) -> dict[str, Any]:
    frame: dict[str, Any] = {"op": "hello_ack", "ok": False, "error": error}
    if code is not None:
        frame["code"] = code
    return frame


@pytest.mark.parametrize(
    "script",
    [
        ([refused("token rejected", "UNAUTHORIZED")], 4003),
        # The code decides even when the close code is another.
        ([refused("token rejected", "UNAUTHORIZED")], 1008),
        # A daemon that sends no code: its close code 4003 says it.
        ([refused("token rejected", None)], 4003),
        ([], 4003),
    ],
    ids=["code", "code-other-close", "close-code-only", "close-without-ack"],
)
async def test_a_refused_token_is_recognised(start_loop: StartLoop, script: Script) -> None:
    daemon, peer, _ = await start_loop(script)
    await async_wait_for(lambda: peer.unauthorized, 10, "the refusal to be reported")
    assert "refused our token" in peer.unauthorized[0]
    assert "EXAI_WS_TOKEN" in peer.unauthorized[0]
    assert daemon.hellos[0] == {"op": "hello", "session_id": "s-1", "acks": True, "awaited": []}
    assert peer.connected == []


@pytest.mark.parametrize(
    "script",
    [
        # "unauthorized" in the text, but the code says it is another refusal.
        ([refused("unauthorized", "INVALID_FRAME")], 4001),
        ([refused("unauthorized", "INVALID_FRAME")], 4003),
        ([refused("unauthorized", None)], 4001),
    ],
    ids=["other-code", "other-code-close-4003", "no-code-other-close"],
)
async def test_other_refusals_are_retried_and_never_called_unauthorized(
    start_loop: StartLoop, script: Script
) -> None:
    daemon, peer, loop = await start_loop(script)
    await async_wait_for(lambda: len(daemon.hellos) >= 3, 10, "the loop to retry")
    assert peer.unauthorized == []
    assert loop.last_error == "daemon refused the session: unauthorized"


async def test_an_accepted_hello_connects_and_hands_over_frames(start_loop: StartLoop) -> None:
    ack = {"op": "hello_ack", "ok": True, "resumed": True}
    notification = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}}
    _, peer, _ = await start_loop(([ack, notification], 0))
    await async_wait_for(lambda: peer.frames, 10, "the frame after the hello_ack")
    assert peer.connected == [True]
    assert json.loads(peer.frames[0]) == notification


async def test_a_daemon_closing_with_1009_is_reported_as_a_frame_too_large(
    start_loop: StartLoop,
) -> None:
    ack = {"op": "hello_ack", "ok": True, "resumed": False}
    _, peer, _ = await start_loop(([ack], 1009))
    await async_wait_for(lambda: peer.refused_as_too_large, 10, "the refusal to be reported")
    assert peer.refused_as_too_large[0] == "bye"


@pytest.mark.parametrize(
    ("exc", "refuses"),
    [
        (HandshakeError(401, "Unauthorized"), True),
        (HandshakeError(403, "Forbidden"), True),
        (HandshakeError(500, "Internal Server Error"), False),
        (ConnectionClosed(4003, "unauthorized"), True),
        (ConnectionClosed(1006, "unauthorized"), False),
        (SessionRefused("unauthorized", "INVALID_FRAME", 4003), False),
        (SessionRefused("nope", "UNAUTHORIZED"), True),
        (ValueError("unauthorized"), False),
        (ConnectionRefusedError(111, "unauthorized"), False),
    ],
)
def test_refuses_token_reads_statuses_and_codes_only(exc: BaseException, refuses: bool) -> None:
    assert refuses_token(exc) is refuses


def test_describe() -> None:
    assert describe(HandshakeError(401, "Unauthorized")) == "HTTP 401 Unauthorized"
    assert describe(SessionRefused("x")) == "daemon refused the session: x"
    assert describe(TimeoutError()) == "TimeoutError"


# --- nothing listening --------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(loop: ConnectionLoop, peer: Peer) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.get_running_loop().create_task(loop.run())
    try:
        yield task
    finally:
        peer.done.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_port_where_nothing_listens_is_reported_once_on_stderr(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = ShimSettings(port=free_port(), rpc_timeout_s=30.0)
    peer = Peer()
    loop = ConnectionLoop(settings, "s-1", peer)
    with caplog.at_level(logging.WARNING, logger="shim"):
        async with running(loop, peer):
            await async_wait_for(lambda: len(peer.no_daemon) >= 3, 10, "three refusals")
    assert loop.refused_outright
    message = peer.no_daemon[0]
    assert message == no_daemon_message(settings.url)
    assert f"ws://127.0.0.1:{settings.port}" in message and "python -m broker" in message
    assert [r.getMessage() for r in caplog.records] == [message]


async def test_try_now_cuts_the_backoff_short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "backoff_delay_s", lambda attempt, jitter: 60.0)
    peer = Peer()
    loop = ConnectionLoop(ShimSettings(port=free_port()), "s-1", peer)
    async with running(loop, peer):
        await async_wait_for(lambda: peer.no_daemon, 10, "the first refusal")
        started = time.monotonic()
        loop.try_now()
        await async_wait_for(lambda: len(peer.no_daemon) == 2, 10, "a second attempt")
        assert time.monotonic() - started < scaled(5.0)


async def test_no_refusal_is_reported_with_autostart_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shim starts a daemon and waits for it instead."""
    settings = ShimSettings(port=free_port(), autostart=True)
    peer = Peer()
    loop = ConnectionLoop(settings, "s-1", peer)
    assert loop.autostarter is not None
    started: list[bool] = []

    def maybe_start() -> bool:
        started.append(True)
        return True

    monkeypatch.setattr(loop.autostarter, "maybe_start", maybe_start)
    async with running(loop, peer):
        await async_wait_for(lambda: len(started) >= 2, 10, "two autostarts")
    assert peer.no_daemon == [] and not loop.refused_outright


async def test_a_daemon_gone_after_a_connection_is_waited_for(start_loop: StartLoop) -> None:
    """Once connected, a refusal is a daemon restarting: the session may resume."""
    ack = {"op": "hello_ack", "ok": True, "resumed": False}
    daemon, peer, loop = await start_loop(([ack], 0))
    await async_wait_for(lambda: peer.connected, 10, "the connection")
    await daemon.stop()
    await async_wait_for(
        lambda: "ConnectionRefusedError" in loop.last_error, 10, "a refused reconnect"
    )
    assert peer.no_daemon == [] and not loop.refused_outright
