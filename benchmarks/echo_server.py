"""Baseline `raw-ws`: a bare aiohttp WebSocket server that sends every text frame back.

`python -m benchmarks.echo_server` binds 127.0.0.1:0 and prints `{"port": N}` on one
stdout line once it listens; it runs until SIGTERM/SIGINT. No protocol, no JSON: the
floor any WebSocket server on this machine and this aiohttp starts from.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys

import orjson
from aiohttp import WSMsgType, web

__all__ = ["main"]

MAX_FRAME_BYTES = 64 * 1024 * 1024


async def _echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, compress=False)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def _serve() -> None:
    app = web.Application()
    app.router.add_get("/", _echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    await web.SockSite(runner, sock, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    sys.stdout.buffer.write(orjson.dumps({"port": port}) + b"\n")
    sys.stdout.buffer.flush()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    runner = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    runner(_serve())


if __name__ == "__main__":
    main()
