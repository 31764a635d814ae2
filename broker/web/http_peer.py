"""One Streamable HTTP session as the router's peer: where each frame for it goes.

The router and everything behind it send a session's frames through one `send`, as
they do for a WebSocket. Over HTTP a frame has to find its stream:

- a response goes to the POST that carried its request (and ends that stream);
- a progress notification goes to the POST whose request named its token;
- a server request (sampling, elicitation, roots) goes to the newest request stream
  still open, since hosted servers only ask a session with a request in flight; with
  none open it goes to the standalone stream;
- every other notification (list_changed, log lines) goes to the standalone stream.

The standalone stream keeps a bounded replay buffer whether or not a GET is reading
it, so messages sent between two GETs are not lost and `Last-Event-ID` can resume.
A request stream's own events are never replayed: closing it cancels its request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import msgspec

from broker.calls.session import Session, canonical_id
from broker.router.codec import Dialect
from broker.web.sse import ReplayBuffer, event
from exai.jsonrpc import ABSENT, Message, present

__all__ = ["HttpPeer", "RequestStream", "Standalone"]

log = logging.getLogger("broker.web.http_peer")

STANDALONE_STREAM = 0
# The standalone stream's replay buffer holds at most this many events.
REPLAY_MAX_EVENTS = 1024


class _Progress(msgspec.Struct):
    progressToken: msgspec.Raw = ABSENT


class _Meta(msgspec.Struct):
    meta: _Progress | None = msgspec.field(default=None, name="_meta")


_message = msgspec.json.Decoder(Message)
_progress = msgspec.json.Decoder(_Progress)
_meta = msgspec.json.Decoder(_Meta)


def progress_token(params: msgspec.Raw) -> bytes | None:
    """The canonical `_meta.progressToken` of a request's params, if it names one."""
    if not present(params):
        return None
    try:
        meta = _meta.decode(params).meta
    except (msgspec.DecodeError, RecursionError):
        return None
    if meta is None or not present(meta.progressToken):
        return None
    return canonical_id(bytes(meta.progressToken))


class RequestStream:
    """What one POSTed request gets back: events (SSE only), then its response.

    `done` with no `response` means the session ended first (or the stream was given
    up): the handler ends the stream without one.
    """

    def __init__(self, number: int, raw_id: bytes, sse: bool, max_bytes: int) -> None:
        self.number = number
        self.raw_id = raw_id
        self.sse = sse
        self.max_bytes = max_bytes
        self.events: deque[bytes] = deque()
        self.pending_bytes = 0
        self.response: bytes | None = None
        self.raw_response: bytes | None = None
        self.done = False
        # Set when the client reads too slowly: the handler gives the request up.
        self.overflow = False
        self.wake = asyncio.Event()
        self._seq = 0

    def push(self, data: bytes) -> None:
        """An event related to this request (dropped for a JSON response: nowhere to go)."""
        if not self.sse or self.done:
            return
        self._seq += 1
        frame = event(self.number, self._seq, data)
        self.events.append(frame)
        self.pending_bytes += len(frame)
        if self.pending_bytes > self.max_bytes:
            self.overflow = True
        self.wake.set()

    def finish(self, data: bytes | None) -> None:
        if self.done:
            return
        self.done = True
        # Kept as it came too: a request answered before any event goes out as JSON.
        self.raw_response = data
        if data is not None:
            if self.sse:
                self._seq += 1
                data = event(self.number, self._seq, data)
            self.response = data
        self.wake.set()

    def take(self) -> list[bytes]:
        """The events queued so far, to write now."""
        frames = list(self.events)
        self.events.clear()
        self.pending_bytes = 0
        return frames


class Standalone:
    """The session's GET stream: a replay buffer, and whether a GET reads it now."""

    def __init__(self, max_bytes: int) -> None:
        self.buffer = ReplayBuffer(REPLAY_MAX_EVENTS, max_bytes)
        # The last seq a GET wrote out: a new GET without Last-Event-ID starts after it.
        self.delivered = 0
        # The GET request reading the stream now (compared by identity), if any.
        self.reader: object | None = None
        self.wake = asyncio.Event()

    def push(self, data: bytes) -> None:
        seq = self.buffer.last_seq + 1
        self.buffer.append(event(STANDALONE_STREAM, seq, data))
        self.wake.set()


