"""A remote Streamable HTTP server as a hosted instance: handshake, relay, failures.

Each test runs the real SDK fixture server (`python -m tests.fixtures.remote_http_server`)
on a loopback port the kernel picks, and talks to it through `RemoteInstance`. The SSE
decoder is pure and tested without a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from broker.hosting.instance import HandshakeError
from broker.hosting.remote import RemoteInstance
from broker.hosting.sse_reader import SseEvent, SseParser
from exai.relay import Ask, Notice, Progress, RelayEvent, Reply
from tests.conftest import ROOT, async_wait_for, base_env, free_port, scaled

STEP_S = 30.0


@dataclass
class RemoteServer:
    """A fixture server process and the log of the HTTP requests it received."""

    proc: asyncio.subprocess.Process
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def requests(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line]

    async def kill(self) -> None:
        """SIGKILL its whole process group and reap it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), scaled(STEP_S))


@pytest.fixture
async def remote_servers(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """`await remote_servers(token=..., json=...)` starts a fixture server; all are
    killed after the test."""
    started: list[RemoteServer] = []

    async def start(*, token: str | None = None, json_response: bool = False) -> RemoteServer:
        log_path = tmp_path / f"requests-{len(started)}.jsonl"
        extra = {"REMOTE_FIXTURE_LOG": str(log_path)}
        if token is not None:
            extra["REMOTE_FIXTURE_TOKEN"] = token
        if json_response:
            extra["REMOTE_FIXTURE_JSON"] = "1"
        with open(tmp_path / f"server-{len(started)}.stderr", "wb") as err:  # noqa: ASYNC230
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.fixtures.remote_http_server",
                cwd=ROOT,
                env=base_env(**extra),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        server = RemoteServer(proc, 0, log_path)
        started.append(server)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), scaled(STEP_S))
        assert line.strip(), f"the fixture server exited with {proc.returncode}"
        server.port = int(line)
        return server

    try:
        yield start
    finally:
        for server in started:
            await server.kill()


class Events:
    """Every relay event an instance delivered, and ways to wait for them."""

    def __init__(self) -> None:
        self.seen: list[RelayEvent] = []

    def __call__(self, instance: RemoteInstance, event: RelayEvent) -> None:
        self.seen.append(event)

    async def first(self, match: Callable[[RelayEvent], bool], what: str) -> RelayEvent:
        found = await async_wait_for(
            lambda: next((e for e in self.seen if match(e)), None), STEP_S, what
        )
        assert isinstance(found, (Reply, Progress, Notice, Ask))
        return found

    async def reply(self, handle: int) -> Reply:
        found = await self.first(
            lambda e: isinstance(e, Reply) and e.handle == handle, f"the reply to {handle}"
        )
        assert isinstance(found, Reply)
        return found

    async def notice(self, method: str) -> Notice:
        found = await self.first(
            lambda e: isinstance(e, Notice) and e.method == method, f"a {method} notice"
        )
        assert isinstance(found, Notice)
        return found


@contextlib.asynccontextmanager
async def started(
    server: RemoteServer, events: Events, **kwargs: Any
) -> AsyncIterator[RemoteInstance]:
    instance = RemoteInstance("remote", server.url, on_event=events, **kwargs)
    await instance.start(scaled(STEP_S))
    try:
        yield instance
    finally:
        await asyncio.wait_for(instance.stop(), scaled(STEP_S))


def call(name: str, **arguments: Any) -> bytes:
    return json.dumps({"name": name, "arguments": arguments}).encode()


def text_of(reply: Reply) -> str:
    assert reply.error is None, reply.error
    assert reply.result is not None
    return str(json.loads(reply.result)["content"][0]["text"])


def error_of(reply: Reply) -> dict[str, Any]:
    assert reply.result is None
    assert reply.error is not None
    return dict(json.loads(reply.error))


# --- with a server -----------------------------------------------------------------------


