"""Keeping a bridge connected to its daemon: connect, say hello, serve, and reconnect
with backoff until the bridge is done.

While a connection is up, its frames go to the bridge as they arrive; the bridge
learns of each connection and of its end through `handle_connected` and
`handle_disconnected`. Serving races three tasks under `asyncio.wait(FIRST_COMPLETED)`
(the reader, a reconnect request, the bridge being done); the losers are cancelled in
`finally`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Protocol

from exai.settings import ShimSettings
from shim import websocket
from shim.autostart import Autostarter
from shim.hello import CLOSE_UNAUTHORIZED, SessionRefused, hello_frame, read_hello_ack
from shim.websocket import ConnectionClosed, HandshakeError, MessageTooLarge, WebSocket

__all__ = [
    "ConnectionLoop",
    "DaemonPeer",
    "backoff_delay_s",
    "describe",
    "no_daemon_message",
    "refuses_token",
]

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.05
BACKOFF_MAX_S = 2.0
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
# Ours when we drop a connection to open another (a stalled one): the session lives on.
CLOSE_RECONNECTING = 4000
# The daemon's when a frame of ours exceeds its EXAI_WS_MAX_BYTES.
CLOSE_MESSAGE_TOO_BIG = 1009


class DaemonPeer(Protocol):
    """What the connection loop needs of the bridge it keeps connected."""

    @property
    def done(self) -> asyncio.Event: ...

    def handle_connected(self, ws: WebSocket, resumed: bool) -> None: ...

    def awaited_ids(self) -> list[Any]:
        """The ids of requests sent to a daemon and not answered yet (for the hello)."""
        ...

    def handle_disconnected(self) -> None: ...

    def handle_daemon_frame(self, frame: bytes) -> None: ...

    def handle_unauthorized(self, message: str) -> None: ...

    def handle_no_daemon(self, message: str) -> None:
        """Nothing listens at the daemon's address, and no connection was ever made."""
        ...

    def handle_oversized_frame(self, head: bytes, size: int, limit: int) -> None: ...

    def handle_frame_refused_as_too_large(self, reason: str) -> None: ...


