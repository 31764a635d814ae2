"""One hosted stdio MCP server process, owned by the daemon: its pipes and handshake.

The daemon is the MCP client of the servers it shares. It starts the server, runs
the `initialize` handshake once (the newest handshake version; each client's own
version is adapted at the edge), and then relays JSON-RPC lines both ways through
an `exai.relay.Relay`, so request ids and progress tokens of many sessions never
meet. Lines are read straight from the pipe by a protocol (no task, no thread per
line) and written in one batch per loop iteration.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from broker.hosting.bridged import BridgedProcess, Launcher
from broker.hosting.own_requests import HANDSHAKE, OwnRequests, initialize_params
from exai import __version__
from exai.coalesce import WriteCoalescer
from exai.errors import ResultTooLarge
from exai.relay import Relay, RelayEvent, Reply

__all__ = ["ClientHello", "HandshakeError", "HostedInstance", "ServerIdentity"]

log = logging.getLogger(__name__)

HANDSHAKE_VERSION = "2025-11-25"
# What the daemon offers a shared hosted server as its client: it forwards each of
# these to the client session the request belongs to (or refuses when none can be
# proven). The plain forms every client that has the feature supports: a server that
# shows clients of a richer form extra tools would show them to clients without it.
CLIENT_CAPABILITIES: dict[str, Any] = {
    "roots": {"listChanged": True},
    "sampling": {},
    "elicitation": {},
}
CLIENT_CAPABILITIES_JSON = msgspec.json.encode(CLIENT_CAPABILITIES)
CLIENT_INFO_JSON = msgspec.json.encode({"name": "exai-broker", "version": __version__})
STDERR_TAIL_LINES = 40
# What is kept of a line over the limit: enough to find the id of the request it answers.
_LONG_LINE_HEAD = 4096
_POSIX = sys.platform != "win32"


class HandshakeError(RuntimeError):
    """The server did not complete `initialize`; the message says how it failed."""


@dataclasses.dataclass(frozen=True, slots=True)
class ClientHello:
    """Who the hosted server is told its client is: under session isolation, the
    session's own client (its version, capabilities and clientInfo, raw JSON), so the
    server treats it as it would talking to it directly."""

    protocol_version: str = HANDSHAKE_VERSION
    capabilities: bytes = CLIENT_CAPABILITIES_JSON
    client_info: bytes = CLIENT_INFO_JSON


@dataclasses.dataclass(frozen=True, slots=True)
class ServerIdentity:
    """What `initialize` told us about the hosted server."""

    protocol_version: str
    capabilities: dict[str, Any]
    server_info: dict[str, Any]
    instructions: str | None


class _Initialize(msgspec.Struct):
    protocolVersion: str
    capabilities: dict[str, Any] = {}
    serverInfo: dict[str, Any] = {}
    instructions: str | None = None


class _Pipes(asyncio.SubprocessProtocol):
    """Splits the server's stdout into lines; keeps the tail of its stderr."""

    def __init__(
        self,
        on_line: Callable[[bytes], None],
        max_line_bytes: int,
        on_long_line: Callable[[bytes], None] = lambda head: None,
    ) -> None:
        self._on_line = on_line
        # Told the head of each line over the limit: the request it answers must still end.
        self._on_long_line = on_long_line
        self._max_line_bytes = max_line_bytes
        self._partial = bytearray()
        # True while the rest of an over-long line is being thrown away.
        self._skipping = False
        self._err_partial = bytearray()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.exited: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 2:
            self._stderr(data)
            return
        start = 0
        if self._skipping:
            # The rest of a line over the limit: nothing of it may be read as a message.
            end = data.find(b"\n")
            if end < 0:
                return
            self._skipping = False
            start = end + 1
        elif self._partial:
            end = data.find(b"\n")
            if end < 0:
                self._partial += data
                self._check_partial()
                return
            self._partial += data[:end]
            line, self._partial = bytes(self._partial), bytearray()
            start = end + 1
            if len(line) > self._max_line_bytes:
                self._drop_long_line(line[:_LONG_LINE_HEAD])
            else:
                self._deliver(line)
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            if end - start > self._max_line_bytes:
                self._drop_long_line(data[start : start + _LONG_LINE_HEAD])
            else:
                self._deliver(data[start:end])
            start = end + 1
        if start < len(data):
            self._partial += data[start:]
            self._check_partial()

    def _deliver(self, line: bytes) -> None:
        if line.strip():
            self._on_line(line)

    def _check_partial(self) -> None:
        if len(self._partial) > self._max_line_bytes:
            self._drop_long_line(bytes(self._partial[:_LONG_LINE_HEAD]))
            self._partial = bytearray()
            self._skipping = True

    def _drop_long_line(self, head: bytes) -> None:
        log.warning("hosted server wrote a line over %d bytes; dropped", self._max_line_bytes)
        self._on_long_line(head)

    def _stderr(self, data: bytes) -> None:
        self._err_partial += data
        *lines, rest = self._err_partial.split(b"\n")
        self._err_partial = bytearray(rest[-4096:])
        for line in lines:
            text = line.decode(errors="replace").rstrip()
            if text:
                self.stderr_tail.append(text)
                log.debug("hosted server: %s", text)

    def process_exited(self) -> None:
        if not self.exited.done() and self.transport is not None:
            self.exited.set_result(self.transport.get_returncode())


