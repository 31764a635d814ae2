"""Every protocol version the daemon offers, served in that version's own shapes.

The Python SDK's `mcp.Client` in its default mode negotiates 2026-07-28 (no
`initialize`; a `_meta` envelope on every request) and validates each result
against that revision's types; in legacy mode it uses the 2025-11-25 handshake.
Direct WebSocket sessions of each version have every result checked against the
official types of the version in use.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import mcp
import pytest
from mcp.client.stdio import StdioServerParameters
from mcp_types.methods import serialize_server_result
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from tests.conftest import ROOT, DaemonProcess
from tests.support.mcp_ws import McpWsClient, mcp_ws_clients

MODERN = "2026-07-28"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "e2e-test", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


@asynccontextmanager
async def sdk_client(daemon: DaemonProcess, mode: str) -> AsyncIterator[mcp.Client]:
    """The SDK's high-level Client on a real shim, in the given mode."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "shim"], env=daemon.shim_env(), cwd=str(ROOT)
    )
    async with mcp.Client(params, mode=mode) as client:  # type: ignore[arg-type]
        yield client


@pytest.mark.parametrize(("mode", "version"), [("auto", MODERN), ("legacy", "2025-11-25")])
async def test_sdk_client_in_each_mode_lists_and_calls(
    daemon: DaemonProcess, mode: str, version: str
) -> None:
    """Default mode (what users get) and legacy mode both list, call, stream and fail well."""
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with sdk_client(daemon, mode) as client:
        assert client.protocol_version == version
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"version", "echo", "sleep"} <= names
        echoed = await client.call_tool("echo", {"text": "héllo ✓"})
        assert echoed.content[0].text == "héllo ✓"  # type: ignore[union-attr]
        assert echoed.is_error is False
        slept = await client.call_tool(
            "sleep", {"seconds": 0.3, "steps": 3}, progress_callback=on_progress
        )
        assert slept.is_error is False
        failed = await client.call_tool("fail", {"message": "nope"})
        assert failed.is_error is True
        with pytest.raises(mcp.MCPError, match="unknown tool"):
            await client.call_tool("no-such-tool", {})
    assert progress, "no progress notification reached the client"


async def check(client: McpWsClient, method: str, params: dict[str, Any], version: str) -> Any:
    """Send a request; validate its result against `version`'s official types."""
    response = await client.request(method, params)
    assert "result" in response, response
    result = response["result"]
    serialize_server_result(method, version, result)  # raises if a required field is off
    if version == MODERN:
        assert result["resultType"] == "complete"
    else:
        assert not {"resultType", "ttlMs", "cacheScope"} & result.keys(), result
    return result


@pytest.mark.parametrize("version", HANDSHAKE_PROTOCOL_VERSIONS)
async def test_handshake_versions_get_their_own_shapes(daemon: DaemonProcess, version: str) -> None:
    """Each handshake version is echoed and its results carry no 2026 fields."""
    async with mcp_ws_clients(daemon, 1) as (client,):
        init = await check(
            client,
            "initialize",
            {
                "protocolVersion": version,
                "capabilities": {},
                "clientInfo": {"name": "e2e-test", "version": "1"},
            },
            version,
        )
        assert init["protocolVersion"] == version
        await check(client, "tools/list", {}, version)
        await check(client, "tools/call", {"name": "echo", "arguments": {"text": "x"}}, version)


async def test_2026_07_28_requests_get_2026_07_28_shapes(daemon: DaemonProcess) -> None:
    """discover, list and call with the envelope: each result has that revision's fields."""
    async with mcp_ws_clients(daemon, 1) as (client,):
        meta = {"_meta": ENVELOPE}
        discovered = await check(client, "server/discover", meta, MODERN)
        assert MODERN in discovered["supportedVersions"]
        listed = await check(client, "tools/list", meta, MODERN)
        assert listed["cacheScope"] == "private"
        called = await check(
            client, "tools/call", {"name": "echo", "arguments": {"text": "x"}, **meta}, MODERN
        )
        assert called["content"] == [{"type": "text", "text": "x"}]
