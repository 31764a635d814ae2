"""Server-to-client traffic of a hosted server reaches the right client, and only it.

Two (or three) MCP clients talk to the daemon at once over its WebSocket, while it
hosts our full-feature fixture server (`--server-cmd`). Each rule of the transparent
router is shown with the clients active together: log lines and server requests go
to the one session they can be proven to concern, and are refused (never guessed)
when that cannot be proven; subscriptions, list changes, log levels, cancellation
and the caps hold per session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from tests.conftest import STEP_S, DaemonFactory, DaemonProcess, async_wait_for, scaled
from tests.support.jsonrpc import JsonObj, rpc_text
from tests.support.mcp_ws import McpWsClient
from tests.support.processes import cmdline, descendants

pytestmark = pytest.mark.timeout(120)

FULL_CMD = f"{shlex.quote(sys.executable)} -m tests.fixtures.full_server"
COUNTER_URI = "fixture://counter"
OVER_CAPACITY_RPC = -32050
TIMEOUT_RPC = -32051
# Long enough to be surely in flight while the other client acts; always cancelled.
BUSY_S = 60


class AskedClient(McpWsClient):
    """An MCP client that answers the server's requests (sampling, elicitation, roots)
    with `answer(method, params)`, and keeps each request it was asked."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, name: str) -> None:
        self.name = name
        self.asked: list[JsonObj] = []
        self._answers: set[asyncio.Task[None]] = set()
        super().__init__(ws)

    def answer(self, method: str, params: JsonObj) -> JsonObj:
        if method == "sampling/createMessage":
            return {
                "role": "assistant",
                "content": {"type": "text", "text": f"sampled by {self.name}"},
                "model": "test-model",
                "stopReason": "endTurn",
            }
        if method == "roots/list":
            return {"roots": [{"uri": f"file:///{self.name}", "name": self.name}]}
        return {"action": "accept", "content": {"answer": self.name}}

    def handle_frame(self, frame: Any) -> None:
        if "method" in frame and "id" in frame:
            self.asked.append(frame)
            reply = {
                "jsonrpc": "2.0",
                "id": frame["id"],
                "result": self.answer(frame["method"], frame.get("params") or {}),
            }
            task = self._loop.create_task(self.send_json(reply))
            self._answers.add(task)
            task.add_done_callback(self._answers.discard)
            return
        super().handle_frame(frame)

    def notes(self, method: str) -> list[JsonObj]:
        return [n for n in self.notifications if n.get("method") == method]


@contextlib.asynccontextmanager
async def clients(daemon: DaemonProcess, *names: str) -> AsyncIterator[list[AskedClient]]:
    """Initialized MCP-over-WebSocket clients, one per name, declaring every client
    capability (roots, sampling, elicitation)."""
    async with aiohttp.ClientSession() as http:
        opened: list[AskedClient] = []
        try:
            for name in names:
                ws = await http.ws_connect(daemon.url, protocols=("mcp",))
                client = AskedClient(ws, name)
                opened.append(client)
                response = await client.request(
                    "initialize",
                    {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {
                            "roots": {"listChanged": True},
                            "sampling": {},
                            "elicitation": {"form": {}},
                        },
                        "clientInfo": {"name": name, "version": "1"},
                    },
                )
                assert "result" in response, response
                await client.send_json({"jsonrpc": "2.0", "method": "notifications/initialized"})
            yield opened
        finally:
            for client in opened:
                await client.aclose()


def full_daemon(factory: DaemonFactory, isolation: str, **env: str) -> DaemonProcess:
    return factory(
        workers=1,
        env={"EXAI_WS_CALL_TIMEOUT": "90", **env},
        args=["--server-cmd", FULL_CMD, "--isolation", isolation],
    )


def full_servers(daemon: DaemonProcess) -> list[int]:
    """The full_server processes the daemon runs."""
    return [
        pid
        for pid in descendants(daemon.proc.pid)
        if any("tests.fixtures.full_server" in part for part in cmdline(pid))
    ]


async def settle() -> None:
    """Give frames that should NOT arrive time to do so (they would come within it)."""
    await asyncio.sleep(scaled(0.5))


