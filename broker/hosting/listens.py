"""2026-07-28 `subscriptions/listen` streams, bridged to a server of the handshake era.

A 2026-07-28 client asks for list changes and resource updates with one long-lived
`subscriptions/listen` request, and is sent only the kinds it asked for, each stamped
with `_meta["io.modelcontextprotocol/subscriptionId"]` (the listen request's id). A
hosted server initialized in the handshake era sends every `list_changed` and takes
`resources/subscribe`: this registry is what lies between, per session: which listen
streams are open and what each wants. The acknowledgment says what is honoured: the
kinds the server's capabilities offer.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["LISTEN_KINDS", "Listen", "ListenFilter", "Listens", "acknowledged", "stamped"]

SUBSCRIPTION_ID_KEY = "io.modelcontextprotocol/subscriptionId"
# The notifications each filter flag opts in to.
LISTEN_KINDS = {
    "notifications/tools/list_changed": "toolsListChanged",
    "notifications/prompts/list_changed": "promptsListChanged",
    "notifications/resources/list_changed": "resourcesListChanged",
}


class ListenFilter(msgspec.Struct, omit_defaults=True):
    toolsListChanged: bool = False
    promptsListChanged: bool = False
    resourcesListChanged: bool = False
    resourceSubscriptions: list[str] = msgspec.field(default_factory=list)

    def honoured(self, capabilities: dict[str, Any]) -> ListenFilter:
        """What of this the server can give, by the capabilities it declared."""

        def has(kind: str, flag: str) -> bool:
            section = capabilities.get(kind)
            return isinstance(section, dict) and section.get(flag) is True

        return ListenFilter(
            self.toolsListChanged and has("tools", "listChanged"),
            self.promptsListChanged and has("prompts", "listChanged"),
            self.resourcesListChanged and has("resources", "listChanged"),
            list(dict.fromkeys(self.resourceSubscriptions))
            if has("resources", "subscribe")
            else [],
        )


class _ListenParams(msgspec.Struct):
    notifications: ListenFilter = msgspec.field(default_factory=ListenFilter)


_PARAMS = msgspec.json.Decoder(_ListenParams)
_RAW_FIELDS = msgspec.json.Decoder(dict[str, msgspec.Raw])


def listen_filter(params: bytes | None) -> ListenFilter:
    """The filter a `subscriptions/listen` request's params ask for (raises
    msgspec.DecodeError when they are malformed)."""
    return _PARAMS.decode(params).notifications if params else ListenFilter()


class Listen(msgspec.Struct):
    request_id: bytes  # raw JSON, as the client wrote it
    wants: ListenFilter


class Listens:
    """The open listen streams, by session and the listen request's id."""

    def __init__(self) -> None:
        self._by_session: dict[str, dict[bytes, Listen]] = {}

    def add(self, session_id: str, listen: Listen) -> Listen | None:
        """Open `listen`; the one it replaces (the same id, re-sent), if any."""
        streams = self._by_session.setdefault(session_id, {})
        old = streams.get(listen.request_id)
        streams[listen.request_id] = listen
        return old

    def remove(self, session_id: str, request_id: bytes) -> Listen | None:
        streams = self._by_session.get(session_id)
        if not streams:
            return None
        listen = streams.pop(request_id, None)
        if not streams:
            del self._by_session[session_id]
        return listen

    def end_session(self, session_id: str) -> list[Listen]:
        return list(self._by_session.pop(session_id, {}).values())

    def streams(self) -> list[tuple[str, Listen]]:
        """Every open stream, with its session."""
        return [(s, listen) for s, by_id in self._by_session.items() for listen in by_id.values()]

    def listening(self, session_id: str) -> bool:
        return session_id in self._by_session

    def wanting(self, session_id: str, method: str, uri: str | None = None) -> list[bytes]:
        """The ids of the session's listen streams that asked for this notification."""
        flag = LISTEN_KINDS.get(method)
        return [
            listen.request_id
            for listen in self._by_session.get(session_id, {}).values()
            if (getattr(listen.wants, flag) if flag is not None else False)
            or (uri is not None and uri in listen.wants.resourceSubscriptions)
        ]

    def uris(self, session_id: str) -> set[str]:
        """Every URI the session's listen streams subscribe to."""
        return {
            uri
            for listen in self._by_session.get(session_id, {}).values()
            for uri in listen.wants.resourceSubscriptions
        }


def stamped(method: str, params: bytes | None, request_id: bytes) -> bytes:
    """The notification `method` for the listen stream `request_id`: its params, every
    byte kept, with `_meta.subscriptionId` set."""
    fields = _RAW_FIELDS.decode(params) if params else {}
    meta_raw = fields.get("_meta")
    meta = _RAW_FIELDS.decode(meta_raw) if meta_raw is not None else {}
    meta[SUBSCRIPTION_ID_KEY] = msgspec.Raw(request_id)
    fields["_meta"] = msgspec.Raw(msgspec.json.encode(meta))
    head = b'{"jsonrpc":"2.0","method":' + msgspec.json.encode(method)
    return head + b',"params":' + msgspec.json.encode(fields) + b"}"


def acknowledged(honoured: ListenFilter, request_id: bytes) -> bytes:
    """The first message on a listen stream: what it will be sent."""
    params = msgspec.json.encode({"notifications": honoured})
    return stamped("notifications/subscriptions/acknowledged", params, request_id)
