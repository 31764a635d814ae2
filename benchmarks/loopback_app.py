"""Serving a ceiling server's aiohttp app for the benchmarks: on a free loopback port
(printed as `{"port": N}` on stdout for the runner), until SIGTERM or SIGINT, on uvloop
where it is installed."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys

import orjson
from aiohttp import web

__all__ = ["run_app"]


async def _serve(app: web.Application) -> None:
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


def run_app(app: web.Application) -> None:
    runner = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    runner(_serve(app))