async def wait_until(check: Callable[[], bool], what: str) -> None:
    await async_wait_for(check, STEP_S, what, interval_s=0.02)


async def busy(client: AskedClient) -> tuple[Any, asyncio.Future[JsonObj]]:
    """Start a long `slow` call on `client`: it has a request in flight from now on."""
    return await client.start_call("slow", {"seconds": BUSY_S})


def answer_text(response: JsonObj) -> str:
    """The text of a tool result, or the message of an error answer."""
    if "error" in response:
        return str(response["error"].get("message"))
    return rpc_text(response)


# --- log messages --------------------------------------------------------------------


async def test_log_line_goes_only_to_the_session_whose_call_logged(
    daemon_factory: DaemonFactory,
) -> None:
    """Shared instance, two clients: a log line written during A's call reaches A;
    B, connected and idle, never sees it."""
    daemon = full_daemon(daemon_factory, "shared")
    async with clients(daemon, "a", "b") as (a, b):
        response = await a.call("log", {"level": "warning", "message": "for a only"})
        assert rpc_text(response) == "logged"
        await wait_until(lambda: bool(a.notes("notifications/message")), "A's log line")
        await settle()
    [line] = a.notes("notifications/message")
    assert line["params"]["level"] == "warning"
    assert line["params"]["data"] == "for a only"
    assert b.notes("notifications/message") == []


async def test_log_levels_are_kept_per_session(daemon_factory: DaemonFactory) -> None:
    """A asks for errors only, B for everything: A's info line is filtered out for A,
    B's info line reaches B, though one server instance wrote both."""
    daemon = full_daemon(daemon_factory, "shared")
    async with clients(daemon, "a", "b") as (a, b):
        assert (await a.request("logging/setLevel", {"level": "error"}))["result"] == {}
        assert (await b.request("logging/setLevel", {"level": "debug"}))["result"] == {}
        await a.call("log", {"level": "info", "message": "a info"})
        await b.call("log", {"level": "info", "message": "b info"})
        await a.call("log", {"level": "error", "message": "a error"})
        await wait_until(lambda: len(a.notes("notifications/message")) == 1, "A's error line")
        await wait_until(lambda: len(b.notes("notifications/message")) == 1, "B's info line")
        await settle()
        bad = await a.request("logging/setLevel", {"level": "loud"})
    assert [n["params"]["data"] for n in a.notes("notifications/message")] == ["a error"]
    assert [n["params"]["data"] for n in b.notes("notifications/message")] == ["b info"]
    assert bad["error"]["code"] == -32602, bad


async def test_log_line_is_withheld_when_two_sessions_are_in_flight(
    daemon_factory: DaemonFactory,
) -> None:
    """With calls of A and B both in flight on the shared instance, a log line could be
    about either: neither gets it, and the health snapshot counts it undelivered."""
    daemon = full_daemon(daemon_factory, "shared")
    async with clients(daemon, "a", "b") as (a, b):
        busy_id, _ = await busy(b)
        await wait_until(
            lambda: daemon.health()["servers"][0]["instances"][0]["in_flight"] == 1,
            "B's call to be in flight",
        )
        await a.call("log", {"level": "error", "message": "whose?"})
        await settle()
        await b.cancel(busy_id)
        await wait_until(
            lambda: daemon.health()["servers"][0]["undelivered"] >= 1, "the undelivered count"
        )
    assert a.notes("notifications/message") == []
    assert b.notes("notifications/message") == []


# --- server requests -----------------------------------------------------------------


async def test_sampling_reaches_the_one_client_in_flight(daemon_factory: DaemonFactory) -> None:
    """Shared instance, B idle: the server's sampling request during A's call goes to A,
    and A's answer is what the tool returns."""
    daemon = full_daemon(daemon_factory, "shared")
    async with clients(daemon, "a", "b") as (a, b):
        response = await a.call("sample", {"prompt": "hello"})
    assert rpc_text(response) == "sampled by a"
    assert [r["method"] for r in a.asked] == ["sampling/createMessage"]
    assert a.asked[0]["params"]["messages"][0]["content"]["text"] == "hello"
    assert b.asked == []