class HttpPeer:
    """Implements the router's ClientPeer for one Streamable HTTP session."""

    def __init__(
        self,
        session_id: str,
        remote: str,
        max_buffer_bytes: int,
        on_close: Callable[[HttpPeer], None],
    ) -> None:
        self.session_id = session_id
        self.remote = remote
        self.max_buffer_bytes = max_buffer_bytes
        self.session: Session | None = None
        # Only a request that passed the guard reaches a peer (token checked there).
        self.authenticated = True
        self.dialect = Dialect.MCP
        self.ended = False
        # A 2026-07-28 exchange's own session: it has no GET stream, so whatever the
        # server sends goes on the request's stream.
        self.sessionless = False
        self.standalone = Standalone(max_buffer_bytes)
        self._on_close = on_close
        self._streams = 0
        # Request streams by canonical request id, and by canonical progress token.
        self._by_id: dict[bytes, RequestStream] = {}
        self._by_token: dict[bytes, RequestStream] = {}

    # --- request streams -------------------------------------------------------------

    def open_request(self, raw_id: bytes, token: bytes | None, sse: bool) -> RequestStream | None:
        """Register a POSTed request before the router sees it (it may answer at once).
        None when a request with that id is still open on this session."""
        key = canonical_id(raw_id)
        if key in self._by_id:
            return None
        self._streams += 1
        stream = RequestStream(self._streams, raw_id, sse, self.max_buffer_bytes)
        self._by_id[key] = stream
        if token is not None:
            self._by_token[token] = stream
        return stream

    def release(self, stream: RequestStream) -> bool:
        """Forget `stream`; True when its request was still unanswered."""
        key = canonical_id(stream.raw_id)
        if self._by_id.get(key) is stream:
            del self._by_id[key]
        for token in [t for t, s in self._by_token.items() if s is stream]:
            del self._by_token[token]
        unanswered = not stream.done
        stream.finish(None)
        return unanswered

    @property
    def open_requests(self) -> int:
        return len(self._by_id)

    # --- ClientPeer ------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.ended:
            return
        try:
            msg = _message.decode(data)
        except (msgspec.DecodeError, RecursionError):
            log.warning("dropped a frame for HTTP session %s: not JSON-RPC", self.session_id[:8])
            return
        if msg.method is None:
            stream = self._by_id.get(canonical_id(bytes(msg.id))) if present(msg.id) else None
            if stream is None:
                # The answer to a request whose stream was given up: nobody awaits it.
                log.debug("dropped an answer for HTTP session %s", self.session_id[:8])
                return
            stream.finish(data)
            self.release(stream)
            return
        if msg.method == "notifications/progress":
            target = self._progress_target(msg.params)
            if target is not None:
                target.push(data)
                return
        elif present(msg.id) or self.sessionless:
            target = self._newest_sse()
            if target is not None:
                target.push(data)
                return
        self.standalone.push(data)

    def _progress_target(self, params: msgspec.Raw) -> RequestStream | None:
        try:
            token = _progress.decode(params).progressToken if present(params) else ABSENT
        except (msgspec.DecodeError, RecursionError):
            return None
        return self._by_token.get(canonical_id(bytes(token))) if present(token) else None

    def _newest_sse(self) -> RequestStream | None:
        for stream in reversed(self._by_id.values()):
            if stream.sse and not stream.done:
                return stream
        return None

    def close(self, code: int, reason: str) -> None:
        """The router or the daemon ends this session."""
        self._on_close(self)

    # --- ending ----------------------------------------------------------------------

    def end(self) -> None:
        """Stop every stream: requests end unanswered, a GET ends."""
        if self.ended:
            return
        self.ended = True
        for stream in list(self._by_id.values()):
            self.release(stream)
        self.standalone.wake.set()
