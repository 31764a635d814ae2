"""aiohttp routes: the WebSocket endpoint and the HTTP endpoints on the same port.

Every request passes the guard middleware (guard.py) before it reaches a handler
here, so no handler checks Origin, Host or token itself. What the handlers need of
the daemon is the `Backend` protocol: this module never imports the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any, Protocol

from aiohttp import WSCloseCode, WSMsgType, web

from broker.calls.session import SessionRegistry
from broker.observe.prometheus import CONTENT_TYPE
from broker.router.router import CROWDED_OUT, HELLO_TIMEOUT, ClientPeer, Refusal
from broker.web.auth import Auth
from broker.web.clients import Clients
from broker.web.connection import WsConnection
from broker.web.guard import GUARD_KEY, Guard, guard_middleware, wants_websocket
from broker.web.heartbeat import Heartbeat
from broker.web.streamable import STREAMABLE_PATH, HttpSessions, Streamable
from exai.settings import Settings

__all__ = [
    "BACKEND_KEY",
    "HTTP_SESSIONS_KEY",
    "SETTINGS_KEY",
    "WS_ONLY_PATH",
    "Backend",
    "FrameHandler",
    "create_app",
]

log = logging.getLogger("broker.web.app")

_END_OF_STREAM = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)
STATUS_PAGE = Path(__file__).parent / "static" / "status.html"
# Answers only WebSocket upgrades; a plain GET is told so (426) and needs no token.
WS_ONLY_PATH = "/ws"


class FrameHandler(Protocol):
    def handle(self, peer: ClientPeer, data: bytes, /) -> None:
        """Act on one frame from `peer`."""

    def refuse(self, peer: WsConnection, refusal: Refusal, /) -> None:
        """Refuse `peer`'s session opening and close it."""


class Backend(Protocol):
    """What the handlers ask of the daemon."""

    @property
    def draining(self) -> bool:
        """True from the moment the daemon starts to shut down."""

    @property
    def clients(self) -> Clients: ...

    @property
    def router(self) -> FrameHandler: ...

    @property
    def sessions(self) -> SessionRegistry: ...

    @property
    def hosting(self) -> object | None:
        """The hosted server, if the daemon hosts one."""

    def snapshot(self) -> dict[str, Any]:
        """The health snapshot (GET /health)."""

    def render_metrics(self) -> bytes:
        """The Prometheus text (GET /metrics)."""

    def connection_closed(self, conn: ClientPeer, ended: bool, quiet: bool = False) -> None:
        """`conn` is gone; `ended` when the client said goodbye (close code 1000)."""

    def round_owner(self, state: str) -> str | None:
        """The session a 2026-07-28 round (its requestState) was given to."""


SETTINGS_KEY: web.AppKey[Settings] = web.AppKey("settings")
BACKEND_KEY: web.AppKey[Backend] = web.AppKey("backend")
HTTP_SESSIONS_KEY: web.AppKey[HttpSessions] = web.AppKey("http_sessions")


async def handle_root(request: web.Request) -> web.StreamResponse:
    if wants_websocket(request):
        return await handle_ws(request)
    return web.Response(body=STATUS_PAGE.read_bytes(), content_type="text/html", charset="utf-8")


async def handle_ws_only(request: web.Request) -> web.StreamResponse:
    if wants_websocket(request):
        return await handle_ws(request)
    return web.Response(status=426, text="this endpoint speaks WebSocket\n")