class ConnectionLoop:
    """One session's connections to the daemon, one after another."""

    def __init__(self, settings: ShimSettings, session_id: str, peer: DaemonPeer) -> None:
        self.settings = settings
        self.session_id = session_id
        self.peer = peer
        # Why the last attempt failed or the last connection ended, for error messages.
        self.last_error = "not connected yet"
        self._reconnect_now = asyncio.Event()
        self._try_now = asyncio.Event()
        self.ever_connected = False
        # True while no connection was ever made and the last attempt was refused
        # outright (nothing listens there) with no autostart to change that.
        self.refused_outright = False
        self._told_no_daemon = False
        self.autostarter: Autostarter | None = (
            Autostarter(settings.log_dir) if settings.autostart else None
        )

    def reconnect(self) -> None:
        """Drop the current connection and open a new one: it may be half-dead."""
        self._reconnect_now.set()

    def try_now(self) -> None:
        """Cut the backoff short: make the next connection attempt at once."""
        self._try_now.set()

    async def run(self) -> None:
        """Connect, serve, and reconnect with backoff until the peer is done."""
        attempt = 0
        done = self.peer.done
        while not done.is_set():
            try:
                ws, resumed = await self._open()
            except (
                OSError,
                HandshakeError,
                SessionRefused,
                ConnectionClosed,
                TimeoutError,
                ValueError,
            ) as exc:
                if done.is_set():
                    return  # stopping: above all, start no daemon now
                attempt += 1
                await self._handle_failed_open(exc, attempt)
                continue
            attempt = 0
            self.ever_connected = True
            self.refused_outright = False
            self.peer.handle_connected(ws, resumed)
            await self._serve(ws)

    async def _handle_failed_open(self, exc: BaseException, attempt: int) -> None:
        self.last_error = describe(exc)
        if isinstance(exc, ConnectionRefusedError) and self.autostarter is not None:
            self.autostarter.maybe_start()
            if self.autostarter.failure is not None:
                self.last_error += f"; autostart failed: {self.autostarter.failure}"
        if refuses_token(exc):
            self.peer.handle_unauthorized(
                f"the daemon at {self.settings.url} refused our token ({self.last_error}): "
                "set EXAI_WS_TOKEN in this client's shim env to the daemon's token"
            )
        self.refused_outright = (
            isinstance(exc, ConnectionRefusedError)
            and self.autostarter is None
            and not self.ever_connected
        )
        if self.refused_outright:
            self._handle_no_daemon()
        elif attempt == 1:
            log.warning("cannot reach daemon at %s: %s", self.settings.url, self.last_error)
        if attempt % 20 == 0:
            log.warning("cannot reach daemon at %s: %s", self.settings.url, self.last_error)
        await self._pause(backoff_delay_s(attempt, random.random()))

    def _handle_no_daemon(self) -> None:
        # Waiting out the RPC timeout would only delay the same failure, and with
        # nothing resumable there is nothing to wait for: answer now, and say once on
        # stderr (the client's log of this server) what to do about it.
        message = no_daemon_message(self.settings.url)
        if not self._told_no_daemon:
            self._told_no_daemon = True
            log.error("%s", message)
        self.peer.handle_no_daemon(message)

    async def _pause(self, delay_s: float) -> None:
        """The backoff before the next attempt, cut short by `try_now` or the peer's end."""
        self._try_now.clear()
        loop = asyncio.get_running_loop()
        wakers = {loop.create_task(self._try_now.wait()), loop.create_task(self.peer.done.wait())}
        try:
            await asyncio.wait(wakers, timeout=delay_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in wakers:
                task.cancel()

    async def _open(self) -> tuple[WebSocket, bool]:
        settings = self.settings
        headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else None
        ws = await websocket.connect(
            settings.host,
            settings.port,
            headers=headers,
            open_timeout_s=settings.rpc_timeout_s,
            max_message_bytes=settings.max_frame_bytes,
        )
        try:
            await ws.send_text(
                hello_frame(self.session_id, settings.token, self.peer.awaited_ids())
            )
            return ws, read_hello_ack(await asyncio.wait_for(ws.recv(), settings.rpc_timeout_s))
        except SessionRefused as refused:
            # The closing handshake brings the daemon's close code: an older daemon's
            # refusal carries no code of its own, only that.
            await ws.close()
            raise refused.closed_with(ws.close_code) from None
        except BaseException:
            await ws.close()
            raise

    async def _serve(self, ws: WebSocket) -> None:
        loop = asyncio.get_running_loop()
        done = self.peer.done
        reader = loop.create_task(self._read(ws))
        reconnect = loop.create_task(self._reconnect_now.wait())
        finished = loop.create_task(done.wait())
        try:
            await asyncio.wait({reader, reconnect, finished}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, reconnect, finished):
                task.cancel()
            self._reconnect_now.clear()
            self.peer.handle_disconnected()
            code = CLOSE_NORMAL if done.is_set() else CLOSE_RECONNECTING
            # A connection dropped for not answering gets no closing handshake: waiting
            # for one would only eat into the retry's time.
            await ws.close(code=code, timeout_s=1.0 if done.is_set() else 0.0)

    async def _read(self, ws: WebSocket) -> None:
        try:
            while True:
                try:
                    frame = await ws.recv()
                except MessageTooLarge as exc:
                    self.peer.handle_oversized_frame(exc.head, exc.size, exc.limit)
                    continue
                self.peer.handle_daemon_frame(frame)
        except ConnectionClosed as exc:
            self.last_error = f"connection closed ({exc.code} {exc.reason})".strip()
            if exc.code == CLOSE_GOING_AWAY:
                log.info("daemon is restarting; reconnecting")
            elif exc.code == CLOSE_MESSAGE_TOO_BIG and ws.close_received:
                # Re-sending the request that caused it would only close the next
                # connection the same way.
                self.peer.handle_frame_refused_as_too_large(exc.reason)


def backoff_delay_s(attempt: int, jitter: float) -> float:
    """How long to wait before connection attempt `attempt` + 1; `jitter` is in [0, 1)."""
    delay = min(BACKOFF_MAX_S, BACKOFF_START_S * 2.0 ** min(attempt, 10))
    # Spread out the shims of one daemon that all lost it at the same moment.
    return delay * (0.5 + jitter)


def refuses_token(exc: BaseException) -> bool:
    """True when `exc`, from opening a connection, says the daemon refuses our token.

    By status and code only: an HTTP 401/403 at the upgrade, a hello_ack whose code is
    UNAUTHORIZED, or (from a daemon that sends no code) the close code 4003.
    """
    if isinstance(exc, HandshakeError):
        return exc.status in (401, 403)
    if isinstance(exc, SessionRefused):
        return exc.unauthorized
    return isinstance(exc, ConnectionClosed) and exc.code == CLOSE_UNAUTHORIZED


def no_daemon_message(url: str) -> str:
    """What a client is told when nothing listens at the daemon's address `url`."""
    return (
        f"no exai-broker daemon is running at {url} (connection refused). Start it with "
        "`python -m broker`, or set EXAI_SHIM_AUTOSTART=1 in this client's shim env to "
        "have the shim start it"
    )


def describe(exc: BaseException) -> str:
    """`exc` in a few words for a log line or an error message."""
    if isinstance(exc, HandshakeError):
        return f"HTTP {exc.status} {exc.reason}".strip()
    if isinstance(exc, SessionRefused):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
