"""Who may talk to the daemon: one middleware checks every request before any handler.

The rules, in order (the first that fails answers):

1. Origin. Browsers name the page that opened a request; only the pages listed in
   EXAI_WS_ALLOWED_ORIGINS may reach us (403). Clients that are not browsers send none.
2. Host. A page served from evil.example that resolves to 127.0.0.1 still says
   "Host: evil.example" (DNS rebinding): only loopback names and our own address
   pass (403), unless the daemon listens on every address and has a token.
3. Token, when auth is on (401 with WWW-Authenticate). A wrong token is refused
   everywhere. Plain HTTP needs the token, except on a path that only answers
   "use WebSocket". A WebSocket upgrade may leave it out, since an op client sends it
   in its hello; but an MCP client (subprotocol "mcp") sends JSON-RPC at once and has
   no hello to carry one, so it needs the token on the upgrade.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Collection

from aiohttp import web
from aiohttp.typedefs import Handler

from broker.web.auth import Auth
from exai.net import is_loopback_host
from exai.settings import Settings

__all__ = ["GUARD_KEY", "Guard", "guard_middleware", "wants_websocket"]

log = logging.getLogger(__name__)

_WILDCARD_HOSTS = ("0.0.0.0", "::")


def wants_websocket(request: web.BaseRequest) -> bool:
    """Is this a WebSocket upgrade request?"""
    return request.headers.get("Upgrade", "").lower() == "websocket"


def _bearer(request: web.BaseRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.query.get("token")


def _offered_protocols(request: web.BaseRequest) -> list[str]:
    header = request.headers.get("Sec-WebSocket-Protocol", "")
    return [p.strip() for p in header.split(",") if p.strip()]


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def _forbidden(text: str) -> web.Response:
    return web.Response(status=403, text=text)


def _unauthorized() -> web.Response:
    return web.Response(status=401, text="unauthorized\n", headers={"WWW-Authenticate": "Bearer"})


class Guard:
    """The Origin, Host and token rules of one daemon.

    `auth` is shared with the router: a token rotated over the WebSocket applies to
    the next request here at once.
    """

    def __init__(
        self, settings: Settings, auth: Auth, upgrade_only_paths: Collection[str] = ()
    ) -> None:
        self.allowed_origins = frozenset(settings.allowed_origins)
        self.host = settings.host.lower()
        self.wildcard = settings.host in _WILDCARD_HOSTS
        self.auth = auth
        self.upgrade_only_paths = frozenset(upgrade_only_paths)

    def refusal(self, request: web.BaseRequest) -> web.Response | None:
        """The refusal to answer `request` with, or None when it may go on."""
        origin = request.headers.get("Origin")
        if (
            origin is not None
            and origin.rstrip("/") not in self.allowed_origins
            and not _own_origin(origin, request)
        ):
            log.warning(
                "refused %s %s from origin %s (not in EXAI_WS_ALLOWED_ORIGINS)",
                request.method,
                request.path,
                origin[:200],
            )
            return _forbidden("origin not allowed\n")
        host = _host_name(request.headers.get("Host", "")).lower()
        any_host = self.wildcard and self.auth.enabled
        if host and not any_host and not is_loopback_host(host) and host != self.host:
            log.warning("refused %s %s for host %s", request.method, request.path, host[:200])
            return _forbidden("host not allowed\n")
        if not self.auth.enabled:
            return None
        presented = _bearer(request)
        if presented is None:
            return self._missing_token(request)
        if not self.auth.check(presented):
            log.warning("refused %s %s: wrong token", request.method, request.path)
            return _unauthorized()
        return None

    def _missing_token(self, request: web.BaseRequest) -> web.Response | None:
        if wants_websocket(request):
            if "mcp" in _offered_protocols(request):
                log.warning("refused MCP-style upgrade from %s: no token", request.remote)
                return _unauthorized()
            return None  # the op hello carries the token
        if request.path in self.upgrade_only_paths:
            return None  # it is only told to upgrade
        return _unauthorized()

    def authenticated(self, request: web.BaseRequest) -> bool:
        """Did `request` (which passed the guard) prove the token? True when auth is off."""
        return not self.auth.enabled or _bearer(request) is not None


def _own_origin(origin: str, request: web.BaseRequest) -> bool:
    """True for the daemon's own origin: a loopback name or address with the very port
    this request came in on. Only a page the daemon served has it; a rebinding attack
    names the attacker's host, and another local server's page another port."""
    try:
        parts = urllib.parse.urlsplit(origin)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    own_port = sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else None
    return port == own_port and is_loopback_host(parts.hostname)


GUARD_KEY: web.AppKey[Guard] = web.AppKey("guard")


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer a refused request before routing reaches its handler."""
    refusal = request.app[GUARD_KEY].refusal(request)
    if refusal is not None:
        return refusal
    return await handler(request)