async def test_start_learns_identity_and_keeps_the_session(remote_servers: Any) -> None:
    server = await remote_servers()
    events = Events()
    async with started(server, events) as remote:
        identity = remote.identity
        assert identity is not None
        assert identity.protocol_version == "2025-11-25"
        assert identity.server_info == {"name": "remote-fixture", "version": "1.0.0"}
        assert identity.instructions == "Remote Streamable HTTP fixture."
        assert "tools" in identity.capabilities
        assert remote.alive and remote.pid is None and remote.session_id
        reply = await asyncio.wait_for(remote.query("tools/list", None, scaled(STEP_S)), 60)
        names = [t["name"] for t in json.loads(reply.result or b"{}")["tools"]]
        assert names == ["echo", "slow", "ask", "announce", "drop"]
    sent = server.requests()
    assert sent[0]["rpc"] == "initialize"
    assert sent[0]["session"] is None and sent[0]["version"] is None
    assert sent[1]["rpc"] == "notifications/initialized"
    for later in sent[1:]:
        assert later["session"] == remote.session_id
        assert later["version"] == "2025-11-25"


async def test_a_call_is_answered_through_on_event(remote_servers: Any) -> None:
    server = await remote_servers()
    events = Events()
    async with started(server, events) as remote:
        remote.request(1, "tools/call", call("echo", text="over http"), None)
        assert remote.load == 1
        assert text_of(await events.reply(1)) == "over http"
        assert remote.load == 0


async def test_json_responses_are_read_too(remote_servers: Any) -> None:
    server = await remote_servers(json_response=True)
    events = Events()
    async with started(server, events) as remote:
        remote.request(1, "tools/call", call("echo", text="as json"), None)
        assert text_of(await events.reply(1)) == "as json"


async def test_progress_and_log_of_a_call_arrive(remote_servers: Any) -> None:
    server = await remote_servers()
    events = Events()
    async with started(server, events) as remote:
        remote.request(7, "tools/call", call("slow", seconds=0.3, steps=3), b'"tok-7"')
        assert text_of(await events.reply(7)) == "slept"
        progress = [e for e in events.seen if isinstance(e, Progress)]
        assert [json.loads(p.params)["progress"] for p in progress] == [1, 2, 3]
        assert all(p.handle == 7 for p in progress)
        assert all(json.loads(p.params)["progressToken"] == "tok-7" for p in progress)
        log = await events.notice("notifications/message")
        assert json.loads(log.params or b"{}")["data"] == "slow started"


async def test_a_notification_of_its_own_comes_on_the_get_stream(remote_servers: Any) -> None:
    server = await remote_servers()
    events = Events()
    async with started(server, events) as remote:
        await async_wait_for(
            lambda: any(r["method"] == "GET" for r in server.requests()), STEP_S, "the GET"
        )
        remote.request(1, "tools/call", call("announce"), None)
        assert text_of(await events.reply(1)) == "announced"
        await events.notice("notifications/tools/list_changed")


async def test_a_server_request_is_an_ask_and_answer_delivers(remote_servers: Any) -> None:
    server = await remote_servers()
    events = Events()
    async with started(server, events) as remote:
        remote.request(3, "tools/call", call("ask", question="which?"), None)
        ask = await events.first(lambda e: isinstance(e, Ask), "the elicitation")
        assert isinstance(ask, Ask)
        assert ask.method == "elicitation/create"
        assert json.loads(ask.params or b"{}")["message"] == "which?"
        assert ask.in_flight == (3,)
        remote.answer(ask.ask_id, b'{"action":"accept","content":{"answer":"forty-two"}}')
        assert text_of(await events.reply(3)) == "forty-two"
    assert "response" in [r["rpc"] for r in server.requests()]


