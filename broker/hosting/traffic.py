"""What a hosted server sends on its own, routed to the client sessions it is for.

Replies and progress belong to a request and go back with it (the call manager does
that). Everything else needs a rule, because an instance may be shared; and none of
it goes to a session that has only spoken the op dialect:

- `notifications/message` (a log line): to the session the instance belongs to
  (session isolation), else to the one session with a request in flight on it, if
  that session's `logging/setLevel` lets it through. With requests of several
  sessions in flight the line could be about any of them: it is not delivered
  (logged at debug), because a client must never see another client's data.
- `notifications/resources/updated`: to the sessions subscribed to that resource.
- `notifications/{tools,resources,prompts}/list_changed`: to every session the
  server serves (all of them when shared, the owner under session isolation).
- a server request (`sampling/createMessage`, `elicitation/create`, `roots/list`):
  to the owner, or the one session with a request in flight; otherwise (or when that
  session speaks the op dialect, which has no frames for it) the server gets an error
  saying why, and the log advises session isolation for such servers.
  The client's answer goes back to the instance under the server's own id. A
  2026-07-28 client takes no server requests: its request in flight is answered with
  an `input_required` result carrying the server's request instead (`divert`), and
  the responses its retry carries go back the same way.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import msgspec

from broker.hosting.instances import Instance
from broker.hosting.listens import Listens, stamped
from broker.hosting.loglevels import LogLevels
from broker.hosting.subscriptions import Subscriptions
from exai.relay import Ask, Notice

__all__ = ["Divert", "ServerTraffic", "SessionLike"]

log = logging.getLogger(__name__)

LIST_CHANGED = frozenset(
    {
        "notifications/tools/list_changed",
        "notifications/resources/list_changed",
        "notifications/prompts/list_changed",
    }
)
# The JSON-RPC error a server gets when no single client can answer its request.
_NO_CLIENT = -32603
ASK_ID_PREFIX = "exai-ask-"
# One count for every hosted server: a client's answer is matched by its id alone, so
# two servers' requests to one session must never share an id.
_ASK_NUMBERS = itertools.count(1)


class SessionLike(Protocol):
    id: str
    closed: bool
    speaks_mcp: bool
    # A 2026-07-28 client: sent list changes and resource updates only through the
    # `subscriptions/listen` streams it opened (listens.py).
    modern: bool

    def send(self, data: bytes) -> None: ...


# Offered a server request for a session before it is sent as a JSON-RPC request:
# (session id, instance, the request's key, `{"method":...,"params":...}`) -> True when
# it was delivered another way (a 2026-07-28 client's input_required result), False
# when it cannot be told which of the session's requests it is for, None to send it.
Divert = Callable[[str, Instance, str, bytes], bool | None]


def _never_divert(session_id: str, instance: Instance, key: str, request: bytes) -> None:
    return None


class _LogParams(msgspec.Struct):
    level: str = ""


class _UriParams(msgspec.Struct):
    uri: str = ""


class ServerTraffic:
    """Routes one hosted server's notices and requests; answers come back through it."""

    def __init__(
        self,
        server_name: str,
        *,
        owner_of: Callable[[Instance], str | None],
        sessions_in_flight: Callable[[Instance], set[str]],
        all_sessions: Callable[[], Iterable[SessionLike]],
        session: Callable[[str], SessionLike | None],
        levels: LogLevels,
        subscriptions: Subscriptions,
        divert: Divert | None = None,
        listens: Listens | None = None,
    ) -> None:
        self._listens = listens or Listens()
        self.server_name = server_name
        self._owner_of = owner_of
        self._in_flight = sessions_in_flight
        self._all_sessions = all_sessions
        self._session = session
        self._levels = levels
        self._subscriptions = subscriptions
        self._divert: Divert = divert or _never_divert
        # (session id, the id the client saw) -> (instance, the relay's ask id)
        self._asks: dict[tuple[str, bytes], tuple[Instance, int]] = {}
        self.undelivered = 0

    # --- from the server -------------------------------------------------------------

    def handle_notice(self, instance: Instance, notice: Notice) -> None:
        frame = _notification(notice.method, notice.params)
        if notice.method in LIST_CHANGED:
            owner = self._owner_of(instance)
            targets: Iterable[SessionLike | None] = (
                [self._session(owner)] if owner is not None else self._all_sessions()
            )
            for target in targets:
                if target is not None and not target.closed and target.speaks_mcp:
                    self._send_notice(target, notice, frame)
            return
        if notice.method == "notifications/resources/updated":
            owner = self._owner_of(instance)
            uri = _decode(notice.params, _UriParams).uri
            # Its own instance: it subscribed, or the server would not send this.
            targets_ids: Iterable[str] = (
                [owner]
                if owner is not None
                else self._subscriptions.subscribers(self.server_name, uri)
            )
            for subscriber in targets_ids:
                target = self._session(subscriber)
                if target is not None and not target.closed and target.speaks_mcp:
                    self._send_notice(target, notice, frame, uri)
            return
        session_id = self._single_target(instance)
        if session_id is None:
            self.undelivered += 1
            log.debug("%s: %s not delivered: no single session", self.server_name, notice.method)
            return
        if notice.method == "notifications/message":
            level = _decode(notice.params, _LogParams).level
            if not self._levels.wants(session_id, level):
                return
        self._deliver(session_id, frame)

    def handle_ask(self, instance: Instance, ask: Ask) -> None:
        target = self._single_target(instance)
        session = self._session(target) if target is not None else None
        if session is None or session.closed:
            if target is not None:
                why = "the client session that would answer it is gone"
            elif self._in_flight(instance):
                why = (
                    "no single client session can answer it (requests of several sessions "
                    "are in flight on this shared instance)"
                )
            else:
                why = "no client request is in flight on this shared instance"
            self._refuse(instance, ask, why)
            return
        if not session.speaks_mcp:
            self._refuse(
                instance, ask, "its client speaks the op dialect, which has no such requests"
            )
            return
        key = f"{ASK_ID_PREFIX}{next(_ASK_NUMBERS)}"
        client_id = msgspec.json.encode(key)
        request = b'{"method":' + msgspec.json.encode(ask.method)
        request += (b',"params":' + ask.params if ask.params else b"") + b"}"
        diverted = self._divert(session.id, instance, key, request)
        if diverted is False:
            self._refuse(instance, ask, "the client has several requests in flight it could be for")
            return
        self._asks[(session.id, client_id)] = (instance, ask.ask_id)
        if diverted is None:
            session.send(b'{"jsonrpc":"2.0","id":' + client_id + b"," + request[1:])

    def _refuse(self, instance: Instance, ask: Ask, why: str) -> None:
        log.warning(
            "%s: refused %s: %s; run servers that sample, elicit or ask for roots "
            "with session isolation (--isolation session)",
            self.server_name,
            ask.method,
            why,
        )
        instance.answer(ask.ask_id, None, _error(f"{ask.method} refused by the broker: {why}"))

    # --- from a client ---------------------------------------------------------------

    def handle_answer(
        self, session_id: str, client_id: bytes, result: bytes | None, error: bytes | None
    ) -> bool:
        """A client answered one of our server requests; False if it was not ours."""
        found = self._asks.pop((session_id, client_id), None)
        if found is None:
            return False
        instance, ask_id = found
        instance.answer(ask_id, result, error)
        return True

    def end_session(self, session_id: str) -> None:
        """A session is gone: the server requests it had not answered fail."""
        for key in [k for k in self._asks if k[0] == session_id]:
            instance, ask_id = self._asks.pop(key)
            instance.answer(ask_id, None, _error("the client session ended"))

    def forget_instance(self, instance: Instance) -> None:
        for key in [k for k, (i, _) in self._asks.items() if i is instance]:
            del self._asks[key]

    # --- internals -------------------------------------------------------------------

    def _single_target(self, instance: Instance) -> str | None:
        owner = self._owner_of(instance)
        if owner is not None:
            return owner
        sessions = self._in_flight(instance)
        return next(iter(sessions)) if len(sessions) == 1 else None

    def _send_notice(
        self, target: SessionLike, notice: Notice, frame: bytes, uri: str | None = None
    ) -> None:
        """A list change or resource update: as it is, or on each listen stream of a
        2026-07-28 client that asked for it (nothing to one that did not)."""
        if not target.modern:
            target.send(frame)
            return
        for listen_id in self._listens.wanting(target.id, notice.method, uri):
            target.send(stamped(notice.method, notice.params, listen_id))

    def _deliver(self, session_id: str, frame: bytes) -> None:
        session = self._session(session_id)
        if session is not None and not session.closed and session.speaks_mcp:
            session.send(frame)


def _notification(method: str, params: bytes | None) -> bytes:
    head = b'{"jsonrpc":"2.0","method":' + msgspec.json.encode(method)
    return head + (b',"params":' + params if params else b"") + b"}"


def _error(message: str) -> bytes:
    return msgspec.json.encode({"code": _NO_CLIENT, "message": message})


def _decode(params: bytes | None, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(params or b"{}", type=kind)
    except msgspec.DecodeError:
        return kind()
