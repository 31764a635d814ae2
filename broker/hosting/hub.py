"""The daemon's hosted stdio server: its instances, its traffic and the broker's view of it.

The call manager forwards requests here (`place` gives it the instance that serves a
session, or None while one starts); replies and progress come back through the
`on_reply` and `on_progress` callbacks, keyed by the call's number. Everything the
server sends on its own is routed by `ServerTraffic`. The hub also keeps what the
broker answers for the server itself: each session's log level (the server logs at
the lowest any session asked for), who subscribed to what (the server hears one
subscribe per resource), and the tool list the op dialect and health show, read
again whenever the server says it changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import msgspec

from broker.hosting.bridged import Launcher
from broker.hosting.identity import Presented, present
from broker.hosting.instance import ClientHello, HandshakeError, ServerIdentity
from broker.hosting.instances import Instance
from broker.hosting.listens import Listen, ListenFilter, Listens, acknowledged
from broker.hosting.loglevels import LEVELS, LogLevels
from broker.hosting.routes import Forward, Route
from broker.hosting.server import HostedServer, NoInstance, ServerState
from broker.hosting.subscriptions import Subscriptions
from broker.hosting.traffic import ServerTraffic, SessionLike
from exai.errors import OverCapacity, WorkerLost
from exai.relay import Ask, Garbage, Notice, Progress, RelayEvent, Reply
from exai.settings import Isolation

__all__ = ["Hosting", "NoInstance"]

log = logging.getLogger(__name__)

QUERY_TIMEOUT_S = 30.0
# Pages of tools/list read for the catalog before giving up on a server that loops.
MAX_LIST_PAGES = 1000


class _ToolsPage(msgspec.Struct):
    tools: list[msgspec.Raw] = []
    nextCursor: str | None = None


class Hosting:
    """One hosted server command, as the call manager and the router see it."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        url: str | None = None,
        headers: dict[str, str] | None = None,
        isolation: Isolation,
        instances: int,
        idle_timeout_s: float,
        max_instances: int,
        max_line_bytes: int,
        session: Callable[[str], SessionLike | None],
        all_sessions: Callable[[], Iterable[SessionLike]],
        session_of_call: Callable[[int], str | None],
        own_info: dict[str, Any],
        client_of: Callable[[str], ClientHello | None] | None = None,
        launcher: Launcher | None = None,
    ) -> None:
        self.name = name
        self.levels = LogLevels()
        self.subscriptions = Subscriptions()
        self.listens = Listens()
        self.server = HostedServer(
            name,
            argv,
            on_event=self._event,
            on_exit=self._exited,
            on_start=self._started,
            client_of=client_of,
            env=env,
            cwd=cwd,
            url=url,
            headers=headers,
            instances=instances,
            isolation=isolation,
            idle_timeout_s=idle_timeout_s,
            max_instances=max_instances,
            max_line_bytes=max_line_bytes,
            launcher=launcher,
        )
        self.traffic = ServerTraffic(
            name,
            owner_of=self.server.owner_of,
            sessions_in_flight=self._sessions_in_flight,
            all_sessions=all_sessions,
            session=session,
            levels=self.levels,
            subscriptions=self.subscriptions,
            divert=self._divert,
            listens=self.listens,
        )
        self._session_of_call = session_of_call
        self._own_info = own_info
        self._tasks: set[asyncio.Task[None]] = set()
        self._refreshing: asyncio.Task[None] | None = None
        # Set by the owner before start: where replies, progress and losses go.
        self.on_reply: Callable[[int, bytes | None, bytes | None], None] = _ignore_reply
        self.on_progress: Callable[[int, bytes], None] = _ignore_progress
        self.on_lost: Callable[[int, str], None] = _ignore_lost
        self.on_ready: Callable[[], None] = _nothing
        self.on_tools: Callable[[bytes], None] = _ignore_tools
        # (session, calls in flight on the instance, key, request) -> see traffic.Divert
        self.on_input_required: Callable[[str, list[int], str, bytes], bool | None] = (
            _no_input_required
        )
        self.presented: Presented = ({}, dict(own_info), None)
        # Off when the daemon merges this server's tools with others': the merged list
        # changes only once the new tools are read, and the daemon announces it then.
        self.forward_tool_changes = True

    @property
    def isolation(self) -> Isolation:
        return self.server.isolation

    @property
    def identity(self) -> ServerIdentity | None:
        return self.server.identity

    @property
    def capabilities(self) -> dict[str, Any]:
        return self.presented[0]

    # --- life ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the server's instances and read its tool list; raises HandshakeError."""
        identity = await self.server.start()
        self.presented = present(
            [(self.name, identity.capabilities, identity.server_info, identity.instructions)],
            self._own_info,
            own_tools=False,
        )
        if "tools" in identity.capabilities:
            await self._refresh_tools()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.server.stop()

    # --- placing requests ------------------------------------------------------------

    def place(self, session_id: str) -> Instance | None:
        """The instance to send a session's request to; None while one (re)starts.
        Raises OverCapacity past the session-instance cap, WorkerLost when the server
        failed for good."""
        try:
            return self.server.place(session_id)
        except NoInstance as exc:
            if exc.capacity:
                raise OverCapacity(
                    str(exc), scope="server", server=self.name, retry_after_ms=1000
                ) from None
            raise WorkerLost(str(exc), server=self.name) from None

    def instances_for(self, session_id: str) -> list[Instance]:
        """The running instances a session's notifications concern."""
        if self.server.isolation is Isolation.SESSION:
            mine = self.server.instance_now(session_id)
            return [mine] if mine is not None else []
        return [i for i in self.server.instances() if i.alive]

    def route(self, session_id: str, method: str, params: bytes | None) -> Route:
        """Every request the broker does not answer itself goes to this one server, as
        it is: the server says what it makes of it."""
        return Forward(None, params, self.name)

    # --- what the broker answers for the server --------------------------------------

    def set_level(self, session_id: str, level: str) -> bool:
        """Keep `level` for the session and have the server log at the lowest level
        any session wants. False when `level` is not an MCP level."""
        before = self.levels.lowest()
        if not self.levels.set(session_id, level):
            return False
        if self.levels.lowest() != before:
            for instance in self.instances_for(session_id):
                self._tell_level(instance)
        return True

    def subscribe(self, session_id: str, uri: str) -> bool:
        """Record a subscription; True when the server must hear of it (the first
        subscriber of a shared instance, or any under session isolation)."""
        first = self.subscriptions.subscribe(self.name, uri, session_id)
        return first or self.server.isolation is Isolation.SESSION

    def unsubscribe(self, session_id: str, uri: str) -> bool:
        """Forget a subscription; True when the server must hear of it."""
        last = self.subscriptions.unsubscribe(self.name, uri, session_id)
        return last or self.server.isolation is Isolation.SESSION

    def listen(self, session_id: str, request_id: bytes, wants: ListenFilter) -> bytes:
        """Open a 2026-07-28 listen stream; its acknowledgment, to send the client. The
        server is subscribed to the stream's resources as `resources/subscribe` would."""
        # Before its first start the server's capabilities are unknown: keep all it
        # was asked for, and let the server refuse what it does not offer.
        known = self.server.identity is not None
        honoured = wants.honoured(self.presented[0]) if known else wants
        before = self.listens.uris(session_id)
        self.listens.add(session_id, Listen(request_id, honoured))
        self._resubscribe(session_id, before)
        return acknowledged(honoured, request_id)

    def unlisten(self, session_id: str, request_id: bytes) -> bool:
        """Close a listen stream (cancelled); False when `request_id` names none."""
        before = self.listens.uris(session_id)
        if self.listens.remove(session_id, request_id) is None:
            return False
        self._resubscribe(session_id, before)
        return True

    def _resubscribe(self, session_id: str, before: set[str]) -> None:
        """Tell the server of the URIs a session's listen streams now want, or no more."""
        after = self.listens.uris(session_id)
        for method, uris, change in (
            ("resources/subscribe", after - before, self.subscribe),
            ("resources/unsubscribe", before - after, self.unsubscribe),
        ):
            for uri in sorted(uris):
                if change(session_id, uri):
                    params = msgspec.json.encode({"uri": uri})
                    for instance in self.instances_for(session_id):
                        self._spawn(self._quiet_query(instance, method, params))

    def answer(
        self, session_id: str, client_id: bytes, result: bytes | None, error: bytes | None
    ) -> bool:
        """A client's answer to a server request; False if it answers nothing of ours."""
        return self.traffic.handle_answer(session_id, client_id, result, error)

    def answer_input(self, session_id: str, key: str, response: bytes) -> bool:
        """A 2026-07-28 client's input response (from a retried request's
        `inputResponses`) to the server request `key`."""
        return self.traffic.handle_answer(session_id, msgspec.json.encode(key), response, None)

    def notify(self, session_id: str, method: str, params: bytes | None) -> None:
        """A client notification for the server (roots/list_changed, say)."""
        for instance in self.instances_for(session_id):
            instance.notify(method, params)

    def end_session(self, session_id: str) -> None:
        self.listens.end_session(session_id)  # their subscriptions end with the session's
        self.traffic.end_session(session_id)
        self.levels.end_session(session_id)
        emptied = self.subscriptions.end_session(session_id)
        if self.server.isolation is Isolation.SESSION:
            self.server.end_session(session_id)
            return
        for _, uri in emptied:
            params = msgspec.json.encode({"uri": uri})
            for instance in self.instances_for(session_id):
                self._spawn(self._quiet_query(instance, "resources/unsubscribe", params))

    def snapshot(self) -> dict[str, Any]:
        server = self.server
        return {
            "name": self.name,
            "state": str(server.state),
            "isolation": str(server.isolation),
            "restarts": server.restarts,
            "failure": server.failure,
            "undelivered": self.traffic.undelivered,
            "instances": [
                {"pid": i.pid, "in_flight": i.load, "owner": server.owner_of(i)}
                | ({"node": i.node} if i.node else {})
                for i in server.instances()
            ],
        }

    # --- from the server -------------------------------------------------------------

    def _event(self, instance: Instance, event: RelayEvent) -> None:
        if isinstance(event, Reply):
            self.on_reply(event.handle, event.result, event.error)
        elif isinstance(event, Progress):
            self.on_progress(event.handle, event.params)
        elif isinstance(event, Notice):
            if event.method == "notifications/tools/list_changed":
                self._schedule_refresh()
                if not self.forward_tool_changes:
                    return
            self.traffic.handle_notice(instance, event)
        elif isinstance(event, Ask):
            self.traffic.handle_ask(instance, event)
        elif isinstance(event, Garbage):
            log.warning(
                "%s wrote what is not JSON-RPC (%s): %.200r", self.name, event.why, event.line
            )

    def _exited(self, instance: Instance) -> None:
        code = instance.exited.result() if instance.exited.done() else None
        why = f"the hosted server {self.name!r} exited (code {code}){instance.stderr_hint()}"
        for handle in [h for h in instance.relay.pending() if h >= 0]:
            instance.relay.forget(handle)
            self.on_lost(handle, why)
        self.traffic.forget_instance(instance)

    def _started(self, instance: Instance | None) -> None:
        if instance is not None:
            if self.levels.lowest() is not None:
                self._tell_level(instance)
            self._tell_subscriptions(instance)
        self.on_ready()

    def _tell_subscriptions(self, instance: Instance) -> None:
        """A new instance (a restart, or a server added while clients were subscribed
        or listening) knows no subscription: the clients' still hold, so tell it."""
        owner = self.server.owner_of(instance)
        if owner is None and self.server.isolation is Isolation.SESSION:
            return
        for uri in self.subscriptions.uris(self.name, owner):
            params = msgspec.json.encode({"uri": uri})
            self._spawn(self._quiet_query(instance, "resources/subscribe", params))

    def _divert(self, session_id: str, instance: Instance, key: str, request: bytes) -> bool | None:
        handles = [h for h in instance.relay.pending() if h >= 0]
        return self.on_input_required(session_id, handles, key, request)

    def _sessions_in_flight(self, instance: Instance) -> set[str]:
        found = set()
        for handle in instance.relay.pending():
            if handle >= 0:
                session_id = self._session_of_call(handle)
                if session_id is not None:
                    found.add(session_id)
        return found

    # --- internals -------------------------------------------------------------------

    def _tell_level(self, instance: Instance) -> None:
        lowest = self.levels.lowest()
        if lowest is None or "logging" not in self.capabilities:
            return
        params = msgspec.json.encode({"level": LEVELS[lowest]})
        self._spawn(self._quiet_query(instance, "logging/setLevel", params))

    def _schedule_refresh(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = self._spawn(self._refresh_tools())

    async def _refresh_tools(self) -> None:
        instance = next((i for i in self.server.instances() if i.alive), None)
        if instance is None:
            return
        tools: list[bytes] = []
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            params = msgspec.json.encode({"cursor": cursor}) if cursor is not None else None
            try:
                reply = await instance.query("tools/list", params, QUERY_TIMEOUT_S)
                page = msgspec.json.decode(reply.result or b"{}", type=_ToolsPage)
            except (TimeoutError, HandshakeError, msgspec.DecodeError) as exc:
                log.warning("%s: cannot read its tool list: %s", self.name, exc)
                return
            tools.extend(bytes(t) for t in page.tools)
            cursor = page.nextCursor
            if not cursor:
                break
        self.on_tools(b"[" + b",".join(tools) + b"]")

    async def _quiet_query(self, instance: Instance, method: str, params: bytes) -> None:
        with contextlib.suppress(TimeoutError, HandshakeError):
            reply = await instance.query(method, params, QUERY_TIMEOUT_S)
            if reply.error is not None:
                log.info("%s: %s failed: %s", self.name, method, reply.error[:200])

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def failed(self) -> bool:
        return self.server.state is ServerState.FAILED


def _ignore_reply(handle: int, result: bytes | None, error: bytes | None) -> None:
    pass


def _ignore_progress(handle: int, params: bytes) -> None:
    pass


def _ignore_lost(handle: int, why: str) -> None:
    pass


def _ignore_tools(tools: bytes) -> None:
    pass


def _nothing() -> None:
    pass


def _no_input_required(session_id: str, handles: list[int], key: str, request: bytes) -> None:
    return None
