"""Baseline `sdk-stdio`: the diagnostic tools served straight over stdio by the mcp SDK.

`python -m benchmarks.stdio_echo_server` is a stock mcp 2.x lowlevel `Server` on the
stock `stdio_server()` transport, exactly what an MCP client talks to without the broker.
It offers `echo`, `sleep` and `cpu` with the same answers as the daemon's diagnostic
tools, so the same JSON-lines driver and the same scenarios run against it.
"""

from __future__ import annotations

import time

import anyio
import mcp.types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

__all__ = ["main"]

_TEXT_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}}


async def on_list_tools(
    ctx: ServerRequestContext, params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(
        tools=[
            types.Tool(name=name, description=name, input_schema=_TEXT_SCHEMA)
            for name in ("echo", "sleep", "cpu")
        ]
    )


def _text(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])


async def on_call_tool(
    ctx: ServerRequestContext, params: types.CallToolRequestParams
) -> types.CallToolResult:
    args = params.arguments or {}
    if params.name == "echo":
        return _text(str(args.get("text", "")))
    if params.name == "sleep":
        seconds = float(args.get("seconds", 0))
        await anyio.sleep(seconds)
        return _text(f"slept {seconds:g}")
    if params.name == "cpu":
        budget_s = float(args.get("ms", 0)) / 1000.0
        start = time.process_time()
        while time.process_time() - start < budget_s:
            sum(i * i for i in range(200))
        return _text(f"burned {budget_s * 1000:.0f} ms")
    raise MCPError(code=-32602, message=f"Unknown tool: {params.name}")


server = Server(
    "exai-benchmark-stdio-echo",
    version="0",
    on_list_tools=on_list_tools,
    on_call_tool=on_call_tool,
)


async def _serve() -> None:
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def main() -> None:
    anyio.run(_serve)


if __name__ == "__main__":
    main()