async def test_ambiguous_sampling_is_refused_with_advice(daemon_factory: DaemonFactory) -> None:
    """Shared instance with calls of A and B both in flight: the server's sampling
    request cannot be proven to be A's, so no client is asked; the server gets an
    error (which its tool reports), and the daemon's log advises session isolation."""
    daemon = full_daemon(daemon_factory, "shared")
    async with clients(daemon, "a", "b") as (a, b):
        busy_id, _ = await busy(b)
        await wait_until(
            lambda: daemon.health()["servers"][0]["instances"][0]["in_flight"] == 1,
            "B's call to be in flight",
        )
        response = await a.call("sample", {"prompt": "secret of a"})
        await b.cancel(busy_id)
    assert a.asked == [] and b.asked == []
    assert "refused by the broker" in answer_text(response), response
    assert "--isolation session" in daemon.stderr()


@pytest.mark.parametrize("tool", ["sample", "elicit", "roots"])
async def test_session_isolation_routes_each_request_to_its_own_client(
    daemon_factory: DaemonFactory, tool: str
) -> None:
    """Session isolation, A and B calling at once: each one's server request goes to
    that client alone, and each gets its own answer back."""
    daemon = full_daemon(daemon_factory, "session")
    arguments = {"sample": {"prompt": "p"}, "elicit": {"question": "q"}, "roots": {}}[tool]
    async with clients(daemon, "a", "b") as (a, b):
        got_a, got_b = await asyncio.gather(a.call(tool, arguments), b.call(tool, arguments))
    assert "a" in answer_text(got_a) and "b" not in answer_text(got_a).replace("by", "")
    assert answer_text(got_a) != answer_text(got_b)
    assert len(a.asked) == 1 and len(b.asked) == 1
    assert a.asked[0]["method"] == b.asked[0]["method"]


# --- notifications for everyone, or for subscribers ----------------------------------


async def test_resource_updates_go_to_subscribers_only(daemon_factory: DaemonFactory) -> None:
    """A subscribes to fixture://counter, B does not: B's bump notifies A and not B;
    after A unsubscribes, nobody is notified."""
    daemon = full_daemon(daemon_factory, "shared")
    async with clients(daemon, "a", "b") as (a, b):
        assert (await a.request("resources/subscribe", {"uri": COUNTER_URI}))["result"] == {}
        assert rpc_text(await b.call("bump", {})) == "counter=1"
        await wait_until(lambda: bool(a.notes("notifications/resources/updated")), "A's update")
        assert (await a.request("resources/unsubscribe", {"uri": COUNTER_URI}))["result"] == {}
        assert rpc_text(await b.call("bump", {})) == "counter=2"
        await settle()
    assert [n["params"]["uri"] for n in a.notes("notifications/resources/updated")] == [COUNTER_URI]
    assert b.notes("notifications/resources/updated") == []


async def test_two_subscribers_share_one_server_subscription(
    daemon_factory: DaemonFactory,
) -> None:
    """A and B both subscribe; A leaves: B still gets updates (the server was told to
    unsubscribe only when the last subscriber left)."""
    daemon = full_daemon(daemon_factory, "shared")
    async with clients(daemon, "a", "b", "c") as (a, b, c):
        await a.request("resources/subscribe", {"uri": COUNTER_URI})
        await b.request("resources/subscribe", {"uri": COUNTER_URI})
        await a.request("resources/unsubscribe", {"uri": COUNTER_URI})
        await c.call("bump", {})
        await wait_until(lambda: bool(b.notes("notifications/resources/updated")), "B's update")
        await settle()
    assert a.notes("notifications/resources/updated") == []
    assert c.notes("notifications/resources/updated") == []


