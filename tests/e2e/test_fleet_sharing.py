"""How a servers file's `exai` options share a server: one instance per session, a cap
on what runs at once, and the same daemon over Streamable HTTP with no shim.

The counter fixture keeps a count per process, so the counts a client sees say which
instance served it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp
import pytest
from mcp import MCPError
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import listen
from mcp.shared.subscriptions import ResourceUpdated, ToolsListChanged

from tests.conftest import (
    ROOT,
    STEP_S,
    DaemonFactory,
    DaemonProcess,
    mcp_client,
    scaled,
    wait_for,
)
from tests.support.jsonrpc import sdk_text

pytestmark = pytest.mark.timeout(120)

COUNTER_URI = "fixture://counter"  # tests.fixtures.full_server's bumped resource
COUNTER = {"command": sys.executable, "args": ["-m", "tests.fixtures.counter_server"]}
OVER_CAPACITY_RPC = -32050


def start(
    factory: DaemonFactory, tmp_path: Path, entries: dict[str, Any], **env: str
) -> DaemonProcess:
    config = tmp_path / "servers.json"
    config.write_text(json.dumps({"mcpServers": entries}))
    daemon = factory(workers=1, args=["--config", str(config)], env=env)
    wait_for(lambda: _all_ready(daemon), 60, "every server ready")
    return daemon


def _all_ready(daemon: DaemonProcess) -> bool:
    try:
        found = daemon.health().get("servers", [])
    except (OSError, ValueError):
        return False
    return bool(found) and all(s["state"] == "ready" for s in found)


async def test_session_isolation_gives_each_client_its_own_instance(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    daemon = start(
        daemon_factory,
        tmp_path,
        {
            "mine": {**COUNTER, "cwd": str(ROOT), "exai": {"isolation": "session"}},
            "ours": {**COUNTER, "cwd": str(ROOT)},
        },
    )
    async with (
        mcp_client(daemon.shim_env()) as first,
        mcp_client(daemon.shim_env()) as second,
    ):
        mine = [await s.call_tool("mine__increment", {}) for s in (first, second, first)]
        ours = [await s.call_tool("ours__increment", {}) for s in (first, second, first)]
        pids = {sdk_text(await s.call_tool("mine__pid", {})) for s in (first, second)}
    assert [sdk_text(r) for r in mine] == ["1", "1", "2"], "one instance per session"
    assert [sdk_text(r) for r in ours] == ["1", "2", "3"], "one instance for everyone"
    assert len(pids) == 2


async def test_max_inflight_caps_a_server_and_no_other(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """With queueing off, a second call while `maxInflight: 1` is taken is refused with
    OVER_CAPACITY naming the server; another server's call goes through meanwhile."""
    daemon = start(
        daemon_factory,
        tmp_path,
        {
            "narrow": {**COUNTER, "cwd": str(ROOT), "exai": {"maxInflight": 1}},
            "wide": {**COUNTER, "cwd": str(ROOT)},
        },
        EXAI_WS_MCP_QUEUE_TIMEOUT="0",
    )
    async with mcp_client(daemon.shim_env()) as session:
        slow = asyncio.ensure_future(session.call_tool("narrow__slow", {"seconds": 3}))
        await asyncio.sleep(0.5)
        try:
            await session.call_tool("narrow__increment", {})
        except MCPError as exc:
            refused = exc.error
        else:
            raise AssertionError("a second call over maxInflight was not refused")
        other = await session.call_tool("wide__increment", {})
        finished = await slow
    assert refused.code == OVER_CAPACITY_RPC, refused
    assert isinstance(refused.data, dict)
    assert refused.data.get("scope") == "server"
    assert refused.data.get("server") == "narrow"
    assert sdk_text(other) == "1"
    assert not finished.is_error, sdk_text(finished)


