"""Server-to-client traffic on shared and per-session instances: never to the wrong client."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from broker.hosting.listens import Listen, ListenFilter
from broker.hosting.loglevels import LogLevels
from broker.hosting.subscriptions import Subscriptions
from broker.hosting.traffic import ServerTraffic
from exai.relay import Ask, Notice


@dataclass(eq=False)
class FakeSession:
    id: str
    closed: bool = False
    speaks_mcp: bool = True
    modern: bool = False
    frames: list[dict[str, Any]] = field(default_factory=list)

    def send(self, data: bytes) -> None:
        self.frames.append(json.loads(data))


@dataclass(eq=False)
class FakeInstance:
    answers: list[tuple[int, Any, Any]] = field(default_factory=list)

    def answer(self, ask_id: int, result: bytes | None, error: bytes | None = None) -> None:
        self.answers.append(
            (ask_id, json.loads(result) if result else None, json.loads(error) if error else None)
        )


class World:
    """Two sessions, one shared instance and one owned by session b."""

    def __init__(self) -> None:
        self.a, self.b = FakeSession("a"), FakeSession("b")
        self.shared, self.owned = FakeInstance(), FakeInstance()
        self.in_flight: dict[int, set[str]] = {id(self.shared): set(), id(self.owned): set()}
        self.levels = LogLevels()
        self.subs = Subscriptions()
        sessions = {"a": self.a, "b": self.b}
        self.traffic = ServerTraffic(
            "srv",
            owner_of=lambda i: "b" if i is self.owned else None,
            sessions_in_flight=lambda i: self.in_flight[id(i)],
            all_sessions=lambda: sessions.values(),
            session=sessions.get,
            levels=self.levels,
            subscriptions=self.subs,
        )

    def notice(self, instance: FakeInstance, method: str, params: Any = None) -> None:
        raw = json.dumps(params).encode() if params is not None else None
        self.traffic.handle_notice(instance, Notice(method, raw))  # type: ignore[arg-type]

    def ask(self, instance: FakeInstance, ask_id: int = 1) -> None:
        ask = Ask(ask_id, "sampling/createMessage", b'{"messages":[]}', ())
        self.traffic.handle_ask(instance, ask)  # type: ignore[arg-type]


LOG = {"level": "info", "logger": "x", "data": "secret of a"}


def test_a_log_line_goes_to_the_one_session_in_flight_at_its_level() -> None:
    w = World()
    w.in_flight[id(w.shared)] = {"a"}
    w.notice(w.shared, "notifications/message", LOG)
    assert w.a.frames == [{"jsonrpc": "2.0", "method": "notifications/message", "params": LOG}]
    assert w.b.frames == []
    w.levels.set("a", "error")
    w.notice(w.shared, "notifications/message", LOG)
    assert len(w.a.frames) == 1  # below a's level now


def test_with_two_sessions_in_flight_a_log_line_reaches_neither() -> None:
    w = World()
    w.in_flight[id(w.shared)] = {"a", "b"}
    w.notice(w.shared, "notifications/message", LOG)
    assert w.a.frames == w.b.frames == [] and w.traffic.undelivered == 1


def test_an_owned_instance_speaks_to_its_owner_only() -> None:
    w = World()
    w.notice(w.owned, "notifications/message", LOG)
    w.notice(w.owned, "notifications/tools/list_changed")
    assert [f["method"] for f in w.b.frames] == [
        "notifications/message",
        "notifications/tools/list_changed",
    ]
    assert w.a.frames == []


def test_list_changed_on_a_shared_instance_reaches_everyone() -> None:
    w = World()
    w.notice(w.shared, "notifications/prompts/list_changed")
    assert len(w.a.frames) == len(w.b.frames) == 1


def test_an_op_session_is_sent_no_server_traffic_and_its_requests_are_refused() -> None:
    """The op dialect has no frames for a server's notifications or requests: an op
    client in flight gets none of them, and the server is told why at once."""
    w = World()
    w.a.speaks_mcp = False
    w.in_flight[id(w.shared)] = {"a"}
    w.notice(w.shared, "notifications/message", LOG)
    w.notice(w.shared, "notifications/tools/list_changed")
    w.ask(w.shared)
    assert w.a.frames == []
    assert [f["method"] for f in w.b.frames] == ["notifications/tools/list_changed"]
    [(ask_id, result, error)] = w.shared.answers
    assert ask_id == 1 and result is None and "op dialect" in error["message"]


def test_resource_updates_go_to_subscribers_only() -> None:
    w = World()
    w.subs.subscribe("srv", "fixture://counter", "b")
    w.notice(w.shared, "notifications/resources/updated", {"uri": "fixture://counter"})
    w.notice(w.shared, "notifications/resources/updated", {"uri": "fixture://other"})
    assert w.a.frames == [] and len(w.b.frames) == 1


def test_a_server_request_goes_to_the_one_session_and_its_answer_comes_back() -> None:
    w = World()
    w.in_flight[id(w.shared)] = {"a"}
    w.ask(w.shared, ask_id=7)
    (request,) = w.a.frames
    assert request["method"] == "sampling/createMessage" and request["params"] == {"messages": []}
    client_id = json.dumps(request["id"]).encode()
    assert not w.traffic.handle_answer("b", client_id, b"{}", None)  # not b's to answer
    assert w.traffic.handle_answer("a", client_id, b'{"role":"assistant"}', None)
    assert w.shared.answers == [(7, {"role": "assistant"}, None)]
    assert not w.traffic.handle_answer("a", client_id, b"{}", None)  # answered once


def test_an_ambiguous_server_request_is_refused_not_guessed() -> None:
    w = World()
    w.in_flight[id(w.shared)] = {"a", "b"}
    w.ask(w.shared, ask_id=3)
    assert w.a.frames == w.b.frames == []
    ((ask_id, result, error),) = w.shared.answers
    assert ask_id == 3 and result is None
    assert error["code"] == -32603 and "several sessions" in error["message"]


def test_a_session_that_ends_fails_its_open_server_requests() -> None:
    w = World()
    w.ask(w.owned, ask_id=5)
    w.traffic.end_session("b")
    assert w.owned.answers == [(5, None, {"code": -32603, "message": "the client session ended"})]


def test_a_2026_client_gets_list_changes_and_updates_only_on_its_listen_streams() -> None:
    """subscriptions/listen: only the kinds asked for, each stamped with the stream's id;
    nothing to a 2026-07-28 session that opened no stream; handshake-era clients as ever."""
    w = World()
    w.a.modern = True
    w.notice(w.shared, "notifications/tools/list_changed")
    assert w.a.frames == [] and len(w.b.frames) == 1
    w.traffic._listens.add(
        "a", Listen(b'"l-1"', ListenFilter(toolsListChanged=True, resourceSubscriptions=["u:x"]))
    )
    w.subs.subscribe("srv", "u:x", "a")
    w.notice(w.shared, "notifications/tools/list_changed", {"_meta": {"k": 1}})
    w.notice(w.shared, "notifications/prompts/list_changed")
    w.notice(w.shared, "notifications/resources/updated", {"uri": "u:x"})
    meta = "io.modelcontextprotocol/subscriptionId"
    assert [(f["method"], f["params"]["_meta"]) for f in w.a.frames] == [
        ("notifications/tools/list_changed", {"k": 1, meta: "l-1"}),
        ("notifications/resources/updated", {meta: "l-1"}),
    ]
    assert w.a.frames[1]["params"]["uri"] == "u:x"