async def test_cancel_tells_the_server_and_ends_the_request(remote_servers: Any) -> None:
    server = await remote_servers()
    events = Events()
    async with started(server, events) as remote:
        remote.request(4, "tools/call", call("slow", seconds=60, steps=60), None)
        await events.notice("notifications/message")  # the call is running
        remote.cancel(4, "no longer wanted")
        assert list(remote.relay.pending()) == []
        await async_wait_for(
            lambda: "notifications/cancelled" in [r["rpc"] for r in server.requests()],
            STEP_S,
            "the cancel to reach the server",
        )
        remote.request(5, "tools/call", call("echo", text="still here"), None)
        assert text_of(await events.reply(5)) == "still here"
        assert not [e for e in events.seen if isinstance(e, Reply) and e.handle == 4]


async def test_a_stream_closed_early_is_resumed_with_last_event_id(remote_servers: Any) -> None:
    server = await remote_servers()
    events = Events()
    async with started(server, events) as remote:
        remote.request(6, "tools/call", call("drop"), None)
        assert text_of(await events.reply(6)) == "resumed"
    resumed = [r for r in server.requests() if r["method"] == "GET" and r["last_event_id"]]
    assert resumed, server.requests()


async def test_an_http_failure_answers_the_request_with_an_error(remote_servers: Any) -> None:
    server = await remote_servers()
    events = Events()
    async with started(server, events) as remote:
        remote.request(8, "tools/call", call("http503"), None)
        error = error_of(await events.reply(8))
        assert error["data"]["code"] == "WORKER_LOST"
        assert "HTTP 503" in error["message"]
        assert remote.alive and "HTTP 503" in remote.stderr_hint()
        remote.request(9, "tools/call", call("echo", text="after"), None)
        assert text_of(await events.reply(9)) == "after"


async def test_an_answer_over_the_limit_ends_its_request(remote_servers: Any) -> None:
    server = await remote_servers()
    events = Events()
    async with started(server, events, max_line_bytes=2000) as remote:
        remote.request(1, "tools/call", call("echo", text="x" * 5000), None)
        assert error_of(await events.reply(1))["data"]["code"] == "RESULT_TOO_LARGE"
        remote.request(2, "tools/call", call("echo", text="small"), None)
        assert text_of(await events.reply(2)) == "small"


async def test_a_killed_server_fails_its_requests_and_exits(remote_servers: Any) -> None:
    server = await remote_servers()
    events = Events()
    async with started(server, events) as remote:
        remote.request(1, "tools/call", call("slow", seconds=60, steps=60), None)
        await events.notice("notifications/message")
        await server.kill()
        error = error_of(await events.reply(1))
        assert error["data"]["code"] == "WORKER_LOST"
        assert await asyncio.wait_for(remote.exited, scaled(STEP_S)) is None
        assert not remote.alive
        assert "cannot connect" in remote.stderr_hint()
        with pytest.raises(HandshakeError):
            await remote.query("tools/list", None, scaled(STEP_S))


async def test_a_forgotten_session_ends_the_instance(remote_servers: Any) -> None:
    server = await remote_servers()
    events = Events()
    async with started(server, events) as remote:
        assert remote.session_id is not None
        headers = {"Mcp-Session-Id": remote.session_id, "MCP-Protocol-Version": "2025-11-25"}
        async with aiohttp.ClientSession() as http, http.delete(server.url, headers=headers) as r:
            assert r.status == 200
        remote.request(1, "tools/call", call("echo", text="late"), None)
        assert await asyncio.wait_for(remote.exited, scaled(STEP_S)) is None
        assert "404" in remote.stderr_hint()


async def test_stop_deletes_the_session(remote_servers: Any) -> None:
    server = await remote_servers()
    remote = RemoteInstance("remote", server.url, on_event=Events())
    await remote.start(scaled(STEP_S))
    session_id = remote.session_id
    await asyncio.wait_for(remote.stop(), scaled(STEP_S))
    assert remote.exited.result() == 0
    assert not remote.alive
    deletes = [r for r in server.requests() if r["method"] == "DELETE"]
    assert [d["session"] for d in deletes] == [session_id]


