"""`python -m workers.object_server module:attr`: an SDK server object as a stdio server.

`--server module:attr` names an `mcp` server object (a lowlevel `Server`, an
`MCPServer`, or a function returning one). The daemon hosts it exactly as it hosts a
`--server-cmd` command: it starts this module, which serves the object over its own
stdin and stdout, so every feature of the object (resources, prompts, logging,
sampling, list_changed...) reaches clients through the same relay, unchanged.

The SDK's stock `stdio_server()` hops through a thread for every line it reads and
every line it writes; on POSIX this serves the object over asyncio pipes into the
SDK's in-memory streams instead (a few times the throughput under concurrency), and
falls back to the stock transport elsewhere. Either way, fd 1 is pointed at stderr
while serving, so a `print()` in a handler cannot corrupt the wire.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from typing import Any

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer
from mcp.shared.message import SessionMessage

from exai.exits import ExitCode

__all__ = ["load_server_object", "main"]

# Messages buffered each way between the pipes and the server: enough that a burst of
# concurrent requests never waits on the reader, bounded so a stalled peer stops it.
STREAM_BUFFER = 256
MAX_LINE_BYTES = 32 * 1024 * 1024


def load_server_object(spec: str) -> Server[Any]:
    """The lowlevel server behind `module:attr`; raises ValueError or ImportError."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"{spec!r} is not module:attr")
    found: Any = getattr(importlib.import_module(module_name), attr)
    if not isinstance(found, Server | MCPServer) and callable(found):
        found = found()
    if isinstance(found, MCPServer):
        # MCPServer keeps its protocol server here and offers no public accessor.
        found = found._lowlevel_server
    if not isinstance(found, Server):
        raise ValueError(f"{spec} is neither an mcp Server/MCPServer nor a factory of one")
    return found


async def _serve_pipes(server: Server[Any]) -> None:
    """Serve `server` on fds 0/1 through asyncio pipes and memory streams (POSIX)."""
    wire_in = os.fdopen(os.dup(0), "rb", buffering=0)
    wire_out = os.fdopen(os.dup(1), "wb", buffering=0)
    # Handlers and their children must not read the wire or write onto it.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE_BYTES, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), wire_in)
    writer_transport, _ = await loop.connect_write_pipe(asyncio.Protocol, wire_out)
    to_server: tuple[
        MemoryObjectSendStream[SessionMessage | Exception],
        MemoryObjectReceiveStream[SessionMessage | Exception],
    ] = anyio.create_memory_object_stream(STREAM_BUFFER)
    from_server: tuple[
        MemoryObjectSendStream[SessionMessage], MemoryObjectReceiveStream[SessionMessage]
    ] = anyio.create_memory_object_stream(STREAM_BUFFER)
    send_in, receive_in = to_server
    send_out, receive_out = from_server

    async def read_lines() -> None:
        async with send_in:
            while line := await reader.readline():
                if not line.strip():
                    continue
                try:
                    message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                except Exception as exc:  # what the stock transport does with garbage
                    await send_in.send(exc)
                    continue
                await send_in.send(SessionMessage(message))

    async def write_lines() -> None:
        async with receive_out:
            async for session_message in receive_out:
                data = session_message.message.model_dump_json(by_alias=True, exclude_unset=True)
                writer_transport.write(data.encode() + b"\n")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(read_lines)
        tasks.start_soon(write_lines)
        await server.run(receive_in, send_out, server.create_initialization_options())
        tasks.cancel_scope.cancel()
    writer_transport.close()


async def _serve_stock(server: Server[Any]) -> None:
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m workers.object_server module:attr", file=sys.stderr)
        return ExitCode.USAGE
    try:
        server = load_server_object(args[0])
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        print(f"cannot load server object {args[0]!r}: {exc}", file=sys.stderr)
        return ExitCode.WORKER_LOAD_FAILED
    serve = _serve_pipes if sys.platform != "win32" else _serve_stock
    try:
        anyio.run(serve, server)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
