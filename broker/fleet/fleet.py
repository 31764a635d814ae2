"""The servers of a servers file, side by side behind the daemon's one endpoint.

What clients see is the merge: the daemon's own tools under their bare names, then
every server's tools as `<prefix>__<tool>` (its allow/deny lists applied), its
prompts the same way, and its resources and templates under their own URIs. Each
request goes to the server that owns its tool, prompt or resource, with the name
rewritten to the server's own; everything the servers send back goes through their
own hosting (replies, progress, log lines, server requests, resource updates).

The listing never waits long for a server: `tools/list` answers from what each
server listed, and only while a server is in the first seconds of its start does it
wait, at most `LIST_WAIT_S`, for it; a hung one does not slow listings at all.
Every change to the merged tools (a server read its tools again, came up, failed,
or the file changed) is announced to every MCP session with
`notifications/tools/list_changed`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from broker.calls.catalog import Catalog
from broker.fleet.config import SEPARATOR, ServersConfig, ServerSpec, changed_servers
from broker.fleet.listings import Listings
from broker.fleet.member import Member, ToolEntry
from broker.hosting.hub import Hosting
from broker.hosting.identity import Presented, present
from broker.hosting.listens import Listen, ListenFilter, Listens, acknowledged, stamped
from broker.hosting.routes import BUILTIN, Answer, Forward, Later, Route
from broker.hosting.traffic import SessionLike
from exai.errors import InvalidArguments, MethodNotFound, ToolNotFound, WorkerLost

__all__ = ["LIST_WAIT_S", "Fleet"]

log = logging.getLogger(__name__)

# Within the 1 s a client waits for a listing at most, with room for the round trip.
LIST_WAIT_S = 0.8
GATHER_TIMEOUT_S = 0.8
STARTUP_WAIT_S = 5.0
# A server starting for longer than this is likely hung: listings stop waiting for it.
WAIT_FOR_START_S = 5.0
MAX_LIST_PAGES = 100

_RawDict = dict[str, msgspec.Raw]
_LISTS = {
    "prompts/list": ("prompts", "prompts", True),
    "resources/list": ("resources", "resources", False),
    "resources/templates/list": ("resources", "resourceTemplates", False),
}
_BY_URI = frozenset({"resources/read", "resources/subscribe", "resources/unsubscribe"})
_TOOLS_CHANGED = "notifications/tools/list_changed"


class _Merged(msgspec.Struct):
    builtins: Catalog
    list_result: bytes
    tools_json: bytes
    routes: dict[str, tuple[Member, str]]


class Fleet:
    """Every server of the servers file, as the router, the call manager and the
    status page see them."""

    def __init__(
        self,
        config: ServersConfig,
        *,
        make_hosting: Callable[[ServerSpec], Hosting],
        builtins: Callable[[], Catalog],
        sessions: Callable[[], Iterable[SessionLike]],
        own_info: dict[str, Any],
        listings: Listings | None = None,
    ) -> None:
        self.config = config
        self.members: dict[str, Member] = {}
        self._make_hosting = make_hosting
        self._builtins = builtins
        self._sessions = sessions
        self._own_info = own_info
        self._listings = listings
        self._merged: _Merged | None = None
        self._listens = Listens()
        self._presented: Presented | None = None
        self._uris: dict[str, str] = {}
        self._templates: dict[str, str] = {}
        for spec in config.servers.values():
            self._add(spec)

    # --- life ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the eager servers, waiting a bounded time for them: a client that
        connects at once then sees their capabilities (resources, prompts) in its
        `initialize`. One that is slow or hung goes on starting in the background."""
        starting = [m.start() for m in self.members.values() if m.eager]
        if starting:
            await asyncio.wait(starting, timeout=STARTUP_WAIT_S)

    async def stop(self) -> None:
        await asyncio.gather(*(m.stop() for m in self.members.values()), return_exceptions=True)

    async def apply(self, config: ServersConfig) -> tuple[list[str], list[str], list[str]]:
        """Run `config` instead: only the servers added, removed or changed start or
        stop; sessions and the calls of the others are untouched."""
        added, removed, changed = changed_servers(self.config, config)
        self.config = config
        gone = [self.members.pop(name) for name in (*removed, *changed)]
        await asyncio.gather(*(m.stop() for m in gone), return_exceptions=True)
        for name in config.servers:
            if name in added or name in changed:
                member = self._add(config.servers[name])
                if member.eager:
                    member.start()
        # Keep the file's order: it is the order of the merged lists.
        self.members = {n: self.members[n] for n in config.servers if n in self.members}
        if added or removed or changed:
            log.info(
                "servers file applied: added %s, removed %s, restarted %s",
                added or "none",
                removed or "none",
                changed or "none",
            )
            self._changed()
            for method in (
                "notifications/prompts/list_changed",
                "notifications/resources/list_changed",
            ):
                self._announce(method)
        return added, removed, changed

    def _add(self, spec: ServerSpec) -> Member:
        hosting = self._make_hosting(spec)
        member = Member(spec, hosting)
        hosting.forward_tool_changes = False
        hosting.on_tools = lambda tools: self._tools_read(member, tools)
        ready = hosting.on_ready

        def started() -> None:
            self._changed()
            ready()

        hosting.on_ready = started
        if self._listings is not None and not member.eager:
            kept = self._listings.recall(spec)
            if kept is not None:
                member.set_tools(kept, cached=True)
        # A server added by an edit hears of the listen streams already open, as the
        # others did when they opened: their resource subscriptions may be its own.
        for session_id, listen in self._listens.streams():
            hosting.listen(session_id, listen.request_id, listen.wants)
        self.members[spec.name] = member
        return member

    def _tools_read(self, member: Member, tools_json: bytes) -> None:
        if self.members.get(member.name) is not member:
            return  # a server the file no longer has
        member.set_tools(tools_json)
        if self._listings is not None:
            self._listings.remember(member.spec, tools_json)
        self._changed()

    def _changed(self) -> None:
        """The merged lists may differ now: rebuild on next use, tell the clients."""
        before = self._merged.tools_json if self._merged is not None else None
        self._merged = None
        self._presented = None
        if before is not None and self._merge().tools_json != before:
            self._announce(_TOOLS_CHANGED)

    def _announce(self, method: str) -> None:
        frame = b'{"jsonrpc":"2.0","method":' + msgspec.json.encode(method) + b"}"
        for session in self._sessions():
            if session.closed or not session.speaks_mcp:
                continue
            if not session.modern:
                session.send(frame)
                continue
            for listen_id in self._listens.wanting(session.id, method, None):
                session.send(stamped(method, None, listen_id))

    # --- the merged tool list --------------------------------------------------------

    def _merge(self) -> _Merged:
        builtins = self._builtins()
        merged = self._merged
        if merged is not None and merged.builtins is builtins:
            return merged
        taken = set(builtins.by_name)
        routes: dict[str, tuple[Member, str]] = {}
        clashes: dict[str, set[str]] = {}
        parts: list[bytes] = [bytes(builtins.tools_json)[1:-1].strip()]
        for member in self.members.values():
            if member.failed:
                continue
            spec = member.spec
            for own, entry in member.tools:
                exposed = spec.exposed_name(own)
                if not spec.allows(own) or own in member.hidden:
                    continue
                if exposed in taken:
                    clash = f"tool {exposed!r} is already another tool's name; it is not listed"
                    if clash not in member.clashes:
                        log.error("server %s: %s", spec.name, clash)
                    clashes.setdefault(member.name, set()).add(clash)
                    continue
                taken.add(exposed)
                routes[exposed] = (member, own)
                parts.append(_renamed(entry, "name", exposed))
        for member in self.members.values():
            member.clashes = clashes.get(member.name, set())
        tools_json = b"[" + b",".join(p for p in parts if p) + b"]"
        merged = _Merged(builtins, b'{"tools":' + tools_json + b"}", tools_json, routes)
        self._merged = merged
        return merged

    @property
    def tools_json(self) -> bytes:
        return self._merge().tools_json

    def tool_count(self) -> int:
        return len(self._merge().routes)

    # --- what the router asks --------------------------------------------------------

    @property
    def presented(self) -> Presented:
        if self._presented is None:
            hosted = [
                (m.name, i.capabilities, i.server_info, i.instructions)
                for m in self.members.values()
                if (i := m.hosting.identity) is not None
            ]
            capabilities, info, instructions = present(hosted, self._own_info, own_tools=True)
            # The merged list changes with every server that comes, goes or changes its
            # tools, and the daemon says so: even before any server is up.
            capabilities["tools"] = {"listChanged": True}
            self._presented = (capabilities, info, instructions)
        return self._presented

    def route(self, session_id: str, method: str, params: bytes | None) -> Route:
        """Where a request goes; raises BrokerError for one no server can take."""
        if method == "tools/call":
            return self._route_tool(params)
        if method == "tools/list":
            now = asyncio.get_running_loop().time()
            waiting = [
                t
                for m in self._listable()
                if (t := m.starting) is not None
                and (since := m.starting_since(now)) is not None
                and since < WAIT_FOR_START_S
            ]
            if not waiting:
                return Answer(self._merge().list_result)
            return Later(self._list_after(waiting))
        if method in _LISTS:
            return Later(self._gather(session_id, method))
        if method == "prompts/get":
            return self._route_named(params, "name", "prompts")
        if method in _BY_URI:
            uri = _field(params, "uri")
            member = self._owner_of_uri(uri)
            return Forward(member, params, member.name)
        if method == "completion/complete":
            return self._route_completion(params)
        raise MethodNotFound(f"method not found: {method}", method=method)

    def _listable(self) -> list[Member]:
        """The servers a listing includes, started (lazily) when they have no tools yet."""
        found = []
        for member in self.members.values():
            if member.failed:
                continue
            if not member.tools and not member.from_cache:
                member.start()
            found.append(member)
        return found

    async def _list_after(self, waiting: list[asyncio.Task[None]]) -> bytes:
        await asyncio.wait(waiting, timeout=LIST_WAIT_S)
        return self._merge().list_result

    def _route_tool(self, params: bytes | None) -> Route:
        # Decoded once, here: the name to route by and the params to rename come from it.
        fields = _fields(params)
        name = _string(fields, "name")
        found = self._merge().routes.get(name)
        if found is None:
            member, own = self._by_prefix(name)
            if member is None:
                return BUILTIN  # one of ours, or unknown: the workers say which
            if not member.spec.allows(own):
                raise ToolNotFound(
                    f"unknown tool {name!r}: the servers file does not allow it", tool=name
                )
        else:
            member, own = found
        return Forward(member, _renamed(fields, "name", own), member.name)

    def _by_prefix(self, exposed: str) -> tuple[Member | None, str]:
        """The prefixed server a name is under, and the server's own name for it (the
        allow and deny lists are for tools: the caller applies them)."""
        for member in self.members.values():
            head = member.spec.prefix + SEPARATOR
            if member.spec.prefix and exposed.startswith(head) and len(exposed) > len(head):
                return member, exposed[len(head) :]
        return None, exposed

    def _route_named(self, params: bytes | None, key: str, feature: str) -> Route:
        name = _field(params, key)
        member, own = self._by_prefix(name)
        if member is None:
            unprefixed = [
                m for m in self.members.values() if not m.spec.prefix and m.offers(feature)
            ]
            if not unprefixed:
                raise InvalidArguments(f"no hosted server offers {feature} named {name!r}")
            member = unprefixed[0]
        assert params is not None
        return Forward(member, _renamed_params(params, key, own), member.name)

    def _route_completion(self, params: bytes | None) -> Route:
        try:
            fields = msgspec.json.decode(params or b"{}", type=_RawDict)
            ref = msgspec.json.decode(fields.get("ref", b"{}"), type=_RawDict)
            kind = msgspec.json.decode(ref.get("type", b'""'), type=str)
        except msgspec.DecodeError as exc:
            raise InvalidArguments(f"invalid completion/complete params: {exc}") from None
        if kind == "ref/resource":
            member = self._owner_of_uri(_field(msgspec.json.encode(ref), "uri"))
            return Forward(member, params, member.name)
        routed = self._route_named(msgspec.json.encode(ref), "name", "prompts")
        assert isinstance(routed, Forward) and routed.params is not None
        fields["ref"] = msgspec.Raw(routed.params)
        return Forward(routed.target, msgspec.json.encode(fields), routed.server)

    def _owner_of_uri(self, uri: str) -> Member:
        name = self._uris.get(uri)
        if name is None:
            matches = [(len(p), n) for p, n in self._templates.items() if uri.startswith(p)]
            name = max(matches)[1] if matches else None
        member = self.members.get(name) if name is not None else None
        if member is None:
            offering = [m for m in self.members.values() if m.offers("resources")]
            if len(offering) != 1:
                raise InvalidArguments(
                    f"no hosted server is known to serve {uri!r}; list resources first"
                )
            member = offering[0]
        return member

    async def _gather(self, session_id: str, method: str) -> bytes:
        feature, key, prefixed = _LISTS[method]
        members = [m for m in self.members.values() if m.offers(feature) and not m.failed]
        pages = await asyncio.gather(*(self._list_all(m, session_id, method, key) for m in members))
        items: list[bytes] = []
        for member, found in zip(members, pages, strict=True):
            for item in found:
                if prefixed:
                    own = _field(msgspec.json.encode(item), "name")
                    items.append(_renamed(item, "name", member.spec.exposed_name(own)))
                    continue
                self._learn_uri(member, item)
                items.append(msgspec.json.encode(item))
        return b'{"' + key.encode() + b'":[' + b",".join(items) + b"]}"

    def _learn_uri(self, member: Member, item: ToolEntry) -> None:
        raw = item.get("uri")
        if raw is not None:
            self._uris[msgspec.json.decode(raw, type=str)] = member.name
        raw = item.get("uriTemplate")
        if raw is not None:
            template = msgspec.json.decode(raw, type=str)
            self._templates[template.split("{", 1)[0]] = member.name

    async def _list_all(
        self, member: Member, session_id: str, method: str, key: str
    ) -> list[ToolEntry]:
        """Every page of one server's list, or what came within the gather's time."""
        hosting = member.hosting
        instance = hosting.server.instance_now(session_id) or next(
            (i for i in hosting.server.instances() if i.alive), None
        )
        if instance is None:
            return []
        found: list[ToolEntry] = []
        cursor: str | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GATHER_TIMEOUT_S
        for _ in range(MAX_LIST_PAGES):
            params = msgspec.json.encode({"cursor": cursor}) if cursor is not None else None
            try:
                reply = await instance.query(method, params, max(0.01, deadline - loop.time()))
                page = msgspec.json.decode(reply.result or b"{}", type=_RawDict)
                found.extend(msgspec.json.decode(page.get(key, b"[]"), type=list[ToolEntry]))
                cursor = msgspec.json.decode(page.get("nextCursor", b"null"), type=str | None)
            except (TimeoutError, msgspec.DecodeError, RuntimeError) as exc:
                log.info("server %s: %s incomplete: %s", member.name, method, exc)
                break
            if not cursor:
                break
        return found

    # --- what the broker answers for the servers -------------------------------------

    def set_level(self, session_id: str, level: str) -> bool:
        results = [m.hosting.set_level(session_id, level) for m in self.members.values()]
        return all(results)

    def subscribe(self, session_id: str, uri: str) -> bool:
        return self._owner_of_uri(uri).hosting.subscribe(session_id, uri)

    def unsubscribe(self, session_id: str, uri: str) -> bool:
        return self._owner_of_uri(uri).hosting.unsubscribe(session_id, uri)

    def listen(self, session_id: str, request_id: bytes, wants: ListenFilter) -> bytes:
        """Each server hears of the stream (its resources, its own list changes); the
        merged list changes the daemon announces go by the fleet's own record of it,
        which outlives any one server."""
        for member in self.members.values():
            member.hosting.listen(session_id, request_id, wants)
        honoured = wants.honoured(self.presented[0])
        self._listens.add(session_id, Listen(request_id, honoured))
        return acknowledged(honoured, request_id)

    def unlisten(self, session_id: str, request_id: bytes) -> bool:
        closed = [m.hosting.unlisten(session_id, request_id) for m in self.members.values()]
        return self._listens.remove(session_id, request_id) is not None or any(closed)

    def answer(
        self, session_id: str, client_id: bytes, result: bytes | None, error: bytes | None
    ) -> bool:
        return any(
            m.hosting.answer(session_id, client_id, result, error) for m in self.members.values()
        )

    def notify(self, session_id: str, method: str, params: bytes | None) -> None:
        for member in self.members.values():
            member.hosting.notify(session_id, method, params)

    # --- what the call manager asks --------------------------------------------------

    def place(self, session_id: str) -> None:
        raise WorkerLost("this request names no hosted server")

    def answer_input(self, session_id: str, key: str, response: bytes) -> bool:
        return any(m.answer_input(session_id, key, response) for m in self.members.values())

    def end_session(self, session_id: str) -> None:
        self._listens.end_session(session_id)
        for member in self.members.values():
            member.end_session(session_id)

    def snapshot(self) -> list[dict[str, Any]]:
        return [m.snapshot() for m in self.members.values()]


def _field(params: bytes | None, key: str) -> str:
    """A string field of `params`; InvalidArguments naming it when it is not one."""
    return _string(_fields(params), key)


def _fields(params: bytes | None) -> ToolEntry:
    """`params` as raw fields; InvalidArguments when it is not a JSON object."""
    try:
        return msgspec.json.decode(params or b"{}", type=_RawDict)
    except msgspec.DecodeError:
        raise InvalidArguments("params must be a JSON object") from None


def _string(fields: ToolEntry, key: str) -> str:
    try:
        return msgspec.json.decode(fields[key], type=str)
    except (KeyError, msgspec.DecodeError):
        raise InvalidArguments(f"params need a string {key!r}") from None


def _renamed(entry: ToolEntry, key: str, value: str) -> bytes:
    """`entry` with `key` set to `value`: every other field as the server wrote it."""
    fields = dict(entry)
    fields[key] = msgspec.Raw(msgspec.json.encode(value))
    return msgspec.json.encode(fields)


def _renamed_params(params: bytes, key: str, value: str) -> bytes:
    return _renamed(msgspec.json.decode(params, type=_RawDict), key, value)
