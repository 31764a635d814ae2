"""The daemon's aiohttp app in-process, with a fake backend on a loopback test server:
what each endpoint answers. The helpers here serve the other test_web_* modules too.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDictProxy

from broker.observe.prometheus import CONTENT_TYPE
from broker.web.app import create_app
from broker.web.auth import Auth
from broker.web.clients import Clients
from broker.web.connection import WsConnection
from exai.settings import Settings, load_settings
from tests.conftest import async_wait_for, scaled

Client = TestClient[web.Request, web.Application]


class EchoRouter:
    """Answers every frame with the same bytes."""

    def handle(self, peer: WsConnection, data: bytes) -> None:
        peer.send(data)


class FakeBackend:
    """The daemon as the handlers see it; records what reached it."""

    def __init__(self, settings: Settings) -> None:
        self.draining = False
        self.clients = Clients(settings.max_connections)
        self.router = EchoRouter()
        self.snapshots = 0
        # `ended` of every connection that closed: False means its session may resume.
        self.closed: list[bool] = []

    def snapshot(self) -> dict[str, Any]:
        self.snapshots += 1
        return {"ready": True, "draining": self.draining}

    def render_metrics(self) -> bytes:
        return b"exai_up 1\n"

    def connection_closed(self, conn: WsConnection, ended: bool) -> None:
        self.closed.append(ended)


@contextlib.asynccontextmanager
async def served(environ: dict[str, str]) -> AsyncIterator[tuple[Client, FakeBackend, Auth]]:
    """The daemon's app for these settings on 127.0.0.1, with a client for it."""
    settings = load_settings(environ)
    auth = Auth(settings.token)
    backend = FakeBackend(settings)
    async with TestClient(TestServer(create_app(settings, auth, backend))) as client:
        yield client, backend, auth


async def get(
    client: Client, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str, CIMultiDictProxy[str]]:
    """A plain GET: (status, body, headers)."""
    async with client.get(path, headers=headers or {}) as resp:
        return resp.status, await resp.text(), resp.headers


async def upgrade(
    client: Client,
    headers: dict[str, str] | None = None,
    path: str = "/",
    protocols: tuple[str, ...] = (),
) -> int:
    """101 when the upgrade succeeds (and a frame comes back), else the refusal's status."""
    try:
        ws = await client.ws_connect(path, headers=headers or {}, protocols=protocols)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    async with ws:
        await ws.send_str('{"op":"ping"}')
        assert await ws.receive_str(timeout=scaled(10)) == '{"op":"ping"}'
    return 101


async def test_health_answers_the_snapshot_and_503_while_draining() -> None:
    """Probes read the snapshot; while the daemon drains the same body comes with 503."""
    async with served({}) as (client, backend, _):
        async with client.get("/health") as resp:
            assert resp.status == 200
            assert await resp.json() == {"ready": True, "draining": False}
        backend.draining = True
        async with client.get("/health") as resp:
            assert resp.status == 503
            assert (await resp.json())["draining"] is True


async def test_metrics_and_the_status_page() -> None:
    async with served({}) as (client, _, _):
        status, body, headers = await get(client, "/metrics")
        assert (status, body) == (200, "exai_up 1\n")
        assert headers["Content-Type"] == CONTENT_TYPE
        status, body, headers = await get(client, "/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert "<html" in body.lower()


async def test_no_new_connection_while_draining() -> None:
    async with served({}) as (client, backend, _):
        backend.draining = True
        assert await upgrade(client) == 503
        status, body, _ = await get(client, "/", {"Connection": "Upgrade", "Upgrade": "websocket"})
        assert (status, body) == (503, "shutting down\n")


async def test_connections_past_the_limit_are_refused_until_one_closes() -> None:
    """With EXAI_WS_MAX_CONNECTIONS=2 a third client gets 503 "too many connections";
    once one leaves (saying goodbye), a new one is let in."""
    async with served({"EXAI_WS_MAX_CONNECTIONS": "2"}) as (client, backend, _):
        first = await client.ws_connect("/")
        second = await client.ws_connect("/")
        headers = {"Connection": "Upgrade", "Upgrade": "websocket"}
        status, body, _ = await get(client, "/", headers)
        assert (status, body) == (503, "too many connections\n")
        await first.close()
        await async_wait_for(lambda: backend.closed == [True], 5, "the first client to leave")
        assert await upgrade(client) == 101
        await second.close()
