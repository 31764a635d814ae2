"""One remote MCP server over Streamable HTTP, the daemon its HTTP client.

The same surface as `HostedInstance`, so the hosting code can place requests on it: the
`initialize` handshake once, then JSON-RPC lines relayed both ways through an
`exai.relay.Relay`. What differs is the wire (MCP 2025-11-25 transports):

- every line the daemon sends is one POST; a request's answer comes back as a JSON body
  (one message or a batch) or as an SSE stream that may carry the server's own requests
  and notifications first; notifications and answers get 202;
- the `Mcp-Session-Id` the server gives at `initialize` and the negotiated
  `MCP-Protocol-Version` go with every later request; DELETE ends the session;
- a GET stream, when the server offers one (405: it does not), carries what the server
  sends on its own;
- a stream that breaks before its answer, when its events had ids, is resumed with GET
  and `Last-Event-ID`, a few times, `retry:` apart.

A request whose HTTP exchange fails is answered at once with an error of the relay's
own (WORKER_LOST), so nobody waits on a reply that cannot come. The instance is over
(`exited` resolves with None, so whoever owns it starts a fresh one) when the server
cannot be reached at all, or says the session is unknown (404).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, NamedTuple

import aiohttp
import msgspec

from broker.hosting.instance import ClientHello, HandshakeError, ServerIdentity
from broker.hosting.own_requests import HANDSHAKE, OwnRequests, initialize_params
from broker.hosting.sse_reader import SseParser
from exai.errors import BrokerError, ResultTooLarge, WorkerLost
from exai.relay import Relay, RelayEvent, Reply

__all__ = ["RemoteInstance"]

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 100
CONNECT_TIMEOUT_S = 10.0
DELETE_TIMEOUT_S = 2.0
# Reconnections in a row that bring no event before a stream is given up.
RESUME_ATTEMPTS = 3
_LONG_LINE_HEAD = 4096
_ACCEPT_BOTH = "application/json, text/event-stream"


class _Init(msgspec.Struct):
    protocolVersion: str
    capabilities: dict[str, Any] = {}
    serverInfo: dict[str, Any] = {}
    instructions: str | None = None


class _Sent(msgspec.Struct):
    id: int


_SENT = msgspec.json.Decoder(_Sent)
_BATCH = msgspec.json.Decoder(list[msgspec.Raw])


class _Failed(Exception):
    """An HTTP exchange went wrong; `retry`: reconnecting may still get the rest."""

    def __init__(
        self, why: str, *, retry: bool = False, kind: type[BrokerError] = WorkerLost
    ) -> None:
        super().__init__(why)
        self.why = why
        self.retry = retry
        self.kind = kind


class _Exchange(NamedTuple):
    # Done once the server has the request (its response began) or the POST failed.
    opened: asyncio.Future[None]
    task: asyncio.Task[None]


class RemoteInstance:
    """A remote Streamable HTTP server, initialized; `on_event` gets every relay event."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        on_event: Callable[[RemoteInstance, RelayEvent], None],
        max_line_bytes: int = 33_554_432,
        client: ClientHello | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.headers = dict(headers or {})
        self.relay = Relay()
        self.client = client or ClientHello()
        self.identity: ServerIdentity | None = None
        self._on_event = on_event
        self._max_line_bytes = max_line_bytes
        self._loop = asyncio.get_running_loop()
        self._http: aiohttp.ClientSession | None = None
        # No read timeout: a stream is quiet for as long as its tool runs.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)
        self._session_id: str | None = None
        self._version: str | None = None
        self._failure: str | None = None
        self._stopping = False
        self._exited: asyncio.Future[int | None] = self._loop.create_future()
        self._exited.add_done_callback(self._fail_waiters)
        self._own = OwnRequests(self.relay, self._loop)
        self._exchanges: dict[int, _Exchange] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # --- life ------------------------------------------------------------------------

    async def start(self, timeout_s: float) -> ServerIdentity:
        """Complete `initialize` (and `notifications/initialized`) within `timeout_s`,
        then open the server's GET stream."""
        deadline = time.monotonic() + timeout_s
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS), timeout=self._timeout
        )
        handshake = self._own.begin_handshake()
        client = self.client
        params = initialize_params(client.protocol_version, client.capabilities, client.client_info)
        self.request(HANDSHAKE, "initialize", params, None)
        failure: str | None = None
        try:
            reply = await asyncio.wait_for(asyncio.shield(handshake), timeout_s)
        except asyncio.CancelledError:
            await self.stop()  # its owner gave up: no session is left open on the server
            raise
        except TimeoutError:
            failure = f"did not answer within {timeout_s:g} s{self.stderr_hint()}"
        except HandshakeError as exc:
            failure = f"failed: {exc}"
        finally:
            self._own.handshake = None
        if failure is None:
            failure = self._understand(reply)
        if failure is None:
            failure = await self._confirm(deadline)
        if failure is not None:
            await self.stop()
            raise HandshakeError(f"{self.name}: initialize {failure}")
        assert self.identity is not None
        self._spawn(self._listen())
        return self.identity

    def _understand(self, reply: Reply) -> str | None:
        """Learn the identity from the `initialize` reply; what is wrong with it if not."""
        if reply.error is not None or reply.result is None:
            return f"failed: {reply.error!r}"
        try:
            init = msgspec.json.decode(reply.result, type=_Init)
        except msgspec.DecodeError as exc:
            return f"result not understood: {exc}"
        self._version = init.protocolVersion
        self.identity = ServerIdentity(
            init.protocolVersion, init.capabilities, init.serverInfo, init.instructions
        )
        return None

    async def _confirm(self, deadline: float) -> str | None:
        """Send `notifications/initialized`, awaited rather than spawned: it must reach
        the server before the first request does."""
        line = self.relay.notify("notifications/initialized")
        try:
            await asyncio.wait_for(self._post_notice(line), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return f"answered, but notifications/initialized timed out{self.stderr_hint()}"
        except _Failed as exc:
            return f"answered, but notifications/initialized failed: {exc.why}"
        return None

    @property
    def exited(self) -> asyncio.Future[int | None]:
        """0 after `stop()`; None when the server was lost (unreachable, session gone)."""
        return self._exited

    @property
    def alive(self) -> bool:
        return self._http is not None and not self._stopping and not self._exited.done()

    @property
    def pid(self) -> int | None:
        return None

    @property
    def node(self) -> str | None:
        return None

    @property
    def session_id(self) -> str | None:
        """The `Mcp-Session-Id` the server gave, if it keeps sessions."""
        return self._session_id

    def stderr_hint(self) -> str:
        """The last HTTP failure, as `HostedInstance` gives the tail of its stderr."""
        return f": {self._failure}" if self._failure else ""

    async def stop(self, grace_s: float = 2.0) -> None:
        """End the session (DELETE, failures ignored) and close the connections."""
        http = self._http
        if http is None:
            return
        if self._stopping:  # stopping already: done when that is
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exited), grace_s + DELETE_TIMEOUT_S)
            return
        self._stopping = True
        await self._cancel_tasks()
        if self._session_id is not None and not self._exited.done() and not http.closed:
            with contextlib.suppress(_Failed):
                limits = aiohttp.ClientTimeout(total=min(grace_s, DELETE_TIMEOUT_S))
                async with self._call("DELETE", limits=limits) as resp:
                    log.debug("%s: DELETE session: HTTP %d", self.name, resp.status)
        await http.close()
        if not self._exited.done():
            self._exited.set_result(0)

    async def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _lose(self, why: str) -> None:
        """The server is gone or forgot the session: this instance is over."""
        if self._stopping or self._exited.done():
            return
        log.warning("remote server %s lost: %s", self.name, why)
        self._exited.set_result(None)
        self._spawn(self._close_lost())

    async def _close_lost(self) -> None:
        # Closing aborts every open exchange: each then answers its request with an error.
        if self._http is not None:
            await self._http.close()

    def _fail_waiters(self, _: object) -> None:
        self._own.fail_queries(HandshakeError(f"{self.name} exited{self.stderr_hint()}"))
        handshake = self._own.handshake
        if handshake is not None and not handshake.done():
            handshake.set_exception(HandshakeError(self._failure or "stopped"))

    # --- traffic ---------------------------------------------------------------------

    def request(self, handle: int, method: str, params: bytes | None, token: bytes | None) -> None:
        line = self.relay.request(handle, method, params, token)
        if not self.alive:
            return
        server_id = _SENT.decode(line).id
        opened: asyncio.Future[None] = self._loop.create_future()
        task = self._spawn(self._exchange(handle, server_id, line, opened))
        exchange = _Exchange(opened, task)
        self._exchanges[handle] = exchange
        task.add_done_callback(lambda _: self._forget_exchange(handle, exchange))

    def _forget_exchange(self, handle: int, exchange: _Exchange) -> None:
        if self._exchanges.get(handle) is exchange:
            del self._exchanges[handle]

    async def query(self, method: str, params: bytes | None, timeout_s: float) -> Reply:
        """A request of the broker's own (the tool list, a log level): its reply.
        Raises TimeoutError, or HandshakeError when it cannot be sent or the server is
        lost first."""
        if not self.alive:
            raise HandshakeError(f"{self.name} is not running{self.stderr_hint()}")
        return await self._own.query(self.request, method, params, timeout_s)

    @property
    def load(self) -> int:
        """Requests sent and not answered yet: how busy the instance is."""
        return self.relay.in_flight()

    def cancel(self, handle: int, reason: str | None = None) -> None:
        line = self.relay.cancel(handle, reason)
        if line is not None and self.alive:
            self._spawn(self._send_cancel(line, self._exchanges.get(handle)))

    def notify(self, method: str, params: bytes | None = None) -> None:
        self._send_notice(self.relay.notify(method, params))

    def answer(self, ask_id: int, result: bytes | None, error: bytes | None = None) -> None:
        line = self.relay.answer(ask_id, result, error)
        if line is not None:
            self._send_notice(line)

    def _send_notice(self, line: bytes) -> None:
        if self.alive:
            self._spawn(self._quietly(self._post_notice(line)))

    async def _send_cancel(self, line: bytes, exchange: _Exchange | None) -> None:
        if exchange is not None:
            # A cancel that overtook its request would be dropped, the request then run.
            await asyncio.shield(exchange.opened)
        await self._quietly(self._post_notice(line))
        if exchange is not None:
            exchange.task.cancel()

    async def _quietly(self, sending: Coroutine[Any, Any, None]) -> None:
        try:
            await sending
        except _Failed as exc:
            log.warning("%s: a notification was not delivered: %s", self.name, exc.why)

    # --- HTTP ------------------------------------------------------------------------

    async def _exchange(
        self, handle: int, server_id: int, line: bytes, opened: asyncio.Future[None]
    ) -> None:
        """POST one request and feed the relay what comes back, until it is answered."""
        parser = SseParser(self._max_line_bytes)
        try:
            try:
                async with self._call("POST", body=line) as resp:
                    opened.set_result(None)
                    if handle == HANDSHAKE:
                        self._session_id = resp.headers.get("Mcp-Session-Id")
                    self._check(resp)
                    if resp.content_type == "text/event-stream":
                        await self._read_sse(resp, parser, handle)
                    elif resp.content_type == "application/json" and resp.status != 202:
                        await self._read_json(resp)
                    else:
                        raise _Failed(f"HTTP {resp.status} with no response to the request")
            except _Failed as exc:
                if not exc.retry or not parser.last_id:
                    raise
                await self._follow(parser, handle)
            if self._pending(handle) and not self.alive:
                raise _Failed(f"{self.name} is closed{self.stderr_hint()}")
            if self._pending(handle):
                raise _Failed("the server's response did not answer the request")
        except _Failed as exc:
            self._fail(handle, server_id, exc.why, exc.kind)
        except Exception:
            log.exception("%s: request %d", self.name, handle)
            self._fail(handle, server_id, "the broker could not read the response", WorkerLost)
        finally:
            if not opened.done():
                opened.set_result(None)

    async def _listen(self) -> None:
        """Read the server's GET stream for as long as the instance lives."""
        try:
            await self._follow(SseParser(self._max_line_bytes), None)
        except _Failed as exc:
            if self.alive:
                log.warning("%s: no more messages of its own: %s", self.name, exc.why)
        except Exception:
            log.exception("%s: GET stream", self.name)

    async def _follow(self, parser: SseParser, handle: int | None) -> None:
        """GET streams, resumed after the last event id, until `handle` is answered or
        (for the standalone stream, `handle` None) the instance ends. Raises _Failed
        when it gives up."""
        attempts = 0
        first = handle is None
        while self.alive and (handle is None or self._pending(handle)):
            if not first:
                await asyncio.sleep(parser.retry_s)
            first = False
            seen = parser.dispatched
            parser.restart()
            try:
                async with self._call("GET", last_event_id=parser.last_id or None) as resp:
                    if resp.status == 405 and handle is None:
                        return  # the server sends nothing of its own
                    self._check(resp)
                    if resp.content_type != "text/event-stream":
                        raise _Failed(f"GET answered {resp.content_type!r}, not an event stream")
                    await self._read_sse(resp, parser, handle)
            except _Failed as exc:
                attempts = 1 if parser.dispatched > seen else attempts + 1
                if not exc.retry or attempts >= RESUME_ATTEMPTS:
                    raise

    @contextlib.asynccontextmanager
    async def _call(
        self,
        method: str,
        *,
        body: bytes | None = None,
        last_event_id: str | None = None,
        limits: aiohttp.ClientTimeout | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        http = self._http
        if http is None or http.closed:
            raise _Failed(f"{self.name} is closed{self.stderr_hint()}")
        headers = dict(self.headers)
        if method == "POST":
            headers["Accept"] = _ACCEPT_BOTH
            headers["Content-Type"] = "application/json"
        elif method == "GET":
            headers["Accept"] = "text/event-stream"
        if self._session_id is not None:
            headers["Mcp-Session-Id"] = self._session_id
        if self._version is not None:
            headers["MCP-Protocol-Version"] = self._version
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        try:
            async with http.request(
                method,
                self.url,
                data=body,
                headers=headers,
                # A 301/302 would turn a POST into a GET; a redirect is reported instead.
                allow_redirects=False,
                timeout=limits or self._timeout,
            ) as resp:
                yield resp
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # Nothing answers there: whatever held the session is gone with it.
            reason = exc.strerror if isinstance(exc, aiohttp.ClientConnectorError) else "timed out"
            why = self._note(f"cannot connect to {self.url}: {reason}")
            self._lose(why)
            raise _Failed(why) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Failed(self._note(f"the connection broke: {exc!r}"), retry=True) from None

    def _check(self, resp: aiohttp.ClientResponse) -> None:
        if resp.status == 404 and self._session_id is not None:
            why = self._note("the session is gone: HTTP 404 Not Found")
            self._lose(why)
            raise _Failed(why)
        if resp.status >= 300:
            why = self._note(f"HTTP {resp.status} {resp.reason or ''}".rstrip())
            raise _Failed(why, retry=resp.status >= 500)

    def _note(self, why: str) -> str:
        # What breaks once the instance is over follows from why it ended: keep that.
        if not self._stopping and not self._exited.done():
            self._failure = why
        return why

    async def _post_notice(self, line: bytes) -> None:
        async with self._call("POST", body=line) as resp:
            self._check(resp)

    async def _read_sse(
        self, resp: aiohttp.ClientResponse, parser: SseParser, handle: int | None
    ) -> None:
        """Feed the relay each event until `handle` is answered; raises _Failed when the
        stream ends first."""
        too_long = False
        async for chunk in resp.content.iter_any():
            for event in parser.feed(chunk):
                if not event.whole:
                    too_long = True
                    self._handle_long_line(event.data)
                elif event.data.strip():  # the empty event that primes a resumable stream
                    self._handle_line(event.data)
            if handle is not None and not self._pending(handle):
                return
        if too_long and handle is not None:
            # Most likely its answer; resuming would only bring the same event again.
            raise _Failed(self._too_long(), kind=ResultTooLarge)
        raise _Failed(
            "the stream ended" if handle is None else "the stream ended early", retry=True
        )

    async def _read_json(self, resp: aiohttp.ClientResponse) -> None:
        body = bytearray()
        async for chunk in resp.content.iter_any():
            body += chunk
            if len(body) > self._max_line_bytes:
                self._handle_long_line(bytes(body[:_LONG_LINE_HEAD]))
                raise _Failed(self._too_long(), kind=ResultTooLarge)
        if body.lstrip().startswith(b"["):
            try:
                lines = _BATCH.decode(body)
            except msgspec.DecodeError:
                lines = [msgspec.Raw(bytes(body))]
            for line in lines:
                self._handle_line(bytes(line))
        elif body.strip():
            self._handle_line(bytes(body))

    # --- from the server -------------------------------------------------------------

    def _pending(self, handle: int) -> bool:
        return handle in self.relay.pending()

    def _too_long(self) -> str:
        return f"its response is over {self._max_line_bytes} bytes (EXAI_WS_MAX_BYTES)"

    def _fail(self, handle: int, server_id: int, why: str, kind: type[BrokerError]) -> None:
        """End `handle` with an error of our own: its answer cannot come."""
        if not self._pending(handle):
            return
        log.warning("%s: request %d failed: %s", self.name, handle, why)
        if handle < 0:
            # The broker's own requests raise, like a lost stdio server's.
            self.relay.forget(handle)
            waiter = self._own.waiter(handle)
            if waiter is not None and not waiter.done():
                waiter.set_exception(HandshakeError(why))
            return
        exc = kind(f"the remote server {self.name!r} failed the request: {why}", server=self.name)
        error = msgspec.json.encode(
            {"code": exc.jsonrpc_code, "message": exc.message, "data": exc.to_data()}
        )
        self._handle_line(b'{"jsonrpc":"2.0","id":%d,"error":%s}' % (server_id, error))

    def _handle_line(self, line: bytes) -> None:
        event = self.relay.receive(line)
        if event is not None:
            self._dispatch(event)

    def _handle_long_line(self, head: bytes) -> None:
        event = self.relay.salvage(head, self._too_long(), ResultTooLarge)
        if event is not None:
            self._dispatch(event)

    def _dispatch(self, event: RelayEvent) -> None:
        if not self._own.resolve(event):
            self._on_event(self, event)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
