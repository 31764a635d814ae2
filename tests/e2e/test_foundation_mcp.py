"""The MCP surface an editor sees: the real SDK client talking through `python -m shim`.

Each test starts a real daemon (2 workers, diagnostic tools on) and real shim
processes; nothing is mocked between the SDK's ClientSession and the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from mcp import MCPError
from mcp.client.session import ClientSession
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS

from exai import __version__
from tests.conftest import DaemonFactory, DaemonProcess, async_wait_for, mcp_client
from tests.support.health import Health, health_until
from tests.support.processes import process_running

NON_ASCII = 'héllo wörld ✓ 日本語 🚀 "quoted" back\\slash\ttab\nnewline'
METRICS_FIELDS = {
    "t", "session", "tool", "provider", "model", "outcome",
    "latency_ms", "queue_ms", "worker", "bytes_in", "bytes_out",
}  # fmt: skip


def text_of(result: Any) -> str:
    """The text of a single-text-block tool result."""
    assert len(result.content) == 1, result
    assert result.content[0].type == "text"
    return str(result.content[0].text)


async def health_when(daemon: DaemonProcess, check: Callable[[Health], bool], what: str) -> Health:
    """The first health snapshot for which `check` holds (the file is rewritten every 0.2 s)."""
    return await health_until(daemon, check, what, timeout_s=10.0)


# --- handshake and catalog -----------------------------------------------------------


async def test_initialize_reports_exai_broker(daemon: DaemonProcess) -> None:
    """The client learns it talks to exai-broker over a protocol version it supports."""
    async with mcp_client(daemon.shim_env()) as session:
        init = session.initialize_result
    assert init is not None
    assert init.server_info.name == "exai-broker"
    assert init.server_info.version == __version__
    assert init.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
    assert init.capabilities.tools is not None


async def test_tools_list_has_builtin_and_diagnostic_tools(daemon: DaemonProcess) -> None:
    """tools/list shows version, listmodels and (diagnostics on) echo and sleep, with schemas."""
    async with mcp_client(daemon.shim_env()) as session:
        listing = await session.list_tools()
    tools = {tool.name: tool for tool in listing.tools}
    assert {"version", "listmodels", "echo", "sleep", "fail"} <= tools.keys()
    assert tools["echo"].input_schema["required"] == ["text"]
    assert all(tool.description for tool in listing.tools)


async def test_version_tool_reports_version_and_workers(daemon: DaemonProcess) -> None:
    """`version` answers JSON text naming the daemon version and its worker count."""
    async with mcp_client(daemon.shim_env()) as session:
        result = await session.call_tool("version", {})
    assert not result.is_error
    payload = json.loads(text_of(result))
    assert payload["name"] == "exai-broker"
    assert payload["version"] == __version__
    assert payload["workers"] == 2


ECHO_TEXTS = {
    "ascii": "hello",
    "non-ascii": NON_ASCII,
    "empty": "",
    "64KiB": ("0123456789abcdef" * 4096)[:65535] + "é",
}


async def test_echo_round_trips_text(daemon: DaemonProcess) -> None:
    """echo returns exactly the text it was given, whatever the characters or size."""
    async with mcp_client(daemon.shim_env()) as session:
        for kind, text in ECHO_TEXTS.items():
            result = await session.call_tool("echo", {"text": text})
            assert not result.is_error, kind
            assert text_of(result) == text, kind


async def test_echo_of_20_mib_arrives(daemon: DaemonProcess) -> None:
    """A 20 MiB result, within the 32 MiB EXAI_WS_MAX_BYTES frame limit, reaches the client."""
    text = "z" * (20 * 1024 * 1024)
    async with mcp_client(daemon.shim_env()) as session:
        call = asyncio.create_task(session.call_tool("echo", {"text": text}))
        try:
            # Fail fast on the daemon's "not reading" drop instead of waiting out a deadline.
            await async_wait_for(
                lambda: call.done() or "client is not reading" in daemon.stderr(),
                30.0,
                "the 20 MiB echo to finish",
            )
            assert call.done(), daemon.stderr()[-500:]
            result = call.result()
        finally:
            call.cancel()
    assert text_of(result) == text
    health = await health_when(daemon, lambda h: h["calls_total"] >= 1, "the call counted")
    assert sum(w["served"] for w in health["workers"]) == 1  # ran once, never re-run


# --- concurrency ---------------------------------------------------------------------


async def test_three_shims_with_overlapping_calls_get_their_own_answers(
    daemon_factory: DaemonFactory,
) -> None:
    """60 overlapping calls from 3 clients: each answer goes to the call that asked for it.

    The caps are raised so all 60 are admitted at once (the default session cap of 8
    would, by design, answer the excess with OVER_CAPACITY).
    """
    daemon = daemon_factory(
        workers=2, env={"EXAI_WS_SESSION_MAX_INFLIGHT": "32", "EXAI_WS_GLOBAL_MAX_INFLIGHT": "96"}
    )
    async with contextlib.AsyncExitStack() as stack:
        sessions: list[ClientSession] = [
            await stack.enter_async_context(mcp_client(daemon.shim_env())) for _ in range(3)
        ]

        async def call(client: int, n: int) -> tuple[str, str]:
            sent = f"client {client} call {n} · {'✓' * n}"
            result = await sessions[client].call_tool("echo", {"text": sent})
            assert not result.is_error, result
            return sent, text_of(result)

        pairs = await asyncio.gather(*(call(c, n) for n in range(20) for c in range(3)))
    assert len(pairs) == 60
    assert [got for _, got in pairs] == [sent for sent, _ in pairs]
    health = await health_when(daemon, lambda h: h["calls_total"] >= 60, "60 calls counted")
    assert health["calls_total"] == 60
    assert health["errors_by_code"] == {}


# --- errors --------------------------------------------------------------------------


async def test_tool_error_is_a_result_and_the_worker_survives(daemon: DaemonProcess) -> None:
    """A tool that raises gives isError with its message; the same workers keep serving."""
    before = await health_when(daemon, lambda h: len(h["workers"]) == 2, "two workers")
    pids_before = sorted(w["pid"] for w in before["workers"])
    async with mcp_client(daemon.shim_env()) as session:
        failed = await session.call_tool("fail", {"message": "boom ✗ on purpose"})
        assert failed.is_error
        message = text_of(failed)
        assert "boom ✗ on purpose" in message
        assert "Traceback" not in message
        after = await session.call_tool("echo", {"text": "still here"})
        assert not after.is_error
        assert text_of(after) == "still here"
    health = await health_when(daemon, lambda h: h["calls_total"] >= 2, "both calls counted")
    assert sorted(w["pid"] for w in health["workers"]) == pids_before
    assert all(w["restarts"] == 0 and w["state"] == "ready" for w in health["workers"])
    assert all(process_running(pid) for pid in pids_before)
    assert health["errors_by_code"] == {"EXEC_ERROR": 1}


async def test_unknown_tool_raises_mcp_error_tool_not_found(daemon: DaemonProcess) -> None:
    """Calling a tool that does not exist is a JSON-RPC error -32602 with TOOL_NOT_FOUND."""
    async with mcp_client(daemon.shim_env()) as session:
        with pytest.raises(MCPError) as info:
            await session.call_tool("no_such_tool", {"x": 1})
        # The session is still usable after the error.
        assert text_of(await session.call_tool("echo", {"text": "ok"})) == "ok"
    error = info.value.error
    assert error.code == -32602
    assert isinstance(error.data, dict)
    assert error.data["code"] == "TOOL_NOT_FOUND"
    assert "no_such_tool" in error.message


# --- files written -------------------------------------------------------------------


async def test_metrics_has_one_line_per_finished_call(daemon: DaemonProcess) -> None:
    """Every finished call becomes one metrics JSONL line with the documented fields."""
    async with mcp_client(daemon.shim_env()) as session:
        assert text_of(await session.call_tool("echo", {"text": "x" * 1000})) == "x" * 1000
        assert text_of(await session.call_tool("echo", {"text": "y"})) == "y"
        assert (await session.call_tool("fail", {"message": "nope"})).is_error
    lines = await async_wait_for(
        lambda: len(daemon.metrics_lines()) >= 3 and daemon.metrics_lines(), 10.0, "three lines"
    )
    health = await health_when(daemon, lambda h: h["metrics_written"] >= 3, "metrics flushed")
    assert health["metrics_written"] == 3
    assert len(lines) == 3
    for line in lines:
        assert set(line) >= METRICS_FIELDS, line
        assert line["latency_ms"] >= 0 and line["queue_ms"] >= 0
        assert line["worker"] in (0, 1)
        assert line["provider"] is None and line["model"] is None
    assert len({line["session"] for line in lines}) == 1
    assert [(line["tool"], line["outcome"]) for line in lines] == [
        ("echo", "ok"),
        ("echo", "ok"),
        ("fail", "EXEC_ERROR"),
    ]
    big = lines[0]
    assert big["bytes_in"] >= 1000 and big["bytes_out"] >= 1000
    assert lines[1]["bytes_in"] < 100


async def test_health_file_shows_workers_calls_and_sessions(daemon: DaemonProcess) -> None:
    """The health file counts live sessions and calls and lists the live worker pids."""
    async with mcp_client(daemon.shim_env()) as session:
        await session.call_tool("echo", {"text": "a"})
        await session.call_tool("version", {})
        health = await health_when(
            daemon,
            lambda h: h["sessions"] == 1 and h["calls_total"] == 2,
            "one session and two calls in the health file",
        )
        assert health["ready"] is True
        assert health["port"] == daemon.port
        assert len(health["workers"]) == 2
        assert all(process_running(w["pid"]) for w in health["workers"])
        assert sum(w["served"] for w in health["workers"]) == 2
        assert health["inflight"]["global"] == 0
    await health_when(daemon, lambda h: h["sessions"] == 0, "the session to end with its shim")