async def test_a_servers_file_over_streamable_http(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """A client with no shim, on /mcp, sees the same merged listing and reaches a server."""
    daemon = start(daemon_factory, tmp_path, {"counter": {**COUNTER, "cwd": str(ROOT)}})
    url = f"http://127.0.0.1:{daemon.port}/mcp"
    with anyio.fail_after(60):
        async with (
            streamable_http_client(url) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            names = {t.name for t in (await session.list_tools()).tools}
            counted = await session.call_tool("counter__increment", {})
    assert {"version", "counter__increment", "counter__slow"} <= names
    assert sdk_text(counted) == "1"


async def test_a_2026_client_hears_of_an_edit_on_its_listen_stream(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """`mcp.Client` in its default mode takes no unsolicited notifications: each edit
    reaches it as `tools/list_changed` on its `subscriptions/listen` stream, the one
    that removes the server the stream was opened beside included."""
    counter = {**COUNTER, "cwd": str(ROOT)}
    daemon = start(daemon_factory, tmp_path, {"counter": counter})
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "shim"], env=daemon.shim_env(), cwd=str(ROOT)
    )
    async with mcp.Client(params, read_timeout_seconds=scaled(STEP_S)) as client:
        version = client.protocol_version
        listings = []
        config = tmp_path / "servers.json"
        async with listen(client.session, tools_list_changed=True) as stream:
            for servers in ({"counter": counter, "extra": counter}, {"extra": counter}):
                config.write_text(json.dumps({"mcpServers": servers}))
                async with asyncio.timeout(scaled(STEP_S)):
                    async for event in stream:
                        if isinstance(event, ToolsListChanged):
                            break
                listings.append({tool.name for tool in (await client.list_tools()).tools})
    assert version == "2026-07-28"
    assert {"counter__increment", "extra__increment"} <= listings[0]
    assert "extra__increment" in listings[1]
    assert "counter__increment" not in listings[1]


async def test_a_server_an_edit_restarts_keeps_the_resources_a_listen_stream_wants(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """A 2026-07-28 client listens for updates of fixture://counter; an edit restarts
    the full server that has it (a new env): the server's next bumps still reach the
    stream, which was never opened again."""
    full = {"command": sys.executable, "args": ["-m", "tests.fixtures.full_server"]}
    full["cwd"] = str(ROOT)
    daemon = start(daemon_factory, tmp_path, {"full": full})
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "shim"], env=daemon.shim_env(), cwd=str(ROOT)
    )
    loop = asyncio.get_running_loop()
    async with (
        mcp.Client(params, read_timeout_seconds=scaled(STEP_S)) as client,
        listen(
            client.session, tools_list_changed=True, resource_subscriptions=[COUNTER_URI]
        ) as stream,
    ):
        edited = {**full, "env": {"EXAI_TEST_EDITED": "1"}}
        (tmp_path / "servers.json").write_text(json.dumps({"mcpServers": {"full": edited}}))
        async with asyncio.timeout(scaled(STEP_S)):
            async for event in stream:
                if isinstance(event, ToolsListChanged):
                    break
        updated: ResourceUpdated | None = None
        deadline = loop.time() + scaled(STEP_S)
        while updated is None:
            # The new instance is told of the stream as it comes up; a bump that
            # reaches it first notifies nobody, so bump until one is heard.
            assert loop.time() < deadline, "no update reached the stream"
            await client.call_tool("full__bump", {})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    async for event in stream:
                        if isinstance(event, ResourceUpdated):
                            updated = event
                            break
    assert updated.uri == COUNTER_URI


async def test_a_tool_name_taken_twice_is_listed_once_and_shown_as_a_problem(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """An unprefixed server with an `echo` of its own beside the daemon's diagnostic
    `echo`: the daemon's keeps the name, the server's is left out of the list, and the
    health snapshot (so `status` and the status page) names the clash."""
    full = {"command": sys.executable, "args": ["-m", "tests.fixtures.full_server"]}
    daemon = start(
        daemon_factory, tmp_path, {"full": {**full, "cwd": str(ROOT), "exai": {"prefix": ""}}}
    )
    async with mcp_client(daemon.shim_env()) as session:
        tools = (await session.list_tools()).tools
        echoed = await session.call_tool("echo", {"text": "whose?"})
        added = await session.call_tool("add", {"a": 2, "b": 3})
    names = [tool.name for tool in tools]
    assert names.count("echo") == 1
    assert "add" in names
    assert sdk_text(echoed) == "whose?"  # the daemon's own echo answers
    assert "5" in sdk_text(added)

    def problems() -> list[str]:
        try:
            found = {s["name"]: s for s in daemon.health().get("servers", [])}
        except (OSError, ValueError):
            return []  # the file is being rewritten
        return list(found.get("full", {}).get("problems", []))

    assert any("'echo'" in problem for problem in wait_for(problems, 30, "the clash in health"))