async def test_configured_headers_are_sent(remote_servers: Any) -> None:
    server = await remote_servers(token="x")
    events = Events()
    async with started(server, events, headers={"Authorization": "Bearer x"}) as remote:
        remote.request(1, "tools/call", call("echo", text="authorized"), None)
        assert text_of(await events.reply(1)) == "authorized"
    assert {r["authorization"] for r in server.requests()} == {"Bearer x"}


async def test_a_refused_token_is_a_handshake_error(remote_servers: Any) -> None:
    server = await remote_servers(token="x")
    remote = RemoteInstance("remote", server.url, on_event=Events())
    with pytest.raises(HandshakeError, match="401") as caught:
        await asyncio.wait_for(remote.start(scaled(STEP_S)), scaled(STEP_S) + 5)
    assert str(caught.value).startswith("remote: initialize failed")
    assert not remote.alive


async def test_nothing_listening_is_a_handshake_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    remote = RemoteInstance("remote", url, on_event=Events())
    with pytest.raises(HandshakeError, match="cannot connect"):
        await asyncio.wait_for(remote.start(scaled(STEP_S)), scaled(STEP_S) + 5)
    assert remote.exited.done() and not remote.alive


# --- the SSE decoder -----------------------------------------------------------------------


def feed_all(parser: SseParser, *chunks: bytes) -> list[SseEvent]:
    return [event for chunk in chunks for event in parser.feed(chunk)]


def test_sse_events_split_anywhere_and_any_line_ending() -> None:
    stream = b'\xef\xbb\xbfdata: {"a":1}\r\n\r\n: comment\rdata:x\rdata: y\r\rid: 7\nretry: 250\n\n'
    whole = feed_all(SseParser(1000), stream)
    assert whole == [SseEvent(b'{"a":1}', True), SseEvent(b"x\ny", True)]
    for size in (1, 2, 3, 5):
        parser = SseParser(1000)
        pieces = [stream[i : i + size] for i in range(0, len(stream), size)]
        assert feed_all(parser, *pieces) == whole
        assert parser.last_id == "7" and parser.retry_ms == 250
        assert parser.retry_s == 0.25


def test_sse_priming_event_sets_the_id_and_other_types_are_skipped() -> None:
    parser = SseParser(1000)
    events = feed_all(parser, b"id: 1\ndata: \nretry: 100\n\n", b"event: ping\ndata: z\n\n")
    assert events == [SseEvent(b"", True)]
    assert parser.last_id == "1" and parser.dispatched == 2


def test_sse_id_counts_only_once_its_event_is_complete() -> None:
    parser = SseParser(1000)
    feed_all(parser, b"id: 1\ndata: a\n\nid: 2\ndata: b\n")
    assert parser.last_id == "1"


def test_sse_data_over_the_limit_keeps_only_a_head() -> None:
    parser = SseParser(100)
    body = b'{"jsonrpc":"2.0","id":3,"result":"' + b"x" * 500 + b'"}'
    events = feed_all(parser, b"data: " + body[:50], body[50:], b"\n\ndata: ok\n\n")
    assert events[0].whole is False
    assert events[0].data.startswith(b'{"jsonrpc":"2.0","id":3')
    assert events[1] == SseEvent(b"ok", True)
    many = feed_all(SseParser(10), b"data: 123456\ndata: 123456\n\n")
    assert many == [SseEvent(b"123456", False)]


def test_sse_restart_drops_a_half_event_and_keeps_the_id() -> None:
    parser = SseParser(1000)
    feed_all(parser, b"id: 4\nretry: 50\ndata: a\n\ndata: half")
    parser.restart()
    assert feed_all(parser, b"\xef\xbb\xbfdata: b\n\n") == [SseEvent(b"b", True)]
    assert parser.last_id == "4" and parser.retry_ms == 50
