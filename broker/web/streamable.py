"""`/mcp`: MCP's Streamable HTTP transport (revision 2025-11-25) on the daemon's port.

An HTTP session is a session like a WebSocket's: `initialize` opens one in the
session registry with an unguessable id (`Mcp-Session-Id`), and every POSTed message
goes through the same router, so caps, queueing, timeouts, progress, hosted servers,
metrics and health work unchanged. The peer (http_peer.py) sorts what the router
sends into the right stream.

- POST one message. A notification or a response: 202. A request: JSON for
  `initialize` and `ping`, or when the client accepts only JSON; otherwise an SSE
  stream when the request may bring messages before its answer (`tools/call`, a
  request naming a progress token, anything forwarded to a hosted server), JSON for
  the rest.
- GET opens the session's standalone SSE stream (one at a time, 409 for a second);
  `Last-Event-ID` resumes it from its replay buffer.
- DELETE ends the session: its calls are cancelled, as when a WebSocket closes with
  1000. So does a session with no request or stream open for
  EXAI_SESSION_IDLE_TIMEOUT.
- A request's stream (or connection) closed before its answer cancels the request.

The guard middleware has checked Origin, Host and token before any handler here runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable

import msgspec
from aiohttp import web

from broker.calls.session import SessionRegistry
from broker.web.http_peer import STANDALONE_STREAM, HttpPeer, RequestStream, progress_token
from broker.web.sse import KEEPALIVE, parse_event_id
from exai.errors import MODERN_VERSION, SUPPORTED_HANDSHAKE_VERSIONS
from exai.jsonrpc import Message, present

__all__ = ["STREAMABLE_PATH", "HttpSessions", "Streamable"]

log = logging.getLogger("broker.web.streamable")

STREAMABLE_PATH = "/mcp"
SESSION_HEADER = "Mcp-Session-Id"
VERSION_HEADER = "MCP-Protocol-Version"
METHOD_HEADER = "Mcp-Method"
# JSON-RPC's code for a routing header that disagrees with the body (2026-07-28).
HEADER_MISMATCH = -32020
# How often a waiting handler looks whether its client hung up: aiohttp tells a
# handler nothing when the connection drops while it waits on something else.
POLL_S = 0.2
# An idle stream writes a comment this often, so proxies keep it and a dead peer shows.
KEEPALIVE_S = 15.0
_OPENED = b": open\n\n"
_JSON_ONLY_METHODS = frozenset({"initialize", "ping"})
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class _Resume(msgspec.Struct):
    requestState: object = None


_decoder = msgspec.json.Decoder(Message)
_RESUME = msgspec.json.Decoder(_Resume)
_encoder = msgspec.json.Encoder()

Handle = Callable[[HttpPeer, bytes], None]


class HttpSessions:
    """The open HTTP sessions by id; each ends when deleted or idle too long."""

    def __init__(
        self,
        registry: Callable[[], SessionRegistry],
        closed: Callable[[HttpPeer, bool, bool], None],
        idle_s: float,
        max_sessions: int,
        buffer_bytes: int,
    ) -> None:
        self.registry = registry
        self._closed = closed
        self.idle_s = idle_s
        self.max_sessions = max_sessions
        self.buffer_bytes = buffer_bytes
        self._peers: dict[str, HttpPeer] = {}
        self._busy: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def create(self, remote: str, sessionless: bool = False) -> HttpPeer | None:
        """A new session (None when EXAI_WS_MAX_CONNECTIONS of them are open);
        `sessionless` for a 2026-07-28 exchange's own, not worth a log line each."""
        if len(self._peers) >= self.max_sessions and not self._make_room():
            return None
        session_id = secrets.token_urlsafe(32)
        peer = HttpPeer(session_id, remote, self.buffer_bytes, on_close=self.end)
        peer.sessionless = sessionless
        session, _, _ = self.registry().open(session_id, peer.send, False)
        session.owner = peer
        session.speaks_mcp = True
        peer.session = session
        self._peers[session_id] = peer
        self._arm(peer)
        log.log(
            logging.DEBUG if sessionless else logging.INFO,
            "HTTP session %s opened from %s",
            session_id[:8],
            remote,
        )
        return peer

    def get(self, session_id: str) -> HttpPeer | None:
        peer = self._peers.get(session_id)
        if peer is None:
            return None
        session = peer.session
        if (
            session is None
            or session.closed
            or self.registry().sessions.get(session_id) is not session
        ):
            # Ended behind our back (the daemon's shutdown): only the id is left here.
            self._drop(peer)
            return None
        return peer

    def enter(self, peer: HttpPeer) -> None:
        """A request or stream of `peer` starts: it is not idle."""
        timer = self._timers.pop(peer.session_id, None)
        if timer is not None:
            timer.cancel()
        self._busy[peer.session_id] = self._busy.get(peer.session_id, 0) + 1

    def leave(self, peer: HttpPeer) -> None:
        busy = self._busy.get(peer.session_id, 1) - 1
        if busy > 0:
            self._busy[peer.session_id] = busy
            return
        self._busy.pop(peer.session_id, None)
        if not peer.ended:
            self._arm(peer)

    def end(self, peer: HttpPeer) -> None:
        """End `peer`'s session: its streams stop, its calls are cancelled."""
        if peer.ended:
            return
        self._drop(peer)
        peer.end()
        self._closed(peer, True, peer.sessionless)

    def end_all(self) -> None:
        for peer in list(self._peers.values()):
            self.end(peer)

    def _make_room(self) -> bool:
        """End the session idle the longest, if one is: clients that never send DELETE
        (a CLI's one-shot `mcp list`) must not lock new ones out for the idle timeout.
        Its client, if it comes back, gets 404 and opens a new one, as the transport
        says it must. False when every session is busy."""
        idle = [peer for sid, peer in self._peers.items() if sid in self._timers]
        if not idle:
            return False
        oldest = min(idle, key=lambda peer: self._timers[peer.session_id].when())
        log.info(
            "HTTP session %s ended: the one idle longest, to make room for a new one "
            "(EXAI_WS_MAX_CONNECTIONS sessions are open)",
            oldest.session_id[:8],
        )
        self.end(oldest)
        return True

    def _drop(self, peer: HttpPeer) -> None:
        self._peers.pop(peer.session_id, None)
        self._busy.pop(peer.session_id, None)
        timer = self._timers.pop(peer.session_id, None)
        if timer is not None:
            timer.cancel()

    def _arm(self, peer: HttpPeer) -> None:
        loop = asyncio.get_running_loop()
        self._timers[peer.session_id] = loop.call_later(self.idle_s, self._expire, peer)

    def _expire(self, peer: HttpPeer) -> None:
        self._timers.pop(peer.session_id, None)
        log.info(
            "HTTP session %s ended: idle for %g s (EXAI_SESSION_IDLE_TIMEOUT)",
            peer.session_id[:8],
            self.idle_s,
        )
        self.end(peer)


