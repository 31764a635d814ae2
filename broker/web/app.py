"""aiohttp routes: the WebSocket endpoint and the HTTP endpoints on the same port.

Each request is checked before anything else happens: a browser's Origin, a Host
that is not ours (DNS rebinding), and the bearer token when auth is on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, WSMsgType, web

from broker.observe.prometheus import CONTENT_TYPE
from broker.router.router import CLOSE_HELLO_TIMEOUT
from broker.web.connection import WsConnection
from exai.net import is_loopback_host

if TYPE_CHECKING:
    from broker.daemon import Daemon

__all__ = ["DAEMON_KEY", "create_app"]

log = logging.getLogger("broker.web.app")

DAEMON_KEY: web.AppKey[Daemon] = web.AppKey("daemon")
_END_OF_STREAM = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)
STATUS_PAGE = Path(__file__).parent / "static" / "status.html"


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.query.get("token")


def _offered_protocols(request: web.Request) -> list[str]:
    header = request.headers.get("Sec-WebSocket-Protocol", "")
    return [p.strip() for p in header.split(",") if p.strip()]


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def check_request(daemon: Daemon, request: web.Request) -> web.Response | None:
    """A refusal response, or None when the request may proceed."""
    settings = daemon.settings
    origin = request.headers.get("Origin")
    if origin is not None and origin.rstrip("/") not in settings.allowed_origins:
        log.warning(
            "refused %s %s from origin %s (not in EXAI_WS_ALLOWED_ORIGINS)",
            request.method,
            request.path,
            origin[:200],
        )
        return web.Response(status=403, text="origin not allowed\n")
    host = _host_name(request.headers.get("Host", "")).lower()
    # DNS rebinding: a page served from evil.example resolving to 127.0.0.1 still says
    # "Host: evil.example". Only a wildcard bind with a token accepts any host name.
    wildcard = settings.host in ("0.0.0.0", "::") and daemon.auth.enabled
    if host and not wildcard and not is_loopback_host(host) and host != settings.host.lower():
        log.warning("refused %s %s for host %s", request.method, request.path, host[:200])
        return web.Response(status=403, text="host not allowed\n")
    presented = _bearer(request)
    if daemon.auth.enabled and presented is not None and not daemon.auth.check(presented):
        log.warning("refused %s %s: wrong token", request.method, request.path)
        return web.Response(
            status=401, text="unauthorized\n", headers={"WWW-Authenticate": "Bearer"}
        )
    return None


async def handle_root(request: web.Request) -> web.StreamResponse:
    daemon = request.app[DAEMON_KEY]
    refusal = check_request(daemon, request)
    if refusal is not None:
        return refusal
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await handle_ws(request, daemon)
    if request.path == "/ws":
        return web.Response(status=426, text="this endpoint speaks WebSocket\n")
    refusal = check_http(daemon, request)
    if refusal is not None:
        return refusal
    return web.Response(body=STATUS_PAGE.read_bytes(), content_type="text/html", charset="utf-8")


async def handle_ws(request: web.Request, daemon: Daemon) -> web.StreamResponse:
    settings = daemon.settings
    presented = _bearer(request)
    if daemon.auth.enabled and presented is None and "mcp" in _offered_protocols(request):
        # MCP-style clients send JSON-RPC at once; there is no hello to carry a token.
        log.warning("refused MCP-style upgrade from %s: no token", request.remote)
        return web.Response(
            status=401, text="unauthorized\n", headers={"WWW-Authenticate": "Bearer"}
        )
    if daemon.draining:
        return web.Response(status=503, text="shutting down\n")
    if len(daemon.connections) >= settings.max_connections:
        log.warning(
            "refused connection from %s: %d connections open (EXAI_WS_MAX_CONNECTIONS)",
            request.remote,
            len(daemon.connections),
        )
        return web.Response(status=503, text="too many connections\n")
    ws = web.WebSocketResponse(
        protocols=("mcp",),
        max_msg_size=settings.max_frame_bytes,
        heartbeat=settings.ping_interval_s,
        decode_text=False,
        compress=False,
    )
    if hasattr(ws, "_pong_heartbeat"):
        # aiohttp waits heartbeat/2 for a pong; EXAI_WS_PING_TIMEOUT is ours to honour.
        ws._pong_heartbeat = settings.ping_timeout_s
    await ws.prepare(request)
    transport = request.transport
    remote = f"{request.remote}"
    conn = WsConnection(
        ws,
        settings.send_buffer_bytes,
        remote,
        abort=transport.abort if transport is not None else (lambda: None),
        transport=transport,
    )
    conn.authenticated = not daemon.auth.enabled or presented is not None
    daemon.connections.add(conn)
    router = daemon.router
    loop = daemon.loop
    hello_timer = loop.call_later(settings.hello_timeout_s, _hello_timeout, daemon, conn)
    receive = ws.receive
    try:
        # `async for msg in ws`, minus a coroutine layer per frame.
        while True:
            msg = await receive()
            kind = msg.type
            if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                router.handle(conn, msg.data)
            elif kind in _END_OF_STREAM:
                break
            elif kind is WSMsgType.ERROR:
                if getattr(msg.data, "code", None) == WSCloseCode.MESSAGE_TOO_BIG:
                    log.warning(
                        "closed connection %s with 1009: frame larger than EXAI_WS_MAX_BYTES (%d)",
                        remote,
                        settings.max_frame_bytes,
                    )
                else:
                    log.warning("connection %s closed: %s", remote, ws.exception())
    finally:
        hello_timer.cancel()
        # A client that closes with 1000 says goodbye: its session ends now instead of
        # waiting out the resume grace.
        daemon.connection_closed(conn, ended=ws.close_code == 1000 and not conn.closing)
        await conn.aclose()
    return ws


def _hello_timeout(daemon: Daemon, conn: WsConnection) -> None:
    if conn.session is None and not conn.closing:
        conn.send(b'{"op":"hello_ack","ok":false,"error":"no hello in time"}')
        conn.close(CLOSE_HELLO_TIMEOUT, "no hello in time")


def check_http(daemon: Daemon, request: web.Request) -> web.Response | None:
    """Origin, Host and token rules for plain HTTP endpoints (the token is required)."""
    refusal = check_request(daemon, request)
    if refusal is None and daemon.auth.enabled and _bearer(request) is None:
        refusal = web.Response(
            status=401, text="unauthorized\n", headers={"WWW-Authenticate": "Bearer"}
        )
    return refusal


async def handle_health(request: web.Request) -> web.StreamResponse:
    daemon = request.app[DAEMON_KEY]
    refusal = check_http(daemon, request)
    if refusal is not None:
        return refusal
    return web.json_response(daemon.snapshot(), status=503 if daemon.draining else 200)


async def handle_metrics(request: web.Request) -> web.StreamResponse:
    daemon = request.app[DAEMON_KEY]
    refusal = check_http(daemon, request)
    if refusal is not None:
        return refusal
    return web.Response(body=daemon.prometheus.render(), headers={"Content-Type": CONTENT_TYPE})


def create_app(daemon: Daemon) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app[DAEMON_KEY] = daemon
    app.router.add_get("/", handle_root)
    app.router.add_get("/ws", handle_root)
    app.router.add_get("/health", handle_health)
    app.router.add_get("/metrics", handle_metrics)
    return app