async def test_a_subscription_outlives_a_restart_of_the_server(
    daemon_factory: DaemonFactory,
) -> None:
    """A subscribes; the server is killed and restarted: A, which never subscribed
    again, is still notified of B's bumps on the new instance."""
    daemon = full_daemon(daemon_factory, "shared")
    async with clients(daemon, "a", "b") as (a, b):
        await a.request("resources/subscribe", {"uri": COUNTER_URI})
        (victim,) = await async_wait_for(
            lambda: full_servers(daemon), STEP_S, "the hosted full_server"
        )
        os.kill(victim, signal.SIGKILL)
        await async_wait_for(
            lambda: (found := full_servers(daemon)) and victim not in found,
            STEP_S,
            "the restarted full_server",
        )
        deadline = asyncio.get_running_loop().time() + scaled(STEP_S)
        while not a.notes("notifications/resources/updated"):
            # The restarted instance is told of A's subscription as it comes up; a
            # bump that reaches it first notifies nobody, so bump until one is heard.
            assert asyncio.get_running_loop().time() < deadline, "A was never notified"
            bumped = await b.call("bump", {})
            assert "result" in bumped or "error" in bumped, bumped
            await asyncio.sleep(0.1)
    assert b.notes("notifications/resources/updated") == []


async def test_list_changed_reaches_every_session_and_refreshes_the_catalog(
    daemon_factory: DaemonFactory,
) -> None:
    """A adds a tool: A and B both get tools/list_changed, B's tools/list shows the new
    tool, and the daemon's own catalog (health's tool count) follows."""
    daemon = full_daemon(daemon_factory, "shared")
    before = daemon.health()["tools"]
    async with clients(daemon, "a", "b") as (a, b):
        assert rpc_text(await a.call("add_tool", {"name": "late"})) == "added late"
        for client in (a, b):
            await wait_until(
                lambda c=client: bool(c.notes("notifications/tools/list_changed")),
                f"{client.name}'s list_changed",
            )
        listed = await b.request("tools/list", {})
        await wait_until(lambda: daemon.health()["tools"] == before + 1, "the catalog refresh")
        late = await b.call("late", {})
    assert "late" in {t["name"] for t in listed["result"]["tools"]}
    assert rpc_text(late) == "dynamic late"


# --- cancellation, timeouts, caps ----------------------------------------------------


async def cancelled_count(client: AskedClient) -> int:
    return int(rpc_text(await client.call("cancelled", {})).split("=")[1])


async def test_cancel_timeout_and_disconnect_stop_the_work_on_the_server(
    daemon_factory: DaemonFactory,
) -> None:
    """A client's notifications/cancelled, the call timeout, and a client that goes
    away each reach the hosted server, which stops its `slow` call."""
    daemon = full_daemon(daemon_factory, "shared", EXAI_WS_CALL_TIMEOUT="3")
    async with clients(daemon, "a", "b") as (a, b):
        cancel_id, cancelled = await a.start_call("slow", {"seconds": BUSY_S})
        await wait_until(
            lambda: daemon.health()["servers"][0]["instances"][0]["in_flight"] == 1,
            "the slow call to start",
        )
        await a.cancel(cancel_id)
        timed_out = await b.call("slow", {"seconds": BUSY_S}, timeout_s=30)
        async with clients(daemon, "leaver") as (leaver,):
            await leaver.start_call("slow", {"seconds": BUSY_S})
            await wait_until(
                lambda: daemon.health()["servers"][0]["instances"][0]["in_flight"] == 1,
                "the leaver's call to start",
            )
        deadline = asyncio.get_running_loop().time() + scaled(STEP_S)
        while await cancelled_count(a) < 3:
            assert asyncio.get_running_loop().time() < deadline, "3 cancelled slow calls"
            await asyncio.sleep(0.1)
        assert not cancelled.done(), "a cancelled MCP request gets no answer"
    assert timed_out["error"]["code"] == TIMEOUT_RPC, timed_out


