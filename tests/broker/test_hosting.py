"""Hosted stdio servers owned by the daemon: handshake, relay, restart, isolation.

Each test runs the real fixture server (`python -m tests.fixtures.full_server`) as a
child process and talks to it through the daemon's own hosting code.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from broker.hosting.instance import HandshakeError, HostedInstance
from broker.hosting.server import HostedServer, Isolation, ServerState
from exai.relay import Ask, Notice, Progress, RelayEvent, Reply
from tests.conftest import ROOT, async_wait_for, base_env

FIXTURE = [sys.executable, "-m", "tests.fixtures.full_server"]


class Events:
    """Every relay event an instance delivered, and a way to wait for one."""

    def __init__(self) -> None:
        self.seen: list[tuple[HostedInstance, RelayEvent]] = []

    def __call__(self, instance: HostedInstance, event: RelayEvent) -> None:
        self.seen.append((instance, event))

    async def reply(self, handle: int) -> Reply:
        found = await async_wait_for(
            lambda: next(
                (e for _, e in self.seen if isinstance(e, Reply) and e.handle == handle), None
            ),
            20.0,
            f"the reply to {handle}",
        )
        assert isinstance(found, Reply)
        return found

    def of(self, kind: type) -> list[RelayEvent]:
        return [e for _, e in self.seen if isinstance(e, kind)]


@asynccontextmanager
async def instance(events: Events) -> AsyncIterator[HostedInstance]:
    hosted = HostedInstance("full", FIXTURE, env=base_env(), cwd=str(ROOT), on_event=events)
    await hosted.start(30.0)
    try:
        yield hosted
    finally:
        await hosted.stop()


def result_of(reply: Reply) -> dict[str, object]:
    assert reply.error is None, reply.error
    assert reply.result is not None
    return dict(json.loads(reply.result))


async def test_handshake_learns_what_the_server_offers() -> None:
    events = Events()
    async with instance(events) as hosted:
        identity = hosted.identity
        assert identity is not None
        assert identity.server_info["name"] == "full-fixture"
        assert identity.instructions == "Full-feature fixture server."
        assert {"tools", "resources", "prompts", "logging"} <= identity.capabilities.keys()


async def test_requests_pass_unchanged_and_arguments_stay_absent() -> None:
    """A call without `arguments` reaches the server without them (not as {})."""
    events = Events()
    async with instance(events) as hosted:
        hosted.request(1, "tools/call", b'{"name":"echo"}', None)
        hosted.request(2, "tools/call", b'{"name":"echo","arguments":{}}', None)
        hosted.request(3, "tools/call", b'{"name":"add","arguments":{"a":1,"b":2}}', None)
        assert result_of(await events.reply(1))["content"] == [
            {"type": "text", "text": "no arguments"}
        ]
        assert result_of(await events.reply(2))["content"] == [
            {"type": "text", "text": "empty arguments"}
        ]
        added = await events.reply(3)
        assert b'"sum":3' in (added.result or b"")  # an integer stays an integer
        hosted.request(4, "tools/call", b'{"name":"no-such-tool"}', None)
        error = json.loads((await events.reply(4)).error or b"{}")
        assert error["code"] == -32602


async def test_progress_comes_back_under_the_clients_own_token() -> None:
    events = Events()
    async with instance(events) as hosted:
        hosted.request(
            9,
            "tools/call",
            b'{"name":"progress","arguments":{"steps":3},"_meta":{"progressToken":"tok"}}',
            b'"tok"',
        )
        await events.reply(9)
        progress = [e for e in events.of(Progress) if isinstance(e, Progress)]
        assert [json.loads(p.params)["progressToken"] for p in progress] == ["tok"] * 3
        assert [json.loads(p.params)["progress"] for p in progress] == [1, 2, 3]


async def test_server_requests_and_notifications_are_events() -> None:
    events = Events()
    async with instance(events) as hosted:
        hosted.request(5, "tools/call", b'{"name":"sample","arguments":{"prompt":"hi"}}', None)
        ask = await async_wait_for(lambda: events.of(Ask), 20.0, "the sampling request")
        assert isinstance(ask[0], Ask) and ask[0].method == "sampling/createMessage"
        assert ask[0].in_flight == (5,)
        hosted.answer(
            ask[0].ask_id,
            b'{"role":"assistant","content":{"type":"text","text":"sampled!"},"model":"m"}',
        )
        assert b"sampled!" in ((await events.reply(5)).result or b"")
        hosted.request(6, "tools/call", b'{"name":"add_tool","arguments":{"name":"x"}}', None)
        await events.reply(6)
        await async_wait_for(
            lambda: Notice("notifications/tools/list_changed", None) in events.of(Notice),
            20.0,
            "list_changed",
        )


async def test_cancel_reaches_the_server_and_no_answer_follows() -> None:
    events = Events()
    async with instance(events) as hosted:
        hosted.request(7, "tools/call", b'{"name":"slow","arguments":{"seconds":30}}', None)
        await asyncio.sleep(0.2)
        hosted.cancel(7, "test")
        hosted.request(8, "tools/call", b'{"name":"echo","arguments":{"text":"after"}}', None)
        await events.reply(8)
        assert not [e for e in events.of(Reply) if isinstance(e, Reply) and e.handle == 7]
        assert list(hosted.relay.pending()) == []


async def test_a_command_that_is_no_server_fails_the_handshake_with_its_stderr() -> None:
    events = Events()
    broken = HostedInstance(
        "broken",
        [sys.executable, "-c", "import sys; sys.stderr.write('boom here\\n'); sys.exit(3)"],
        on_event=events,
    )
    with pytest.raises(HandshakeError, match="boom here"):
        await broken.start(20.0)
    missing = HostedInstance("missing", ["/no/such/program-xyz"], on_event=events)
    with pytest.raises(HandshakeError, match="cannot start"):
        await missing.start(5.0)


async def test_a_shared_server_that_dies_is_restarted() -> None:
    events = Events()
    exits: list[HostedInstance] = []
    server = HostedServer(
        "full", FIXTURE, env=base_env(), cwd=str(ROOT), on_event=events, on_exit=exits.append
    )
    await server.start()
    try:
        first = server.instance_now("any")
        assert first is not None and first.pid is not None
        os.kill(first.pid, 9)
        await async_wait_for(lambda: exits == [first], 20.0, "the exit to be seen")
        await async_wait_for(
            lambda: server.instance_now("any") not in (None, first), 30.0, "the restart"
        )
        assert server.state is ServerState.READY and server.restarts == 1
    finally:
        await server.stop()


async def test_session_isolation_gives_each_session_its_own_process() -> None:
    events = Events()
    server = HostedServer(
        "full",
        FIXTURE,
        env=base_env(),
        cwd=str(ROOT),
        on_event=events,
        on_exit=lambda _: None,
        isolation=Isolation.SESSION,
        max_instances=2,
    )
    await server.start()
    try:
        a, b, again = await asyncio.gather(
            server.instance_for("a"), server.instance_for("b"), server.instance_for("a")
        )
        assert a is again and a.pid != b.pid
        assert server.owner_of(a) == "a"
        with pytest.raises(RuntimeError, match="EXAI_SESSION_INSTANCES_MAX"):
            await server.instance_for("c")
        server.end_session("a")
        await async_wait_for(lambda: not a.alive, 20.0, "a's instance to stop")
        assert server.instance_now("a") is None
    finally:
        await server.stop()