class HostedInstance:
    """A started, initialized stdio server; `on_event` gets every relay event."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        on_event: Callable[[HostedInstance, RelayEvent], None],
        max_line_bytes: int = 33_554_432,
        client: ClientHello | None = None,
        launcher: Launcher | None = None,
    ) -> None:
        if not argv:
            raise ValueError(f"server {name!r} has no command")
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.relay = Relay()
        self.client = client or ClientHello()
        self.identity: ServerIdentity | None = None
        self._on_event = on_event
        self._max_line_bytes = max_line_bytes
        self._pipes: _Pipes | None = None
        self._loop = asyncio.get_running_loop()
        self._writes = WriteCoalescer(self._loop, self._write_now)
        self._own = OwnRequests(self.relay, self._loop)
        # Who runs the process: the daemon (None), or the worker pool.
        self._launcher = launcher

    # --- life ------------------------------------------------------------------------

    async def start(self, timeout_s: float) -> ServerIdentity:
        """Start the process and complete `initialize`, within `timeout_s`."""
        env = self.env  # the whole environment when given (None: the daemon's own)
        pipes = _Pipes(self._handle_line, self._max_line_bytes, self._handle_long_line)
        try:
            if self._launcher is not None:
                await self._launcher(pipes, self.argv, env, self.cwd, self.name)
            else:
                await self._loop.subprocess_exec(
                    lambda: pipes,
                    *self.argv,
                    env=env,
                    cwd=self.cwd,
                    # Its own process group: a Ctrl+C in the daemon's terminal is the
                    # daemon's to handle, and the whole group goes when it is stopped.
                    start_new_session=_POSIX,
                )
        except OSError as exc:
            raise HandshakeError(f"cannot start {self.argv[0]!r}: {exc}") from exc
        self._pipes = pipes
        handshake = self._own.begin_handshake()
        client = self.client
        params = initialize_params(client.protocol_version, client.capabilities, client.client_info)
        self._write(self.relay.request(HANDSHAKE, "initialize", params))

        def fail_handshake(_: object) -> None:
            if not handshake.done():
                handshake.set_exception(HandshakeError("exited"))

        pipes.exited.add_done_callback(fail_handshake)
        pipes.exited.add_done_callback(self._fail_queries)
        try:
            reply = await asyncio.wait_for(asyncio.shield(handshake), timeout_s)
        except asyncio.CancelledError:
            # Whoever started it gave up (its server was removed, the daemon is
            # stopping): the process must not outlive that.
            await self.stop()
            raise
        except (TimeoutError, HandshakeError):
            await self.stop()
            why = "exited" if pipes.exited.done() else f"did not answer within {timeout_s:g} s"
            raise HandshakeError(f"{self.name}: initialize {why}{self.stderr_hint()}") from None
        if reply.error is not None or reply.result is None:
            await self.stop()
            raise HandshakeError(f"{self.name}: initialize failed: {reply.error!r}")
        try:
            init = msgspec.json.decode(reply.result, type=_Initialize)
        except msgspec.DecodeError as exc:
            await self.stop()
            raise HandshakeError(f"{self.name}: initialize result not understood: {exc}") from exc
        self._write(self.relay.notify("notifications/initialized"))
        self.identity = ServerIdentity(
            init.protocolVersion, init.capabilities, init.serverInfo, init.instructions
        )
        return self.identity

    def _fail_queries(self, _: object) -> None:
        self._own.fail_queries(HandshakeError(f"{self.name} exited"))

    @property
    def exited(self) -> asyncio.Future[int | None]:
        assert self._pipes is not None, "start() first"
        return self._pipes.exited

    @property
    def alive(self) -> bool:
        return self._pipes is not None and not self._pipes.exited.done()

    @property
    def pid(self) -> int | None:
        transport = self._pipes.transport if self._pipes else None
        return transport.get_pid() if transport is not None else None

    @property
    def node(self) -> str | None:
        """The pool node the process runs on, when the pool runs it (`--pool ray`)."""
        transport = self._pipes.transport if self._pipes else None
        return transport.node if isinstance(transport, BridgedProcess) else None

    def stderr_hint(self) -> str:
        tail = list(self._pipes.stderr_tail)[-5:] if self._pipes else []
        return (": " + " | ".join(tail)) if tail else ""

    async def stop(self, grace_s: float = 2.0) -> None:
        """Close its stdin (the MCP way to stop a stdio server), then TERM, then KILL."""
        pipes = self._pipes
        if pipes is None or pipes.transport is None:
            return
        transport = pipes.transport
        stdin = transport.get_pipe_transport(0)
        if stdin is not None:
            stdin.close()
        for force in (None, False, True):
            if force is not None and not pipes.exited.done():
                with contextlib.suppress(ProcessLookupError, OSError):
                    _end(transport, kill=force, group=self._launcher is None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pipes.exited), grace_s)
                break
        transport.close()

    # --- traffic ---------------------------------------------------------------------

    def request(self, handle: int, method: str, params: bytes | None, token: bytes | None) -> None:
        self._write(self.relay.request(handle, method, params, token))

    async def query(self, method: str, params: bytes | None, timeout_s: float) -> Reply:
        """A request of the broker's own (the tool list, a log level): its reply.
        Raises TimeoutError, or HandshakeError when the server exits first."""
        return await self._own.query(self.request, method, params, timeout_s)

    @property
    def load(self) -> int:
        """Requests sent and not answered yet: how busy the instance is."""
        return self.relay.in_flight()

    def cancel(self, handle: int, reason: str | None = None) -> None:
        line = self.relay.cancel(handle, reason)
        if line is not None:
            self._write(line)

    def notify(self, method: str, params: bytes | None = None) -> None:
        self._write(self.relay.notify(method, params))

    def answer(self, ask_id: int, result: bytes | None, error: bytes | None = None) -> None:
        line = self.relay.answer(ask_id, result, error)
        if line is not None:
            self._write(line)

    def _handle_line(self, line: bytes) -> None:
        event = self.relay.receive(line)
        if event is not None:
            self._dispatch(event)

    def _handle_long_line(self, head: bytes) -> None:
        why = f"its line is over {self._max_line_bytes} bytes (EXAI_WS_MAX_BYTES)"
        event = self.relay.salvage(head, why, ResultTooLarge)
        if event is not None:
            self._dispatch(event)

    def _dispatch(self, event: RelayEvent) -> None:
        if not self._own.resolve(event):
            self._on_event(self, event)

    def _write(self, line: bytes) -> None:
        if self.alive:
            self._writes.add(line)

    def _write_now(self, data: bytes) -> None:
        transport = self._pipes.transport if self._pipes else None
        stdin = transport.get_pipe_transport(0) if transport is not None else None
        if stdin is not None and not stdin.is_closing():
            stdin.write(data)  # type: ignore[attr-defined]


def _end(transport: asyncio.SubprocessTransport, *, kill: bool, group: bool) -> None:
    """TERM (or KILL) the server and, on POSIX, its whole process group: whatever the
    server started goes with it. A process the pool runs (`group` False) is the
    pool's to signal, group and all: its pid is not ours."""
    pid = transport.get_pid()
    if group and _POSIX and pid is not None:
        os.killpg(pid, signal.SIGKILL if kill else signal.SIGTERM)
    elif kill:
        transport.kill()
    else:
        transport.terminate()