class Streamable:
    """The POST, GET and DELETE handlers of `/mcp`."""

    def __init__(
        self,
        sessions: HttpSessions,
        handle: Handle,
        draining: Callable[[], bool],
        hosted: Callable[[], bool],
        max_body_bytes: int,
        round_owner: Callable[[str], str | None] = lambda state: None,
    ) -> None:
        self.round_owner = round_owner
        self.sessions = sessions
        self.handle = handle
        self.draining = draining
        self.hosted = hosted
        self.max_body_bytes = max_body_bytes

    # --- POST ------------------------------------------------------------------------

    async def post(self, request: web.Request) -> web.StreamResponse:
        if self.draining():
            return web.Response(status=503, text="shutting down\n")
        want_json, want_sse = _accepts(request)
        if not (want_json or want_sse):
            return _rpc_error(
                406, -32600, "Accept must include application/json or text/event-stream"
            )
        if request.content_type != "application/json":
            return _rpc_error(415, -32600, "Content-Type must be application/json")
        body = await _read_body(request, self.max_body_bytes)
        if body is None:
            log.warning(
                "refused a POST from %s: body larger than EXAI_WS_MAX_BYTES (%d)",
                request.remote,
                self.max_body_bytes,
            )
            return _rpc_error(413, -32600, f"body larger than {self.max_body_bytes} bytes")
        try:
            msg = _decoder.decode(body)
        except (msgspec.DecodeError, RecursionError):
            if body.lstrip()[:1] == b"[":
                return _rpc_error(400, -32600, "batches are not supported; POST one message")
            return _rpc_error(400, -32700, "not a JSON-RPC message")
        if msg.jsonrpc != "2.0":
            return _rpc_error(400, -32600, 'a message needs "jsonrpc": "2.0"')
        is_request = msg.method is not None and present(msg.id)
        request_id = bytes(msg.id) if is_request else b"null"
        session_id = request.headers.get(SESSION_HEADER)
        if _sessionless(request):
            return await self._post_sessionless(request, msg, body, request_id, want_json, want_sse)
        created = False
        if session_id is None:
            if msg.method != "initialize" or not is_request:
                return _rpc_error(
                    400, -32600, f"{SESSION_HEADER} header required (initialize first)", request_id
                )
            peer = self.sessions.create(f"{request.remote}")
            if peer is None:
                return _rpc_error(503, -32600, "too many sessions (EXAI_WS_MAX_CONNECTIONS)")
            created = True
        else:
            found = self._session(request, session_id)
            if isinstance(found, web.Response):
                return found
            peer = found
        self.sessions.enter(peer)
        try:
            if not is_request:
                self.handle(peer, body)
                return web.Response(status=202)
            headers = {SESSION_HEADER: peer.session_id} if created else {}
            return await self._exchange(
                request, peer, msg, body, request_id, want_json, want_sse, headers
            )
        finally:
            self.sessions.leave(peer)

    async def _exchange(
        self,
        request: web.Request,
        peer: HttpPeer,
        msg: Message,
        body: bytes,
        request_id: bytes,
        want_json: bool,
        want_sse: bool,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        """Pass one request to the router and answer it, as JSON or as an SSE stream."""
        token = progress_token(msg.params)
        sse = want_sse and (not want_json or self._streams(msg.method, token))
        stream = peer.open_request(request_id, token, sse)
        if stream is None:
            return _rpc_error(409, -32600, "a request with this id is still open", request_id)
        self.handle(peer, body)
        if not sse:
            return await self._json_answer(request, peer, stream, headers)
        if (
            want_json
            and not await self._streams_before_answer(request, peer, stream)
            and stream.raw_response is not None
        ):
            # Answered before anything else came: a plain JSON response costs both
            # sides less than a stream. (A request whose session ended unanswered gets
            # the stream's quiet end, as before.)
            return web.Response(
                body=stream.raw_response, content_type="application/json", headers=headers
            )
        return await self._sse_answer(request, peer, stream, headers)

    async def _streams_before_answer(
        self, request: web.Request, peer: HttpPeer, stream: RequestStream
    ) -> bool:
        """Wait for the request's first message; True when it needs the stream (an event
        came first, or a keepalive is due), False when the answer came first."""
        if not await _pause(stream.wake, request, KEEPALIVE_S):
            return True  # gone: the stream path gives the request up
        return not (stream.done and not stream.events)

    async def _post_sessionless(
        self,
        request: web.Request,
        msg: Message,
        body: bytes,
        request_id: bytes,
        want_json: bool,
        want_sse: bool,
    ) -> web.StreamResponse:
        """A 2026-07-28 POST: one self-contained request, no Mcp-Session-Id.

        It is served by a session of its own, ended with the exchange; unless its answer
        asked for input (`input_required`), when the session waits for the retry, which
        names the round's unguessable, single-use requestState and is served by it."""
        if msg.method is None or request_id == b"null":
            return web.Response(status=202)  # this revision defines no notifications here
        if request.headers.get(METHOD_HEADER) != msg.method:
            return _rpc_error(
                400,
                HEADER_MISMATCH,
                f"{METHOD_HEADER} header does not match the request body's method",
                request_id,
            )
        peer = self._round_peer(msg.params)
        if peer is None:
            peer = self.sessions.create(f"{request.remote}", sessionless=True)
            if peer is None:
                return _rpc_error(503, -32600, "too many sessions (EXAI_WS_MAX_CONNECTIONS)")
        self.sessions.enter(peer)
        try:
            return await self._exchange(
                request, peer, msg, body, request_id, want_json, want_sse, {}
            )
        finally:
            self.sessions.leave(peer)
            session = peer.session
            if session is not None and not session.calls and not peer.ended:
                self.sessions.end(peer)

    def _round_peer(self, params: msgspec.Raw) -> HttpPeer | None:
        """The session waiting for this retry, when it names one's requestState."""
        if b'"requestState"' not in bytes(params):
            return None
        try:
            state = _RESUME.decode(params).requestState
        except msgspec.DecodeError:
            return None
        owner = self.round_owner(state) if isinstance(state, str) else None
        return self.sessions.get(owner) if owner is not None else None

    def _streams(self, method: str | None, token: bytes | None) -> bool:
        """Does this request get an SSE stream? (see the module's docstring)"""
        if method in _JSON_ONLY_METHODS:
            return False
        return token is not None or method == "tools/call" or self.hosted()

    async def _json_answer(
        self, request: web.Request, peer: HttpPeer, stream: RequestStream, headers: dict[str, str]
    ) -> web.StreamResponse:
        while not stream.done:
            if not await _pause(stream.wake, request, KEEPALIVE_S):
                self._given_up(peer, stream)
                return web.Response(status=204)
            stream.wake.clear()
        if stream.response is None:
            return _rpc_error(404, -32600, "the session ended", stream.raw_id)
        return web.Response(body=stream.response, content_type="application/json", headers=headers)

    async def _sse_answer(
        self, request: web.Request, peer: HttpPeer, stream: RequestStream, headers: dict[str, str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={**headers, **_SSE_HEADERS})
        try:
            await response.prepare(request)
            await response.write(_OPENED)
            while True:
                stream.wake.clear()
                if stream.overflow:
                    log.warning(
                        "HTTP session %s: client not reading its stream (over "
                        "EXAI_WS_SEND_BUFFER_BYTES); request given up",
                        peer.session_id[:8],
                    )
                    _hang_up(request)
                    break
                frames = stream.take()
                if frames:
                    for frame in frames:
                        await response.write(frame)
                    continue
                if stream.done:
                    if stream.response is not None:
                        await response.write(stream.response)
                    await response.write_eof()
                    return response
                if not await _pause(stream.wake, request, KEEPALIVE_S):
                    break
                if not stream.wake.is_set():
                    await response.write(KEEPALIVE)
        except (ConnectionError, RuntimeError):
            pass  # the client went away mid-write
        self._given_up(peer, stream)
        return response

    def _given_up(self, peer: HttpPeer, stream: RequestStream) -> None:
        """The client left before the answer: cancel the request as its own cancel would."""
        if not peer.release(stream) or peer.ended:
            return
        log.info(
            "HTTP session %s: stream of request %s closed before its answer; cancelled",
            peer.session_id[:8],
            stream.raw_id[:64].decode(errors="replace"),
        )
        self.handle(
            peer,
            b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":'
            + stream.raw_id
            + b',"reason":"the client closed the stream"}}',
        )

    # --- GET -------------------------------------------------------------------------

    async def get(self, request: web.Request) -> web.StreamResponse:
        if _sessionless(request):
            return _post_only()
        if not _accepts(request, explicit=True)[1]:
            return web.Response(status=406, text="GET /mcp needs Accept: text/event-stream\n")
        session_id = request.headers.get(SESSION_HEADER)
        if session_id is None:
            return _rpc_error(400, -32600, f"{SESSION_HEADER} header required")
        found = self._session(request, session_id)
        if isinstance(found, web.Response):
            return found
        peer = found
        standalone = peer.standalone
        reader = standalone.reader
        # A reader whose connection is gone may not have noticed yet: a client
        # reconnecting with Last-Event-ID takes its place instead of being refused.
        if isinstance(reader, web.Request) and not _gone(reader):
            return _rpc_error(409, -32600, "this session's stream is already open")
        position = standalone.delivered
        last = request.headers.get("Last-Event-ID")
        if last is not None:
            parsed = parse_event_id(last)
            # A request stream's events are not kept (closing one cancelled it).
            if parsed is not None and parsed[0] == STANDALONE_STREAM:
                position = min(parsed[1], standalone.buffer.last_seq)
        standalone.reader = request
        standalone.wake.set()
        self.sessions.enter(peer)
        response = web.StreamResponse(headers=_SSE_HEADERS)
        try:
            await response.prepare(request)
            await response.write(_OPENED)
            buffer = standalone.buffer
            while not peer.ended and standalone.reader is request:
                standalone.wake.clear()
                if buffer.missed(position):
                    log.warning(
                        "HTTP session %s: %d server messages dropped before the client read them",
                        peer.session_id[:8],
                        buffer.first_seq - 1 - position,
                    )
                    position = buffer.first_seq - 1
                frames = buffer.after(position)
                if frames:
                    for seq, frame in frames:
                        await response.write(frame)
                        position = seq
                        standalone.delivered = max(standalone.delivered, seq)
                    continue
                if not await _pause(standalone.wake, request, KEEPALIVE_S):
                    break
                if not standalone.wake.is_set():
                    await response.write(KEEPALIVE)
            else:
                await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away; it may come back with Last-Event-ID
        finally:
            if standalone.reader is request:
                standalone.reader = None
            self.sessions.leave(peer)
        return response

    # --- DELETE ----------------------------------------------------------------------

    async def delete(self, request: web.Request) -> web.StreamResponse:
        if _sessionless(request):
            return _post_only()
        session_id = request.headers.get(SESSION_HEADER)
        if session_id is None:
            return _rpc_error(400, -32600, f"{SESSION_HEADER} header required")
        found = self._session(request, session_id)
        if isinstance(found, web.Response):
            return found
        log.info("HTTP session %s ended by the client", session_id[:8])
        self.sessions.end(found)
        return web.Response(status=204)

    # --- helpers ---------------------------------------------------------------------

    def _session(self, request: web.Request, session_id: str) -> HttpPeer | web.Response:
        peer = self.sessions.get(session_id)
        if peer is None:
            return _rpc_error(404, -32001, "session not found (ended or expired); initialize again")
        version = request.headers.get(VERSION_HEADER)
        if version is not None and version not in SUPPORTED_HANDSHAKE_VERSIONS:
            return _rpc_error(
                400,
                -32600,
                f"unsupported {VERSION_HEADER} {version[:40]!r}; this session speaks "
                + ", ".join(SUPPORTED_HANDSHAKE_VERSIONS),
            )
        return peer


def _sessionless(request: web.Request) -> bool:
    """A 2026-07-28 request: no session, and only POST (GET and DELETE are 405)."""
    return SESSION_HEADER not in request.headers and (
        request.headers.get(VERSION_HEADER) == MODERN_VERSION
    )


def _post_only() -> web.Response:
    return web.Response(status=405, headers={"Allow": "POST"})


def _accepts(request: web.Request, explicit: bool = False) -> tuple[bool, bool]:
    """(JSON, SSE): what the Accept header allows. No header allows both, unless
    `explicit`, which needs SSE named."""
    header = request.headers.get("Accept")
    if header is None:
        return (not explicit, not explicit)
    kinds = {part.split(";", 1)[0].strip().lower() for part in header.split(",")}
    anything = "*/*" in kinds
    json = anything or "application/json" in kinds or "application/*" in kinds
    sse = "text/event-stream" in kinds or (not explicit and (anything or "text/*" in kinds))
    return json, sse


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None once it passes `limit` bytes (nothing more is read)."""
    length = request.content_length
    if length is not None and length > limit:
        return None
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _hang_up(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()


async def _pause(wake: asyncio.Event, request: web.Request, timeout_s: float) -> bool:
    """Wait until `wake` is set or `timeout_s` passes; False as soon as the client is gone."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not wake.is_set():
        if _gone(request):
            return False
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), min(POLL_S, remaining))
    return not _gone(request)


def _rpc_error(status: int, code: int, message: str, request_id: bytes = b"null") -> web.Response:
    body = _encoder.encode(
        {
            "jsonrpc": "2.0",
            "id": msgspec.Raw(request_id),
            "error": {"code": code, "message": message},
        }
    )
    return web.Response(status=status, body=body, content_type="application/json")
