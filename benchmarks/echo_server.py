"""Baseline `raw-ws`: a bare aiohttp WebSocket server that sends every text frame back.

`python -m benchmarks.echo_server` binds 127.0.0.1:0 and prints `{"port": N}` on one
stdout line once it listens; it runs until SIGTERM/SIGINT. No protocol, no JSON: the
floor any WebSocket server on this machine and this aiohttp starts from.
"""

from __future__ import annotations

from aiohttp import WSMsgType, web

from benchmarks.loopback_app import run_app

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


def main() -> None:
    app = web.Application()
    app.router.add_get("/", _echo)
    run_app(app)


if __name__ == "__main__":
    main()
