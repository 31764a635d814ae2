"""Routes each client frame: opening a session, MCP methods, ops, bad input.

The WebSocket adapter hands every frame's bytes to `FrameRouter.handle`; nothing
here touches aiohttp. A bad frame gets a typed error and never closes the session.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from broker.calls.manager import CallManager
from broker.calls.session import Session, SessionRegistry
from broker.router.codec import Envelope, FrameCodec, present
from broker.router.modern import stamp_result
from broker.web.auth import Auth
from exai import __version__
from exai.errors import (
    LATEST_HANDSHAKE_VERSION,
    MODERN_VERSION,
    SUPPORTED_HANDSHAKE_VERSIONS,
    BrokerError,
    InvalidFrame,
    MethodNotFound,
    Unauthorized,
)
from exai.settings import Settings

__all__ = ["ClientPeer", "FrameRouter"]

log = logging.getLogger("broker.router.router")

NULL_ID = msgspec.Raw(b"null")
SERVER_INFO = {"name": "exai-broker", "version": __version__}
SERVER_INFO_JSON = msgspec.json.encode(SERVER_INFO)
INSTRUCTIONS = "Tools shared by every client of this machine's exai-broker daemon."
CAPABILITIES = {"tools": {"listChanged": False}}

# WebSocket close codes of the op dialect's opening handshake.
CLOSE_NOT_JSON = 4000
CLOSE_NOT_HELLO = 4001
CLOSE_HELLO_TIMEOUT = 4002
CLOSE_UNAUTHORIZED = 4003
CLOSE_TAKEN_OVER = 4004


class ClientPeer(Protocol):
    """What the router needs of a connection."""

    session: Session | None
    authenticated: bool
    dialect: str

    def send(self, data: bytes) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


@dataclasses.dataclass(slots=True)
class FrameStats:
    frames: int = 0
    bad_frames: int = 0


class FrameRouter:
    """Turns frames into session, call and query actions."""

    def __init__(
        self,
        settings: Settings,
        codec: FrameCodec,
        calls: CallManager,
        sessions: SessionRegistry,
        auth: Auth,
        health: Callable[[], dict[str, Any]],
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.calls = calls
        self.sessions = sessions
        self.auth = auth
        self.health = health
        self.stats = FrameStats()

    # --- entry point -----------------------------------------------------------------

    def handle(self, peer: ClientPeer, data: bytes) -> None:
        self.stats.frames += 1
        try:
            env = self.codec.decode(data)
        except InvalidFrame as exc:
            if peer.session is None and not peer.authenticated:
                # The opening frame of an op session must be a JSON hello.
                self.stats.bad_frames += 1
                peer.send(self.codec.encode({"op": "hello_ack", "ok": False, "error": "not JSON"}))
                peer.close(CLOSE_NOT_JSON, "first frame is not JSON")
                return
            self._bad_frame(peer, exc, None)
            return
        if peer.session is None and not self._open(peer, env):
            return
        session = peer.session
        assert session is not None
        try:
            if env.jsonrpc is not None:
                self._handle_jsonrpc(peer, session, env)
            elif env.op is not None:
                self._handle_op(peer, session, env)
            else:
                raise InvalidFrame('a frame needs "jsonrpc": "2.0" or an "op"')
        except BrokerError as exc:
            self._bad_frame(peer, exc, env)

    # --- session opening -------------------------------------------------------------

    def _open(self, peer: ClientPeer, env: Envelope) -> bool:
        """Open the session on the first frame. False if the frame was consumed or refused."""
        if env.op == "hello":
            if not self.auth.check(env.token) and not peer.authenticated:
                log.warning("refused hello: wrong or missing token")
                peer.send(
                    self.codec.encode({"op": "hello_ack", "ok": False, "error": "unauthorized"})
                )
                peer.close(CLOSE_UNAUTHORIZED, "unauthorized")
                return False
            session_id = (env.session_id or "").strip() or secrets.token_hex(16)
            if len(session_id) > 128:
                peer.send(
                    self.codec.encode(
                        {
                            "op": "hello_ack",
                            "ok": False,
                            "error": "session_id longer than 128 characters",
                        }
                    )
                )
                peer.close(CLOSE_NOT_HELLO, "bad session id")
                return False
            peer.authenticated = True
            peer.dialect = "op"
            session, resumed, held = self.sessions.open(session_id, peer.send, env.acks)
            previous, session.owner = session.owner, peer
            if previous is not None and previous is not peer:
                # One connection per session: the newest wins (the old one is likely dead).
                previous.close(CLOSE_TAKEN_OVER, "session taken over by a new connection")
            peer.session = session
            peer.send(
                self.codec.encode(
                    {
                        "op": "hello_ack",
                        "ok": True,
                        "session_id": session.id,
                        "resumed": resumed,
                        "server": {**SERVER_INFO, "tools": len(self.calls.catalog.tools)},
                    }
                )
            )
            for frame in held:
                peer.send(frame)
            log.info("session %s opened (resumed=%s)", _short(session.id), resumed)
            return False
        if not peer.authenticated:
            if env.op is None and env.jsonrpc is None:
                peer.send(
                    self.codec.encode({"op": "hello_ack", "ok": False, "error": "expected hello"})
                )
                peer.close(CLOSE_NOT_HELLO, "expected hello")
            else:
                peer.send(
                    self.codec.encode({"op": "hello_ack", "ok": False, "error": "unauthorized"})
                )
                peer.close(CLOSE_UNAUTHORIZED, "unauthorized")
            return False
        session, _, _ = self.sessions.open(secrets.token_hex(16), peer.send, False)
        session.owner = peer
        peer.session = session
        peer.dialect = "mcp" if env.jsonrpc is not None else "op"
        log.info("session %s opened (%s, no hello)", _short(session.id), peer.dialect)
        return True

    # --- MCP JSON-RPC ----------------------------------------------------------------

    def _handle_jsonrpc(self, peer: ClientPeer, session: Session, env: Envelope) -> None:
        if env.jsonrpc != "2.0":
            raise InvalidFrame(f'unsupported JSON-RPC version {env.jsonrpc!r}; expected "2.0"')
        method = env.method
        if not present(env.id):
            if method is None:
                # A response to a server request; we never send any, so there is nothing to match.
                return
            if method == "notifications/cancelled":
                cancel = self.codec.cancel_params(env.params)
                if cancel is not None:
                    self.calls.cancel(session, cancel.requestId, answer=False)
            return
        request_id = env.id
        if not _valid_id(request_id):
            raise InvalidFrame("a JSON-RPC id must be a string or an integer")
        if method is None:
            if present(env.result) or present(env.error):
                return
            raise InvalidFrame('a request needs a "method"')
        if method == "tools/call":
            params = self.codec.call_params(env.params)
            token = params.meta.progressToken if params.meta is not None else None
            if token is not None and not present(token):
                token = None
            modern = params.meta is not None and params.meta.protocol_version == MODERN_VERSION
            self.calls.submit(
                session, "mcp", request_id, params.name, params.arguments, token, modern=modern
            )
            return
        generic = self.codec.generic_params(env.params)
        modern = generic.meta is not None and generic.meta.protocol_version == MODERN_VERSION
        if method == "tools/list":
            result = self.calls.catalog.list_result
        elif method == "ping":
            result = b"{}"
        elif method == "initialize":
            wanted = generic.protocolVersion
            version = wanted if wanted in SUPPORTED_HANDSHAKE_VERSIONS else LATEST_HANDSHAKE_VERSION
            session.protocol_version = version
            result = self.codec.encode(
                {
                    "protocolVersion": version,
                    "capabilities": CAPABILITIES,
                    "serverInfo": SERVER_INFO,
                    "instructions": INSTRUCTIONS,
                }
            )
        elif method == "server/discover":
            # Always answered in 2026-07-28 shapes: only that revision has this method.
            modern = True
            result = self.codec.encode(
                {
                    "supportedVersions": [MODERN_VERSION],
                    "capabilities": CAPABILITIES,
                    "instructions": INSTRUCTIONS,
                }
            )
        else:
            raise MethodNotFound(f"method not found: {method}", method=method)
        if modern:
            result = stamp_result(result, method, SERVER_INFO_JSON)
        peer.send(self.codec.result(request_id, result))

    # --- op dialect ------------------------------------------------------------------

    def _handle_op(self, peer: ClientPeer, session: Session, env: Envelope) -> None:
        op = env.op
        if op == "call_tool":
            request_id = env.request_id
            if not _valid_id(request_id):
                raise InvalidFrame("call_tool needs a string or integer request_id")
            if not env.name:
                raise InvalidFrame("call_tool needs the tool's name")
            self.calls.submit(session, "op", request_id, env.name, env.arguments, request_id)
        elif op == "list_tools":
            peer.send(b'{"op":"list_tools_res",' + self.calls.catalog.list_result[1:])
        elif op == "cancel":
            if not present(env.request_id):
                raise InvalidFrame("cancel needs the request_id of the call")
            self.calls.cancel(session, env.request_id, answer=True)
        elif op == "health":
            peer.send(self.codec.encode({"op": "health_res", "health": self.health()}))
        elif op == "hello":
            raise InvalidFrame("this connection already has a session; hello only comes first")
        elif op == "rotate_token":
            self._rotate(peer, env)
        else:
            raise InvalidFrame(f"unknown op {op!r}")

    def _rotate(self, peer: ClientPeer, env: Envelope) -> None:
        if not self.auth.enabled:
            raise Unauthorized("token auth is off (EXAI_WS_TOKEN is empty); nothing to rotate")
        if not env.new or any(c.isspace() for c in env.new):
            raise InvalidFrame("rotate_token needs a new token without whitespace")
        if not self.auth.rotate(env.old or "", env.new):
            log.warning("refused rotate_token: the old token did not match")
            raise Unauthorized("the old token does not match")
        log.info("token rotated; new connections need the new token")
        peer.send(self.codec.encode({"op": "rotate_token_res", "ok": True}))

    # --- errors ----------------------------------------------------------------------

    def _bad_frame(self, peer: ClientPeer, exc: BrokerError, env: Envelope | None) -> None:
        self.stats.bad_frames += 1
        log.debug("bad frame: %s", exc.message)
        if env is not None and env.jsonrpc is not None and not present(env.id):
            return  # JSON-RPC never answers a notification, even a broken one
        # Answer in the client's own dialect: JSON-RPC for MCP sessions and for anything
        # that looks like a request, op frames for op clients.
        jsonrpc = (
            peer.dialect == "mcp"
            or (env is not None and (env.jsonrpc is not None or present(env.id) or env.method))
        ) and not (env is not None and env.op is not None)
        if jsonrpc:
            request_id = env.id if env is not None and present(env.id) else None
            if request_id is not None and not _valid_id(request_id):
                request_id = None
            peer.send(self.codec.error(request_id, exc))
        else:
            request_id = env.request_id if env is not None and present(env.request_id) else None
            peer.send(self.codec.op_error("error", request_id, exc))


_ID_FIRST_BYTES = frozenset(b'"-0123456789')


def _valid_id(raw: msgspec.Raw) -> bool:
    """A JSON string or number: what its first byte says (the frame parsed as JSON)."""
    data = bytes(raw)
    return bool(data) and data[0] in _ID_FIRST_BYTES


def _short(session_id: str) -> str:
    return session_id[:8]