async def test_every_forwarded_request_counts_against_the_caps(
    daemon_factory: DaemonFactory,
) -> None:
    """EXAI_WS_SESSION_MAX_INFLIGHT=1 with no queue: while A's call runs, A's
    resources/read is refused OVER_CAPACITY like a second tool call would be (B is
    not affected), and the read shows up in the metrics when it does run."""
    daemon = full_daemon(
        daemon_factory,
        "shared",
        EXAI_WS_SESSION_MAX_INFLIGHT="1",
        EXAI_WS_QUEUE_TIMEOUT="0",
        EXAI_WS_MCP_QUEUE_TIMEOUT="0",
    )
    async with clients(daemon, "a", "b") as (a, b):
        busy_id, _ = await busy(a)
        await wait_until(
            lambda: daemon.health()["inflight"]["global"] == 1, "A's call to be admitted"
        )
        refused = await a.request("resources/read", {"uri": "fixture://static/hello.txt"})
        other = await b.request("resources/read", {"uri": "fixture://static/hello.txt"})
        await a.cancel(busy_id)
        await wait_until(lambda: daemon.health()["inflight"]["global"] == 0, "A's cancel")
        again = await a.request("resources/read", {"uri": "fixture://static/hello.txt"})
    assert refused["error"]["code"] == OVER_CAPACITY_RPC, refused
    assert refused["error"]["data"]["scope"] == "session"
    assert other["result"]["contents"][0]["text"] == again["result"]["contents"][0]["text"]
    await wait_until(
        lambda: sum(1 for m in daemon.metrics_lines() if m.get("tool") == "resources/read") >= 2,
        "metrics lines for the reads",
    )
    reads = [m for m in daemon.metrics_lines() if m.get("tool") == "resources/read"]
    assert {m["outcome"] for m in reads} >= {"ok", "OVER_CAPACITY"}


# --- values pass unchanged -----------------------------------------------------------


async def test_values_and_absent_fields_pass_unchanged(daemon_factory: DaemonFactory) -> None:
    """Progress numbers stay integers, the client's token comes back as it sent it, and
    a call without `arguments` reaches the server so (it answers it differently from
    `{}`). Whole results against the server's own are the differential test's."""
    daemon = full_daemon(daemon_factory, "shared")
    async with clients(daemon, "a") as (a,):
        _, future = await a.send_request(
            "tools/call",
            {"name": "progress", "arguments": {"steps": 2}, "_meta": {"progressToken": "tok-1"}},
        )
        done = await asyncio.wait_for(future, scaled(STEP_S))
        bare = await a.request("tools/call", {"name": "echo"})
        empty = await a.request("tools/call", {"name": "echo", "arguments": {}})
    progress = a.notes("notifications/progress")
    assert [p["params"]["progress"] for p in progress] == [1, 2]
    assert all(type(p["params"]["progress"]) is int for p in progress)
    assert {p["params"]["progressToken"] for p in progress} == {"tok-1"}
    assert rpc_text(done) == "done", json.dumps(done)
    assert rpc_text(bare) == "no arguments"
    assert rpc_text(empty) == "empty arguments"


async def test_model_tools_of_a_hosted_server_count_against_their_provider(
    daemon_factory: DaemonFactory,
) -> None:
    """EXAI_MODEL_TOOLS=slow and a GLM cap of 1: a hosted `slow` call with a GLM model
    holds the GLM slot, so another session's GLM call is refused OVER_CAPACITY (scope
    provider) while a Kimi one runs."""
    daemon = full_daemon(
        daemon_factory,
        "shared",
        EXAI_MODEL_TOOLS="slow",
        EXAI_WS_GLM_MAX_INFLIGHT="1",
        EXAI_WS_QUEUE_TIMEOUT="0",
        EXAI_WS_MCP_QUEUE_TIMEOUT="0",
    )
    async with clients(daemon, "a", "b") as (a, b):
        busy_id, _ = await a.start_call("slow", {"seconds": BUSY_S, "model": "glm-4.5"})
        await wait_until(
            lambda: daemon.health()["inflight"]["providers"].get("glm") == 1, "A's GLM slot"
        )
        refused = await b.call("slow", {"seconds": 0, "model": "glm-4.5"})
        kimi = await b.call("slow", {"seconds": 0, "model": "kimi-k2-0905-preview"})
        await a.cancel(busy_id)
    assert refused["error"]["code"] == OVER_CAPACITY_RPC, refused
    assert refused["error"]["data"]["scope"] == "provider"
    assert refused["error"]["data"]["provider"] == "glm"
    assert rpc_text(kimi) == "slept"
