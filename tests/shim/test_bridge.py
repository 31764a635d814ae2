"""Unit tests for the bridge (shim.bridge) with a fake daemon connection: what reaches
the client, what is held back for the next daemon, what the shim answers itself."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from exai.settings import ShimSettings
from shim.bridge import Bridge

TOOLS = [
    {"name": "echo", "annotations": {"readOnlyHint": True, "idempotentHint": True}},
    {"name": "chat", "annotations": {"readOnlyHint": False, "idempotentHint": False}},
]


class FakeSocket:
    """Stands in for a daemon connection (the bridge only sends on it, with
    `send_text_nowait`): records what the bridge sends."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send_text_nowait(self, data: bytes) -> bool:
        self.sent.append(json.loads(data))
        return True


class Client:
    """A bridge, the lines it wrote to its client, and its current fake connection."""

    def __init__(self, rpc_timeout_s: float = 30.0) -> None:
        self.written: list[bytes] = []
        # Set on every line written to the client, for tests that wait for one.
        self.wrote = asyncio.Event()
        self.bridge = Bridge(ShimSettings(rpc_timeout_s=rpc_timeout_s), self._write_line)
        self.ws = self.connect(resumed=False)

    def _write_line(self, line: bytes) -> None:
        self.written.append(line)
        self.wrote.set()

    def connect(self, resumed: bool) -> FakeSocket:
        self.ws = FakeSocket()
        self.bridge.handle_connected(self.ws, resumed)  # type: ignore[arg-type]
        return self.ws

    def restart_daemon(self) -> FakeSocket:
        self.bridge.handle_disconnected()
        return self.connect(resumed=False)

    def send(self, **message: Any) -> None:
        self.bridge.handle_client_line(json.dumps({"jsonrpc": "2.0", **message}).encode())

    def call(self, request_id: Any, tool: str) -> None:
        self.send(id=request_id, method="tools/call", params={"name": tool, "arguments": {}})

    def answer(self, frame: dict[str, Any]) -> bytes:
        raw = json.dumps({"jsonrpc": "2.0", **frame}, separators=(",", ":")).encode()
        self.bridge.handle_daemon_frame(raw)
        return raw

    def answers(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.written]


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    made = Client()
    made.send(id="init", method="initialize", params={})
    made.answer({"id": "init", "result": {}})
    made.send(method="notifications/initialized")
    made.send(id="list", method="tools/list")
    made.answer({"id": "list", "result": {"tools": TOOLS}})
    made.written.clear()
    yield made
    made.bridge.abandon()


def tool_text(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": False}


def shutdown_error(code: str = "SHUTTING_DOWN", **data: str) -> dict[str, Any]:
    return {
        "code": -32053,
        "message": "the daemon is shutting down",
        "data": {"code": code, **data},
    }


@pytest.mark.parametrize("text", ["SHUTTING_DOWN", '"daemon_shutdown"', '{"code":"SHUTTING_DOWN"}'])
async def test_read_only_result_mentioning_a_shutdown_reaches_the_client_unchanged(
    client: Client, text: str
) -> None:
    """A successful result is delivered byte for byte, whatever its text says."""
    client.call(7, "echo")
    frame = client.answer({"id": 7, "result": tool_text(text)})
    assert client.written == [frame]
    assert len(client.bridge.pending) == 0


@pytest.mark.parametrize(
    "error", [shutdown_error(), shutdown_error("WORKER_LOST", cause="daemon_shutdown")]
)
async def test_a_safe_call_cut_by_a_restart_is_sent_to_the_next_daemon(
    client: Client, error: dict[str, Any]
) -> None:
    client.call(7, "echo")
    client.answer({"id": 7, "error": error})
    assert client.written == []
    assert len(client.bridge.pending) == 1
    fresh = client.restart_daemon()
    # The new daemon hears the client's initialize again (under the shim's id), then the call.
    assert [m.get("method") for m in fresh.sent] == [
        "initialize",
        "notifications/initialized",
        "tools/call",
    ]
    assert fresh.sent[0]["id"] != "init" and fresh.sent[2]["id"] == 7
    fresh_init = fresh.sent[0]["id"]
    client.answer({"id": fresh_init, "result": {}})
    frame = client.answer({"id": 7, "result": tool_text("hi")})
    assert client.written == [frame]


async def test_an_unsafe_call_cut_by_a_restart_gets_the_daemon_error(client: Client) -> None:
    client.call(8, "chat")
    frame = client.answer({"id": 8, "error": shutdown_error()})
    assert client.written == [frame]


async def test_an_unsafe_call_running_across_a_restart_is_worker_lost(client: Client) -> None:
    """It may or may not have run: never re-run, answered WORKER_LOST by the shim."""
    client.call(9, "chat")
    client.call(10, "echo")
    fresh = client.restart_daemon()
    assert [m["id"] for m in fresh.sent if m.get("method") == "tools/call"] == [10]
    [lost] = client.answers()
    assert lost["id"] == 9 and lost["error"]["code"] == -32052
    assert lost["error"]["data"] == {"code": "WORKER_LOST"}


async def test_a_resumed_session_gets_every_call_again(client: Client) -> None:
    client.call(9, "chat")
    client.bridge.handle_disconnected()
    resumed = client.connect(resumed=True)
    assert [m["id"] for m in resumed.sent] == [9]
    assert client.written == []


async def test_a_refused_token_answers_the_requests_not_sent_yet(client: Client) -> None:
    client.call(1, "echo")
    client.bridge.handle_disconnected()
    client.call(2, "echo")
    client.bridge.handle_unauthorized("the daemon refused our token")
    [refused] = client.answers()
    assert refused["id"] == 2 and refused["error"]["code"] == -32001
    assert refused["error"]["data"] == {"code": "UNAUTHORIZED"}
    assert refused["error"]["message"] == "the daemon refused our token"
    assert len(client.bridge.pending) == 1


async def test_an_ack_stops_the_timer_and_a_duplicate_answer_is_dropped(client: Client) -> None:
    client.call(3, "echo")
    [owed] = client.bridge.pending.values()
    assert owed.timer is not None
    client.bridge.handle_daemon_frame(b'{"op":"ack","id":3}')
    assert owed.acked and owed.timer is None
    client.answer({"id": 3, "result": tool_text("once")})
    client.answer({"id": 3, "result": tool_text("once")})
    assert len(client.written) == 1


async def test_a_reused_id_is_refused_while_its_request_is_owed(client: Client) -> None:
    client.call(4, "echo")
    client.call(4, "echo")
    [refused] = client.answers()
    assert refused["id"] == 4 and refused["error"]["code"] == -32600
    assert [m["id"] for m in client.ws.sent if m.get("method") == "tools/call"] == [4]
