"""Routes each client frame: opening a session, MCP methods, ops, bad input.

The WebSocket adapter hands every frame's bytes to `FrameRouter.handle`; nothing
here touches aiohttp. A bad frame gets a typed error and never closes the session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from broker.calls.manager import CallManager
from broker.calls.session import Session, SessionRegistry, canonical_id
from broker.fleet.fleet import Fleet
from broker.hosting.hub import Hosting
from broker.hosting.instance import ClientHello
from broker.hosting.listens import listen_filter
from broker.hosting.loglevels import LEVELS
from broker.hosting.routes import Builtin, Forward, Later
from broker.router.codec import Dialect, Envelope, FrameCodec
from broker.router.modern import stamp_result, strip_envelope
from broker.router.ops import (
    Ack,
    CallToolOp,
    CancelOp,
    HealthOp,
    HealthRes,
    HelloAck,
    HelloOp,
    ListToolsOp,
    ListToolsRes,
    OpRequest,
    RotateTokenOp,
    RotateTokenRes,
    ServerSummary,
)
from broker.web.auth import Auth
from exai import __version__
from exai.closes import SessionClose
from exai.errors import (
    LATEST_HANDSHAKE_VERSION,
    MODERN_VERSION,
    SUPPORTED_HANDSHAKE_VERSIONS,
    BrokerError,
    ErrorCode,
    InvalidArguments,
    InvalidFrame,
    MethodNotFound,
    Unauthorized,
)
from exai.jsonrpc import present, valid_id
from exai.settings import Settings, valid_token

__all__ = ["CROWDED_OUT", "HELLO_TIMEOUT", "ClientPeer", "FrameRouter", "Refusal"]

log = logging.getLogger("broker.router.router")

SERVER_NAME = "exai-broker"
SERVER_INFO = {"name": SERVER_NAME, "version": __version__}
SERVER_INFO_JSON = msgspec.json.encode(SERVER_INFO)
INSTRUCTIONS = "Tools shared by every client of this machine's exai-broker daemon."
CAPABILITIES = {"tools": {"listChanged": False}}
SESSION_ID_MAX = 128
LEVEL_NAMES = ", ".join(LEVELS)

# WebSocket close codes of the op dialect's opening handshake.
CLOSE_NOT_JSON = SessionClose.NOT_JSON
CLOSE_NOT_HELLO = SessionClose.NOT_HELLO
CLOSE_HELLO_TIMEOUT = SessionClose.HELLO_TIMEOUT
CLOSE_UNAUTHORIZED = SessionClose.UNAUTHORIZED
CLOSE_TAKEN_OVER = SessionClose.TAKEN_OVER

# An alias for the per-call path: an Enum member looked up on its class costs a
# descriptor call each time.
_MCP = Dialect.MCP


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """How a connection without a session is turned away: the failed hello_ack's text
    and code, then the WebSocket close code and reason."""

    error: str  # the hello_ack's text, for people
    code: ErrorCode  # the hello_ack's code, for programs
    close_code: int
    reason: str


NOT_JSON = Refusal("not JSON", ErrorCode.INVALID_FRAME, CLOSE_NOT_JSON, "first frame is not JSON")
EXPECTED_HELLO = Refusal(
    "expected hello", ErrorCode.INVALID_FRAME, CLOSE_NOT_HELLO, "expected hello"
)
BAD_SESSION_ID = Refusal(
    f"session_id longer than {SESSION_ID_MAX} characters",
    ErrorCode.INVALID_FRAME,
    CLOSE_NOT_HELLO,
    "bad session id",
)
UNAUTHORIZED = Refusal("unauthorized", ErrorCode.UNAUTHORIZED, CLOSE_UNAUTHORIZED, "unauthorized")
HELLO_TIMEOUT = Refusal(
    "no hello in time", ErrorCode.TIMEOUT, CLOSE_HELLO_TIMEOUT, "no hello in time"
)
# Every connection slot was taken and this one had not authenticated yet: it gave its
# slot to a newer connection. 1013 is WebSocket's "try again later".
CROWDED_OUT = Refusal(
    "too many connections (EXAI_WS_MAX_CONNECTIONS); authenticate at once to keep a slot",
    ErrorCode.OVER_CAPACITY,
    1013,
    "too many connections",
)


class ClientPeer(Protocol):
    """What the router needs of a connection."""

    session: Session | None
    authenticated: bool
    dialect: Dialect

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
        hosting: Hosting | Fleet | None = None,
    ) -> None:
        self.settings = settings
        # The hosted server (or the servers of a servers file) every MCP request but
        # the connection's own is forwarded to.
        self.hosting = hosting
        self._later: set[asyncio.Task[None]] = set()
        self.codec = codec
        self.calls = calls
        self.sessions = sessions
        self.auth = auth
        self.health = health
        self.stats = FrameStats()

    # --- entry point -----------------------------------------------------------------

    def handle(self, peer: ClientPeer, data: bytes) -> None:
        """Act on one frame from `peer`; every answer goes out through `peer.send`."""
        self.stats.frames += 1
        codec = self.codec
        try:
            env = codec.decode(data)
            op = codec.decode_op(env, data) if env.op is not None else None
        except InvalidFrame as exc:
            if peer.session is None and not peer.authenticated:
                # The opening frame of an op session must be a JSON hello.
                self.stats.bad_frames += 1
                self.refuse(peer, NOT_JSON)
                return
            self._bad_frame(peer, exc, None)
            return
        if peer.session is None and not self._open(peer, env, op):
            return
        session = peer.session
        assert session is not None
        if session.owner is not peer:
            # A newer connection took the session over, and this one is closing. Its
            # client re-sends on the new connection whatever it still awaits; running
            # a late frame from here as well would run that call twice.
            log.debug(
                "dropped a frame of session %s from a replaced connection", _short(session.id)
            )
            return
        try:
            if env.jsonrpc is not None:
                self._handle_jsonrpc(peer, session, env)
            elif env.op is not None:
                self._handle_op(peer, session, env, op)
            else:
                raise InvalidFrame('a frame needs "jsonrpc": "2.0" or an "op"')
        except BrokerError as exc:
            self._bad_frame(peer, exc, env)
        except Exception as exc:
            # A defect of ours must cost this one request, never the connection (and
            # with it every call of the session).
            log.exception("internal error handling a frame of session %s", _short(session.id))
            self._bad_frame(peer, BrokerError(f"internal error: {type(exc).__name__}"), env)

    # --- session opening -------------------------------------------------------------

    def _open(self, peer: ClientPeer, env: Envelope, op: OpRequest | None) -> bool:
        """Open the session on the first frame. False if the frame was consumed or refused."""
        if isinstance(op, HelloOp):
            self._hello(peer, op)
            return False
        if not peer.authenticated:
            if env.op is None and env.jsonrpc is None:
                self.refuse(peer, EXPECTED_HELLO)
            else:
                self.refuse(peer, UNAUTHORIZED)
            return False
        session, _, _ = self.sessions.open(secrets.token_hex(16), peer.send, False)
        session.owner = peer
        peer.session = session
        peer.dialect = Dialect.MCP if env.jsonrpc is not None else Dialect.OP
        log.info("session %s opened (%s, no hello)", _short(session.id), peer.dialect)
        return True

    def _hello(self, peer: ClientPeer, hello: HelloOp) -> None:
        if not self.auth.check(hello.token) and not peer.authenticated:
            log.warning("refused hello: wrong or missing token")
            self.refuse(peer, UNAUTHORIZED)
            return
        session_id = (hello.session_id or "").strip() or secrets.token_hex(16)
        if len(session_id) > SESSION_ID_MAX:
            self.refuse(peer, BAD_SESSION_ID)
            return
        peer.authenticated = True
        peer.dialect = Dialect.OP
        session, resumed, held = self.sessions.open(session_id, peer.send, hello.acks)
        if hello.awaited is not None:
            session.expect_resends(hello.awaited)
        else:
            session.awaited = None
        previous, session.owner = session.owner, peer
        if previous is not None and previous is not peer:
            # One connection per session: the newest wins (the old one is likely dead).
            previous.close(CLOSE_TAKEN_OVER, "session taken over by a new connection")
        peer.session = session
        tools = len(self.calls.catalog.tools)
        if isinstance(self.hosting, Fleet):
            tools += self.hosting.tool_count()
        server = ServerSummary(SERVER_NAME, __version__, tools)
        peer.send(self.codec.encode(HelloAck(True, session.id, resumed, server)))
        for frame in held:
            peer.send(frame)
        log.info("session %s opened (resumed=%s)", _short(session.id), resumed)

    def refuse(self, peer: ClientPeer, refusal: Refusal) -> None:
        """Turn away a connection that has no session yet: a failed hello_ack, then close.

        For the adapter too, when the client sends no hello in time (HELLO_TIMEOUT).
        """
        peer.send(self.codec.hello_refused(refusal.error, refusal.code))
        peer.close(refusal.close_code, refusal.reason)

    # --- MCP JSON-RPC ----------------------------------------------------------------

    def _handle_jsonrpc(self, peer: ClientPeer, session: Session, env: Envelope) -> None:
        if env.jsonrpc != "2.0":
            raise InvalidFrame(f'unsupported JSON-RPC version {env.jsonrpc!r}; expected "2.0"')
        session.speaks_mcp = True
        method = env.method
        if not present(env.id):
            self._notification(session, env)
            return
        request_id = env.id
        if not valid_id(request_id):
            raise InvalidFrame("a JSON-RPC id must be a string or an integer")
        if self.hosting is not None:
            self._handle_hosted(peer, session, env, self.hosting)
            return
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
                session,
                Dialect.MCP,
                request_id,
                params.name,
                params.arguments,
                token,
                modern=modern,
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

    # --- MCP toward a hosted server --------------------------------------------------

    def _notification(self, session: Session, env: Envelope) -> None:
        """A client notification: a cancel is ours; a hosted server hears the rest
        (its instance was initialized by the broker, so not `initialized`)."""
        method = env.method
        if method == "notifications/cancelled":
            cancel = self.codec.cancel_params(env.params)
            if cancel is not None:
                if self.hosting is not None and self.hosting.unlisten(
                    session.id, canonical_id(bytes(cancel.requestId))
                ):
                    return
                self.calls.cancel(session, cancel.requestId, answer=False)
        elif self.hosting is not None and method not in (None, "notifications/initialized"):
            assert method is not None
            params = bytes(env.params) if present(env.params) else None
            self.hosting.notify(session.id, method, params)

    def _handle_hosted(
        self, peer: ClientPeer, session: Session, env: Envelope, hosting: Hosting | Fleet
    ) -> None:
        """What the broker answers itself (the connection's own methods, log levels,
        shared subscriptions, answers to server requests); everything else is forwarded."""
        method = env.method
        params = bytes(env.params) if present(env.params) else None
        request_id = env.id
        if method is None:
            result = bytes(env.result) if present(env.result) else None
            error = bytes(env.error) if present(env.error) else None
            if result is None and error is None:
                raise InvalidFrame('a request needs a "method"')
            hosting.answer(session.id, bytes(request_id), result, error)
            return
        if method == "tools/call":
            call = self.codec.call_params(env.params)
            meta, label = call.meta, call.name
        else:
            meta, label = self.codec.generic_params(env.params).meta, method
        modern = meta is not None and meta.protocol_version == MODERN_VERSION
        if modern:
            session.modern = True
        if modern and session.client is None:
            assert meta is not None
            session.client = _client_hello(
                LATEST_HANDSHAKE_VERSION, meta.client_capabilities, meta.client_info
            )
        if modern and method == "subscriptions/listen":
            self._listen(peer, session, request_id, params, hosting)
            return
        if modern and b'"requestState"' in bytes(env.params):
            resume = self.codec.resume_params(env.params)
            if resume.requestState is not None:
                if not self.calls.resume(
                    session, request_id, resume.requestState, resume.inputResponses
                ):
                    raise InvalidArguments("unknown or expired requestState")
                return
        local = self._hosted_local(session, method, env, hosting)
        if local is None:
            if modern and params is not None:
                assert meta is not None
                if meta.log_level is not None:
                    hosting.set_level(session.id, meta.log_level)
                # The hosted instance speaks the handshake era: the envelope stays here.
                params = strip_envelope(params)
            token = meta.progressToken if meta is not None else None
            token = token if token is not None and present(token) else None
            route = hosting.route(session.id, method, params)
            if isinstance(route, Forward):
                self.calls.forward(
                    session,
                    Dialect.MCP,
                    request_id,
                    method,
                    route.params,
                    token,
                    label=label,
                    modern=modern,
                    target=route.target,
                    server=route.server,
                )
                return
            if isinstance(route, Builtin):
                call = self.codec.call_params(env.params)
                self.calls.submit(
                    session,
                    Dialect.MCP,
                    request_id,
                    call.name,
                    call.arguments,
                    token,
                    modern=modern,
                )
                return
            if isinstance(route, Later):
                self._answer_later(peer, request_id, method, modern, route, hosting)
                return
            local = route.result
        if method == "server/discover":
            modern = True
        if modern:
            info = self.codec.encode(hosting.presented[1])
            local = stamp_result(local, method, info)
        peer.send(self.codec.result(request_id, local))

    def _answer_later(
        self,
        peer: ClientPeer,
        request_id: msgspec.Raw,
        method: str,
        modern: bool,
        later: Later,
        hosting: Hosting | Fleet,
    ) -> None:
        """A merged list: answered once every server gave its part (or its time ran out)."""

        async def answer() -> None:
            try:
                result = await later.result
            except BrokerError as exc:
                peer.send(self.codec.error(request_id, exc))
                return
            if modern:
                result = stamp_result(result, method, self.codec.encode(hosting.presented[1]))
            peer.send(self.codec.result(request_id, result))

        task = asyncio.get_running_loop().create_task(answer())
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    def _listen(
        self,
        peer: ClientPeer,
        session: Session,
        request_id: msgspec.Raw,
        params: bytes | None,
        hosting: Hosting | Fleet,
    ) -> None:
        """A 2026-07-28 `subscriptions/listen`: acknowledged, then left open (it ends with
        its cancel or the session); its notifications come from the traffic rules."""
        try:
            wants = listen_filter(params)
        except msgspec.DecodeError as exc:
            raise InvalidArguments(f"invalid subscriptions/listen params: {exc}") from None
        if session.acks:
            # A shim awaits an answer it will not get: this keeps it from timing out.
            peer.send(self.codec.encode(Ack(request_id)))
        peer.send(hosting.listen(session.id, canonical_id(bytes(request_id)), wants))

    def _hosted_local(
        self, session: Session, method: str, env: Envelope, hosting: Hosting | Fleet
    ) -> bytes | None:
        """The result the broker gives itself for `method`, or None to forward it."""
        capabilities, server_info, instructions = hosting.presented
        if method == "ping":
            return b"{}"
        if method == "initialize":
            init = self.codec.generic_params(env.params)
            wanted = init.protocolVersion
            version = wanted if wanted in SUPPORTED_HANDSHAKE_VERSIONS else LATEST_HANDSHAKE_VERSION
            session.client = _client_hello(version, init.capabilities, init.clientInfo)
            body: dict[str, Any] = {
                "protocolVersion": version,
                "capabilities": capabilities,
                "serverInfo": server_info,
            }
            if instructions is not None:
                body["instructions"] = instructions
            return self.codec.encode(body)
        if method == "server/discover":
            body = {"supportedVersions": [MODERN_VERSION], "capabilities": capabilities}
            if instructions is not None:
                body["instructions"] = instructions
            return self.codec.encode(body)
        if method == "logging/setLevel" and "logging" in capabilities:
            level = self.codec.level_params(env.params)
            if not hosting.set_level(session.id, level):
                raise InvalidArguments(f"unknown log level {level!r}; MCP levels are {LEVEL_NAMES}")
            return b"{}"
        if method in ("resources/subscribe", "resources/unsubscribe"):
            uri = self.codec.uri_params(env.params)
            if uri is None:
                return None  # the server says what is wrong with it
            if method == "resources/subscribe":
                tell = hosting.subscribe(session.id, uri)
            else:
                tell = hosting.unsubscribe(session.id, uri)
            return None if tell else b"{}"
        return None

    # --- op dialect ------------------------------------------------------------------

    def _handle_op(
        self, peer: ClientPeer, session: Session, env: Envelope, op: OpRequest | None
    ) -> None:
        if isinstance(op, CallToolOp):
            request_id = op.request_id
            if not valid_id(request_id):
                raise InvalidFrame("call_tool needs a string or integer request_id")
            if not op.name:
                raise InvalidFrame("call_tool needs the tool's name")
            hosting = self.hosting
            if hosting is not None:
                params = b'{"name":' + self.codec.encode(op.name)
                if present(op.arguments):
                    params += b',"arguments":' + op.arguments
                route = hosting.route(session.id, "tools/call", params + b"}")
                if isinstance(route, Forward):
                    self.calls.forward(
                        session,
                        Dialect.OP,
                        request_id,
                        "tools/call",
                        route.params,
                        request_id,
                        label=op.name,
                        target=route.target,
                        server=route.server,
                    )
                    return
            self.calls.submit(session, Dialect.OP, request_id, op.name, op.arguments, request_id)
        elif isinstance(op, ListToolsOp):
            listed = self.hosting.tools_json if isinstance(self.hosting, Fleet) else None
            tools = msgspec.Raw(listed or self.calls.catalog.tools_json)
            peer.send(self.codec.encode(ListToolsRes(tools)))
        elif isinstance(op, CancelOp):
            if not present(op.request_id):
                raise InvalidFrame("cancel needs the request_id of the call")
            self.calls.cancel(session, op.request_id, answer=True)
        elif isinstance(op, HealthOp):
            peer.send(self.codec.encode(HealthRes(self.health())))
        elif isinstance(op, HelloOp):
            raise InvalidFrame("this connection already has a session; hello only comes first")
        elif isinstance(op, RotateTokenOp):
            self._rotate(peer, op)
        else:
            raise InvalidFrame(f"unknown op {env.op!r}")

    def _rotate(self, peer: ClientPeer, rotate: RotateTokenOp) -> None:
        if not self.auth.enabled:
            raise Unauthorized("token auth is off (EXAI_WS_TOKEN is empty); nothing to rotate")
        new = rotate.new
        if not new or not valid_token(new):
            raise InvalidFrame(
                "rotate_token needs a new token of printable ASCII characters, without whitespace"
            )
        if not self.auth.rotate(rotate.old or "", new):
            log.warning("refused rotate_token: the old token did not match")
            raise Unauthorized("the old token does not match")
        log.info("token rotated; new connections need the new token")
        peer.send(self.codec.encode(RotateTokenRes(True)))

    # --- errors ----------------------------------------------------------------------

    def _bad_frame(self, peer: ClientPeer, exc: BrokerError, env: Envelope | None) -> None:
        self.stats.bad_frames += 1
        log.debug("bad frame: %s", exc.message)
        if env is not None and env.jsonrpc is not None and not present(env.id):
            return  # JSON-RPC never answers a notification, even a broken one
        # Answer in the client's own dialect: JSON-RPC for MCP sessions and for anything
        # that looks like a request, op frames for op clients.
        jsonrpc = (
            peer.dialect is Dialect.MCP
            or (env is not None and (env.jsonrpc is not None or present(env.id) or env.method))
        ) and not (env is not None and env.op is not None)
        if jsonrpc:
            request_id = env.id if env is not None and present(env.id) else None
            if request_id is not None and not valid_id(request_id):
                request_id = None
            peer.send(self.codec.error(request_id, exc))
        else:
            request_id = env.request_id if env is not None and present(env.request_id) else None
            peer.send(self.codec.op_error(request_id, exc))


def _client_hello(version: str, capabilities: msgspec.Raw, info: msgspec.Raw) -> ClientHello:
    """What the client said of itself, for its own hosted instance (the broker's own
    defaults where it said nothing usable)."""
    default = ClientHello()
    caps = bytes(capabilities) if bytes(capabilities)[:1] == b"{" else default.capabilities
    client_info = bytes(info) if bytes(info)[:1] == b"{" else default.client_info
    return ClientHello(version, caps, client_info)


def _short(session_id: str) -> str:
    return session_id[:8]
