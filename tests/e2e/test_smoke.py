"""The smallest end-to-end path: SDK client -> shim -> daemon -> worker -> back."""

from __future__ import annotations

from tests.conftest import DaemonProcess, mcp_client


async def test_echo_through_shim(daemon: DaemonProcess) -> None:
    async with mcp_client(daemon.shim_env()) as session:
        result = await session.call_tool("echo", {"text": "hello"})
    assert result.content[0].text == "hello"
    assert not result.is_error