async def handle_ws(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    backend = request.app[BACKEND_KEY]
    clients = backend.clients
    if backend.draining:
        return web.Response(status=503, text="shutting down\n")
    if clients.full:
        victim = clients.make_room()
        if victim is None:
            log.warning(
                "refused connection from %s: %d connections open (EXAI_WS_MAX_CONNECTIONS)",
                request.remote,
                len(clients),
            )
            return web.Response(status=503, text="too many connections\n")
        log.warning(
            "closed unauthenticated connection %s to make room for %s: %d connections "
            "open (EXAI_WS_MAX_CONNECTIONS)",
            victim.remote,
            request.remote,
            len(clients) + 1,
        )
        backend.router.refuse(victim, CROWDED_OUT)
    ws = web.WebSocketResponse(
        protocols=("mcp",),
        max_msg_size=settings.max_frame_bytes,
        # Pings and pongs come to the loop below, where the heartbeat sees every frame.
        autoping=False,
        decode_text=False,
        compress=False,
    )
    await ws.prepare(request)
    transport = request.transport
    remote = f"{request.remote}"
    abort = transport.abort if transport is not None else (lambda: None)
    conn = WsConnection(ws, settings.send_buffer_bytes, remote, abort=abort, transport=transport)
    conn.authenticated = request.app[GUARD_KEY].authenticated(request)
    clients.add(conn)
    loop = asyncio.get_running_loop()

    def silent() -> None:
        log.warning(
            "connection %s closed: no pong within %g s of a ping (EXAI_WS_PING_TIMEOUT)",
            remote,
            settings.ping_timeout_s,
        )
        # A peer that answers nothing cannot take part in a closing handshake either.
        abort()

    heartbeat = Heartbeat(loop, settings.ping_interval_s, settings.ping_timeout_s, ws.ping, silent)
    heard = heartbeat.heard
    hello_timer = loop.call_later(settings.hello_timeout_s, _hello_timeout, backend.router, conn)
    handle = backend.router.handle
    receive = ws.receive
    try:
        # `async for msg in ws`, minus a coroutine layer per frame.
        while True:
            msg = await receive()
            heard()
            kind = msg.type
            if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                handle(conn, msg.data)
            elif kind is WSMsgType.PING:
                with contextlib.suppress(ConnectionError):
                    await ws.pong(msg.data)
            elif kind is WSMsgType.PONG:
                continue
            elif kind in _END_OF_STREAM:
                break
            elif kind is WSMsgType.ERROR:
                if getattr(msg.data, "code", None) == WSCloseCode.MESSAGE_TOO_BIG:
                    log.warning(
                        "closed connection %s with 1009: frame larger than EXAI_WS_MAX_BYTES (%d)",
                        remote,
                        settings.max_frame_bytes,
                    )
                elif not heartbeat.expired:
                    log.warning("connection %s closed: %s", remote, ws.exception())
    finally:
        heartbeat.stop()
        hello_timer.cancel()
        clients.discard(conn)
        # A client that closes with 1000 says goodbye: its session ends now instead of
        # waiting out the resume grace. A peer dropped for silence did not.
        ended = ws.close_code == 1000 and not conn.closing and not heartbeat.expired
        backend.connection_closed(conn, ended=ended)
        await conn.aclose()
    return ws


def _hello_timeout(router: FrameHandler, conn: WsConnection) -> None:
    if conn.session is None and not conn.closing:
        router.refuse(conn, HELLO_TIMEOUT)


async def handle_health(request: web.Request) -> web.StreamResponse:
    backend = request.app[BACKEND_KEY]
    return web.json_response(backend.snapshot(), status=503 if backend.draining else 200)


async def handle_metrics(request: web.Request) -> web.StreamResponse:
    body = request.app[BACKEND_KEY].render_metrics()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def handle_unrouted(request: web.Request) -> web.StreamResponse:
    """A 404, or a 405 naming the methods the path has."""
    allowed = {
        route.method
        for route in request.app.router.routes()
        if route.method != "*"
        and route.resource is not None
        and route.resource.canonical == request.path
    }
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, sorted(allowed))
    raise web.HTTPNotFound()


async def expect_continue(request: web.Request) -> None:
    """aiohttp's own Expect handler echoes the header into its 417, and a header that
    is not UTF-8 turns that into a 500. These routes take no body anyway: a client
    that asks to continue may, and any other expectation is refused plainly."""
    expect = request.headers.get("Expect", "")
    if expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text="only 'Expect: 100-continue' is understood")
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0


def _add_streamable(app: web.Application, settings: Settings, backend: Backend) -> None:
    # Read from the backend when a request comes, not now: nothing of it is needed
    # before the first one.
    sessions = HttpSessions(
        lambda: backend.sessions,
        backend.connection_closed,
        idle_s=settings.session_idle_timeout_s,
        max_sessions=settings.max_connections,
        buffer_bytes=settings.send_buffer_bytes,
    )
    streamable = Streamable(
        sessions,
        backend.router.handle,
        lambda: backend.draining,
        hosted=lambda: backend.hosting is not None,
        max_body_bytes=settings.max_frame_bytes,
        round_owner=lambda state: backend.round_owner(state),
    )
    app[HTTP_SESSIONS_KEY] = sessions
    app.router.add_post(STREAMABLE_PATH, streamable.post, expect_handler=expect_continue)
    app.router.add_get(STREAMABLE_PATH, streamable.get, expect_handler=expect_continue)
    app.router.add_delete(STREAMABLE_PATH, streamable.delete, expect_handler=expect_continue)

    async def end_http_sessions(_: web.Application) -> None:
        # Open SSE streams would otherwise hold the shutdown for aiohttp's whole timeout.
        sessions.end_all()

    app.on_shutdown.append(end_http_sessions)


def create_app(settings: Settings, auth: Auth, backend: Backend) -> web.Application:
    """The daemon's routes, every one behind the guard."""
    app = web.Application(client_max_size=1024 * 1024, middlewares=[guard_middleware])
    app[SETTINGS_KEY] = settings
    app[GUARD_KEY] = Guard(settings, auth, upgrade_only_paths={WS_ONLY_PATH})
    app[BACKEND_KEY] = backend
    app.router.add_get("/", handle_root, expect_handler=expect_continue)
    app.router.add_get(WS_ONLY_PATH, handle_ws_only, expect_handler=expect_continue)
    app.router.add_get("/health", handle_health, expect_handler=expect_continue)
    app.router.add_get("/metrics", handle_metrics, expect_handler=expect_continue)
    _add_streamable(app, settings, backend)
    # Last, so that it matches only what no route above does: a 404 or 405 of aiohttp's
    # own would go through its Expect handler.
    app.router.add_route("*", "/{path:.*}", handle_unrouted, expect_handler=expect_continue)
    return app
